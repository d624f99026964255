"""Batched k-means: every backend against the float64 reference from a fixed initialisation,
k-means++ initialisation, empty clusters, generated cases (shapes, k, iterations, initialisations, dtypes,
layouts), bad inputs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import assume
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import kmeans
from pyaudiok.ops.kmeans import LLOYD, _lloyd_triton, kmeans_plus_plus, lloyd_reference

from ..harness import TOLERANCE, generated_case_tests, opcheck, rel_error, require_backend

BACKENDS = ("cpu", "triton", "cuda")


def clustered(B, P, d, k, device="cpu", dtype=torch.float32, spread=0.2, seed=0):
    """Points around k well-separated centres per item (nearest-centroid ties have probability 0)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(B, k, d, generator=gen, dtype=torch.float64) * 4
    labels = torch.randint(0, k, (B, P), generator=gen)
    x = centres.gather(1, labels[..., None].expand(B, P, d)) + spread * torch.randn(B, P, d, generator=gen,
                                                                                   dtype=torch.float64)
    return x.to(device, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,P,d,k,n_iters", [(2, 64, 4, 3, 5), (3, 37, 3, 5, 8), (1, 200, 17, 9, 3), (2, 9, 2, 1, 2),
                                             (1, 40, 6, 4, 0)])
def test_lloyd_matches_float64_reference(backend, B, P, d, k, n_iters):
    device = require_backend(LLOYD, backend)
    x = clustered(B, P, d, k, device)
    init = x[:, :k].clone()
    with pyaudiok.use_backend(backend):
        got = kmeans(x, k, n_iters=n_iters, init=init)
    want_c, want_a = lloyd_reference(x.double().cpu(), init.double().cpu(), n_iters)
    assert torch.equal(got.assignments.cpu(), want_a)
    assert rel_error(got.centroids, want_c) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_items_settling_at_different_iterations_match_the_full_loop(backend, dtype):
    """Fast backends stop sweeping an item once its assignments stop changing: items that settle
    after one sweep, after several, or not within the budget must all give the reference's result
    for exactly n_iters iterations."""
    device = require_backend(LLOYD, backend)
    if dtype == torch.float64 and backend != "cpu":
        pytest.skip("float64 runs on the cpu backend's GEMM route only")
    x = torch.cat([clustered(1, 90, 5, 4, spread=s, seed=i) for i, s in enumerate((0.01, 1.5, 4.0))])
    # k-means++ seeds (not the first points): two seeds inside one tight cluster would leave near-ties
    # that float32 distances cannot order.
    init = kmeans_plus_plus(x, 4, torch.Generator().manual_seed(1))
    x, init = x.to(device, dtype), init.to(device, dtype)
    settled_at = []
    for n_iters in (1, 3, 40):
        want_c, want_a = lloyd_reference(x.double().cpu(), init.double().cpu(), n_iters)
        with pyaudiok.use_backend(backend):
            got = kmeans(x, 4, n_iters=n_iters, init=init)
        assert torch.equal(got.assignments.cpu(), want_a), n_iters
        assert rel_error(got.centroids, want_c) <= TOLERANCE[torch.float32], n_iters
        settled_at.append(want_a)
    assert not torch.equal(settled_at[0][2], settled_at[2][2])  # the loose item is still moving after one sweep


@pytest.mark.parametrize("backend", ("cpu", "triton"))
def test_non_contiguous_points(backend):
    device = require_backend(LLOYD, backend)
    x = clustered(2, 50, 4, 3, device).transpose(1, 2).contiguous().transpose(1, 2)  # strides [.., 1, P]
    init = x[:, :3].clone()
    with pyaudiok.use_backend(backend):
        got = kmeans(x, 3, n_iters=4, init=init)
    assert torch.equal(got.assignments.cpu(), lloyd_reference(x.double().cpu(), init.double().cpu(), 4)[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_precision_matches_the_reference(backend, dtype):
    """Half-precision points: the centroids stay float32 between iterations, as the reference keeps
    them, and are rounded once at the end (rounding them after every update moves later assignments)."""
    device = require_backend(LLOYD, backend, dtype)
    x = (torch.randn(16, 40, 2, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    init = x[:, :4].clone()
    want_c, want_a = lloyd_reference(x, init, 6)
    with pyaudiok.use_backend(backend):
        got = kmeans(x.to(device), 4, n_iters=6, init=init.to(device))
    assert got.centroids.dtype == dtype
    assert torch.equal(got.assignments.cpu(), want_a)
    assert rel_error(got.centroids, want_c) <= TOLERANCE[dtype]


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_points_or_centres_are_rejected(backend, bad):
    """A NaN or inf point has no clustering (the reference puts every point of its item in one NaN
    cluster; k-means++ cannot draw from NaN weights): every backend raises, naming the argument."""
    device = require_backend(LLOYD, backend) if backend != "reference" else torch.device("cpu")
    x = clustered(2, 20, 3, 3, device)
    init = x[:, :3].clone()
    bad_x = x.clone()
    bad_x[1, 7, 2] = bad
    bad_init = init.clone()
    bad_init[0, 1, 0] = bad
    with pyaudiok.use_backend(backend):
        for start in ("kmeans++", "random", init):
            with pytest.raises(ValueError, match=r"x must be finite \(no NaN or inf\); got 1 NaN or inf of 120"):
                kmeans(bad_x, 3, n_iters=2, init=start)
        with pytest.raises(ValueError, match=r"init must be finite"):
            kmeans(x, 3, n_iters=2, init=bad_init)


# Layouts of the points and of given centres (the view taken inside the call): name -> (stored, view).
VIEWS = {"contiguous": (lambda t: t, lambda t: t),
         "channels-first": (lambda t: t.transpose(1, 2).contiguous(), lambda t: t.transpose(1, 2)),
         "every other point": (lambda t: t.repeat_interleave(2, dim=1), lambda t: t[:, ::2])}


def draw_layout(data, t, label):
    """t in a drawn layout: stored as VIEWS says, and viewed back."""
    store, view = VIEWS[data.draw(st.sampled_from(sorted(VIEWS)), label=label)]
    return view(store(t))


# Float32 distances err by up to tens of roundings of their scale (sums over d channels, centroids over P
# points): a nearer gap than this many roundings is a tie that no float32 computation orders.
TIE_ROUNDINGS = 64


def unambiguous(x, trajectory, dtype):
    """Whether every point's nearest centroid, at every step of the float64 trajectory, leads the
    second nearest by more than TIE_ROUNDINGS roundings (in `dtype`) of the distances' scale: one
    flipped point changes all that follows."""
    if trajectory[0].shape[1] < 2:
        return True
    for c in trajectory:
        nearest = (x[:, :, None] - c[:, None]).square().sum(-1).topk(2, largest=False).values
        scale = x.square().sum(-1).max() + c.square().sum(-1).max()
        if (nearest[..., 1] - nearest[..., 0]).min() <= TIE_ROUNDINGS * torch.finfo(dtype).eps * scale:
            return False
    return True


def check_generated_case(data, backend, max_batch, max_points, max_dim, max_iters):
    """A drawn case against the float64 reference from the same initial centres: B, P, d from 1 up,
    k anywhere in [1, P], clusters that k may or may not match, 0 or more iterations, given centres
    (anywhere, so some clusters may stay empty) or k-means++ or random ones, float32 or float64,
    points and centres maybe in another layout. Assignments must be identical."""
    device = require_backend(LLOYD, backend)
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    torch.manual_seed(seed)
    B, P = data.draw(st.integers(1, max_batch), label="B"), data.draw(st.integers(1, max_points), label="P")
    d = data.draw(st.integers(1, max_dim), label="d")
    k = data.draw(st.integers(1, P) | st.sampled_from((1, P)), label="k")
    n_iters = data.draw(st.integers(0, max_iters), label="n_iters")
    dtypes = [t for t in (torch.float32, torch.float64) if LLOYD.impls[backend].why_not(device, t) is None]
    dtype = data.draw(st.sampled_from(dtypes), label="dtype")
    clusters = data.draw(st.integers(1, min(P, 8)), label="clusters")
    spread = data.draw(st.sampled_from((0.05, 0.3, 1.0)), label="spread")
    x = draw_layout(data, clustered(B, P, d, clusters, device, dtype, spread, seed), "x layout")
    init = data.draw(st.sampled_from(("given", "kmeans++", "random")), label="init")
    if init == "given":
        # Anywhere, out to beyond the clusters: some centres find no points.
        init = draw_layout(data, (torch.randn(B, k, d, dtype=torch.float64) * 6).to(device, dtype), "init layout")
    # The initial centres the call draws from its generator: the same call with no iteration.
    with pyaudiok.use_backend("reference"):
        start = kmeans(x, k, n_iters=0, init=init, generator=torch.Generator(device).manual_seed(seed)).centroids
    x64, trajectory = x.double().cpu(), [start.double().cpu()]
    for _ in range(n_iters):
        trajectory.append(lloyd_reference(x64, trajectory[-1], 1)[0])
    assume(unambiguous(x64, trajectory, dtype))
    with pyaudiok.use_backend(backend):
        got = kmeans(x, k, n_iters=n_iters, init=init, generator=torch.Generator(device).manual_seed(seed))
    want_c, want_a = lloyd_reference(x64, trajectory[0], n_iters)
    assert got.centroids.dtype == dtype and got.centroids.shape == (B, k, d)
    assert torch.equal(got.assignments.cpu(), want_a)
    assert rel_error(got.centroids, want_c) <= TOLERANCE[dtype]


test_generated_cases_match_the_reference, test_generated_tiny_cases_on_triton = generated_case_tests(
    check_generated_case, BACKENDS, full=dict(max_batch=3, max_points=150, max_dim=20, max_iters=12),
    tiny=dict(max_batch=2, max_points=80, max_dim=4, max_iters=3),  # up to 2 tiles of points
    full_examples=80)  # fewer missed a wrong iteration count and zeroed empty clusters


def test_kmeans_plus_plus_recovers_separated_clusters():
    x = clustered(4, 120, 3, 4, spread=0.05, seed=3)
    gen = torch.Generator().manual_seed(0)
    centres = kmeans_plus_plus(x, 4, gen)
    # Every initial centre is a data point, and (clusters far apart) each lies in another cluster.
    assert all(any(torch.equal(c, p) for p in x[b]) for b in range(4) for c in centres[b])
    result = kmeans(x, 4, n_iters=10, generator=torch.Generator().manual_seed(0))
    for b in range(4):
        # Points of one true cluster share one label: pairwise distances < 1 within clusters.
        same = torch.cdist(x[b], x[b]) < 1
        assert torch.equal(same, result.assignments[b][:, None] == result.assignments[b][None, :])
    again = kmeans(x, 4, n_iters=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.centroids, result.centroids)  # reproducible from the generator


@pytest.mark.parametrize("init", ("kmeans++", "random"))
def test_initial_centres_of_an_item_do_not_depend_on_its_batch(init):
    # Every item draws with the same variates: alone, first or last in a batch, the same centres.
    torch.manual_seed(0)
    x = torch.randn(5, 40, 3)
    def centres(points):
        return kmeans(points, 4, n_iters=0, init=init, generator=torch.Generator().manual_seed(7)).centroids
    alone = centres(x[2:3])
    assert torch.equal(centres(x)[2:3], alone) and torch.equal(centres(x.flip(0))[2:3], alone)


def test_kmeans_plus_plus_with_overflowing_distances_picks_distinct_points():
    # Squared distances beyond float32's range (points ~1e20 apart) count as the largest: still distinct picks.
    x = torch.tensor([[[0.0], [1e20], [2e20], [-1e20]]])
    for seed in range(20):
        centres = kmeans(x, 3, n_iters=0, generator=torch.Generator().manual_seed(seed)).centroids
        assert len(set(centres.flatten().tolist())) == 3


def test_empty_cluster_keeps_its_centroid_and_edge_cases():
    x = clustered(1, 30, 2, 2)
    far = torch.full((1, 1, 2), 1e3)
    init = torch.cat([x[:, :2], far], 1)
    for backend in ("reference", "cpu"):
        with pyaudiok.use_backend(backend):
            result = kmeans(x, 3, n_iters=3, init=init)
        assert torch.equal(result.centroids[0, 2], far[0, 0]) and not (result.assignments == 2).any()
    empty = kmeans(torch.zeros(0, 5, 3), 2)
    assert empty.centroids.shape == (0, 2, 3) and empty.assignments.shape == (0, 5)
    one = kmeans(torch.ones(2, 4, 3), 1, n_iters=2)
    assert torch.equal(one.centroids, torch.ones(2, 1, 3)) and not one.assignments.any()


def test_triton_op_passes_opcheck():
    device = require_backend(LLOYD, "triton")
    x = clustered(2, 20, 3, 3, device)
    _lloyd_triton(x, x[:, :3].clone(), 1)  # registers the op
    opcheck(torch.ops.pyaudiok.kmeans_lloyd_triton, (x, x[:, :3].clone(), 2),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs():
    x = torch.randn(2, 10, 3)
    with pytest.raises(ValueError, match=r"x must have shape \[B, P, d\]"):
        kmeans(x[0], 2)
    with pytest.raises(TypeError, match="x must have dtype"):
        kmeans(x.long(), 2)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\]"):
        kmeans(x, 11)
    with pytest.raises(ValueError, match=r"init must have shape \[B, k, d\] = \[2, 2, 3\]"):
        kmeans(x, 2, init=torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match="init must be 'kmeans\\+\\+', 'random' or a tensor"):
        kmeans(x, 2, init="forgy")
    with pytest.raises(ValueError, match="P >= 1"):
        kmeans(torch.zeros(2, 0, 3), 1)


def test_cpu_kernel_passes_opcheck():
    require_backend(LLOYD, "cpu")
    if not pyaudiok.ops._library.extension_loaded():
        pytest.skip("the C++ extension is not built")
    x = clustered(2, 21, 5, 3)
    opcheck(pyaudiok.ops._library.cpp_op("kmeans_lloyd"), (x, x[:, :3].clone(), 3),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_cpu_backend_in_float64_and_empty_batch():
    require_backend(LLOYD, "cpu", torch.float64)
    x = clustered(2, 45, 7, 4, dtype=torch.float64)
    with pyaudiok.use_backend("cpu"):
        got = kmeans(x, 4, n_iters=6, init=x[:, :4].clone())
        empty = kmeans(torch.randn(0, 10, 3), 2, n_iters=3, init=torch.randn(0, 2, 3))
    want_c, want_a = lloyd_reference(x, x[:, :4].clone(), 6)
    assert torch.equal(got.assignments, want_a) and rel_error(got.centroids, want_c) <= TOLERANCE[torch.float64]
    assert empty.centroids.shape == (0, 2, 3) and empty.assignments.shape == (0, 10)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_results_carry_no_gradient(backend):
    """Points (and given centres) that require a gradient give results that take none on every
    backend: the fused ones register no autograd, and a gradient through the initial centres
    alone would be silently wrong."""
    device = require_backend(LLOYD, backend)
    x = clustered(2, 20, 3, 3, device).requires_grad_()
    init = x.detach()[:, :3].clone().requires_grad_()
    with pyaudiok.use_backend(backend):
        for start in ("kmeans++", init):
            result = kmeans(x, 3, n_iters=3, init=start)
            assert not result.centroids.requires_grad


def test_triton_steps_aside_under_deterministic_algorithms():
    """Its atomically added sums are not deterministic: with torch.use_deterministic_algorithms(True)
    the automatic choice on a GPU skips it, and forcing it says why."""
    impl = LLOYD.impls["triton"]
    x, centroids = torch.randn(2, 50, 8), torch.randn(2, 4, 8)
    assert impl.constraint(x, centroids, 3) is None
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert "deterministic" in impl.constraint(x, centroids, 3)
        if torch.cuda.is_available():
            args = (x.cuda(), centroids.cuda(), 3)
            assert LLOYD.select(torch.device("cuda"), torch.float32, args).backend != "triton"
    finally:
        torch.use_deterministic_algorithms(previous)


def test_kmeans_plus_plus_raises_no_warning():
    # torch warns once per process about a strided searchsorted input: a fresh process sees it.
    import subprocess
    import sys
    code = ("import torch, warnings; warnings.simplefilter('error'); from pyaudiok.ops import kmeans; "
            "kmeans(torch.randn(2, 30, 3), 3, generator=torch.Generator().manual_seed(0))")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
