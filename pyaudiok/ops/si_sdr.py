"""SI-SDR between every estimate and every reference, and permutation-invariant SI-SDR (DESIGN §9).

    si_sdr_matrix(estimates[B, N, T], references[B, M, T]) -> [B, N, M] in dB

With e, r the (by default zero-mean) signals, α = ⟨e, r⟩ / (‖r‖² + eps) and the target α r:

    SI-SDR(e, r) = 10 log10((‖α r‖² + eps) / (‖e − α r‖² + eps))

(asteroid's and torchmetrics' convention, up to where eps enters). A silent reference gives a
finite, very negative value; SI-SDR is invariant to the scale of the estimate.

Every pair's value follows from three statistics, ee = ‖e‖², rr = ‖r‖², er = ⟨e, r⟩:
‖α r‖² = α² rr and ‖e − α r‖² = ee − 2α er + α² rr. The fused backends compute the statistics
for all pairs at once, in one sweep over time (a batched matmul E Rᵀ plus the norms), and the
SI-SDR from them on [B, N, M]-sized tensors. The gradient of the statistics is shared by every
backend: with centred signals, ∂ee/∂e = 2e, ∂er/∂e = r, ∂er/∂r = e, ∂rr/∂r = 2r (the centring
drops out because centred signals sum to zero).

Backends: `reference` (the formula above on explicit [B, N, M, T] pairs, any float dtype),
`cpu` (C++, csrc/cpu/si_sdr.cpp: the statistics of all pairs in one sweep over time, summed in
float64 like the reference's exact route, and the formula, in one call), `triton`
(kernels/si_sdr.py: fp32 accumulation over T-chunks in parallel, then one launch that merges the
chunks and evaluates the formula in float64; it returns the statistics too, and its backward
differentiates the same formula in PyTorch).

In float32 the statistics' ‖e − α r‖² cancels as an estimate nears a multiple of its reference, so
`si_sdr_matrix` and `pit_si_sdr` recompute the pairs above EXACT_ABOVE_DB (30 dB) from the signals
(`neg_si_sdr_loss` clipping there does not need them).

`pit_si_sdr` finds, per item, the assignment of estimates to distinct references with the best
mean SI-SDR: an exhaustive search over all assignments on the tensors' device when M ≤ 8, the
Hungarian algorithm (scipy, on the CPU) above. `neg_si_sdr_loss` is its training loss.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import torch

from .. import dispatch
from . import _checks
from ._library import cpp_op, extension_loaded, first_order, register_autograd, register_backends, triton_op

__all__ = ["si_sdr_matrix", "si_sdr_matrix_reference", "pit_si_sdr", "PITResult", "neg_si_sdr_loss"]

EXHAUSTIVE_MAX_SOURCES = 8


# ----------------------------------------------------------------------------------------------
# Reference: the definition.

def si_sdr_matrix_reference(estimates: torch.Tensor, references: torch.Tensor, zero_mean: bool = True,
                            eps: float = 1e-8) -> torch.Tensor:
    e = estimates[:, :, None, :]   # [B, N, 1, T]
    r = references[:, None, :, :]  # [B, 1, M, T]
    if zero_mean:
        e = e - e.mean(-1, keepdim=True)
        r = r - r.mean(-1, keepdim=True)
    alpha = (e * r).sum(-1, keepdim=True) / (r.pow(2).sum(-1, keepdim=True) + eps)
    target = alpha * r
    noise = e - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


# ----------------------------------------------------------------------------------------------
# Fused backends: statistics, then the shared formula.

def _si_sdr_from_stats(ee: torch.Tensor, rr: torch.Tensor, er: torch.Tensor, eps: float) -> torch.Tensor:
    rr = rr[:, None, :]
    alpha = er / (rr + eps)
    target = alpha.square() * rr
    # ‖e − α r‖² = ee − 2α er + α² rr is ≥ 0 exactly (Cauchy–Schwarz); rounding may dip below.
    noise = (ee[:, :, None] - 2 * alpha * er + target).clamp_min(0)
    return 10 * torch.log10((target + eps) / (noise + eps))


def _centred(x: torch.Tensor, zero_mean: bool) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True) if zero_mean else x


def _stats_backward(estimates, references, zero_mean, g_ee, g_rr, g_er):
    dtype = torch.float64 if estimates.dtype == torch.float64 else torch.float32
    e, r = _centred(estimates.to(dtype), zero_mean), _centred(references.to(dtype), zero_mean)
    g_ee, g_rr, g_er = g_ee.to(dtype), g_rr.to(dtype), g_er.to(dtype)
    d_e = 2 * g_ee[..., None] * e + torch.bmm(g_er, r)
    d_r = 2 * g_rr[..., None] * r + torch.bmm(g_er.transpose(1, 2), e)
    return d_e.to(estimates.dtype), d_r.to(references.dtype)


def _register_matrix(qualname: str) -> None:
    """Fake + autograd of a fused matrix op (estimates, references, zero_mean, eps) -> (matrix, ee, rr, er),
    the C++ one and the Triton one: the float64 statistics come back for the backward, which goes
    through the shared formula and `_stats_backward`."""

    @torch.library.register_fake(qualname)
    def _(estimates, references, zero_mean, eps):
        B, N, _ = estimates.shape
        M = references.shape[1]
        new = lambda *shape: estimates.new_empty(shape, dtype=torch.float64)  # noqa: E731
        return estimates.new_empty(B, N, M), new(B, N), new(B, M), new(B, N, M)

    def setup_context(ctx, inputs, output):
        estimates, references, zero_mean, eps = inputs
        _, ee, rr, er = output
        ctx.save_for_backward(estimates, references, ee, rr, er)
        ctx.zero_mean, ctx.eps = zero_mean, eps
        ctx.mark_non_differentiable(ee, rr, er)
        ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (absent) gradients

    @first_order("si_sdr_matrix")
    def backward(ctx, g_matrix, *_):
        if g_matrix is None:
            return None, None, None, None
        estimates, references, ee, rr, er = ctx.saved_tensors
        _, pull_back = torch.func.vjp(lambda *stats: _si_sdr_from_stats(*stats, ctx.eps), ee, rr, er)
        g_ee, g_rr, g_er = pull_back(g_matrix.to(torch.float64))
        d_e, d_r = _stats_backward(estimates, references, ctx.zero_mean, g_ee, g_rr, g_er)
        return d_e, d_r, None, None

    register_autograd(qualname, backward, setup_context=setup_context)


if extension_loaded():  # the C++ kernel: csrc/cpu/si_sdr.cpp
    _register_matrix("pyaudiok::si_sdr_matrix_cpu")


def _cpu_matrix(estimates, references, zero_mean, eps):
    dtype = estimates.dtype
    if dtype not in (torch.float32, torch.float64):  # half precision: the kernel reads float32
        estimates, references = estimates.float(), references.float()
    matrix = cpp_op("si_sdr_matrix_cpu")(estimates, references, zero_mean, eps)[0]
    return matrix if matrix.dtype == dtype else matrix.to(dtype)


def _triton_matrix_op():
    return triton_op("si_sdr_matrix_triton", "si_sdr", "si_sdr_matrix", _register_matrix)


def _triton_matrix(estimates, references, zero_mean, eps):
    """Statistics and formula in two Triton launches (kernels/si_sdr.py); float32 in and out."""
    dtype = estimates.dtype
    if dtype != torch.float32:
        estimates, references = estimates.float(), references.float()
    matrix = _triton_matrix_op()(estimates.contiguous(), references.contiguous(), zero_mean, eps)[0]
    return matrix if dtype == torch.float32 else matrix.to(dtype)


def _triton_limit(estimates, references, zero_mean, eps):
    from pyaudiok.kernels.si_sdr import MAX_SOURCES
    n = max(estimates.shape[1], references.shape[1])
    return None if n <= MAX_SOURCES else f"{n} sources exceed the Triton kernel's limit of {MAX_SOURCES}"


MATRIX = dispatch.op("si_sdr_matrix")
register_backends(MATRIX, reference=si_sdr_matrix_reference,
                  cpu=_cpu_matrix, cpu_dtypes=dispatch.FLOAT_DTYPES,
                  triton=_triton_matrix, triton_constraint=_triton_limit)


# ----------------------------------------------------------------------------------------------
# Public API.

def _check_pair(estimates, references) -> tuple[torch.Tensor, torch.Tensor]:
    estimates = _checks.float_tensor("estimates", estimates, ndim=3, layout="[B, N, T]")
    references = _checks.float_tensor("references", references, ndim=3, layout="[B, M, T]")
    _checks.same_dtype("references", references, "estimates", estimates)
    _checks.same_device("references", references, "estimates", estimates)
    _checks.dim_size("references", references, 0, estimates.shape[0], "estimates' batch size B")
    _checks.dim_size("references", references, 2, estimates.shape[2], "estimates' length T")
    if estimates.shape[2] == 0:
        raise ValueError("estimates and references must have T >= 1 samples; got T = 0")
    return estimates, references


def _check_options(zero_mean, eps) -> tuple[bool, float]:
    if not isinstance(zero_mean, bool):  # bool("False") is True: only a real bool is taken
        raise TypeError(f"zero_mean must be a bool; got {type(zero_mean).__name__}")
    return zero_mean, _checks.positive_float("eps", eps)


# Pairs above this many dB are recomputed from their signals (float32 and half inputs). The fused
# statistics give ‖e − α r‖² as ee − 2α er + α² rr, which cancels as e nears a multiple of r: with
# float32 products the noise energy is off by ~1e-8·ee, so an 80 dB pair came out at 73.6 dB (C++)
# and 110 dB (Triton). Below this the error is < 0.001 dB; the training loss clips at 30 dB.
EXACT_ABOVE_DB = 30.0


def _high_pairs(matrix: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (matrix > EXACT_ABOVE_DB).nonzero(as_tuple=True)


def _pairs(estimates, references, where) -> tuple[torch.Tensor, torch.Tensor]:
    """The signals of the pairs `where`, in float32 at least (the formula forms e − α r itself)."""
    b, n, m = where
    return estimates[b, n].float(), references[b, m].float()


def _pair_formula(e: torch.Tensor, r: torch.Tensor, zero_mean: bool, eps: float) -> torch.Tensor:
    """The reference formula on pairs of rows e[P, T], r[P, T] -> [P]."""
    return si_sdr_matrix_reference(e[:, None], r[:, None], zero_mean, eps)[:, 0, 0]


# The recomputation as an op of its own (forward and backward): which pairs it touches is data, so
# it stays one opaque node under torch.compile instead of splitting the graph.
@torch.library.custom_op("pyaudiok::si_sdr_exact_high", mutates_args=())
def _exact_high(matrix: torch.Tensor, estimates: torch.Tensor, references: torch.Tensor, zero_mean: bool,
                eps: float) -> torch.Tensor:
    out = matrix.clone()
    where = _high_pairs(matrix)
    if where[0].numel():
        out[where] = _pair_formula(*_pairs(estimates, references, where), zero_mean, eps).to(out.dtype)
    return out


@torch.library.custom_op("pyaudiok::si_sdr_exact_high_backward", mutates_args=())
def _exact_high_backward(grad: torch.Tensor, matrix: torch.Tensor, estimates: torch.Tensor,
                         references: torch.Tensor, zero_mean: bool,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the gradient to the fused matrix: zero on the recomputed pairs, and theirs to the signals)."""
    g_matrix, d_e, d_r = grad.clone(), torch.zeros_like(estimates), torch.zeros_like(references)
    where = _high_pairs(matrix)
    if where[0].numel():
        g_matrix[where] = 0
        b, n, m = where
        # torch.func: an op's kernel runs below autograd, where tensors record no graph
        _, pull_back = torch.func.vjp(lambda e, r: _pair_formula(e, r, zero_mean, eps),
                                      *_pairs(estimates, references, where))
        g_e, g_r = pull_back(grad[where].float())
        d_e.index_put_((b, n), g_e.to(d_e.dtype), accumulate=True)
        d_r.index_put_((b, m), g_r.to(d_r.dtype), accumulate=True)
    return g_matrix, d_e, d_r


@_exact_high.register_fake
def _(matrix, estimates, references, zero_mean, eps):
    return torch.empty_like(matrix)


@_exact_high_backward.register_fake
def _(grad, matrix, estimates, references, zero_mean, eps):
    return torch.empty_like(grad), torch.empty_like(estimates), torch.empty_like(references)


def _exact_high_setup(ctx, inputs, output):
    matrix, estimates, references, zero_mean, eps = inputs
    ctx.save_for_backward(matrix, estimates, references)
    ctx.zero_mean, ctx.eps = zero_mean, eps


@first_order("si_sdr_matrix")
def _exact_high_grad(ctx, grad):
    matrix, estimates, references = ctx.saved_tensors
    g_matrix, d_e, d_r = _exact_high_backward(grad.contiguous(), matrix, estimates, references, ctx.zero_mean,
                                              ctx.eps)
    return (g_matrix, d_e if ctx.needs_input_grad[1] else None, d_r if ctx.needs_input_grad[2] else None,
            None, None)


_exact_high.register_autograd(_exact_high_grad, setup_context=_exact_high_setup)


def _exact_where_high(matrix: torch.Tensor, estimates: torch.Tensor, references: torch.Tensor, zero_mean: bool,
                      eps: float) -> torch.Tensor:
    """`matrix` with its pairs above EXACT_ABOVE_DB recomputed by the reference formula, differentiable
    through both. Finding them reads the matrix back: one host-device synchronisation on a GPU."""
    if estimates.dtype == torch.float64:
        return matrix  # float64 statistics: exact enough at any SI-SDR
    if not torch.compiler.is_compiling() and not bool((matrix.detach() > EXACT_ABOVE_DB).any()):
        return matrix  # eager and nothing to recompute: no op call (its clone and lookup)
    return _exact_high(matrix, estimates, references, zero_mean, eps)


def _matrix(estimates, references, zero_mean: bool, eps: float, exact_high: bool = True) -> torch.Tensor:
    matrix = MATRIX(estimates, references, zero_mean, eps, device=estimates.device, dtype=estimates.dtype)
    return _exact_where_high(matrix, estimates, references, zero_mean, eps) if exact_high else matrix


def si_sdr_matrix(estimates: torch.Tensor, references: torch.Tensor, *, zero_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """SI-SDR in dB of every estimate against every reference: [B, N, T] × [B, M, T] -> [B, N, M].
    Differentiable with respect to both inputs."""
    estimates, references = _check_pair(estimates, references)
    zero_mean, eps = _check_options(zero_mean, eps)
    return _matrix(estimates, references, zero_mean, eps)


class PITResult(NamedTuple):
    si_sdr: torch.Tensor       # [B] mean SI-SDR (dB) of the best assignment
    permutation: torch.Tensor  # [B, N] int64: estimate n is assigned reference permutation[b, n]
    matrix: torch.Tensor       # [B, N, M] the SI-SDR matrix


@functools.cache
def _assignments(N: int, M: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every assignment of N estimates to distinct references, [P, N], and the positions of its
    pairs in a flattened [N, M] matrix. Built once per shape and device: no host-to-device copy
    per call."""
    candidates = torch.tensor(list(itertools.permutations(range(M), N)), dtype=torch.int64).reshape(-1, N)
    flat = candidates + M * torch.arange(N)
    return candidates.to(device), flat.to(device)


if extension_loaded():
    @torch.library.register_fake("pyaudiok::pit_assign_cpu")
    def _(scores):
        return scores.new_empty(scores.shape[:2], dtype=torch.int64)

    @torch.library.register_fake("pyaudiok::pit_si_sdr_cpu")
    def _(estimates, references, zero_mean, eps):
        B, N, M = estimates.shape[0], estimates.shape[1], references.shape[1]
        return estimates.new_empty(B), estimates.new_empty(B, N, dtype=torch.int64), estimates.new_empty(B, N, M)


def _fused_cpu_pit(estimates: torch.Tensor, references: torch.Tensor, zero_mean: bool, eps: float):
    """The whole PIT in one C++ call, where it gives the same result as the composite route: CPU
    float32/float64 inputs, the cpu backend chosen, at most 8 references, no gradient to build
    (evaluation; ~0.1 ms of per-op overhead saved at B = 8, N = 3). None elsewhere."""
    if (estimates.device.type != "cpu" or estimates.dtype not in (torch.float32, torch.float64)
            or references.shape[1] > EXHAUSTIVE_MAX_SOURCES
            or (torch.is_grad_enabled() and (estimates.requires_grad or references.requires_grad))
            or MATRIX.select(estimates.device, estimates.dtype,
                             (estimates, references, zero_mean, eps)).backend != "cpu"):
        return None
    si_sdr, permutation, matrix = cpp_op("pit_si_sdr_cpu")(estimates, references, zero_mean, eps)
    return PITResult(si_sdr, permutation, matrix)


def _best_total(pairs: torch.Tensor) -> torch.Tensor:
    """pairs[B, P, N], the scores of every assignment's pairs -> [B] index of the best assignment.
    NaN and −inf scores (diverged estimates) rank below every finite one and +inf above, as in the
    Hungarian route: totals compare by their count of such pairs first, then by their finite sum, so
    one NaN pair does not make every total NaN. The first among equal totals wins (argmax)."""
    finite = pairs.isfinite()
    classes = torch.where(finite, 0, torch.where(pairs == math.inf, 1, -1)).sum(-1)  # [B, P]
    totals = pairs.where(finite, 0).sum(-1)
    return totals.masked_fill(classes < classes.amax(-1, keepdim=True), -math.inf).argmax(-1)


def _best_assignment(scores: torch.Tensor) -> torch.Tensor:
    """[B, N, M] -> [B, N] reference index per estimate, distinct, maximising the total score."""
    B, N, M = scores.shape
    if M <= EXHAUSTIVE_MAX_SOURCES and scores.device.type == "cpu" and extension_loaded():
        # One C++ call (csrc/cpu/si_sdr.cpp): the torch route below is four ops, ~40 µs at N = 3.
        return cpp_op("pit_assign_cpu")(scores.detach() if scores.dtype in (torch.float32, torch.float64)
                                        else scores.detach().float())
    if M <= EXHAUSTIVE_MAX_SOURCES:  # on the device, without a sync: gather, sum, argmax
        candidates, flat = _assignments(N, M, scores.device)
        return candidates[_best_total(scores.detach().reshape(B, N * M)[:, flat])]
    import numpy as np
    from scipy.optimize import linear_sum_assignment
    best = []
    for item in scores.detach().double().cpu().numpy():
        # scipy rejects NaN and infinite entries (diverged estimates): a NaN pair is taken as the worst.
        item = np.nan_to_num(item, nan=-1e30, posinf=1e30, neginf=-1e30)
        rows, cols = linear_sum_assignment(item, maximize=True)
        best.append(cols[rows.argsort()])
    return torch.from_numpy(np.array(best, dtype=np.int64)).to(scores.device).reshape(B, N)


def pit_si_sdr(estimates: torch.Tensor, references: torch.Tensor, *, zero_mean: bool = True,
               eps: float = 1e-8) -> PITResult:
    """Permutation-invariant SI-SDR: estimates[B, N, T] are assigned to distinct references[B, M, T]
    (N ≤ M) so that the mean SI-SDR is highest; gradients flow through the chosen pairs."""
    return _pit(estimates, references, zero_mean, eps, exact_high=True)


def _pit(estimates, references, zero_mean, eps, exact_high: bool) -> PITResult:
    """pit_si_sdr; without `exact_high` the pairs above EXACT_ABOVE_DB keep the fused value (for a loss
    that clips there: no host-device synchronisation on a GPU)."""
    estimates, references = _check_pair(estimates, references)
    zero_mean, eps = _check_options(zero_mean, eps)
    if estimates.shape[1] > references.shape[1]:
        raise ValueError(f"estimates must not outnumber references: N = {estimates.shape[1]} > "
                         f"M = {references.shape[1]}")
    if estimates.shape[1] == 0:
        raise ValueError("estimates must hold at least one source (N >= 1)")
    fused = _fused_cpu_pit(estimates, references, zero_mean, eps)
    if fused is not None:
        if not exact_high:
            return fused
        matrix = _exact_where_high(fused.matrix, estimates, references, zero_mean, eps)
        if matrix is fused.matrix:  # nothing recomputed
            return fused
        # else its matrix with the high pairs recomputed, assigned again below
    else:
        matrix = _matrix(estimates, references, zero_mean, eps, exact_high)
    permutation = _best_assignment(matrix)
    chosen = matrix.gather(2, permutation[..., None])[..., 0]  # [B, N]
    return PITResult(chosen.mean(-1), permutation, matrix)


def neg_si_sdr_loss(estimates: torch.Tensor, references: torch.Tensor, *, clip_db: float | None = 30.0,
                    zero_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Training loss: −(permutation-invariant SI-SDR), each pair's SI-SDR clipped at `clip_db`
    (None: no clipping) so that pairs already separated stop pulling; mean over the batch."""
    if clip_db is not None and (isinstance(clip_db, bool) or not isinstance(clip_db, (int, float))
                                or math.isnan(clip_db)):
        raise ValueError(f"clip_db must be a number (dB) or None; got {clip_db!r}")
    # Pairs above the clip take no part: their exact values are not needed (nor their synchronisation).
    exact_high = clip_db is None or clip_db > EXACT_ABOVE_DB
    result = _pit(estimates, references, zero_mean, eps, exact_high)
    chosen = result.matrix.gather(2, result.permutation[..., None])[..., 0]
    if clip_db is not None:
        chosen = chosen.clamp_max(clip_db)
    return -chosen.mean()
