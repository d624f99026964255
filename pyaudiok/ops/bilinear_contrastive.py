"""Bilinear contrastive loss, the objective of COLA (DESIGN §6).

`bilinear_contrastive_loss(anchors[B, D], positives[B, D], weight[D, D])`: the bilinear logits
S = anchors @ W @ positivesᵀ ([B, B]), and for each anchor i the cross-entropy of row i of S against
its own positive i:  ℓ_i = logsumexp_j S_ij − S_ii.  `symmetric=True` averages it with the column
direction (each positive over all anchors): ½ (ℓ_i + logsumexp_j S_ji − S_ii). `reduction` is
"mean" (0 for an empty batch), "sum" or "none" ([B]).

Every fused backend first forms Q = anchors @ W ([B, D], one GEMM whose gradients to anchors and W
autograd gives), then a registered pair of raw ops over S = Q Yᵀ, which never hold [B, B]:

    rows_forward(X[B, D], Y[B, D], with_grad) -> (loss[B], Σ loss, lse[B], gX, gY)
        ℓ_i = lse_i − X_i·Y_i; with with_grad, (gX, gY) = ∇ Σ ℓ from the forward's pass over S
    rows_backward(g[B], X, Y, lse) -> (dX, dY)
        dX_i = g_i (Σ_j p_ij Y_j − Y_i),  dY_j = Σ_i g_i p_ij X_i − g_j X_j,  p_ij = exp(S_ij − lse_i)

with fp32 accumulation (fp64 for fp64). The column direction is the same pair with X and Y swapped.
Backends: `reference` (below), `cpu` (row blocks of S through ATen's GEMMs, memory O(block · B);
see `_cpu_forward`), `triton` (kernels/bilinear_contrastive.py: the same blocked algorithm, strips
of S through tensor-core GEMM kernels, 3xTF32 for fp32). Both do 3 B²D products for a mean or sum
loss, like the reference, which stores all of [B, B].
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import backends, dispatch
from . import _checks
from ._library import triton_op

__all__ = ["bilinear_contrastive_loss", "bilinear_contrastive_reference"]

REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_row
    total = per_row.sum()
    return total / max(per_row.shape[0], 1) if reduction == "mean" else total


# ----------------------------------------------------------------------------------------------
# Reference: the definition of the op (the plain PyTorch a user would write).

def bilinear_contrastive_reference(anchors, positives, weight, symmetric=False, reduction="mean"):
    acc = torch.float64 if anchors.dtype == torch.float64 else torch.float32
    logits = anchors.to(acc) @ weight.to(acc) @ positives.to(acc).T
    target = torch.arange(logits.shape[0], device=logits.device)
    per_row = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    if symmetric:
        per_row = 0.5 * (per_row + torch.nn.functional.cross_entropy(logits.T, target, reduction="none"))
    return _reduce(per_row, reduction).to(anchors.dtype)


# ----------------------------------------------------------------------------------------------
# cpu backend: blocks of rows of S = X Yᵀ through ATen's GEMMs (multithreaded, vectorised), so
# memory is O(block · B) instead of O(B²); exact (no approximation), any float dtype.

_BLOCK_ELEMENTS = 1 << 22  # 16 MiB of fp32 scores per row block (smaller blocks slow the GEMMs)


# exp of arguments below this underflows through float32's denormal range, which x86 CPUs compute
# tens of times slower (microcode assists); clamping there changes a probability by < 2e-38.
_EXP_FLOOR = -87.0


def _exp_(t: torch.Tensor) -> torch.Tensor:
    """exp in place, arguments clamped at _EXP_FLOOR (no denormal results)."""
    return t.clamp_min_(_EXP_FLOOR).exp_()


def _block_lse(s: torch.Tensor) -> torch.Tensor:
    """logsumexp over rows of a score block, without denormal exponentials."""
    top = s.amax(dim=1, keepdim=True)
    return _exp_(s - top).sum(1).log_().add_(top[:, 0])


def _row_blocks(B: int):
    step = max(1, min(B, _BLOCK_ELEMENTS // max(B, 1)))
    return range(0, B, step), step


@torch.library.custom_op("pyaudiok::bilinear_contrastive_cpu", mutates_args=(), device_types="cpu")
def _cpu_forward(x: torch.Tensor, y: torch.Tensor, with_grad: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss[B], total = Σ loss, lse, gx, gy). With with_grad, gx, gy are the gradients of `total`
    (else empty), computed while each block of scores is at hand: a loss reduced by mean or sum then
    needs no second pass over S in the backward (3 GEMMs of B²D in all instead of 4)."""
    B = x.shape[0]
    lse = x.new_empty(B)
    gx = torch.empty_like(x) if with_grad else x.new_empty(0)
    gy = -x if with_grad else y.new_empty(0)
    starts, step = _row_blocks(B)
    yt = y.T
    for r in starts:
        s = x[r:r + step] @ yt
        block_lse = _block_lse(s)
        lse[r:r + step] = block_lse
        if with_grad:
            p = _exp_(s.sub_(block_lse[:, None]))
            torch.mm(p, y, out=gx[r:r + step])
            gy.addmm_(p.T, x[r:r + step])
    if with_grad:
        gx.sub_(y)
    loss = lse - (x * y).sum(1)
    return loss, loss.sum(), lse, gx, gy


@torch.library.custom_op("pyaudiok::bilinear_contrastive_cpu_backward", mutates_args=(), device_types="cpu")
def _cpu_backward(g: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B = x.shape[0]
    g = g.to(x.dtype)
    dx = torch.empty_like(x)
    dy = -g[:, None] * x  # the diagonal's share; the softmax's share is accumulated below
    starts, step = _row_blocks(B)
    yt = y.T
    for r in starts:
        p = _exp_(torch.addmm(lse[r:r + step, None].neg(), x[r:r + step], yt)).mul_(g[r:r + step, None])
        torch.mm(p, y, out=dx[r:r + step])
        dy.addmm_(p.T, x[r:r + step])
    dx.sub_(g[:, None] * y)
    return dx, dy


# ----------------------------------------------------------------------------------------------
# Fake (meta) implementations and autograd of the raw op pairs.

def _register(forward: str, backward: Callable[[], Callable]) -> None:
    """Fake + autograd for a backend's forward op (x, y, with_grad) -> (loss, total, lse, gx, gy);
    `backward()` gives that backend's backward op."""

    @torch.library.register_fake(forward)
    def _(x, y, with_grad):
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        rows = x.new_empty(x.shape[:1], dtype=acc)
        pre = (torch.empty_like(x), torch.empty_like(y)) if with_grad else (x.new_empty(0), y.new_empty(0))
        return (rows, x.new_empty((), dtype=acc), torch.empty_like(rows)) + pre

    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)  # None for unused outputs: which of loss / total was used
        ctx.save_for_backward(inputs[0], inputs[1], *output[2:])

    def grad(ctx, grad_loss, grad_total, *rest):
        x, y, lse, *pre = ctx.saved_tensors
        # lse (and gx, gy) are auxiliary outputs for the backward; their gradients are not propagated.
        dx = dy = None
        if grad_loss is not None:
            dx, dy = backward()(grad_loss.contiguous(), x, y, lse)
        if grad_total is not None:
            g = grad_total.to(x.dtype)
            if pre[0].numel():
                gx, gy = g * pre[0], g * pre[1]
            else:  # the forward did not precompute them: the uniform row gradient through the backward op
                gx, gy = backward()(g.expand(x.shape[:1]).contiguous(), x, y, lse)
            dx, dy = (gx, gy) if dx is None else (dx + gx, dy + gy)
        if dx is None:
            dx, dy = torch.zeros_like(x), torch.zeros_like(y)
        return dx, dy, None

    torch.library.register_autograd(forward, grad, setup_context=setup_context)


def _register_backward_fake(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(g, x, y, lse):
        return torch.empty_like(x), torch.empty_like(y)


_register_backward_fake("pyaudiok::bilinear_contrastive_cpu_backward")
_register("pyaudiok::bilinear_contrastive_cpu", lambda: _cpu_backward)


def _triton_backward():
    return triton_op("bilinear_contrastive_backward_triton", "bilinear_contrastive", "rows_backward",
                     _register_backward_fake)


def _triton_forward():
    _triton_backward()
    return triton_op("bilinear_contrastive_triton", "bilinear_contrastive", "rows_forward",
                     lambda name: _register(name, _triton_backward))


# ----------------------------------------------------------------------------------------------
# Backend registry.

def _fused(rows: Callable):
    def run(anchors, positives, weight, symmetric, reduction):
        q = (anchors @ weight).contiguous()  # Q = A W: its gradients to A and W come from autograd
        positives = positives.contiguous()
        total = reduction != "none"  # rows(x, y, total): Σ of the row losses, or the rows
        out = rows(q, positives, total)
        if symmetric:
            out = 0.5 * (out + rows(positives, q, total))
        return (out / anchors.shape[0] if reduction == "mean" else out).to(anchors.dtype)
    return run


def _rows(get_forward: Callable[[], Callable]):
    """rows(x, y, total): the row losses, or their sum (total); the sum's gradients come with the
    forward when they will be needed (see _cpu_forward)."""
    def run(x, y, total):
        with_grad = total and torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
        out = get_forward()(x, y, with_grad)
        return out[1] if total else out[0]
    return run


OP = dispatch.op("bilinear_contrastive_loss")
OP.register("reference", bilinear_contrastive_reference, devices=("cpu", "cuda"), dtypes=dispatch.FLOAT_DTYPES)
# Pure ATen: available wherever torch is, extension or not.
OP.register("cpu", _fused(_rows(lambda: _cpu_forward)), devices=("cpu",), dtypes=(torch.float32, torch.float64))
# The same blocked algorithm on tensor cores (3xTF32 for fp32; kernels/bilinear_contrastive.py).
OP.register("triton", _fused(_rows(_triton_forward)), devices=("cuda", "cpu"),
            dtypes=(torch.float32, torch.float16, torch.bfloat16), availability=backends.triton_reason)


# ----------------------------------------------------------------------------------------------
# Public API.

def bilinear_contrastive_loss(anchors: torch.Tensor, positives: torch.Tensor, weight: torch.Tensor, *,
                              symmetric: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each anchor's bilinear logits anchors @ weight @ positivesᵀ against its own
    positive (the diagonal); see the module doc. anchors, positives [B, D], weight [D, D], one
    dtype and device. Returns a scalar ("mean", "sum"; 0 for B = 0) or [B] ("none"), in the
    inputs' dtype, differentiable with respect to all three inputs."""
    anchors = _checks.float_tensor("anchors", anchors, ndim=2, layout="[B, D]")
    positives = _checks.float_tensor("positives", positives, ndim=2, layout="[B, D]")
    weight = _checks.float_tensor("weight", weight, ndim=2, layout="[D, D]")
    for name, x in (("positives", positives), ("weight", weight)):
        _checks.same_dtype(name, x, "anchors", anchors)
        _checks.same_device(name, x, "anchors", anchors)
    B, D = anchors.shape
    if positives.shape != anchors.shape:
        raise ValueError(f"positives must have the shape of anchors [B, D] = {_checks.shape_str(anchors.shape)}; "
                         f"got {_checks.shape_str(positives.shape)}")
    if weight.shape != (D, D):
        raise ValueError(f"weight must have shape [D, D] = [{D}, {D}] to match anchors' D; "
                         f"got {_checks.shape_str(weight.shape)}")
    if D < 1:
        raise ValueError(f"anchors must have D >= 1 features; got {_checks.shape_str(anchors.shape)}")
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool; got {type(symmetric).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    if B == 0:  # nothing to contrast: defined without any backend, still differentiable (zero grads)
        zero = (anchors.sum() + positives.sum() + weight.sum()) * 0
        return anchors.new_zeros(0) + zero if reduction == "none" else zero
    return OP(anchors, positives, weight, symmetric, reduction, device=anchors.device, dtype=anchors.dtype)
