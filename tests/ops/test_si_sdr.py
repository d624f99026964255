"""si_sdr_matrix, pit_si_sdr and neg_si_sdr_loss: every backend against the reference (values and
gradients), hand-computed cases, the assignment search, bad inputs."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import neg_si_sdr_loss, pit_si_sdr, si_sdr_matrix
from pyaudiok.ops.si_sdr import EXHAUSTIVE_MAX_SOURCES, MATRIX, _triton_matrix_op, si_sdr_matrix_reference

from ..harness import compare_with_reference, opcheck, require_backend, threads as threads_of

BACKENDS = ("cpu", "triton")  # the fused backends si_sdr registers (it has no CUDA C++ one)


def mixtures(B, N, M, T, device="cpu", dtype=torch.float32, dc=0.0):
    """References, and estimates that each resemble one reference (so SI-SDR spans a useful range),
    a distinct one where N <= M; noise alone where there is no reference (M = 0)."""
    refs = torch.randn(B, M, T, dtype=torch.float64)
    resembled = refs[:, torch.randperm(max(N, M))[:N] % M] if M else 0.0
    mix = resembled + 0.3 * torch.randn(B, N, T, dtype=torch.float64)
    return (mix + dc).to(device, dtype), (refs - dc).to(device, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
# (1, 2, 3, 5000): several T-chunks in the Triton kernel, the last one partial; (2, 16, 17, 300): its tl.dot route.
@pytest.mark.parametrize("B,N,M,T", [(2, 2, 2, 300), (3, 1, 3, 257), (1, 5, 6, 1000), (0, 2, 2, 50), (1, 2, 3, 5000),
                                     (2, 16, 17, 300)])
@pytest.mark.parametrize("zero_mean", [True, False])
def test_matrix_and_gradients_match_reference(backend, B, N, M, T, zero_mean):
    device = require_backend(MATRIX, backend)
    e, r = mixtures(B, N, M, T, device, dc=0.5)
    e.requires_grad_(True)
    r.requires_grad_(True)
    compare_with_reference(lambda e, r: si_sdr_matrix(e, r, zero_mean=zero_mean), (e, r), backend, scale=5)


def test_triton_merges_many_chunks(monkeypatch):
    """Tiny chunks, and fewer combine lanes than chunks: the float64 merge loops over chunk blocks."""
    device = require_backend(MATRIX, "triton")
    from pyaudiok.kernels import si_sdr as kernel
    monkeypatch.setattr(kernel, "TARGET_PROGRAMS", 10**6)
    monkeypatch.setattr(kernel, "COMBINE_TILE", 16)
    block_s, _, _, chunks = kernel._launch_config(1, 3, 4, 2000)
    assert chunks > kernel.COMBINE_TILE // block_s
    for zero_mean in (True, False):
        e, r = mixtures(1, 3, 4, 2000, device, dc=3.0)
        compare_with_reference(lambda e, r: si_sdr_matrix(e, r, zero_mean=zero_mean),
                               (e.requires_grad_(True), r.requires_grad_(True)), "triton", scale=5)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_cpu_long_items_split_over_threads(count):
    """Fewer items than threads: the C++ kernel sums time chunks of one item on several threads and
    adds them; a DC offset 100× the signal, which the near-mean shift plus the sums must cancel
    exactly; a last block shorter than the unrolled step."""
    require_backend(MATRIX, "cpu")
    e, r = mixtures(1, 2, 3, 3 * 8192 + 5, dc=100.0)
    expected = si_sdr_matrix_reference(e.double(), r.double())
    with threads_of(count), pyaudiok.use_backend("cpu"):
        got = si_sdr_matrix(e.double(), r.double())
        got32 = si_sdr_matrix(e, r)
    assert (got - expected).abs().max() < 1e-9
    assert (got32.double() - expected).abs().max() < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    """Values and gradients of both inputs from strided views (the harness's leaf copies keep them)."""
    device = require_backend(MATRIX, backend)
    e, r = mixtures(2, 3, 3, 400, device)
    e_t = e.transpose(1, 2).contiguous().transpose(1, 2)   # same values, strides [.., 1, N]
    r_view = torch.cat([r, r], dim=-1)[..., ::2]           # every other sample: a strided view
    assert not e_t.is_contiguous() and not r_view.is_contiguous()
    inputs = (e_t.requires_grad_(True), r_view.requires_grad_(True))
    compare_with_reference(lambda e, r: si_sdr_matrix(e, r), inputs, backend, scale=5)
    compare_with_reference(lambda e, r: pit_si_sdr(e, r), inputs, backend, scale=5, exact=(1,))


def test_hand_computed_values():
    t = torch.linspace(0, 1, 1000, dtype=torch.float64)
    r = torch.sin(2 * math.pi * 5 * t)
    r = r - r.mean()
    noise = torch.cos(2 * math.pi * 50 * t)
    noise = noise - noise.mean()
    noise = noise - (noise @ r) / (r @ r) * r  # zero-mean and orthogonal to r
    for backend in ("reference", "cpu"):
        with pyaudiok.use_backend(backend):
            # e = 3 r + n with ‖n‖² = ‖3r‖² / 10 -> exactly 10 dB, whatever the scale of e.
            n = noise * (3 * r).norm() / noise.norm() / math.sqrt(10)
            value = si_sdr_matrix((3 * r + n)[None, None], r[None, None])
            assert value.item() == pytest.approx(10.0, abs=1e-6)
            # A DC offset on either side changes nothing with zero_mean.
            shifted = si_sdr_matrix((3 * r + n + 7)[None, None], (r - 2)[None, None])
            assert shifted.item() == pytest.approx(10.0, abs=1e-6)
            # A silent reference: finite and very negative.
            silent = si_sdr_matrix(r[None, None], torch.zeros(1, 1, 1000, dtype=torch.float64))
            assert torch.isfinite(silent).all() and silent.item() < -70


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_pit_finds_the_best_assignment_exhaustively(backend):
    device = require_backend(MATRIX, backend)
    e, r = mixtures(4, 3, 4, 500, device)
    with pyaudiok.use_backend(backend):
        result = pit_si_sdr(e, r)
    matrix = si_sdr_matrix_reference(e.double(), r.double()).cpu()
    for b in range(4):
        best = max(itertools.permutations(range(4), 3), key=lambda p: sum(matrix[b, i, p[i]] for i in range(3)))
        assert result.permutation[b].tolist() == list(best)
        assert result.si_sdr[b].item() == pytest.approx(matrix[b, range(3), list(best)].mean().item(), abs=1e-4)


@pytest.mark.parametrize("N,M", [(1, 1), (2, 3), (3, 3), (4, 7), (8, 8)])
def test_cpu_assignment_search_matches_brute_force(N, M):
    """The C++ search on CPU scores against every assignment scored in float64: the best total, and
    the first assignment in itertools' order among equal totals (integer scores make ties)."""
    if not pyaudiok.ops._library.extension_loaded():
        pytest.skip("needs the C++ extension")
    from pyaudiok.ops.si_sdr import _best_assignment
    scores = torch.cat([torch.randn(6, N, M, dtype=torch.float64), torch.randint(0, 3, (6, N, M)).double()])
    candidates = torch.tensor(list(itertools.permutations(range(M), N))).reshape(-1, N)
    for dtype in (torch.float64, torch.float32, torch.float16):
        rounded = scores.to(dtype)
        totals = rounded.double()[:, torch.arange(N), candidates].sum(-1)  # [B, P]
        expected = candidates[totals.argmax(-1)]  # argmax: the first among equal maxima
        assert torch.equal(_best_assignment(rounded), expected)
    assert _best_assignment(scores[:0]).shape == (0, N)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_evaluation_route_equals_the_differentiable_route(dtype):
    """Without gradients, PIT on CPU runs as one C++ call; with them, as the composite of the matrix
    op, the assignment and a gather: the same values, assignment and matrix."""
    require_backend(MATRIX, "cpu")
    e, r = mixtures(5, 3, 4, 999, dtype=dtype, dc=0.2)
    with pyaudiok.use_backend("cpu"):
        fast = pit_si_sdr(e, r)
        slow = pit_si_sdr(e.clone().requires_grad_(True), r)
    assert fast.si_sdr.grad_fn is None and slow.si_sdr.grad_fn is not None
    assert torch.equal(fast.permutation, slow.permutation)
    assert torch.equal(fast.matrix, slow.matrix.detach())
    assert torch.equal(fast.si_sdr, slow.si_sdr.detach())


@pytest.mark.parametrize("grad", [False, True])
def test_torch_compile_traces_pit_on_cpu(grad):
    """Both CPU routes of pit_si_sdr (one C++ call without gradients, the composite with them)
    trace under torch.compile and give the eager results."""
    require_backend(MATRIX, "cpu")
    e, r = mixtures(3, 2, 3, 500)
    e.requires_grad_(grad)

    def f(e, r):
        out = pit_si_sdr(e, r)
        return out.si_sdr * 2, out.permutation, out.matrix

    compiled = torch.compile(f, backend="aot_eager")
    with pyaudiok.use_backend("cpu"):
        got, want = compiled(e, r), f(e, r)
    for g, w in zip(got, want):
        assert torch.allclose(g.detach().double(), w.detach().double(), rtol=1e-6, atol=1e-6)


def test_pit_above_the_exhaustive_limit_uses_hungarian():
    M = 10
    r = torch.randn(2, M, 400, dtype=torch.float64)
    order = torch.stack([torch.randperm(M) for _ in range(2)])
    e = torch.stack([r[b, order[b]] for b in range(2)]) + 0.1 * torch.randn(2, M, 400, dtype=torch.float64)
    result = pit_si_sdr(e, r)
    assert torch.equal(result.permutation, order)


def test_loss_clips_and_backpropagates():
    e, r = mixtures(3, 2, 2, 300)
    e.requires_grad_(True)
    loss = neg_si_sdr_loss(e, r, clip_db=None)
    loss.backward()
    assert loss.item() == pytest.approx(-pit_si_sdr(e, r).si_sdr.mean().item(), rel=1e-5)
    assert torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0
    perfect = neg_si_sdr_loss(r.clone(), r, clip_db=30.0)
    assert perfect.item() == pytest.approx(-30.0)


@pytest.mark.parametrize("backend", ("cpu", "triton"))
def test_matrix_op_passes_opcheck(backend):
    device = require_backend(MATRIX, backend)
    e, r = mixtures(2, 2, 3, 100, device)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    e, r = e.requires_grad_(True), r.requires_grad_(True)
    if backend == "cpu":
        op = pyaudiok.ops._library.cpp_op("si_sdr_matrix_cpu")
        tests += ("test_aot_dispatch_dynamic",)
    else:
        op = _triton_matrix_op()
    opcheck(op, (e, r, True, 1e-8), test_utils=tests)


def test_pit_cpu_ops_pass_opcheck():
    """The C++ assignment search and the one-call evaluation route: schema and fake tensors (they
    carry no gradient: the differentiable route is the matrix op's)."""
    if not pyaudiok.ops._library.extension_loaded():
        pytest.skip("needs the C++ extension")
    e, r = mixtures(2, 2, 3, 100)
    tests = ("test_schema", "test_faketensor")
    opcheck(pyaudiok.ops._library.cpp_op("pit_assign_cpu"), (torch.randn(3, 2, 4),), test_utils=tests)
    opcheck(pyaudiok.ops._library.cpp_op("pit_si_sdr_cpu"), (e, r, True, 1e-8), test_utils=tests)
    with pytest.raises(RuntimeError, match="N <= M <= 8"):
        pyaudiok.ops._library.cpp_op("pit_assign_cpu")(torch.randn(1, 2, 9))
    with pytest.raises(RuntimeError, match="N <= M <= 8"):  # refused before any work
        pyaudiok.ops._library.cpp_op("pit_si_sdr_cpu")(*mixtures(1, 2, 9, 100), True, 1e-8)


@pytest.mark.parametrize("backend", ("cpu", "triton"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_backends_in_other_dtypes(backend, dtype):
    """float64 runs the C++ kernel in double (reference-exact); half types are read as float32."""
    device = require_backend(MATRIX, backend, dtype)
    e, r = mixtures(2, 3, 4, 777, device, dtype=dtype, dc=0.5)
    compare_with_reference(lambda e, r: si_sdr_matrix(e, r), (e.requires_grad_(True), r.requires_grad_(True)), backend,
                           scale=5)


def test_bad_inputs():
    e, r = torch.randn(2, 2, 100), torch.randn(2, 3, 100)
    with pytest.raises(ValueError, match=r"estimates must have shape \[B, N, T\]"):
        si_sdr_matrix(e[0], r)
    with pytest.raises(ValueError, match="expected 100 to match estimates' length T"):
        si_sdr_matrix(e, r[..., :99])
    with pytest.raises(ValueError, match="batch size"):
        si_sdr_matrix(e, r[:1])
    with pytest.raises(TypeError, match="references must have the dtype of estimates"):
        si_sdr_matrix(e, r.double())
    with pytest.raises(TypeError, match="estimates must have dtype"):
        si_sdr_matrix(e.long(), r)
    with pytest.raises(ValueError, match="eps"):
        si_sdr_matrix(e, r, eps=0)
    with pytest.raises(ValueError, match="T >= 1"):
        si_sdr_matrix(e[..., :0], r[..., :0])
    with pytest.raises(ValueError, match="must not outnumber references: N = 3 > M = 2"):
        pit_si_sdr(r, e)
    for eps in (True, "1", None):
        with pytest.raises(TypeError, match="eps must be a positive float"):
            si_sdr_matrix(e, r, eps=eps)
    for eps in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            pit_si_sdr(e[:, :1], r, eps=eps)
    for op in (si_sdr_matrix, pit_si_sdr, neg_si_sdr_loss):
        for zero_mean in ("False", 0, None):  # bool("False") would be True
            with pytest.raises(TypeError, match="zero_mean must be a bool"):
                op(e[:, :1], r, zero_mean=zero_mean)
    for clip_db in ("30", float("nan"), True):
        with pytest.raises(ValueError, match="clip_db must be a number"):
            neg_si_sdr_loss(e, r, clip_db=clip_db)


def test_pit_above_the_exhaustive_limit_with_nan_estimates():
    """A diverged (NaN) estimate still gets an assignment above 8 sources, as it does below: scipy
    refuses NaN scores, so they rank lowest."""
    e, r = mixtures(2, 3, 10, 200, dtype=torch.float64)
    e[0, 1] = float("nan")
    result = pit_si_sdr(e, r)
    assert torch.isnan(result.si_sdr[0]) and torch.isfinite(result.si_sdr[1])
    assert torch.equal(result.permutation[1], pit_si_sdr(e[1:], r[1:]).permutation[0])
    assert len(set(result.permutation[0].tolist())) == 3


def _diverged_estimates(M: int):
    """Estimates resembling references 3, 0 and 2 of M, estimate 1 NaN (diverged)."""
    torch.manual_seed(0)
    r = torch.randn(1, M, 200, dtype=torch.float64)
    e = r[:, [3, 0, 2]] + 0.1 * torch.randn(1, 3, 200, dtype=torch.float64)
    e[0, 1] = float("nan")
    return e, r


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("grad", [False, True])
def test_pit_exhaustive_search_ranks_nan_estimates_lowest(backend, grad):
    """A NaN estimate makes every assignment's plain total NaN; its pairs rank lowest instead, so the
    healthy estimates decide, as on the Hungarian route (M > 8)."""
    device = require_backend(MATRIX, backend)
    e, r = _diverged_estimates(4)
    with pyaudiok.use_backend(backend):
        result = pit_si_sdr(e.float().to(device).requires_grad_(grad), r.float().to(device))
    hungarian = pit_si_sdr(*_diverged_estimates(EXHAUSTIVE_MAX_SOURCES + 2))
    assert result.permutation.tolist() == hungarian.permutation.tolist() == [[3, 0, 2]]


def _brute_force_with_classes(scores: torch.Tensor, N: int, M: int) -> torch.Tensor:
    """The best assignment per item, NaN and −inf ranking below every finite score and +inf above:
    the largest (summed classes, finite sum), the first in itertools' order among equals."""
    def key(item, p):
        pairs = [item[i, p[i]].item() for i in range(N)]
        classes = sum(0 if math.isfinite(v) else 1 if v == math.inf else -1 for v in pairs)
        return classes, sum(v for v in pairs if math.isfinite(v))
    candidates = list(itertools.permutations(range(M), N))
    return torch.tensor([max(candidates, key=lambda p: key(item, p)) for item in scores]).reshape(-1, N)


@pytest.mark.parametrize("route", ["cpu_search", "device_search"])
@pytest.mark.parametrize("N,M", [(1, 3), (3, 4), (4, 6)])
def test_assignment_search_with_non_finite_scores(route, N, M, monkeypatch):
    """The C++ search and the on-device one (taken off the CPU) agree with a brute force that ranks NaN
    and −inf lowest and +inf highest."""
    import pyaudiok.ops.si_sdr as module
    if route == "cpu_search" and not module.extension_loaded():
        pytest.skip("needs the C++ extension")
    if route == "device_search":
        monkeypatch.setattr(module, "extension_loaded", lambda: False)
    torch.manual_seed(N * M)
    scores = torch.randn(40, N, M, dtype=torch.float64)
    special = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
    where = torch.rand(scores.shape) < 0.25
    scores[where] = special[torch.randint(0, 3, (int(where.sum()),))]
    scores[0, 0] = math.nan  # a whole estimate diverged
    for dtype in (torch.float64, torch.float32):
        assert torch.equal(module._best_assignment(scores.to(dtype)), _brute_force_with_classes(scores, N, M))


# ----------------------------------------------------------------------------------------------
# Generated cases: (backend, the dtypes it runs). Triton in its interpreter (no GPU) runs the tiny ones
# of the last test only.

BOTH = (torch.float32, torch.float64)
GENERATED_BACKENDS = [pytest.param("cpu", BOTH, id="cpu"),
                      pytest.param("triton", (torch.float32,), id="triton", marks=pytest.mark.gpu)]


def _draw_signals(data, backend, N, M, max_length, dtypes):
    """Estimates [B, N, T] and references [B, M, T] for a drawn case, the op's drawn keyword arguments,
    and `view`, what the op is given of each input: the harness's leaf copies keep a dense layout
    (time-major strides) but not a strided view, which is therefore taken inside the op's call."""
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    B = data.draw(st.integers(1, 3), label="B")  # B = 0: a fixed case above (drawn, a third of the examples)
    dtype = data.draw(st.sampled_from(dtypes), label="dtype")
    # T <= 2 makes every pair proportional: ‖e − αr‖² is a rounding residue that eps decides, in any
    # dtype. (Short signals give many pairs above EXACT_ABOVE_DB, which the op recomputes.)
    T = data.draw(st.integers(3, max_length), label="T")
    layout = data.draw(st.sampled_from(["contiguous", "time-major", "strided"]), label="layout")
    kwargs = {"zero_mean": data.draw(st.booleans(), label="zero_mean"),
              "eps": data.draw(st.sampled_from([1e-8, 1e-3, 1.0]), label="eps")}
    device = require_backend(MATRIX, backend, dtype)
    step = 2 if layout == "strided" else 1  # every other sample of signals twice as long
    e, r = mixtures(B, N, M, step * T, device, dtype, dc=data.draw(st.sampled_from([0.0, 0.5, 3.0]), label="dc"))
    if layout == "time-major":
        e, r = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (e, r))
    return e, r, lambda x: x[..., ::step], kwargs


def _check_generated_matrix(backend, data, min_sources, max_sources, max_length, dtypes):
    # either side may outnumber the other, or be empty
    N, M = (data.draw(st.integers(min_sources, max_sources), label=name) for name in "NM")
    e, r, view, kwargs = _draw_signals(data, backend, N, M, max_length, dtypes)
    compare_with_reference(lambda e, r: si_sdr_matrix(view(e), view(r), **kwargs),
                           (e.requires_grad_(), r.requires_grad_()), backend, scale=5)


def _check_generated_pit(backend, data, min_sources, max_sources, max_length, dtypes):
    """PIT's value, assignment (exactly) and matrix, and their gradients when inputs require them
    (the CPU backend runs PIT as one C++ call when none does, as a composite otherwise)."""
    M = data.draw(st.integers(min_sources, max_sources), label="M")
    N = data.draw(st.integers(1, M), label="N")
    e, r, view, kwargs = _draw_signals(data, backend, N, M, max_length, dtypes)
    grads = data.draw(st.sampled_from([(False, False), (True, False), (True, True)]), label="grads")
    compare_with_reference(lambda e, r: pit_si_sdr(view(e), view(r), **kwargs),
                           (e.requires_grad_(grads[0]), r.requires_grad_(grads[1])), backend, scale=5)


@pytest.mark.parametrize("backend,dtypes", GENERATED_BACKENDS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_generated_matrix(backend, dtypes, data):
    _check_generated_matrix(backend, data, 0, 7, max_length=300, dtypes=dtypes)


@pytest.mark.parametrize("backend,dtypes", GENERATED_BACKENDS)
@settings(max_examples=20, deadline=None)
@given(hungarian=st.booleans(), data=st.data())
def test_generated_pit(backend, dtypes, hungarian, data):
    """Exhaustive search (M <= 8) and the Hungarian algorithm (M > 8) alike."""
    sources = (EXHAUSTIVE_MAX_SOURCES + 1, 10) if hungarian else (1, EXHAUSTIVE_MAX_SOURCES)
    _check_generated_pit(backend, data, *sources, max_length=300, dtypes=dtypes)


@settings(max_examples=3, deadline=None)
@given(pit=st.booleans(), data=st.data())
def test_generated_triton_tiny(pit, data):
    if pit:
        _check_generated_pit("triton", data, 1, 3, max_length=40, dtypes=(torch.float32,))
    else:
        _check_generated_matrix("triton", data, 1, 3, max_length=40, dtypes=(torch.float32,))


def _near_perfect(db: float, T: int = 1000):
    """References, and estimates each `db` dB from its own reference (the noise scaled to that
    ratio), beside one ordinary pair; float32."""
    r = torch.randn(2, 2, T, dtype=torch.float64)
    noise = torch.randn_like(r)
    e = r + noise * (10 ** (-db / 20) * r.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True))
    e[1, 1] = torch.randn(T, dtype=torch.float64)
    return e.float(), r.float()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("db", [45.0, 80.0])
def test_near_perfect_estimates_match_the_reference(backend, db):
    """Above EXACT_ABOVE_DB the fused statistics cancel (ee − 2α er + α² rr ≈ 0; an 80 dB pair came out
    at 73.6 dB on the C++ backend, 110 dB on Triton): those pairs are recomputed from the signals, so
    the matrix, PIT and their gradients match the float64 reference."""
    device = require_backend(MATRIX, backend)
    e, r = (x.to(device) for x in _near_perfect(db))
    out, ref = compare_with_reference(lambda e, r: si_sdr_matrix(e, r), (e.requires_grad_(), r.requires_grad_()),
                                      backend, scale=5)
    assert abs(out[0][0, 0, 0].item() - db) < 0.5 and abs(out[0][0, 0, 0].item() - ref[0][0, 0, 0].item()) < 1e-3
    compare_with_reference(lambda e, r: pit_si_sdr(e, r), (e.detach(), r.detach()), backend, scale=5, exact=(1,))


def test_clipped_loss_skips_the_recomputation(monkeypatch):
    """neg_si_sdr_loss clipping at or below EXACT_ABOVE_DB does not need the exact high values (nor the
    synchronisation finding them costs on a GPU); unclipped, it does."""
    import pyaudiok.ops.si_sdr as module
    calls = []
    recompute = module._exact_where_high
    monkeypatch.setattr(module, "_exact_where_high", lambda *args: calls.append(1) or recompute(*args))
    e, r = _near_perfect(80.0)
    neg_si_sdr_loss(e.requires_grad_(), r)
    assert not calls
    loss = neg_si_sdr_loss(e, r, clip_db=None)
    assert calls and abs(-loss.item() - pit_si_sdr(e.double(), r.double()).si_sdr.mean().item()) < 1e-3


def test_recomputation_ops_pass_opcheck():
    """The recomputation of high pairs is an op of its own (forward and backward), so torch.compile
    keeps it as one node; with and without pairs above EXACT_ABOVE_DB."""
    e, r = _near_perfect(80.0)
    for estimates in (e, torch.randn_like(e)):
        matrix = si_sdr_matrix(estimates, r).detach().requires_grad_()
        opcheck(torch.ops.pyaudiok.si_sdr_exact_high, (matrix, estimates.requires_grad_(), r, True, 1e-8))
