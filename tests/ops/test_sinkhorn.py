"""Log-domain Sinkhorn and what is built on it: every backend against the reference (forward and
backward, unrolled and implicit), marginals within tol, implicit = unrolled at convergence,
zero-mass marginals, OT ranking/sorting, Gumbel-Sinkhorn, bad inputs, opcheck."""
from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import pyaudiok
from pyaudiok.ops import log_sinkhorn_normalize, sinkhorn, sinkhorn_rank, sinkhorn_sort
from pyaudiok.ops.sinkhorn import BACKWARDS, SINKHORN, _triton_backward, _triton_forward, sinkhorn_reference

from ..harness import (FUSED_BACKENDS, assert_close, compare_with_reference, forward_opcheck_tests, opcheck,
                       poisoned_outputs, require_backend)


def marginals(B, n, m, device, zero_row=False):
    a = torch.rand(B, n, device=device) + 0.2
    if zero_row:
        a[:, 0] = 0
    b = torch.rand(B, m, device=device) + 0.2
    return a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


def _state(**kw):
    def fn(cost, a=None, b=None):
        r = sinkhorn(cost, a, b, return_state=True, **kw)
        return r.plan, r.f, r.g, r.n_iters
    return fn


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("B,n,m,eps", [(2, 5, 9, 0.1), (3, 17, 4, 0.05), (1, 1, 3, 0.2), (2, 33, 20, 0.02)])
def test_unrolled_forward_and_gradients_match_reference(backend, B, n, m, eps):
    device = require_backend(SINKHORN, backend)
    cost = torch.rand(B, n, m, device=device).requires_grad_(True)
    a, b = marginals(B, n, m, device)
    compare_with_reference(_state(eps=eps, n_iters=12, tol=None), (cost, a.requires_grad_(True),
                                                                 b.requires_grad_(True)), backend, scale=5)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_one_unrolled_iteration_gradients_match_reference(backend):
    """n_iters = 1: a history of two slots, iteration 0 (zeros) and 1, as long as the scratch."""
    device = require_backend(SINKHORN, backend)
    cost = torch.rand(2, 5, 4, device=device).requires_grad_(True)
    compare_with_reference(_state(eps=0.3, n_iters=1, tol=None), (cost, *marginals(2, 5, 4, device)), backend)


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
@pytest.mark.parametrize("backward", ("unroll", "implicit"))
def test_zero_mass_entries_take_a_zero_gradient_not_nan(backend, backward):
    """Marginals with entries of exactly 0 (a class absent from a bag): the plan's gradient to the
    marginals is 0 there (log 0 = −inf would give 0 · ∞ = NaN) and finite everywhere else, and the
    cost's is finite; the unrolled gradients equal the reference's."""
    device = require_backend(SINKHORN, backend) if backend != "reference" else torch.device("cpu")
    a, b = marginals(2, 4, 5, device, zero_row=True)
    b = torch.cat([b[:, :4] * 0.7, b.new_zeros(2, 1)], 1)
    b = b / b.sum(-1, keepdim=True)
    cost = torch.rand(2, 4, 5, device=device)
    weights = torch.randn(2, 4, 5, device=device)

    def grads(which):
        leaves = [t.clone().requires_grad_() for t in (cost, a, b)]
        with pyaudiok.use_backend(which):
            plan = sinkhorn(*leaves, eps=0.2, n_iters=40, tol=None, backward=backward)
        return torch.autograd.grad((plan * weights).sum(), leaves)

    got = grads(backend)
    assert all(torch.isfinite(g).all() for g in got)
    assert (got[1][:, 0] == 0).all() and (got[2][:, 4] == 0).all()
    if backward == "unroll":
        for g, w in zip(got, grads("reference")):
            torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-4)


def regime_cost(regime, B, n, m, device):
    """Costs for the numerical regimes a fused kernel must treat alike (the CPU kernel switches
    between the scaling and the log domain by them)."""
    cost = torch.rand(B, n, m, device=device)
    if regime == "far_entries":  # C/ε ≫ 87: kernel entries underflow, whole rows nearly vanish
        cost[:, ::2] += 40 * torch.rand(B, (n + 1) // 2, m, device=device)
        cost[:, 1, :-1] = 60.0
    return cost


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("regime,eps", [("smooth", 1.0), ("sharp", 0.003), ("far_entries", 0.1)])
def test_numerical_regimes_match_reference(backend, regime, eps):
    """Smooth (scalings stay small), sharp (potentials move by ≫ ε per iteration) and far cost
    entries, over enough iterations to re-stabilise several times; one zero-mass column."""
    device = require_backend(SINKHORN, backend)
    B, n, m = 2, 19, 12
    cost = regime_cost(regime, B, n, m, device).requires_grad_(True)
    a, b = marginals(B, n, m, device)
    b[:, 3] = 0
    b = b / b.sum(-1, keepdim=True)
    def fn(cost, a, b):
        plan, f, g, _ = _state(eps=eps, n_iters=40, tol=None)(cost, a, b)
        return plan, f, g.clamp_min(-1e4)  # the zero-mass column's potential is −inf
    # At ε = 0.003 the costs are ~300 ε: float32 rounding of the potentials is amplified by C/ε in
    # the unrolled gradients (the Triton kernel's gradient to `a` spreads 1e-5…1.2e-4 over draws).
    compare_with_reference(fn, (cost, a.requires_grad_(True), b), backend, scale=20 if regime == "sharp" else 5)


@pytest.mark.parametrize("seed", [1, 2])
def test_cpu_backward_leaves_the_scaling_domain_when_scalings_overflow(seed):
    """At ε = 0.001 the reversed iterations' scalings e^{(f − f̂)/ε} leave their safe range within
    whole vectors of 8: the CPU backward must notice (and re-absorb or step in the log domain), or
    its gradients overflow to NaN. Far rows make the potentials move by ≫ ε per iteration."""
    require_backend(SINKHORN, "cpu")
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(2, 24, 17, generator=gen)
    cost[:, ::3] += 5 * torch.rand(2, 8, 17, generator=gen)
    compare_with_reference(lambda c: sinkhorn(c, eps=0.001, n_iters=60, tol=None), (cost.requires_grad_(True),),
                           "cpu")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_early_stop_and_implicit_backward_match_reference(backend):
    device = require_backend(SINKHORN, backend)
    cost = torch.rand(3, 8, 11, device=device).requires_grad_(True)
    a, b = marginals(3, 8, 11, device)
    # Stop counts must agree exactly: a loose tol keeps the fp32 error far from the threshold.
    out, ref = compare_with_reference(_state(eps=0.1, n_iters=200, tol=1e-3), (cost, a, b), backend, scale=5)
    assert (out[3] < 200).all() and (out[3] > 1).all()
    # Implicit gradients at the same iterate (a fixed count: fp32's error floor is near a tight tol).
    compare_with_reference(_state(eps=0.1, n_iters=30, tol=None, backward="implicit"),
                           (cost, a.requires_grad_(True), b.requires_grad_(True)), backend, scale=20)


ROUTED_BACKENDS = [pytest.param("cpu", None, id="cpu"), pytest.param("triton", "single", id="triton-single"),
                   pytest.param("triton", "split", id="triton-split"), pytest.param("cuda", None, id="cuda")]


def _on_backend(backend, route):
    """The backend's device and a context running `backend` (on the Triton forward's `route`)."""
    device = require_backend(SINKHORN, backend)
    if route is None:
        return device, pyaudiok.use_backend(backend)
    from pyaudiok.kernels import sinkhorn as kernels
    stack = contextlib.ExitStack()
    stack.enter_context(pyaudiok.use_backend(backend))
    stack.enter_context(kernels.forced_route(route))
    return device, stack


@pytest.mark.parametrize("backend,route", ROUTED_BACKENDS)
@pytest.mark.parametrize("value", (float("nan"), -float("inf"), float("inf")))
@pytest.mark.parametrize("tol", (1e-3, None))
def test_non_finite_cost_gives_the_reference_result(backend, route, value, tol):
    """A NaN or −inf cost entry makes the marginal error NaN at the second iteration, which stops the
    reference (its test is err > tol): the fused backends stop there too, with the reference's
    plan and potentials, NaN and ±inf in the same places (a +inf entry only forbids that transport).
    Without tol every backend runs on to n_iters."""
    device, on_backend = _on_backend(backend, route)
    cost = torch.rand(2, 3, 4, device=device)
    cost[0, 0, 1] = value
    with on_backend:
        out = sinkhorn(cost, eps=0.1, n_iters=40, tol=tol, return_state=True)
    with pyaudiok.use_backend("reference"):
        want = sinkhorn(cost.double().cpu(), eps=0.1, n_iters=40, tol=tol, return_state=True)
    assert torch.equal(out.n_iters.cpu(), want.n_iters), (out.n_iters, want.n_iters)
    if value != float("inf"):
        assert want.n_iters[0] == (1 if tol else 40) and want.plan[0].isnan().any()
    for name, got, ref in zip(("plan", "f", "g"), out, want):
        torch.testing.assert_close(got.double().cpu(), ref, atol=1e-5, rtol=1e-4, equal_nan=True, msg=name)


def _check_generated_problem(data, backend, batches, max_size, max_iters):
    """A drawn problem on `backend` against the reference, forward (plan, potentials, stop counts) and
    the gradients to the cost and the given marginals, by either backward: a rectangular cost
    (sometimes transposed in memory), marginals given (one, both) or uniform, ε from sharp to
    smooth, a fixed count of iterations or an early stop."""
    device = require_backend(SINKHORN, backend)
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    B = data.draw(st.integers(*batches), label="B")
    n, m = data.draw(st.tuples(st.integers(1, max_size), st.integers(1, max_size)), label="n, m")
    # ε ≥ 0.03 (C/ε ≤ 33): sharper, the fp32 rounding of the potentials, amplified by C/ε, outgrows the
    # marginals' gradients where their terms nearly cancel (sharp costs: test_numerical_regimes_match_reference).
    eps = 10 ** data.draw(st.floats(-1.5, 0.0), label="log10 eps")
    # Stop counts must agree exactly: a loose tol keeps the fp32 error far from the threshold.
    n_iters, tol = data.draw(st.one_of(st.tuples(st.integers(1, max_iters), st.none()),
                                       st.tuples(st.just(200), st.sampled_from([1e-2, 1e-3]))), label="n_iters, tol")
    cost = (torch.rand(B, m, n, device=device).transpose(1, 2) if data.draw(st.booleans(), label="transposed")
            else torch.rand(B, n, m, device=device))
    a, b = marginals(B, n, m, device)
    given_a, given_b = data.draw(st.tuples(st.booleans(), st.booleans()), label="a, b given")
    # A lone row's mass moves f and g by opposite amounts and leaves the plan (balanced to b) unchanged:
    # its gradient through the plan cancels to the rounding of the plan, C/ε ulps in float32.
    given_a = given_a and n > 1
    inputs = (cost.requires_grad_(True), a.requires_grad_(True) if given_a else None,
              b.requires_grad_(True) if given_b else None)
    for backward in BACKWARDS:
        state = _state(eps=eps, n_iters=n_iters, tol=tol, backward=backward)

        def fn(*inputs):
            plan, f, g, iters = state(*inputs)
            # One column: the f-update absorbs the cost and g is 0 up to rounding: its error taken against 1.
            return plan, f, g + 1.0 if m == 1 else g, iters
        compare_with_reference(fn, inputs, backend, scale=5)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_generated_problems_match_reference(data):
    _check_generated_problem(data, "cpu", batches=(0, 3), max_size=12, max_iters=30)


@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_generated_problems_match_reference_on_triton(data):
    # Three examples in the interpreter: none of them spent on an empty batch.
    _check_generated_problem(data, "triton", batches=(1, 2), max_size=6, max_iters=8)


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_implicit_backward_of_a_near_permutation_plan(backend):
    """At small ε the plan is (nearly) a permutation: its support splits into blocks, each with a
    gauge of its own, and the implicit system is singular to working precision. The gradients
    must still come out (not a singular-matrix error), and equal the unrolled ones."""
    device = require_backend(SINKHORN, backend) if backend != "reference" else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    cost = (1 - torch.eye(3) + 0.1 * torch.arange(3.0)[:, None]).expand(2, 3, 3).contiguous()
    random_cost = 5 * torch.rand(2, 9, 9, generator=gen)  # sharp: C/ε up to 800
    for c, eps in ((cost, 0.01), (random_cost, 0.006)):
        weight = torch.randn(c.shape, generator=gen).to(device)
        grads = []
        for mode in ("implicit", "unroll"):
            leaf = c.to(device).requires_grad_(True)
            with pyaudiok.use_backend(backend):
                plan = sinkhorn(leaf, eps=eps, n_iters=30, tol=None, backward=mode)
            grads.append(torch.autograd.grad((plan * weight).sum(), leaf)[0])
        assert torch.isfinite(grads[0]).all()
        if c is cost:  # converged within the 30 iterations
            torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=0)


def test_reference_gradcheck():
    cost = torch.rand(2, 4, 5, dtype=torch.float64, requires_grad=True)
    a, b = marginals(2, 4, 5, "cpu")
    la, lb = a.double().log().requires_grad_(True), b.double().log().requires_grad_(True)
    torch.autograd.gradcheck(lambda c, x, y: sinkhorn_reference(c, x, y, 0.3, 6, None)[:3], (cost, la, lb))


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_plan_marginals_within_tol(backend):
    device = require_backend(SINKHORN, backend) if backend != "reference" else torch.device("cpu")
    cost = torch.rand(4, 10, 7, device=device)
    a, b = marginals(4, 10, 7, device)
    tol = 1e-4
    with pyaudiok.use_backend(backend):
        r = sinkhorn(cost, a, b, eps=0.05, tol=tol, return_state=True)
    assert (r.n_iters < 1000).all()
    assert ((r.plan.sum(2) - a).abs().sum(-1) <= tol * 1.01).all()
    torch.testing.assert_close(r.plan.sum(1), b, atol=1e-6, rtol=1e-5)  # exact after the g-update


def test_implicit_and_unrolled_gradients_agree_at_convergence():
    cost = torch.rand(2, 6, 8, dtype=torch.float64, requires_grad=True)
    a, b = marginals(2, 6, 8, "cpu")
    a, b = a.double(), b.double()
    weight = torch.randn(2, 6, 8, dtype=torch.float64)
    grads = []
    for mode in ("unroll", "implicit"):
        with pyaudiok.use_backend("reference"):
            plan = sinkhorn(cost, a, b, eps=0.2, n_iters=400, tol=1e-12, backward=mode)
        (g,) = torch.autograd.grad((plan * weight).sum(), cost)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_zero_mass_rows_and_empty_batch(backend):
    device = require_backend(SINKHORN, backend) if backend != "reference" else torch.device("cpu")
    cost = torch.rand(2, 5, 6, device=device, requires_grad=True)
    a, b = marginals(2, 5, 6, device, zero_row=True)
    with pyaudiok.use_backend(backend), poisoned_outputs():
        plan = sinkhorn(cost, a, b, eps=0.1, n_iters=30, tol=None)
        plan.square().sum().backward()
        assert (plan[:, 0] == 0).all() and torch.isfinite(plan).all() and torch.isfinite(cost.grad).all()
        empty = sinkhorn(torch.rand(0, 3, 4, device=device), eps=0.1, n_iters=5)
        assert empty.shape == (0, 3, 4)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("backward", BACKWARDS)
def test_empty_batch_backward(backend, backward):
    device = require_backend(SINKHORN, backend)
    cost = torch.rand(0, 3, 4, device=device, requires_grad=True)
    a, b = (x.requires_grad_(True) for x in marginals(0, 3, 4, device))
    with pyaudiok.use_backend(backend), poisoned_outputs():
        r = sinkhorn(cost, a, b, eps=0.1, n_iters=5, backward=backward, return_state=True)
        (r.plan.sum() + r.f.sum() + r.g.sum()).backward()
    assert r.plan.shape == (0, 3, 4) and r.n_iters.shape == (0,)
    assert cost.grad.shape == (0, 3, 4) and a.grad.shape == (0, 3) and b.grad.shape == (0, 4)


def _strided_view(x: torch.Tensor) -> torch.Tensor:
    """x's values in a non-contiguous view (every other element of a larger tensor's last dim)."""
    return torch.stack([x, torch.full_like(x, float("nan"))], -1)[..., 0]


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("backward", BACKWARDS)
def test_strided_cost_and_marginals_match_reference(backend, backward):
    """A sliced view of a larger cost and non-contiguous marginals, forward and backward."""
    device = require_backend(SINKHORN, backend)
    B, n, m = 2, 5, 6
    cost = torch.rand(B, n + 2, 2 * m, device=device)[:, 1:-1, ::2]
    a, b = (_strided_view(x) for x in marginals(B, n, m, device))
    assert not any(x.is_contiguous() for x in (cost, a, b))
    compare_with_reference(_state(eps=0.2, n_iters=15, tol=None, backward=backward),
                           (cost.requires_grad_(True), a.requires_grad_(True), b.requires_grad_(True)), backend,
                           scale=5)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("backward", BACKWARDS)
def test_half_cost_gradients_match_reference(backend, dtype, backward):
    """A half cost (float32 marginals, as under autocast): plan, potentials and the gradients to the
    cost (in its dtype) and to the marginals against the float64 reference."""
    device = require_backend(SINKHORN, backend, dtype)
    cost = torch.rand(2, 5, 7, device=device).to(dtype).requires_grad_(True)
    a, b = marginals(2, 5, 7, device)
    out, _ = compare_with_reference(_state(eps=0.2, n_iters=10, tol=None, backward=backward),
                                    (cost, a.requires_grad_(True), b.requires_grad_(True)), backend, scale=5)
    assert out[0].dtype == dtype


def test_half_cost_on_cpu():
    require_backend(SINKHORN, "cpu", torch.float16)
    cost = torch.rand(2, 64, 64).half()
    with pyaudiok.use_backend("cpu"):
        plan = sinkhorn(cost, eps=0.01, n_iters=50)
    assert plan.dtype == torch.float16 and torch.isfinite(plan).all()


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_cost_with_balanced_marginals(backend, dtype):
    """A half cost (autocast) with float32 marginals that balance exactly, or half marginals
    normalised in their own dtype: the marginals are not rounded to the cost's dtype (which would
    unbalance them: a ValueError), and the plan is the float32 one, rounded."""
    device = require_backend(SINKHORN, backend, dtype) if backend != "reference" else torch.device("cpu")
    B, n, m = 2, 17, 30
    cost = torch.rand(B, n, m, device=device)
    a, b = marginals(B, n, m, device)
    with pyaudiok.use_backend(backend):
        plan = sinkhorn(cost.to(dtype), a, b, eps=0.1, n_iters=20, tol=None)
        half = [x.to(dtype) / x.to(dtype).sum(-1, keepdim=True) for x in (a, b)]
        assert sinkhorn(cost.to(dtype), *half, eps=0.1, n_iters=20, tol=None).dtype == dtype
    want = sinkhorn_reference(cost.to(dtype).double(), a.double().log(), b.double().log(), 0.1, 20, None)[0]
    assert plan.dtype == dtype
    assert_close("plan", plan, want, dtype)


def test_sinkhorn_sort_and_rank_of_one_score_with_m_anchors():
    """n = 1 (and empty batches) skip the transport; the shapes and gradients are still those of
    the general case: sort [B, m] (every anchor takes the score), rank 1 with a zero gradient."""
    scores = torch.randn(3, 1, requires_grad=True)
    sorted_ = sinkhorn_sort(scores, m=4)
    assert sorted_.shape == (3, 4) and torch.equal(sorted_.detach(), scores.detach().expand(3, 4))
    ranks = sinkhorn_rank(scores, m=4)
    (sorted_.sum() + ranks.sum()).backward()
    assert torch.equal(ranks, torch.ones(3, 1)) and torch.equal(scores.grad, torch.full((3, 1), 4.0))
    assert sinkhorn_sort(torch.randn(0, 5), m=3).shape == (0, 3)


def test_log_sinkhorn_normalize_keeps_empty_shapes():
    for shape in ((2, 0, 3), (2, 3, 0), (0, 3, 3), (2, 0, 0, 4)):
        x = torch.randn(shape, requires_grad=True)
        out = log_sinkhorn_normalize(x, n_iters=3)
        out.sum().backward()
        assert out.shape == shape and x.grad.shape == shape


# Hundreds of iterations are slow in the Triton interpreter: Triton's ranking is checked against the
# reference below, its convergence on a GPU.
def _slow_in_interpreter(backend):
    device = require_backend(SINKHORN, backend) if backend != "reference" else torch.device("cpu")
    if backend == "triton" and device.type == "cpu":
        pytest.skip("hundreds of iterations: too slow for the Triton interpreter")
    return device


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_sinkhorn_rank_and_sort_match_reference(backend):
    device = require_backend(SINKHORN, backend)
    scores = torch.randn(2, 7, device=device).requires_grad_(True)
    for fn in (sinkhorn_rank, sinkhorn_sort):
        compare_with_reference(lambda x: fn(x, eps=0.05, n_iters=8), (scores,), backend, scale=5)


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_sinkhorn_rank_and_sort(backend):
    device = _slow_in_interpreter(backend)
    scores = (torch.randperm(9, device=device).float() + torch.rand(9, device=device) * 0.1)[None].repeat(2, 1)
    scores[1] = -scores[1]
    hard = scores.argsort(-1).argsort(-1).float() + 1
    with pyaudiok.use_backend(backend):
        ranks = sinkhorn_rank(scores, eps=1e-3, n_iters=300)
        sorted_ = sinkhorn_sort(scores, eps=1e-3, n_iters=300)
        assert torch.equal(sinkhorn_rank(scores[:, :1]), torch.ones(2, 1, device=device))
    assert (ranks - hard).abs().max() < 0.25
    assert (sorted_ - scores.sort(-1).values).abs().max() < 0.25
    x = scores.clone().requires_grad_(True)
    with pyaudiok.use_backend(backend):
        sinkhorn_rank(x, eps=0.05, n_iters=20).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_log_sinkhorn_normalize_matches_reference_and_is_doubly_stochastic(backend):
    device = require_backend(SINKHORN, backend)
    logits = torch.randn(2, 3, 6, 6, device=device).requires_grad_(True)
    compare_with_reference(lambda x: log_sinkhorn_normalize(x, n_iters=10, tau=0.5), (logits,), backend, scale=5)
    _slow_in_interpreter(backend)

    def normalized(name):
        with pyaudiok.use_backend(name):
            return log_sinkhorn_normalize(logits.detach(), n_iters=200, tau=0.5, gumbel_noise=True,
                                          generator=torch.Generator().manual_seed(0)).exp()
    out, want = normalized(backend), normalized("reference")
    # Columns are normalised last, so they sum to 1 exactly; the rows only as far as 200 iterations
    # have converged on this draw (Gumbel noise at tau = 0.5 can leave ~1e-3): as far as the
    # reference has, then, and close to 1.
    torch.testing.assert_close(out.sum(-2), torch.ones(2, 3, 6, device=device), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.sum(-1), want.sum(-1).to(device), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3, 6, device=device), atol=1e-2, rtol=0)




@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("history", (True, False))
def test_registered_ops_pass_opcheck(backend, history):
    device = require_backend(SINKHORN, backend)
    tests = forward_opcheck_tests(backend, device)
    if backend == "triton":
        forward, backward = _triton_forward(), _triton_backward()
    else:
        forward = pyaudiok.ops._library.cpp_op("sinkhorn_forward")
        backward = pyaudiok.ops._library.cpp_op("sinkhorn_backward")
    cost = torch.rand(2, 5, 6, device=device, requires_grad=True)
    a, b = marginals(2, 5, 6, device)
    la, lb = a.log().requires_grad_(True), b.log().requires_grad_(True)
    opcheck(forward, (cost, la, lb, 0.1, 4, 0.0, history), test_utils=tests)
    if history:
        out = forward(cost.detach(), la.detach(), lb.detach(), 0.1, 4, 0.0, True)
        args = (torch.rand_like(out[0]), torch.rand_like(la), torch.rand_like(lb), cost.detach(), la.detach(),
                lb.detach(), out[0], out[3], out[4], out[5], 0.1)
        opcheck(backward, args, test_utils=tuple(t for t in tests if t == "test_schema"
                                                                or t == "test_faketensor"))


class _ForwardCalls(TorchDispatchMode):
    """Records the history length (slots per batch element) of every fused Sinkhorn forward run."""

    def __init__(self):
        super().__init__()
        self.slots: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "pyaudiok" and "sinkhorn_forward" in func.__name__:
            self.slots.append(out[4].shape[1])
        return out


HISTORY_USERS = [  # (call with n_iters = 4, input shape)
    pytest.param(lambda x: sinkhorn(x, eps=0.2, n_iters=4, tol=None), (2, 4, 5), id="sinkhorn"),
    pytest.param(lambda x: sinkhorn_rank(x, eps=0.2, n_iters=4), (2, 5), id="sinkhorn_rank"),
    pytest.param(lambda x: sinkhorn_sort(x, eps=0.2, n_iters=4), (2, 5), id="sinkhorn_sort"),
    pytest.param(lambda x: log_sinkhorn_normalize(x, n_iters=4), (2, 4, 4), id="log_sinkhorn_normalize"),
]


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("call,shape", HISTORY_USERS)
def test_history_only_kept_when_a_gradient_will_be_taken(backend, call, shape):
    """The unrolled backward's history (n_iters + 1 slots) is kept only in grad mode with an input
    requiring a gradient; under no_grad, or for inputs that take none, the forward keeps the two
    slots of its working storage. Where it is kept the gradients still match the reference."""
    device = require_backend(SINKHORN, backend)
    x = torch.rand(shape, device=device)

    def slots_of(fn, *args, **kwargs):
        with _ForwardCalls() as calls:
            fn(*args, **kwargs)
        return calls.slots

    def run(inp):
        with pyaudiok.use_backend(backend):
            return call(inp)

    with torch.no_grad():
        assert slots_of(run, x.clone().requires_grad_(True)) == [2]
    assert slots_of(run, x) == [2]
    assert slots_of(compare_with_reference, call, (x.requires_grad_(True),), backend, scale=5) == [5]


# ---------------------------------------------------------------------------------------------
# The Triton forward's split-row route (kernels/sinkhorn.py) against its single launch and the
# reference. In the interpreter a forced split runs 2-3 row blocks of 1-4-row tiles.

def _routes():
    """The Triton device and kernels module (skips where Triton cannot run)."""
    device = require_backend(SINKHORN, "triton")
    from pyaudiok.kernels import sinkhorn as kernels
    return device, kernels


def _on_route(kernels, route, *args):
    with kernels.forced_route(route), poisoned_outputs():
        return _triton_forward()(*args)


SPLIT_CASES = [  # B, n, m, n_iters, tol, history, zero-mass first row
    pytest.param(2, 17, 9, 5, 0.0, True, False, id="odd-sizes-no-stop"),
    pytest.param(3, 8, 11, 1, 0.0, False, False, id="one-iteration"),
    pytest.param(2, 5, 6, 6, 0.0, True, True, id="zero-mass-rows"),
    pytest.param(3, 7, 5, 20, 1e-2, True, False, id="early-stop-history"),
    pytest.param(3, 7, 5, 20, 1e-2, False, True, id="early-stop-scratch"),
]


@pytest.mark.parametrize("B,n,m,n_iters,tol,history,zero_row", SPLIT_CASES)
def test_split_route_matches_single_launch_and_reference(B, n, m, n_iters, tol, history, zero_row):
    _compare_routes(B, n, m, n_iters, tol, history, zero_row)


@pytest.mark.gpu
@pytest.mark.parametrize("history", (True, False))
def test_split_route_on_gpu_matches_single_launch_and_reference(history):
    """GPU-sized: many row blocks of whole tiles, run concurrently (which the interpreter cannot)."""
    _compare_routes(3, 700, 513, 150, 1e-2, history, True)


def _compare_routes(B, n, m, n_iters, tol, history, zero_row):
    device, kernels = _routes()
    # Batch elements that stop at different iterations: a constant cost after the first (the
    # earliest stop; with tol = 0 it must run on), then smoother and rougher random costs.
    cost = torch.rand(B, n, m, device=device) * torch.arange(B, device=device)[:, None, None] / 2
    a, b = marginals(B, n, m, device, zero_row)
    args = (cost, a.log(), b.log(), 0.1, n_iters, tol, history)
    split, single = _on_route(kernels, "split", *args), _on_route(kernels, "single", *args)
    plan, f, g, iters = sinkhorn_reference(*(x.double().cpu() for x in args[:3]), 0.1, n_iters,
                                            tol or None)

    assert torch.equal(split[3], single[3]) and torch.equal(split[3].cpu(), iters)
    if tol:
        assert iters[0] == 1 and (iters[1:] > 1).all(), iters
    else:
        assert (iters == n_iters).all()
    for i, (name, want) in enumerate([("plan", plan), ("f", f), ("g", g)]):
        torch.testing.assert_close(split[i], single[i], atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(split[i].double().cpu(), want, atol=1e-6, rtol=1e-4, msg=name)
    for h in (4, 5):  # the history slots (all of them), or the scratch slot of the final potentials
        for e, k in enumerate(iters.tolist()):
            slots = slice(0, k + 1) if history else k % 2
            torch.testing.assert_close(split[h][e, slots], single[h][e, slots], atol=1e-6, rtol=1e-5)
    if zero_row:
        assert (split[0][:, 0] == 0).all() and (split[1][:, 0] == -float("inf")).all()


def test_split_route_stops_launching_once_every_problem_has_stopped():
    """With a tolerance the split route checks every _STOP_CHECK_EVERY launches whether all problems
    have stopped and then makes only the final launch; the outputs equal the single launch's."""
    device, kernels = _routes()
    cost = torch.rand(3, 7, 5, device=device)
    a, b = marginals(3, 7, 5, device)
    args = (cost, a.log(), b.log(), 0.5, 1000, 1e-4, False)
    single = _on_route(kernels, "single", *args)
    assert (single[3] < 20).all(), single[3]  # every problem converges within a few iterations
    outputs = [torch.empty_like(t) for t in single]
    block_r, block_m = kernels._blocks(5)
    with kernels.forced_route("split"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels, "_STOP_CHECK_EVERY", 4)
        launches = kernels._forward_split(*args[:3], *outputs, 0.5, 1000, 1e-4, False,
                                          kernels._split_plan(3, 7, 5, block_r, 0), block_m)
    assert launches <= int(single[3].max()) + 2 + 4, launches  # not the 1 001 of a full run
    for name, ours, ref in zip(("plan", "f", "g", "iters"), outputs, single):
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6), name


def test_split_route_rule():
    _, kernels = _routes()
    plan = kernels._split_plan
    assert plan(64, 128, 128, 32, 132) is None  # L2 sized, batch fills the GPU: one launch
    assert plan(8, 128, 128, 32, 132) is None  # too small for a launch per iteration
    assert plan(8, 256, 200, 16, 132) == (8, 32, 16)  # 200 KiB, most SMs idle: R ≤ √(256/2), whole tiles
    assert plan(64, 256, 200, 16, 132) is None
    assert plan(256, 512, 512, 8, 132) == (3, 176, 8)  # 1 MiB per problem: 3 row blocks, 4 programs per SM
    for B, n, m, block_r, sms in [(1, 1024, 1024, 4, 132), (8, 128, 128, 32, 132), (3, 1000, 300, 8, 80),
                                  (5, 17, 9, 64, 0), (2, 1, 3, 64, 0)]:
        with kernels.forced_route("split"):
            R, rows, tile = plan(B, n, m, block_r, sms)
        assert (R - 1) * rows < n <= R * rows and tile <= block_r
        if sms:
            assert R * R <= n // 2 and rows % tile == 0  # partials re-read ≤ own share; whole tiles
        else:
            assert R == min(3, n)
    with kernels.forced_route("single"):
        assert plan(1, 1024, 1024, 4, 132) is None
    with pytest.raises(ValueError, match="route"):
        with kernels.forced_route("rows"):
            pass


@pytest.mark.parametrize("backward,tol,n_iters", [("unroll", None, 6), ("unroll", 1e-2, 20), ("implicit", None, 10)])
def test_split_route_gradients_match_reference(backward, tol, n_iters):
    """The backward (unrolled kernel, or implicit at the plan) fed by the split forward; with tol,
    a constant cost stops after one iteration, a random one later."""
    device, kernels = _routes()
    cost = (torch.rand(2, 11, 6, device=device) * torch.tensor([0.0, 0.5], device=device)[:, None, None]
            ).requires_grad_(True)
    a, b = marginals(2, 11, 6, device)
    with kernels.forced_route("split"):
        out, _ = compare_with_reference(_state(eps=0.1, n_iters=n_iters, tol=tol, backward=backward),
                                        (cost, a.requires_grad_(True), b.requires_grad_(True)), "triton", scale=5)
        with pyaudiok.use_backend("triton"):
            assert sinkhorn(torch.rand(0, 3, 4, device=device), eps=0.1, n_iters=3).shape == (0, 3, 4)
    if tol:
        assert out[3][0] == 1 and out[3][1] > 1, out[3]


def test_split_route_passes_opcheck():
    device, kernels = _routes()
    cost = torch.rand(2, 5, 6, device=device)
    a, b = marginals(2, 5, 6, device)
    with kernels.forced_route("split"):
        opcheck(_triton_forward(), (cost, a.log(), b.log(), 0.1, 3, 0.0, True),
                              test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument.

def _cost():
    return torch.rand(2, 3, 4)


@pytest.mark.parametrize("call,exc,words", [
    (lambda: sinkhorn(_cost(), eps=0.0), ValueError, ["eps", "> 0"]),
    (lambda: sinkhorn(_cost(), eps=-1.0), ValueError, ["eps"]),
    (lambda: sinkhorn(_cost(), eps=1e-300), ValueError, ["eps", "float32's smallest normal"]),
    (lambda: sinkhorn(_cost(), eps=0.1, tol=float("nan")), ValueError, ["tol"]),
    (lambda: sinkhorn(_cost()[0], eps=0.1), ValueError, ["cost", "[B, n, m]"]),
    (lambda: sinkhorn(_cost().long(), eps=0.1), TypeError, ["cost", "dtype"]),
    (lambda: sinkhorn(_cost(), torch.full((2, 3), -1 / 3), eps=0.1), ValueError, ["a", "non-negative"]),
    (lambda: sinkhorn(_cost(), torch.full((2, 4), 0.25), eps=0.1), ValueError, ["a", "[B, n]"]),
    (lambda: sinkhorn(_cost(), None, torch.full((2, 3), 1 / 3), eps=0.1), ValueError, ["b", "[B, m]"]),
    (lambda: sinkhorn(_cost(), torch.full((2, 3), 0.5), eps=0.1), ValueError, ["equal totals"]),
    (lambda: sinkhorn(_cost(), torch.zeros(2, 3), torch.zeros(2, 4), eps=0.1), ValueError, ["totals > 0"]),
    (lambda: sinkhorn(_cost(), eps=0.1, backward="adjoint"), ValueError, ["backward", "implicit"]),
    (lambda: sinkhorn(_cost(), eps=0.1, n_iters=0), ValueError, ["n_iters"]),
    (lambda: sinkhorn(_cost(), eps=0.1, n_iters=None, tol=None), ValueError, ["n_iters", "tol"]),
    (lambda: sinkhorn(_cost(), eps=0.1, tol=0), ValueError, ["tol", "> 0"]),
    (lambda: sinkhorn(_cost(), eps=0.1, return_state=1), TypeError, ["return_state", "bool"]),
    (lambda: sinkhorn(torch.rand(2, 0, 4), eps=0.1), ValueError, ["cost", "n, m >= 1"]),
    (lambda: sinkhorn(torch.rand(2, 3, 0), torch.full((2, 3), 1 / 3), eps=0.1), ValueError, ["cost", "n, m >= 1"]),
    (lambda: sinkhorn(_cost(), torch.full((2, 3), 1 / 3, device="meta"), eps=0.1), ValueError, ["a", "device"]),
    (lambda: sinkhorn(_cost(), None, torch.full((2, 4), 0.25, device="meta"), eps=0.1), ValueError,
     ["b", "device"]),
    (lambda: sinkhorn_rank(torch.rand(3), eps=0.1), ValueError, ["scores", "[B, n]"]),
    (lambda: log_sinkhorn_normalize(torch.rand(3, 3), tau=0), ValueError, ["tau"]),
    (lambda: log_sinkhorn_normalize(torch.rand(3, 3), gumbel_noise=True, generator=0), TypeError,
     ["generator", "torch.Generator"]),
    (lambda: log_sinkhorn_normalize(torch.rand(3, 3), gumbel_noise=1), TypeError, ["gumbel_noise", "bool"]),
])
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert all(w in str(info.value) for w in words), str(info.value)
