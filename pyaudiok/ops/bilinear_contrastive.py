"""Bilinear contrastive loss, the objective of COLA (DESIGN §6).

`bilinear_contrastive_loss(anchors[B, D], positives[B, D], weight[D, D])`: the bilinear logits
S = anchors @ W @ positivesᵀ ([B, B]), and for each anchor i the cross-entropy of row i of S against
its own positive i:  ℓ_i = logsumexp_j S_ij − S_ii.  `symmetric=True` averages it with the column
direction (each positive over all anchors): ½ (ℓ_i + logsumexp_j S_ji − S_ii). `reduction` is
"mean" (0 for an empty batch), "sum" or "none" ([B]).

Every fused backend goes through a registered pair of raw ops over S = Q Yᵀ, Q = anchors @ W,
which never hold [B, B]:

    rows_forward(X[B, D], Y[B, D], with_grad) -> (loss[B], Σ loss, lse[B], gX, gY)
        ℓ_i = lse_i − X_i·Y_i; with with_grad, (gX, gY) = ∇ Σ ℓ from the forward's pass over S
    rows_backward(g[B], X, Y, lse) -> (dX, dY)
        dX_i = g_i (Σ_j p_ij Y_j − Y_i),  dY_j = Σ_i g_i p_ij X_i − g_j X_j,  p_ij = exp(S_ij − lse_i)

with fp32 accumulation (fp64 for fp64). The column direction is the same pair with X and Y swapped.
The triton backend forms Q first (one GEMM whose gradients to anchors and W autograd gives) and
takes X = Q. The cpu backend's pair takes W as well, (X, Y, W, with_grad) -> (…, gX, gY, gW) and
(g, X, Y, W, lse) -> (dX, dY, dW) with S = (X W) Yᵀ, and forms Q a row block at a time beside that
block of S, so a training step holds no [B, D] array beyond the inputs and their gradients
(the column direction: X = positives, Y = anchors, Wᵀ, as Sᵀ = (P Wᵀ) Aᵀ).
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
from ._library import HALF_DTYPES, custom_op, first_order, register_autograd, triton_op, upcast_half
from ._row_blocks import block_rows, exp_ as _exp_, softmax_ as _softmax_

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

def _q_blocks(x: torch.Tensor, w: torch.Tensor):
    """(rows, x[rows], q = x[rows] w, a score buffer [len(rows), B]) per block of rows: one Q block
    and one score block allocated for all blocks, so no second one is ever alive."""
    B = x.shape[0]
    step = block_rows(B, B)
    s_buffer, q_buffer = x.new_empty(min(step, B), B), x.new_empty(min(step, B), w.shape[1])
    for r in range(0, B, step):
        xr = x[r:r + step]
        n = xr.shape[0]
        yield slice(r, r + n), xr, torch.mm(xr, w, out=q_buffer[:n]), s_buffer[:n]


def _block_gradients(p: torch.Tensor, xr: torch.Tensor, q: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                     gx_rows: torch.Tensor, gy: torch.Tensor, gw: torch.Tensor) -> None:
    """One row block's share of the gradients, p = G_rows = ∂/∂S of those rows (softmax weights
    minus the diagonal's one, times the row gradient): gx_rows = G y wᵀ, gw += xrᵀ G y, gy += Gᵀ q."""
    dq = p @ y
    torch.mm(dq, w.T, out=gx_rows)
    gw.addmm_(xr.T, dq)
    gy.addmm_(p.T, q)


@custom_op("pyaudiok::bilinear_contrastive_cpu", device_types="cpu")
def _cpu_forward(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, with_grad: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of S = (x w) yᵀ: (loss[B], total = Σ loss, lse, gx, gy, gw). Q = x w is formed a row
    block at a time, next to that block of S, and never whole. With with_grad, gx, gy, gw are the
    gradients of `total` (else empty), computed while each block of scores is at hand: a loss
    reduced by mean or sum then needs no second pass over S in the backward (3 GEMMs of B²D in all
    instead of 4), and no [B, D] temporary besides the gradients themselves."""
    B = x.shape[0]
    lse, diagonal = x.new_empty(B), x.new_empty(B)
    gx = torch.empty_like(x) if with_grad else x.new_empty(0)
    gy = torch.zeros_like(y) if with_grad else y.new_empty(0)
    gw = torch.zeros_like(w) if with_grad else w.new_empty(0)
    for rows, xr, q, s_out in _q_blocks(x, w):
        s = torch.mm(q, y.T, out=s_out)
        diagonal[rows] = s.diagonal(rows.start)
        p, lse[rows] = _softmax_(s, normalize=with_grad)
        if with_grad:
            p.diagonal(rows.start).sub_(1)  # − the one-hot target of each row
            _block_gradients(p, xr, q, y, w, gx[rows], gy, gw)
    loss = lse - diagonal
    return loss, loss.sum(), lse, gx, gy, gw


@custom_op("pyaudiok::bilinear_contrastive_cpu_backward", device_types="cpu")
def _cpu_backward(g: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                  lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dy, dw) of the row losses of _cpu_forward for the upstream gradient g[B]: S again, a row
    block at a time."""
    g = g.to(x.dtype)
    dx, dy, dw = torch.empty_like(x), torch.zeros_like(y), torch.zeros_like(w)
    for rows, xr, q, s_out in _q_blocks(x, w):
        gr = g[rows]
        p = _exp_(torch.addmm(lse[rows, None].neg(), q, y.T, out=s_out)).mul_(gr[:, None])
        p.diagonal(rows.start).sub_(gr)
        _block_gradients(p, xr, q, y, w, dx[rows], dy, dw)
    return dx, dy, dw


# ----------------------------------------------------------------------------------------------
# Fake (meta) implementations and autograd of the raw op pairs.

def _register(forward: str, backward: Callable[[], Callable]) -> None:
    """Fake + autograd for a backend's forward op (*inputs, with_grad) -> (loss, total, lse, *pre):
    inputs (x, y) for rows of S = x yᵀ, or (x, y, w) for rows of S = (x w) yᵀ, and pre the
    gradients of total to each input when with_grad (else empty). `backward()` gives that
    backend's backward op (g, *inputs, lse) -> the gradients of Σ g ⊙ loss to each input."""

    @torch.library.register_fake(forward)
    def _(*args):
        *inputs, with_grad = args
        x = inputs[0]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        rows = x.new_empty(x.shape[:1], dtype=acc)
        pre = tuple(torch.empty_like(t) if with_grad else t.new_empty(0) for t in inputs)
        return (rows, x.new_empty((), dtype=acc), torch.empty_like(rows)) + pre

    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)  # None for unused outputs: which of loss / total was used
        pre = list(output[3:]) if output[3].numel() else []
        # The gradients of total that came with the forward. In eager mode they are kept as detached
        # aliases (not saved tensors): the first backward scales them in place and hands them on as
        # the gradients, so a step holds no second copy of them, and a later backward through a
        # retained graph recomputes. Traced (fake or functional tensors) they are saved as usual.
        eager = bool(pre) and all(type(t) is torch.Tensor for t in output)
        ctx.pre = [t.detach() for t in pre] if eager else None
        ctx.inputs = len(inputs) - 1
        ctx.save_for_backward(*inputs[:-1], output[2], *([] if eager else pre))

    @first_order("bilinear_contrastive_loss")
    def grad(ctx, grad_loss, grad_total, *rest):
        saved = ctx.saved_tensors
        inputs, lse, saved_pre = saved[:ctx.inputs], saved[ctx.inputs], saved[ctx.inputs + 1:]
        # lse (and the pre-computed gradients) are auxiliary outputs: their gradients are not propagated.
        grads = None
        if grad_loss is not None:
            grads = backward()(grad_loss.contiguous(), *inputs, lse)
        if grad_total is not None:
            g = grad_total.to(inputs[0].dtype)
            if ctx.pre is not None:
                more, ctx.pre = [t.mul_(g) for t in ctx.pre], None
            elif saved_pre:
                more = [g * t for t in saved_pre]
            else:  # not pre-computed (or already handed on): the uniform row gradient through the backward op
                more = backward()(g.expand(inputs[0].shape[:1]).contiguous(), *inputs, lse)
            grads = more if grads is None else [a + b for a, b in zip(grads, more)]
        if grads is None:
            grads = [torch.zeros_like(t) for t in inputs]
        return (*grads, None)

    register_autograd(forward, grad, setup_context=setup_context)


def _register_backward_fake(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(g, *inputs_and_lse):
        return tuple(torch.empty_like(t) for t in inputs_and_lse[:-1])


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

def _fused(rows: Callable, weight_inside: bool = False):
    """The op from a backend's rows(*inputs, total). weight_inside: rows(x, y, w, total) over
    S = (x w) yᵀ, the weight applied a row block at a time (the column direction is the same with
    x, y swapped and wᵀ: Sᵀ = (P Wᵀ) Aᵀ); else rows(x, y, total) over S = x yᵀ after one Q = A W,
    whose gradients to A and W autograd gives."""
    def run(anchors, positives, weight, symmetric, reduction):
        total = reduction != "none"  # rows(..., total): Σ of the row losses, or the rows
        if weight_inside:
            out = rows(anchors, positives, weight, total)
            if symmetric:
                out = 0.5 * (out + rows(positives, anchors, weight.T, total))
        else:
            q = (anchors @ weight).contiguous()
            positives = positives.contiguous()
            out = rows(q, positives, total)
            if symmetric:
                out = 0.5 * (out + rows(positives, q, total))
        return (out / anchors.shape[0] if reduction == "mean" else out).to(anchors.dtype)
    return run


def _rows(get_forward: Callable[[], Callable]):
    """rows(*inputs, total): the row losses, or their sum (total); the sum's gradients come with the
    forward when they will be needed (see _cpu_forward)."""
    def run(*args):
        *inputs, total = args
        with_grad = total and torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        out = get_forward()(*inputs, with_grad)
        return out[1] if total else out[0]
    return run


# Below this batch, float32 inputs take the reference on the CPU automatically (see _cpu_auto_skip).
CPU_AUTO_MIN_BATCH = 2560


def _cpu_auto_skip(anchors, positives, weight, symmetric, reduction) -> str | None:
    """float32 on the CPU: the reference below B = 2 560 (measured faster).

    Fwd+bwd on the 2-core Zen 4, alternated in one process (bench/results/
    2026-11-27_cpu_contrastive_small_batches.txt): from B = 8 to 2 048, at D = 128 and 512, the
    reference is as fast as the cpu kernels or up to 1.5x faster, while its [B, B] logits stay in
    cache (16 MiB at 2 048). The kernels win from 3 072 on (1.20x and 1.28x; 1.8x at 4 096, D = 128;
    1.18x at 8 192, D = 512).
    Other dtypes are not measured and stay on the kernels; use_backend("cpu") keeps them anywhere."""
    return reference_faster_on_cpu(anchors.shape[0], anchors.dtype)


def reference_faster_on_cpu(batch: int, dtype: torch.dtype) -> str | None:
    """The measured rule of _cpu_auto_skip: why the reference is faster on the CPU, or None."""
    if dtype == torch.float32 and batch < CPU_AUTO_MIN_BATCH:
        return f"below B = {CPU_AUTO_MIN_BATCH} the reference is faster on the CPU"
    return None


OP = dispatch.op("bilinear_contrastive_loss")
OP.register("reference", bilinear_contrastive_reference, devices=("cpu", "cuda"), dtypes=dispatch.FLOAT_DTYPES)
# Pure ATen: available wherever torch is, extension or not.
OP.register("cpu", upcast_half(_fused(_rows(lambda: _cpu_forward), weight_inside=True)), devices=("cpu",),
            dtypes=HALF_DTYPES + (torch.float32, torch.float64), auto_skip=_cpu_auto_skip)
# Below this batch, float32 inputs take the reference on a GPU automatically (see _gpu_auto_skip).
TRITON_AUTO_MIN_BATCH = 8192


def _gpu_auto_skip(anchors, positives, weight, symmetric, reduction) -> str | None:
    """float32 on a GPU: the reference below B = 8 192 or with TF32 allowed (measured faster).

    Where cuBLAS's products in the reference beat the fused kernels on an H200 (fp32, D = 512,
    bench/results/2026-11-27_h200_session4.txt): with TF32 allowed at every batch size (0.66-0.68x),
    and in exact fp32 below B = 8 192 (0.50x at 1 024, 0.80x at 4 096; 1.39x at 8 192, 1.59x at
    16 384). The fused kernels keep their O(B) memory when requested: use_backend("triton").
    Half-precision inputs are not measured and stay on the kernels."""
    if anchors.device.type != "cuda":
        return None
    return reference_faster_on_gpu(anchors.shape[0], anchors.dtype, torch.backends.cuda.matmul.allow_tf32)


def reference_faster_on_gpu(batch: int, dtype: torch.dtype, tf32: bool) -> str | None:
    """The measured rule of _gpu_auto_skip: why the reference is faster on a GPU, or None."""
    if dtype != torch.float32:
        return None
    if tf32:
        return "with TF32 allowed, the reference's cuBLAS products are faster"
    if batch < TRITON_AUTO_MIN_BATCH:
        return f"below B = {TRITON_AUTO_MIN_BATCH} the reference's cuBLAS products are faster"
    return None


# The same blocked algorithm on tensor cores (3xTF32 for fp32; kernels/bilinear_contrastive.py).
OP.register("triton", _fused(_rows(_triton_forward)), devices=("cuda", "cpu"),
            dtypes=(torch.float32, torch.float16, torch.bfloat16), availability=backends.triton_reason,
            auto_skip=_gpu_auto_skip)


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
