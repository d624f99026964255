"""Batched log-domain Sinkhorn (entropic optimal transport) and what is built on it: OT ranking
and sorting (Cuturi, Teboul, Vert) and Gumbel-Sinkhorn soft permutations (DESIGN §5). The core is
general (any cost, any marginals): CHARM and learning from label proportions reuse it.

Iterations, from f = g = 0, with ε > 0 (absolute):

    f_i = ε log a_i − ε LSE_j((g_j − C_ij)/ε)        g_j = ε log b_j − ε LSE_i((f_i − C_ij)/ε)
    plan P_ij = exp((f_i + g_j − C_ij)/ε)

After a g-update the column marginals are exact; the row marginal of the current plan is
r_i = a_i exp((f_i − f_i')/ε), f' the next f-update, so the error Σ_i |r_i − a_i| comes free with
that update. Each batch element stops on its own once the error is not above tol (checked from the
second iteration on; tol = None never stops early; a NaN error, from a NaN or −inf cost, stops it
too) or after n_iters iterations.

Backward, chosen per call:
* "unroll": backpropagate through every iteration. The fused kernels keep the potentials of every
  iteration (memory (n_iters + 1)(n + m) per batch element; only when a gradient will be taken:
  grad mode on and some input requiring one) and recompute the softmax weights, in one pass over
  the rows per iteration: for the g-update T_ij = P⁽ᵏ⁾_ij / b_j, for the f-update
  S_ij = exp((f_i + g⁽ᵏ⁻¹⁾_j − C_ij)/ε) / a_i.
* "implicit": differentiate the optimality conditions at the returned plan (implicit function
  theorem): [[diag(P1), P], [Pᵀ, diag(Pᵀ1)]] [u; v] = [q1 + f̄; qᵀ1 + ḡ], q = P̄ ⊙ P / ε, solved
  through its m × m Schur complement; then C̄ = P ⊙ (u ⊕ v) − q, (log a)̄ = ε u ⊙ a, (log b)̄ = ε v ⊙ b.
  Exact at convergence; memory O(n m).

Every fused backend exposes the same two raw ops (cost[B, n, m], log_a[B, n], log_b[B, m] fp32):

    sinkhorn_forward(cost, log_a, log_b, eps, n_iters, tol, history)
        -> (plan, f, g, iters[B] int64, hist_f[B, S, n], hist_g[B, S, m])
    sinkhorn_backward(grad_plan, grad_f, grad_g, cost, log_a, log_b, plan, iters, hist_f, hist_g, eps)
        -> (grad_cost, grad_log_a, grad_log_b)

hist_* hold the potentials of iteration k in slot k (S = n_iters + 1) when history is set; else
(S = 2) they are scratch, of which only slot iters % 2 is meaningful (the final potentials; the
other slot is backend-specific). tol ≤ 0 means no early stop.

The CPU kernel runs these same iterations in the stabilised scaling domain wherever that is safe
(matrix-vector products with an absorbed kernel instead of an exponential per element and
iteration) and in the log domain elsewhere: csrc/cpu/sinkhorn.cpp says how it decides.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .. import dispatch
from . import _checks
from ._library import cpp_op, extension_loaded, first_order, register_autograd, register_backends, triton_op

__all__ = ["SinkhornResult", "sinkhorn", "sinkhorn_rank", "sinkhorn_sort", "log_sinkhorn_normalize",
           "sinkhorn_reference"]

BACKWARDS = ("unroll", "implicit")
DEFAULT_MAX_ITERS = 1000


class SinkhornResult(NamedTuple):
    plan: torch.Tensor     # [B, n, m]
    f: torch.Tensor        # [B, n] potentials (fp32, fp64 for fp64 input)
    g: torch.Tensor        # [B, m]
    n_iters: torch.Tensor  # [B] int64, iterations run per batch element


# ----------------------------------------------------------------------------------------------
# Reference: the definition of the op.

def _row_error(log_a, f_old, f_new, eps):
    """Σ_i |a_i exp((f_old − f_new)/ε) − a_i| (zero-mass rows contribute 0)."""
    live = torch.isfinite(log_a)
    term = torch.exp(log_a + (f_old - f_new) / eps) - log_a.exp()
    return torch.where(live, term.abs(), torch.zeros_like(term)).sum(-1)


def sinkhorn_reference(cost, log_a, log_b, eps: float, n_iters: int, tol: float | None):
    """cost[B, n, m], log_a[B, n], log_b[B, m] -> (plan, f, g, iters); autograd unrolls the loop."""
    B, n, m = cost.shape
    f = cost.new_zeros(B, n)
    g = cost.new_zeros(B, m)
    active = torch.ones(B, dtype=torch.bool, device=cost.device)
    iters = torch.zeros(B, dtype=torch.int64, device=cost.device)
    for k in range(1, n_iters + 1):
        f_new = eps * log_a - eps * torch.logsumexp((g[:, None, :] - cost) / eps, dim=2)
        if tol is not None and k > 1:
            active = active & (_row_error(log_a, f, f_new, eps) > tol)
            if not bool(active.any()):
                break
        f = torch.where(active[:, None], f_new, f)
        g_new = eps * log_b - eps * torch.logsumexp((f[:, :, None] - cost) / eps, dim=1)
        g = torch.where(active[:, None], g_new, g)
        iters = iters + active.long()
    plan = torch.exp((f[:, :, None] + g[:, None, :] - cost) / eps)
    return plan, f, g, iters


def implicit_vjp(grad_plan, grad_f, grad_g, plan, log_a, log_b, eps):
    """Gradients (cost, log_a, log_b) by the implicit function theorem at `plan` (module doc)."""
    P = plan.to(torch.float64 if plan.dtype == torch.float64 else torch.float32)
    q = (grad_plan.to(P.dtype) * P / eps) if grad_plan is not None else torch.zeros_like(P)
    r1 = q.sum(2) + (grad_f.to(P.dtype) if grad_f is not None else 0)
    r2 = q.sum(1) + (grad_g.to(P.dtype) if grad_g is not None else 0)
    tiny = torch.finfo(P.dtype).tiny
    rows = P.sum(2).clamp_min(tiny)
    cols = P.sum(1)
    Pa = P / rows[:, :, None]
    # K = diag(cols) − Pᵀ diag(1/rows) P is singular along 1 (the gauge f + c, g − c); adding 11ᵀ/m
    # fixes the gauge without changing the solution for right-hand sides orthogonal to 1.
    m = P.shape[2]
    # At small ε the plan's support splits into blocks with a gauge each (or into single entries: a
    # near-permutation), and K is singular to working precision (zero pivots): a ridge at rounding
    # level keeps the solve finite without moving well-conditioned solutions beyond rounding.
    ridge = 4 * torch.finfo(P.dtype).eps * cols.amax(1, keepdim=True).clamp_min(tiny)
    K = torch.diag_embed(cols + ridge) - P.transpose(1, 2) @ Pa + 1.0 / m
    rhs = r2 - (Pa.transpose(1, 2) @ r1[:, :, None])[:, :, 0]
    v = torch.linalg.solve(K, rhs)
    u = (r1 - (P @ v[:, :, None])[:, :, 0]) / rows
    grad_cost = P * (u[:, :, None] + v[:, None, :]) - q
    return grad_cost, eps * u * log_a.exp().to(P.dtype), eps * v * log_b.exp().to(P.dtype)


class _ImplicitReference(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, log_a, log_b, eps, n_iters, tol):
        plan, f, g, iters = sinkhorn_reference(cost, log_a, log_b, eps, n_iters, tol)
        ctx.eps = eps
        ctx.save_for_backward(plan, log_a, log_b)
        ctx.mark_non_differentiable(iters)
        return plan, f, g, iters

    @staticmethod
    def backward(ctx, grad_plan, grad_f, grad_g, grad_iters):
        plan, log_a, log_b = ctx.saved_tensors
        dc, da, db = implicit_vjp(grad_plan, grad_f, grad_g, plan, log_a, log_b, ctx.eps)
        return dc.to(plan.dtype), da.to(log_a.dtype), db.to(log_b.dtype), None, None, None


def _reference(cost, log_a, log_b, eps, n_iters, tol, backward):
    if cost.dtype in (torch.float16, torch.bfloat16):
        # As the fused backends do: half costs transported in fp32 (f and g stay fp32), plan rounded back.
        plan, f, g, iters = _reference(cost.float(), log_a.float(), log_b.float(), eps, n_iters, tol, backward)
        return plan.to(cost.dtype), f, g, iters
    if backward == "implicit":
        return _ImplicitReference.apply(cost, log_a, log_b, eps, n_iters, tol)
    return sinkhorn_reference(cost, log_a, log_b, eps, n_iters, tol)


# ----------------------------------------------------------------------------------------------
# Gradients and fake implementations of the fused backends' raw ops.

def _register_forward(qualname: str, backward_op: Callable[[], Callable]) -> None:
    @torch.library.register_fake(qualname)
    def _(cost, log_a, log_b, eps, n_iters, tol, history):
        B, n, m = cost.shape
        S = n_iters + 1 if history else 2
        return (cost.new_empty(cost.shape), log_a.new_empty((B, n)), log_b.new_empty((B, m)),
                cost.new_empty((B,), dtype=torch.int64), cost.new_empty((B, S, n)), cost.new_empty((B, S, m)))

    def setup_context(ctx, inputs, output):
        cost, log_a, log_b, eps, n_iters, tol, history = inputs
        plan, f, g, iters, hist_f, hist_g = output
        ctx.eps, ctx.history = eps, history
        ctx.save_for_backward(cost, log_a, log_b, plan, iters, hist_f, hist_g)
        # The count and the history take no gradient, and the plan, f or g may go unused: None
        # for those instead of zero tensors the size of the history made on each backward.
        ctx.set_materialize_grads(False)

    @first_order("sinkhorn")
    def backward(ctx, grad_plan, grad_f, grad_g, *unused):
        cost, log_a, log_b, plan, iters, hist_f, hist_g = ctx.saved_tensors
        if not ctx.history:
            grads = implicit_vjp(grad_plan, grad_f, grad_g, plan, log_a, log_b, ctx.eps)
        else:
            zeros = torch.zeros_like
            grads = backward_op()(
                (grad_plan if grad_plan is not None else zeros(plan)).contiguous(),
                (grad_f if grad_f is not None else zeros(log_a)).contiguous(),
                (grad_g if grad_g is not None else zeros(log_b)).contiguous(),
                cost, log_a, log_b, plan, iters, hist_f, hist_g, ctx.eps)
        return (*grads, None, None, None, None)

    register_autograd(qualname, backward, setup_context=setup_context)


def _register_backward_fake(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(grad_plan, grad_f, grad_g, cost, log_a, log_b, plan, iters, hist_f, hist_g, eps):
        return cost.new_empty(cost.shape), log_a.new_empty(log_a.shape), log_b.new_empty(log_b.shape)


if extension_loaded():
    _register_backward_fake("pyaudiok::sinkhorn_backward")
    _register_forward("pyaudiok::sinkhorn_forward", lambda: cpp_op("sinkhorn_backward"))


def _triton_backward():
    return triton_op("sinkhorn_backward_triton", "sinkhorn", "sinkhorn_backward", _register_backward_fake)


def _triton_forward():
    _triton_backward()
    return triton_op("sinkhorn_forward_triton", "sinkhorn", "sinkhorn_forward",
                     lambda name: _register_forward(name, _triton_backward))


# ----------------------------------------------------------------------------------------------
# Backend registry. Fused kernels compute in fp32; half inputs are upcast, the plan cast back.

def _keeps_history(backward: str, *inputs: torch.Tensor) -> bool:
    """Whether the fused forward keeps every iteration's potentials: only for an unrolled backward
    that will run (grad mode on, some input requiring a gradient). Otherwise the history,
    (n_iters + 1)(n + m) floats per batch element, would be written and thrown away."""
    return backward == "unroll" and torch.is_grad_enabled() and any(x.requires_grad for x in inputs)


def _fused(get_op: Callable[[], Callable]):
    def run(cost, log_a, log_b, eps, n_iters, tol, backward):
        plan, f, g, iters, _, _ = get_op()(cost.float().contiguous(), log_a.float().contiguous(),
                                           log_b.float().contiguous(), float(eps), n_iters,
                                           float(tol) if tol is not None else 0.0,
                                           _keeps_history(backward, cost, log_a, log_b))
        return plan.to(cost.dtype), f, g, iters
    return run


def _triton_size_limit(cost, *args):
    """The Triton kernel keeps a full row of the cost (and the column potentials) on chip."""
    from pyaudiok.kernels.sinkhorn import MAX_M
    return None if cost.shape[-1] <= MAX_M else f"m = {cost.shape[-1]} exceeds the Triton kernel's limit of {MAX_M}"


SINKHORN = dispatch.op("sinkhorn")
register_backends(SINKHORN, reference=_reference, cpu=_fused(lambda: cpp_op("sinkhorn_forward")),
                  triton=_fused(_triton_forward), cpu_dtypes=(torch.float16, torch.bfloat16, torch.float32),
                  triton_constraint=_triton_size_limit)


# ----------------------------------------------------------------------------------------------
# Public API.

def _log_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the log-marginals: at least fp32, as log(1/n) rounded to half would unbalance them."""
    return torch.promote_types(dtype, torch.float32)


def _check_marginal(name: str, value, cost: torch.Tensor, dim: int) -> torch.Tensor:
    B, size = cost.shape[0], cost.shape[dim]
    if value is None:
        return torch.full((B, size), -math.log(size) if size else 0.0, dtype=_log_dtype(cost.dtype),
                          device=cost.device)
    layout = f"[B, {'n' if dim == 1 else 'm'}] = [{B}, {size}]"
    value = _checks.float_tensor(name, value, ndim=2, layout=layout)
    if tuple(value.shape) != (B, size):
        raise ValueError(f"{name} must have shape {layout}; got {_checks.shape_str(value.shape)}")
    _checks.same_device(name, value, "cost", cost)
    _checks.values_hold(torch.isfinite(value) & (value >= 0), f"{name} must be finite and non-negative")
    return _log_of_masses(value.to(_log_dtype(value.dtype))).to(_log_dtype(cost.dtype))


def _log_of_masses(value: torch.Tensor) -> torch.Tensor:
    """log of non-negative masses, with gradient 0 (not NaN: 0 · ∞) at a mass of exactly 0. The
    one-sided derivative there is not computed: an entry with no mass takes no gradient."""
    positive = value > 0
    return torch.where(positive, value.masked_fill(~positive, 1.0).log(), float("-inf"))


def _check_options(eps, n_iters, tol, backward):
    eps = _checks.positive_float("eps", eps)
    if eps < torch.finfo(torch.float32).tiny:  # the fused kernels divide by it in float32
        raise ValueError(f"eps must be >= {torch.finfo(torch.float32).tiny:.3g} (float32's smallest normal); got {eps!r}")
    if n_iters is not None:
        n_iters = _checks.int_in_range("n_iters", n_iters, 1, 10**6)
    if tol is not None:
        tol = _checks.positive_float("tol", tol)
    if n_iters is None and tol is None:
        raise ValueError("give n_iters, tol or both (tol alone runs at most "
                         f"{DEFAULT_MAX_ITERS} iterations)")
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}; got {backward!r}")
    return eps, (n_iters if n_iters is not None else DEFAULT_MAX_ITERS), tol


def _run(cost, log_a, log_b, eps, n_iters, tol, backward) -> SinkhornResult:
    return SinkhornResult(*SINKHORN(cost, log_a, log_b, eps, n_iters, tol, backward,
                                    device=cost.device, dtype=cost.dtype))


def sinkhorn(cost: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None, *, eps: float,
             n_iters: int | None = None, tol: float | None = 1e-6, backward: str = "unroll",
             return_state: bool = False):
    """Entropic OT plan of cost[B, n, m] between marginals a[B, n] and b[B, m] (uniform by default;
    non-negative, equal totals) by log-domain Sinkhorn.

    Stops per batch element when Σ_i |P1 − a|_i ≤ tol, or after n_iters iterations (default
    1000 when only tol is given). Returns the plan [B, n, m], or with return_state=True a
    SinkhornResult(plan, f, g, n_iters). Differentiable in cost, a and b (backward="unroll" or
    "implicit", see the module doc); an entry of a or b that is exactly 0 takes gradient 0.
    """
    cost = _checks.float_tensor("cost", cost, ndim=3, layout="[B, n, m]")
    eps, n_iters, tol = _check_options(eps, n_iters, tol, backward)
    if not isinstance(return_state, bool):
        raise TypeError(f"return_state must be a bool; got {type(return_state).__name__}")
    log_a = _check_marginal("a", a, cost, 1)
    log_b = _check_marginal("b", b, cost, 2)
    if a is not None or b is not None:
        sa, sb = log_a.double().exp().sum(-1), log_b.double().exp().sum(-1)
        # Half-precision marginals balance only to their own rounding.
        rtol = max([1e-4] + [torch.finfo(x.dtype).eps for x in (a, b) if x is not None])
        # An empty cost has nothing to transport: its totals are not compared.
        balanced = ((sa - sb).abs() <= rtol * sb) & (sb > 0) if cost.numel() else sa.new_ones((), dtype=torch.bool)
        _checks.values_hold(balanced, "a and b must have equal totals per batch element (balanced transport), "
                            "and totals > 0", lambda: f"a.sum(-1) = {sa.tolist()[:4]}, b.sum(-1) = {sb.tolist()[:4]}")
    if cost.shape[1] == 0 or cost.shape[2] == 0:
        raise ValueError(f"cost must have n, m >= 1; got shape {_checks.shape_str(cost.shape)}")
    result = _run(cost, log_a, log_b, eps, n_iters, tol, backward)
    return result if return_state else result.plan


def _squash(scores: torch.Tensor) -> torch.Tensor:
    """x̃ = sigmoid((θ − mean)/std) per row (population std; constant rows map to 0.5)."""
    centred = scores - scores.mean(-1, keepdim=True)
    std = centred.square().mean(-1, keepdim=True).add(1e-12).sqrt()
    return torch.sigmoid(centred / std)


def _ranking_plan(scores, m, eps, n_iters, tol, backward):
    scores = _checks.float_tensor("scores", scores, ndim=2, layout="[B, n]")
    n = scores.shape[1]
    m = n if m is None else _checks.int_in_range("m", m, 2, 10**6)
    eps, n_iters, tol = _check_options(eps, n_iters, tol, backward)
    if n < 2 or scores.shape[0] == 0:
        return scores, None, m
    anchors = torch.arange(m, dtype=scores.dtype, device=scores.device) / (m - 1)
    cost = (_squash(scores)[:, :, None] - anchors[None, None, :]).square()
    B = scores.shape[0]
    log_a = torch.full((B, n), -math.log(n), dtype=_log_dtype(scores.dtype), device=scores.device)
    log_b = torch.full((B, m), -math.log(m), dtype=_log_dtype(scores.dtype), device=scores.device)
    return scores, _run(cost, log_a, log_b, eps, n_iters, tol, backward).plan, m


def sinkhorn_rank(scores: torch.Tensor, *, eps: float = 1e-2, m: int | None = None, n_iters: int | None = 100,
                  tol: float | None = None, backward: str = "unroll") -> torch.Tensor:
    """Soft ranks (1 … n, ascending: the largest score → n) of scores[B, n] by OT onto m anchors
    (default m = n): r_i = 1 + (n − 1)/(m − 1) · n · Σ_j P_ij j. Differentiable in scores."""
    scores, plan, m = _ranking_plan(scores, m, eps, n_iters, tol, backward)
    if plan is None:
        # Ranks 1 whatever the scores, yet still in the graph (zero gradient), as for n >= 2.
        return torch.where(torch.ones_like(scores, dtype=torch.bool), 1.0, scores)
    n = scores.shape[1]
    j = torch.arange(m, dtype=plan.dtype, device=plan.device)
    return 1 + (n - 1) / (m - 1) * n * (plan @ j)


def sinkhorn_sort(scores: torch.Tensor, *, eps: float = 1e-2, m: int | None = None, n_iters: int | None = 100,
                  tol: float | None = None, backward: str = "unroll") -> torch.Tensor:
    """Soft sorted scores [B, m] (ascending) by OT: m · Pᵀ θ. Differentiable in scores."""
    scores, plan, m = _ranking_plan(scores, m, eps, n_iters, tol, backward)
    if plan is None:
        # n = 1: every anchor takes the one score; an empty batch: [0, m] as well.
        return scores.mean(-1, keepdim=True).expand(scores.shape[0], m).clone() if scores.shape[1] else scores.clone()
    return m * (plan.transpose(1, 2) @ scores[:, :, None])[:, :, 0]


def log_sinkhorn_normalize(logits: torch.Tensor, *, n_iters: int = 20, tau: float = 1.0,
                           gumbel_noise: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-Sinkhorn: X = (logits + Gumbel noise)/τ, then n_iters times X ← X − LSE over the last
    dim (rows sum to 1), X ← X − LSE over dim −2 (columns sum to 1). logits[..., n, m] -> the
    normalised log-matrix (exp() of it is doubly stochastic for square inputs). Runs on the
    Sinkhorn core (cost −X, unit marginals, ε = 1), so every backend serves it."""
    logits = _checks.float_tensor("logits", logits, min_ndim=2, layout="[..., n, m]")
    n_iters = _checks.int_in_range("n_iters", n_iters, 1, 10**6)
    tau = _checks.positive_float("tau", tau)
    if not isinstance(gumbel_noise, bool):
        raise TypeError(f"gumbel_noise must be a bool; got {type(gumbel_noise)!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    x = logits
    if gumbel_noise:
        # Drawn where the generator lives (the CPU by default: the same noise on any device).
        where = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(logits.shape, generator=generator, dtype=torch.float32, device=where).to(logits.device)
        x = x - torch.log((-torch.log(u.clamp(1e-20, 1.0))).clamp_min(1e-20)).to(logits.dtype)
    *lead, n, m = x.shape
    B = math.prod(lead)  # not reshape(-1, ...): ambiguous when n or m is 0
    cost = -(x / tau).reshape(B, n, m)
    if B == 0 or n == 0 or m == 0:
        return (x / tau).clone()
    zeros_a, zeros_b = cost.new_zeros(B, n), cost.new_zeros(B, m)
    _, f, g, _ = _run(cost, zeros_a, zeros_b, 1.0, n_iters, None, "unroll")
    return (f[:, :, None] + g[:, None, :] - cost).to(logits.dtype).reshape(x.shape)
