"""The log-sum-exp of negative scaled squared distances to the rows of a table, and the log-softmax
(cross-entropy) built on it: Wavesplit's speaker loss over the speaker table (DESIGN §9, kernel b).

    distance_logsumexp(vectors[..., d], table[S, d], *, alpha) -> lse[...]
        lse = log Σ_s exp(−α ‖h − e_s‖²)
    distance_nll(vectors[..., d], table[S, d], targets[..., J], *, alpha) -> nll[..., J]
        nll_j = −log softmax_s(−α ‖h − e_s‖²)[targets_j] = α ‖h − e_{targets_j}‖² + lse

A distance d(h, e) = α‖h − e‖² + β gives the same log-softmax for any β: a shift cancels. α is a
number or a one-element tensor (which then takes a gradient, e.g. a learnable exp(log α)).

The fused backends never hold the [R, S] matrix of distances (R vectors): the forward is one pass
over the table per block of vectors, the backward recomputes the probabilities. With
m = log Σ_s exp(2α h·e_s − α‖e_s‖²), lse = m − α‖h‖², p_s = exp(2α h·e_s − α‖e_s‖² − m) and the
upstream gradient g of lse:

    ∂/∂h   = 2α g (Σ_s p_s e_s − h)
    ∂/∂e_s = 2α Σ_rows g p_s (h − e_s)
    ∂/∂α   = −Σ_rows g Σ_s p_s ‖h − e_s‖²,   Σ_s p_s ‖h − e_s‖² = ‖h‖² + Σ_s p_s ‖e_s‖² − 2 h·Σ_s p_s e_s

Raw op pair of every fused backend (h [R, d] and the table contiguous, α a 0-d tensor in the
accumulation dtype, lse in it too: float64 for float64 inputs, else float32):

    forward(h, table, alpha, keep) -> (lse[R], m[R], P)
    backward(g[R], h, table, alpha, m, P) -> (dh, dtable, dalpha)

P is the [R, S] matrix of probabilities when `keep` is set (else empty), for a backward without
the recomputing product. The cpu backend keeps it for a forward that will be differentiated when
S <= d, where P is no larger than the vectors themselves (Wavesplit: 101 speakers, d 512); the
Triton kernels never keep it (flash-style; `keep` must be False).

m, the log-sum-exp of the linear logits, is kept for the backward rather than recomputed from lse:
m = lse + α‖h‖² in fp32 would carry the rounding of two terms of thousands at large distances
(relative errors ~1e-4 on every probability of a row).

Backends: `reference` (the [R, S] distances, then torch.logsumexp: what a user writes), `cpu`
(blocks of rows through ATen's GEMMs, each block of scores reduced in place while in cache),
`triton` (kernels/distance_logsumexp.py: flash-style passes over table tiles, nothing of size
[R, S] in memory; for float32 the automatic choice takes it above 2^25 probabilities only, see
`_gpu_auto_skip`).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from .. import dispatch
from . import _checks
from ._library import (HALF_DTYPES, accumulation_dtype, custom_op, first_order, float32_under_autocast,
                       register_autograd, register_backends, triton_op, upcast_half)
from ._row_blocks import block_rows, exp_, softmax_

__all__ = ["distance_logsumexp", "distance_nll", "distance_logsumexp_reference"]

_TARGET_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def distance_logsumexp_reference(vectors: torch.Tensor, table: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The definition in plain torch: every distance, then a logsumexp over the table (fp32 or fp64)."""
    acc = accumulation_dtype(vectors.dtype)
    h, e = vectors.to(acc), table.to(acc)
    distances = h.square().sum(-1, keepdim=True) + e.square().sum(-1) - 2 * h @ e.T
    return torch.logsumexp(-alpha.to(acc) * distances, -1)


# ----------------------------------------------------------------------------------------------
# cpu backend: blocks of rows through ATen's GEMMs. The linear logits 2α h·e_s − α‖e_s‖² of a block
# are one addmm with the table scaled by 2α and the bias row −α‖e‖²; the block is then reduced in
# place. Three GEMMs of R·S·d in a forward and backward, as many as the reference, when P is kept
# (S <= d); a fourth recomputes the scores in the backward otherwise, so memory stays O(block · S).

def _scaled_table(table: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(2α·table, −α‖e‖² per row, ‖e‖² per row)."""
    squares = table.square().sum(1)
    return table * (2 * alpha), squares * -alpha, squares


def _blocks(h: torch.Tensor, width: int, whole: torch.Tensor | None = None):
    """(rows, h[rows], a score buffer [len(rows), width]) per block of rows: one buffer for all, or
    the block's rows of `whole` ([R, width]) when given."""
    R = h.shape[0]
    step = block_rows(R, width)
    buffer = h.new_empty(min(step, R), width) if whole is None else None
    for r in range(0, R, step):
        hr = h[r:r + step]
        rows = slice(r, r + hr.shape[0])
        yield rows, hr, buffer[:hr.shape[0]] if whole is None else whole[rows]


def _row_squares(t: torch.Tensor) -> torch.Tensor:
    """‖t_r‖² per row: one pass over t, no temporary of its size."""
    return torch.linalg.vector_norm(t, dim=1).square_()


@custom_op("pyaudiok::distance_logsumexp_cpu", device_types="cpu")
def _cpu_forward(h: torch.Tensor, table: torch.Tensor, alpha: torch.Tensor,
                 keep: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scaled, bias, _ = _scaled_table(table, alpha)
    m = h.new_empty(h.shape[0])
    probabilities = h.new_empty(h.shape[0], table.shape[0]) if keep else h.new_empty(0)
    for rows, hr, buffer in _blocks(h, table.shape[0], probabilities if keep else None):
        _, m[rows] = softmax_(torch.addmm(bias, hr, scaled.T, out=buffer), normalize=keep)
    return m - alpha * _row_squares(h), m, probabilities


@custom_op("pyaudiok::distance_logsumexp_cpu_backward", device_types="cpu")
def _cpu_backward(g: torch.Tensor, h: torch.Tensor, table: torch.Tensor, alpha: torch.Tensor,
                  m: torch.Tensor, probabilities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per block, G = g ⊙ P (the probabilities, kept or recomputed, scaled by the row gradients)
    gives everything: G E (dh), Gᵀ h and the column sums of G (dtable), and the terms of dα, with no
    [rows, d] temporary besides dh itself (d may exceed S many times over)."""
    g = g.to(h.dtype)
    scaled, bias, e_squares = _scaled_table(table, alpha)
    dh = torch.empty_like(h)
    weighted_h = torch.zeros_like(table)    # Σ_rows g p_s h
    mass = table.new_zeros(table.shape[0])  # Σ_rows g p_s
    h_dot_mean = h.new_zeros(())            # Σ_rows g h·Σ_s p_s e_s
    h_squares = h.new_zeros(())             # Σ_rows g Σ_s p_s ‖h‖²
    for rows, hr, buffer in _blocks(h, table.shape[0]):
        gr = g[rows]
        if probabilities.numel():
            weights = torch.mul(probabilities[rows], gr[:, None], out=buffer)
        else:
            torch.sub(bias, m[rows, None], out=buffer)
            weights = exp_(buffer.addmm_(hr, scaled.T)).mul_(gr[:, None])
        # g Σ_s p_s as summed here, not g: recomputed probabilities miss 1 by the rounding of scores
        # ~α‖h‖², and far from the origin Σ_s p_s (h − e_s) cancels to much less than h.
        row_mass = weights.sum(1)
        mean_e = torch.mm(weights, table, out=dh[rows])  # g Σ_s p_s e_s, turned into dh in place below
        h_dot_mean += torch.vdot(hr.reshape(-1), mean_e.reshape(-1))
        h_squares += row_mass @ _row_squares(hr)
        mean_e.addcmul_(hr, row_mass[:, None], value=-1).mul_(2 * alpha)
        weighted_h.addmm_(weights.T, hr)
        mass += weights.sum(0)
    dtable = (weighted_h - table * mass[:, None]) * (2 * alpha)
    # Σ_rows g Σ_s p_s ‖h − e_s‖² = Σ g Σ_s p_s ‖h‖² + Σ_s mass_s ‖e_s‖² − 2 Σ g h·Σ_s p_s e_s
    spread = h_squares + mass @ e_squares - 2 * h_dot_mean
    return dh, dtable, -spread


# ----------------------------------------------------------------------------------------------
# Fakes and the autograd of a backend's raw op pair.

def _register(forward: str, backward_op: Callable[[], Callable]) -> None:
    @torch.library.register_fake(forward)
    def _(h, table, alpha, keep):
        lse = h.new_empty(h.shape[:1], dtype=alpha.dtype)
        return lse, torch.empty_like(lse), h.new_empty((h.shape[0], table.shape[0]) if keep else (0,))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:3], *output[1:])
        ctx.set_materialize_grads(False)  # m and P take no gradient

    @first_order("distance_logsumexp")
    def backward(ctx, grad, grad_m, grad_p):
        h, table, alpha, m, probabilities = ctx.saved_tensors
        if grad is None:
            return None, None, None, None
        return *backward_op()(grad.contiguous(), h, table, alpha, m, probabilities), None

    register_autograd(forward, backward, setup_context=setup_context)


def _register_backward_fake(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(g, h, table, alpha, m, probabilities):
        return torch.empty_like(h), torch.empty_like(table), torch.empty_like(alpha)


_register_backward_fake("pyaudiok::distance_logsumexp_cpu_backward")
_register("pyaudiok::distance_logsumexp_cpu", lambda: _cpu_backward)


def _triton_backward():
    return triton_op("distance_logsumexp_backward_triton", "distance_logsumexp", "lse_backward",
                     _register_backward_fake)


def _triton_forward():
    return triton_op("distance_logsumexp_triton", "distance_logsumexp", "lse_forward",
                     lambda q: _register(q, _triton_backward))


def _fused(get_forward: Callable[[], Callable], keeps_probabilities: bool):
    """The op from a backend's raw forward; `keeps_probabilities`: whether the backend keeps P for
    the backward where it is no larger than the vectors (S <= d) and a gradient will be taken."""
    def run(h, table, alpha):
        keep = (keeps_probabilities and table.shape[0] <= h.shape[1] and torch.is_grad_enabled()
                and any(t.requires_grad for t in (h, table, alpha)))
        return get_forward()(h.contiguous(), table.contiguous(), alpha, keep)[0]
    return run


OP = dispatch.op("distance_logsumexp")
# The cpu backend is pure ATen: available with or without the compiled extension.
# Half inputs computed in float32; lse stays float32, as the reference and the Triton kernels return it:
# distance_nll adds it to α‖h − e_t‖², and rounding a large lse to half first would cancel away the small
# NLL of a well-classified vector.
OP.register("cpu", upcast_half(_fused(lambda: _cpu_forward, keeps_probabilities=True), float32_outputs=(0,)),
            devices=("cpu",), dtypes=HALF_DTYPES + (torch.float32, torch.float64))
# Up to this many probabilities (vectors × table rows), float32 inputs take the reference on a GPU
# automatically (see _gpu_auto_skip).
GPU_REFERENCE_MAX_PROBABILITIES = 2**25


def _gpu_auto_skip(h, table, alpha) -> str | None:
    """float32 on a GPU: the reference up to 2^25 probabilities (measured faster).

    Fwd+bwd on an H200 (bench/results/2026-11-27_h200_session10.txt): the Triton kernels ran at 0.93×,
    0.72× and 0.63× the reference's speed at 16 000 × 16 × 32, 32 000 × 101 × 512 and
    32 000 × 1 000 × 256 (vectors × rows × d): the reference's cuBLAS products beat the kernels'
    3xTF32 dots, which the backward runs twice (probabilities recomputed for dh and for the table).
    The kernels hold no [R, S] matrix (15× less peak memory at the largest size), so they stay the
    choice above the bound, where the reference's matrices pass 128 MiB each. Half precision is not
    measured and stays on the kernels; use_backend("triton") keeps them anywhere."""
    return reference_faster_on_gpu(h.shape[0], table.shape[0], h.dtype) if h.device.type == "cuda" else None


def reference_faster_on_gpu(vectors: int, rows: int, dtype: torch.dtype) -> str | None:
    """The measured rule of _gpu_auto_skip: why the reference is faster on a GPU, or None."""
    if dtype == torch.float32 and vectors * rows <= GPU_REFERENCE_MAX_PROBABILITIES:
        return f"up to {GPU_REFERENCE_MAX_PROBABILITIES} probabilities the reference is faster on a GPU in float32"
    return None


register_backends(OP, reference=distance_logsumexp_reference, triton=_fused(_triton_forward, keeps_probabilities=False),
                  triton_auto_skip=_gpu_auto_skip)


# ----------------------------------------------------------------------------------------------
# Public API.

def _alpha_tensor(alpha, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """α as a 0-d tensor in `dtype` on `device` (differentiably, if it is a tensor)."""
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1 or not alpha.is_floating_point():
            raise TypeError(f"alpha must be a number or a one-element float tensor; got a {alpha.dtype} "
                            f"tensor of shape {_checks.shape_str(alpha.shape)}")
        if alpha.device != device:
            raise ValueError(f"alpha must be on the device of vectors ({device}); got {alpha.device}")
        return alpha.reshape(()).to(dtype)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise TypeError(f"alpha must be a finite number or a one-element float tensor; got {alpha!r}")
    return torch.tensor(float(alpha), dtype=dtype, device=device)


def _check(vectors, table) -> tuple[torch.Tensor, torch.Tensor]:
    vectors = _checks.float_tensor("vectors", vectors, min_ndim=1, layout="[..., d]")
    if vectors.shape[-1] == 0:
        raise ValueError(f"vectors must have shape [..., d] with d >= 1; got {_checks.shape_str(vectors.shape)}")
    table = _checks.float_tensor("table", table, ndim=2, layout="[S, d]")
    _checks.same_device("table", table, "vectors", vectors)
    _checks.holds_data("vectors", vectors)  # autocast has no meta device to ask about
    # Under autocast a softmax over distances runs in float32, as torch's log_softmax and cdist do.
    vectors, table = float32_under_autocast(vectors.device.type, vectors, table)
    _checks.same_dtype("table", table, "vectors", vectors)
    d = vectors.shape[-1]
    if table.shape[1] != d or table.shape[0] == 0:
        raise ValueError(f"table must have shape [S, d] = [S >= 1, {d}] (d: the last dim of vectors); got "
                         f"{_checks.shape_str(table.shape)}")
    return vectors, table


def _logsumexp(vectors: torch.Tensor, table: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The op on checked arguments (alpha from _alpha_tensor): [...] in the accumulation dtype."""
    flat = vectors.reshape(-1, vectors.shape[-1])
    return OP(flat, table, alpha, device=vectors.device, dtype=vectors.dtype).reshape(vectors.shape[:-1])


def distance_logsumexp(vectors: torch.Tensor, table: torch.Tensor, *, alpha) -> torch.Tensor:
    """log Σ_s exp(−α ‖h − e_s‖²) for each vector h of vectors[..., d] over the rows e_s of
    table[S, d] (S >= 1; same dtype and device). Returns [...] in the vectors' dtype; differentiable
    with respect to vectors, table and a tensor alpha. See the module doc."""
    vectors, table = _check(vectors, table)
    alpha = _alpha_tensor(alpha, accumulation_dtype(vectors.dtype), vectors.device)
    return _logsumexp(vectors, table, alpha).to(vectors.dtype)


def distance_nll(vectors: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, *, alpha) -> torch.Tensor:
    """−log softmax over the table rows of −α‖h − e‖², at the rows `targets[..., J]` (integers in
    [0, S), leading dims those of vectors[..., d]): α‖h − e_t‖² + distance_logsumexp. Returns
    [..., J] in the vectors' dtype; the cross-entropy of classifying h among the table's rows by
    distance (Wavesplit's global speaker loss, a prototype classifier)."""
    vectors, table = _check(vectors, table)
    targets = _checks.tensor("targets", targets, min_ndim=1, layout="[..., J]", dtypes=_TARGET_DTYPES)
    _checks.same_device("targets", targets, "vectors", vectors)
    if targets.shape[:-1] != vectors.shape[:-1]:
        raise ValueError(f"targets must have shape [..., J] with the leading dims of vectors "
                         f"{_checks.shape_str(vectors.shape[:-1])}; got {_checks.shape_str(targets.shape)}")
    S = table.shape[0]
    _checks.ints_within(targets, 0, S - 1, f"targets must hold table rows in [0, {S - 1}]")
    acc = accumulation_dtype(vectors.dtype)
    alpha_t = _alpha_tensor(alpha, acc, vectors.device)
    chosen = table[targets.long()].to(acc)                                   # [..., J, d]
    near = (vectors.to(acc)[..., None, :] - chosen).square().sum(-1)          # ‖h − e_t‖², [..., J]
    return (alpha_t * near + _logsumexp(vectors, table, alpha_t).to(acc)[..., None]).to(vectors.dtype)
