"""The distance log-sum-exp and NLL (Wavesplit's speaker loss over the table): every backend against
the reference, forward and the gradients to the vectors, the table and α."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import distance_logsumexp, distance_nll
from pyaudiok.ops.distance_logsumexp import OP

from ..harness import assert_close, compare_with_reference, forward_opcheck_tests, opcheck, require_backend

BACKENDS = ("cpu", "triton")


def _inputs(lead, S, d, device="cpu", dtype=torch.float32, scale=1.0, alpha=0.8, seed=0):
    gen = torch.Generator().manual_seed(sum(lead) * 31 + S * 7 + d + seed)
    vectors = (scale * torch.randn(*lead, d, generator=gen, dtype=torch.float64)).to(device, dtype).requires_grad_()
    table = (scale * torch.randn(S, d, generator=gen, dtype=torch.float64)).to(device, dtype).requires_grad_()
    alpha = torch.tensor(alpha, dtype=torch.float64).to(device, dtype).requires_grad_()
    return vectors, table, alpha


def _lse(vectors, table, alpha):
    return distance_logsumexp(vectors, table, alpha=alpha)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead,S,d", [((37,), 11, 20), ((3, 5, 2), 16, 32), ((130,), 70, 200), ((5,), 1, 3),
                                      ((64,), 65, 17), ((2, 9), 129, 64)])
def test_forward_and_gradients_match_reference(backend, lead, S, d):
    device = require_backend(OP, backend)
    compare_with_reference(_lse, _inputs(lead, S, d, device), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64(backend):
    device = require_backend(OP, backend, torch.float64)
    compare_with_reference(_lse, _inputs((23,), 9, 13, device, torch.float64), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nll_matches_log_softmax_of_distances(backend):
    """distance_nll against the plain formula, through every backend, with gradients."""
    device = require_backend(OP, backend)
    vectors, table, alpha = _inputs((4, 6, 2), 10, 8, device)
    targets = torch.randint(0, 10, (4, 6, 2, 3), generator=torch.Generator().manual_seed(2)).to(device)
    compare_with_reference(lambda v, t, a: distance_nll(v, t, targets, alpha=a), (vectors, table, alpha), backend)
    plain = -torch.log_softmax(-alpha.double() * torch.cdist(vectors.double(), table.double()).square(), -1)
    with pyaudiok.use_backend(backend):
        nll = distance_nll(vectors, table, targets, alpha=alpha)
    assert_close("nll", nll, plain.gather(-1, targets), torch.float32)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_shift_invariance_and_nearest_row(backend):
    """A far table row adds nothing; a vector on a row at large α has lse ≈ 0 (p = 1 there)."""
    device = require_backend(OP, backend)
    table = torch.eye(4, 8, device=device)
    vectors = table[:3].clone()
    with torch.no_grad(), pyaudiok.use_backend(backend):
        sharp = distance_logsumexp(vectors, table, alpha=50.0)
        far = distance_logsumexp(vectors, torch.cat([table, torch.full((1, 8), 30.0, device=device)]), alpha=1.0)
        near = distance_logsumexp(vectors, table, alpha=1.0)
    assert sharp.abs().max() < 1e-6
    assert_close("far row", far, near, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_number_alpha_and_large_distances(backend):
    """α as a Python number (no gradient to it), and distances whose exp underflows fp32."""
    device = require_backend(OP, backend)
    vectors, table, _ = _inputs((40,), 12, 16, device, scale=10.0)
    compare_with_reference(lambda v, t: distance_logsumexp(v, t, alpha=2.5), (vectors, table), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_empty(backend):
    device = require_backend(OP, backend)
    vectors, table, alpha = _inputs((30,), 12, 10, device)
    strided = vectors.detach().T.contiguous().T.requires_grad_()
    compare_with_reference(_lse, (strided, table.detach()[::2].requires_grad_(), alpha), backend)
    empty = torch.randn(0, 3, 10, device=device, requires_grad=True)
    with pyaudiok.use_backend(backend):
        out = distance_logsumexp(empty, table, alpha=alpha)
    out.sum().backward()
    assert out.shape == (0, 3) and empty.grad.shape == empty.shape
    assert torch.count_nonzero(table.grad) == 0 and torch.count_nonzero(alpha.grad) == 0


# Triton's interpreter computes bf16 tl.dot wrongly (garbage of ~1e10): bf16 Triton runs on GPUs only.
@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float16), ("cpu", torch.bfloat16), ("triton", torch.float16),
                                           pytest.param("triton", torch.bfloat16, marks=pytest.mark.gpu)])
def test_half_precision(backend, dtype):
    device = require_backend(OP, backend, dtype)
    compare_with_reference(_lse, _inputs((50,), 20, 24, device, dtype), backend)


@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float16), ("cpu", torch.bfloat16), ("triton", torch.float16),
                                           pytest.param("triton", torch.bfloat16, marks=pytest.mark.gpu)])
def test_half_precision_nll_of_well_classified_vectors(backend, dtype):
    """Vectors far from both rows but nearer their target: the NLL (~0.1) is small beside its two
    terms (~20), so the log-sum-exp must reach it unrounded to the half dtype."""
    device = require_backend(OP, backend, dtype)
    y = torch.linspace(5, 12, 16, dtype=torch.float64)
    vectors = torch.stack([torch.full_like(y, -10.0), y], 1)
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    targets = torch.zeros(16, 1, dtype=torch.long, device=device)
    compare_with_reference(lambda v, t: distance_nll(v, t, targets, alpha=0.1),
                           (vectors.to(device, dtype).requires_grad_(), table.to(device, dtype).requires_grad_()),
                           backend)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("S", [8, 20])  # probabilities kept (S <= d) and recomputed in the backward
def test_gradients_far_from_the_origin(backend, S):
    """Vectors and table around a common offset (embeddings that are not centred): the scores are
    ~α‖h‖², and Σ_s p_s (h − e_s) cancels to far less than h, so the gradients must not take the
    recomputed probabilities, rounded at that scale, to sum to exactly 1."""
    device = require_backend(OP, backend)
    vectors, table, alpha = (t.detach() for t in _inputs((40,), S, 16, device))
    vectors, table = vectors + 10, table + 10
    # Scores ~α‖h‖² ≈ 800 round to ~1e-4 in float32 in any method (the float32 reference's own error is
    # ~2e-5 here): scale 8 allows for that, while the flaw this guards against was off by 30 % or more.
    compare_with_reference(_lse, (vectors.requires_grad_(), table.requires_grad_(), alpha.requires_grad_()), backend,
                           scale=8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_ops_pass_opcheck(backend):
    device = require_backend(OP, backend)
    if backend == "triton":
        from pyaudiok.ops.distance_logsumexp import _triton_backward, _triton_forward
        forward, backward = _triton_forward(), _triton_backward()
    else:
        from pyaudiok.ops.distance_logsumexp import _cpu_backward, _cpu_forward
        forward, backward = _cpu_forward, _cpu_backward
    tests = forward_opcheck_tests(backend, device)
    vectors, table, alpha = _inputs((20,), 7, 9, device)
    for keep in ((False, True) if backend == "cpu" else (False,)):
        opcheck(forward, (vectors, table, alpha, keep), test_utils=tests)
        lse, m, probabilities = forward(vectors.detach(), table.detach(), alpha.detach(), keep)
        opcheck(backward, (torch.ones_like(lse), vectors.detach(), table.detach(), alpha.detach(), m, probabilities),
                test_utils=("test_schema", "test_faketensor"))


def test_compiles_without_graph_break():
    vectors, table, alpha = _inputs((16,), 5, 8)
    compiled = torch.compile(lambda v, t, a: distance_logsumexp(v, t, alpha=a).sum(), fullgraph=True, backend="eager")
    with pyaudiok.use_backend("cpu"):
        got = compiled(vectors, table, alpha)
    assert_close("compiled", got, distance_logsumexp(vectors, table, alpha=alpha).sum(), torch.float32)


def test_nll_compiles_forward_and_backward():
    """distance_nll through AOT autograd on the cpu backend: one graph, eager mode's loss and gradients."""
    vectors, table, alpha = _inputs((12,), 5, 8)
    targets = torch.randint(0, 5, (12, 2))

    def loss_and_grads(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (vectors, table, alpha)]
        with pyaudiok.use_backend("cpu"):
            loss = fn(*leaves)
        return (loss, *torch.autograd.grad(loss, leaves))
    step = lambda v, t, a: distance_nll(v, t, targets, alpha=a).sum()  # noqa: E731
    compiled = loss_and_grads(torch.compile(step, fullgraph=True, backend="aot_eager"))
    for name, got, want in zip(("loss", "d vectors", "d table", "d alpha"), compiled, loss_and_grads(step)):
        torch.testing.assert_close(got, want, msg=name)


@pytest.mark.parametrize("call,exc,words", [
    (lambda: distance_logsumexp(torch.randn(3, 4), torch.randn(5, 3), alpha=1.0), ValueError,
     "table must have shape [S, d] = [S >= 1, 4]"),
    (lambda: distance_logsumexp(torch.randn(3, 4), torch.randn(0, 4), alpha=1.0), ValueError,
     "table must have shape [S, d] = [S >= 1, 4]"),
    (lambda: distance_logsumexp(torch.randn(3, 4), torch.randn(5, 4, 1), alpha=1.0), ValueError,
     "table must have shape [S, d]"),
    (lambda: distance_logsumexp(torch.randn(3, 4), torch.randn(5, 4).double(), alpha=1.0), TypeError,
     "table must have the dtype of vectors"),
    (lambda: distance_logsumexp(torch.randint(0, 3, (3, 4)), torch.randn(5, 4), alpha=1.0), TypeError,
     "vectors must have dtype"),
    (lambda: distance_logsumexp(torch.tensor(1.0), torch.randn(5, 4), alpha=1.0), ValueError,
     "vectors must have shape [..., d]"),
    (lambda: distance_logsumexp(torch.randn(3, 0), torch.randn(5, 0), alpha=1.0), ValueError,
     "vectors must have shape [..., d] with d >= 1"),
    (lambda: distance_logsumexp(torch.randn(3, 4), torch.randn(5, 4), alpha=torch.ones(2)), TypeError,
     "alpha must be a number or a one-element float tensor"),
    (lambda: distance_logsumexp(torch.randn(3, 4), torch.randn(5, 4), alpha=float("inf")), TypeError,
     "alpha must be a finite number"),
    (lambda: distance_logsumexp(torch.randn(3, 4), torch.randn(5, 4), alpha="1"), TypeError,
     "alpha must be a finite number"),
    (lambda: distance_nll(torch.randn(3, 4), torch.randn(5, 4), torch.tensor([[0], [5], [1]]), alpha=1.0),
     ValueError, "targets must hold table rows in [0, 4]"),
    (lambda: distance_nll(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(2, 1, dtype=torch.long), alpha=1.0),
     ValueError, "targets must have shape [..., J] with the leading dims of vectors [3]"),
    (lambda: distance_nll(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(3, 1), alpha=1.0),
     TypeError, "targets must have dtype int64"),
    (lambda: distance_nll(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(3, 1, dtype=torch.long, device="meta"),
                          alpha=1.0), ValueError, "targets must be on the device of vectors"),
    (lambda: distance_logsumexp(torch.randn(3, 4), torch.randn(5, 4), alpha=torch.ones(1, device="meta")), ValueError,
     "alpha"),
])
def test_bad_input_raises_named_error(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)


def test_autocast_computes_in_float32():
    """Under autocast, half vectors against a float32 table (a model's usual mix) run in float32."""
    vectors, table = torch.randn(10, 8).bfloat16(), torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = distance_logsumexp(vectors, table, alpha=1.5)
    want = distance_logsumexp(vectors.float(), table, alpha=1.5)
    assert out.dtype == torch.float32
    assert_close("autocast", out, want, torch.float32)


# ----------------------------------------------------------------------------------------------
# Generated cases: (backend, the dtypes it runs). Triton in its interpreter (no GPU) runs the tiny ones
# of the last test only.

GENERATED_BACKENDS = [pytest.param("cpu", (torch.float32, torch.float64), id="cpu"),
                      pytest.param("triton", (torch.float32,), id="triton", marks=pytest.mark.gpu)]


def _check_generated(backend, data, min_size, max_size, dtypes):
    """One drawn case against the reference, values and the gradients to the vectors, the table and a
    tensor α: 0 to 3 leading dims (empty ones too), S below and above d (the cpu backend keeps the
    probabilities for the backward when S <= d), α of either sign or 0, as a tensor or a number,
    log-sum-exp or NLL, vectors and table transposed in memory or strided views."""
    lead = tuple(data.draw(st.lists(st.integers(min_size, max_size), max_size=3), label="lead"))
    J = data.draw(st.integers(0, 3), label="J")  # 0: the log-sum-exp; else distance_nll at J targets
    S = data.draw(st.integers(2 if J else 1, 4 * max_size), label="S")  # one row: the NLL is identically 0
    d = data.draw(st.integers(1, 4 * max_size), label="d")
    dtype = data.draw(st.sampled_from(dtypes), label="dtype")
    alpha = data.draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-1.0, 4.0)), label="alpha")
    layout = data.draw(st.sampled_from(["contiguous", "transposed", "strided"]), label="layout")
    scale = data.draw(st.sampled_from([0.3, 1.0, 3.0]), label="scale")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    device = require_backend(OP, backend, dtype)
    step = 2 if layout == "strided" else 1  # every other coordinate of vectors and rows twice as long
    vectors, table, alpha_t = _inputs(lead, S, step * d, device, dtype, scale, alpha, seed)
    if layout == "transposed":
        vectors = vectors.detach().movedim(-1, 0).contiguous().movedim(0, -1).requires_grad_()
        table = table.detach().T.contiguous().T.requires_grad_()
    inputs = (vectors, table, alpha_t) if data.draw(st.booleans(), label="tensor alpha") else (vectors, table, alpha)
    targets = torch.randint(0, S, (*lead, J), generator=torch.Generator().manual_seed(seed)).to(device)
    if J:
        # A well-classified vector's NLL is a small difference of large terms (α‖h − e_t‖² and lse) that
        # no float32 computation resolves: the first target of each vector is its least likely row.
        h, e = vectors.detach().double()[..., ::step], table.detach().double()[:, ::step]
        targets[..., 0] = (alpha * (h[..., None, :] - e).square().sum(-1)).argmax(-1)

    def call(v, t, a):
        v, t = v[..., ::step], t[:, ::step]
        return distance_nll(v, t, targets, alpha=a) if J else distance_logsumexp(v, t, alpha=a)
    compare_with_reference(call, inputs, backend)


@pytest.mark.parametrize("backend,dtypes", GENERATED_BACKENDS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_generated_cases(backend, dtypes, data):
    _check_generated(backend, data, 0, max_size=9, dtypes=dtypes)


@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_generated_triton_tiny(data):
    _check_generated("triton", data, 1, max_size=3, dtypes=(torch.float32,))
