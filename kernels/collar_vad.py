"""Triton kernels of DIVE's collar-aware VAD loss (pyaudiok/ops/collar_vad.py documents the contract
and the raw ops).

Three passes, each one launch: the turn boundaries of every item (a frame edge where any reference
row changes), the kept frames (no boundary within the collar window), then per logit row the BCE
summed over its kept frames, or in the backward the gradient. Arithmetic in fp32; the rows' partial
sums are added in float64 by torch, so the loss does not depend on the launch order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ops.collar_vad import collar_window
from . import _launch_checks as checks
from .gpu import cdiv, launchable

BLOCK_T = 256


@triton.jit
def _boundary_kernel(ref_ptr, edge_ptr, S, T, BLOCK: tl.constexpr):
    """edge[b, e] = 1 where a reference row of item b changes value at frame edge e in [0, T]."""
    b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    changed = tl.zeros((BLOCK,), dtype=tl.int1)
    for s in range(S):
        row = ref_ptr + (b * S + s) * T
        before = tl.load(row + e - 1, mask=(e >= 1) & (e <= T), other=0.0)
        after = tl.load(row + e, mask=e < T, other=0.0)
        changed = changed | (before != after)
    tl.store(edge_ptr + b * (T + 1) + e, changed.to(tl.uint8), mask=e <= T)


@triton.jit
def _keep_kernel(edge_ptr, keep_ptr, T, lo, hi, BLOCK: tl.constexpr):
    """keep[b, t] = 1 where no boundary lies at an edge in [t + lo, t + hi] (hi < lo: every frame)."""
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    near = tl.zeros((BLOCK,), dtype=tl.int1)
    for j in range(lo, hi + 1):
        e = t + j
        near = near | (tl.load(edge_ptr + b * (T + 1) + e, mask=(e >= 0) & (e <= T) & (t < T), other=0) != 0)
    tl.store(keep_ptr + b * T + t, (~near).to(tl.uint8), mask=t < T)


@triton.jit
def _row(x_ptr, ref_ptr, order_ptr, N, S, T, BLOCK: tl.constexpr):
    """Logit row r's pointer, its reference row's pointer, whether it is selected (as a block: the
    interpreter takes no scalar in a block mask), and its item."""
    r = tl.program_id(0).to(tl.int64)
    b = r // N
    o = tl.load(order_ptr + r)
    selected = (tl.zeros((BLOCK,), dtype=tl.int64) + o) >= 0
    return x_ptr + r * T, ref_ptr + (b * S + tl.maximum(o, 0)) * T, selected, b


@triton.jit
def _bce_kernel(x_ptr, ref_ptr, order_ptr, keep_ptr, part_ptr, N, S, T, BLOCK: tl.constexpr):
    """part[r] = Σ over the kept frames of row r of BCE with logits (0 for an unselected row)."""
    x_row, y_row, selected, b = _row(x_ptr, ref_ptr, order_ptr, N, S, T, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK):
        t = t0 + tl.arange(0, BLOCK)
        ok = (t < T) & selected
        kept = ok & (tl.load(keep_ptr + b * T + t, mask=ok, other=0) != 0)
        x = tl.load(x_row + t, mask=kept, other=0.0).to(tl.float32)
        y = tl.load(y_row + t, mask=kept, other=0.0).to(tl.float32)
        loss = tl.maximum(x, 0.0) - x * y + tl.log(1.0 + tl.exp(-tl.abs(x)))
        acc += tl.where(kept, loss, 0.0)
    tl.store(part_ptr + tl.program_id(0), tl.sum(acc, 0))


@triton.jit
def _grad_kernel(x_ptr, ref_ptr, order_ptr, keep_ptr, scale_ptr, g_ptr, N, S, T, BLOCK: tl.constexpr):
    """g[r, t] = scale · (sigmoid(x) − y) on row r's kept frames, else 0."""
    x_row, y_row, selected, b = _row(x_ptr, ref_ptr, order_ptr, N, S, T, BLOCK)
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = t < T
    kept = ok & selected & (tl.load(keep_ptr + b * T + t, mask=ok & selected, other=0) != 0)
    x = tl.load(x_row + t, mask=kept, other=0.0).to(tl.float32)
    y = tl.load(y_row + t, mask=kept, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr)
    g = tl.where(kept, (1.0 / (1.0 + tl.exp(-x)) - y) * scale, 0.0)
    tl.store(g_ptr + tl.program_id(0).to(tl.int64) * T + t, g.to(g_ptr.dtype.element_ty), mask=ok)


def _checked(logits: Tensor, reference: Tensor, order: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The inputs, their shapes checked to agree, contiguous."""
    B, N, T = checks.shape("logits", logits, "[B, N, T]", None, None, None)
    checks.shape("reference", reference, "[B, S, T]", B, None, T)
    checks.shape("order", order, "[B, N]", B, N)
    checks.dtype("order", order, (torch.int64,))
    for name, t in (("reference", reference), ("order", order)):
        checks.device(name, t, logits)
    return checks.dense(logits, reference, order)


def collar_vad_forward(logits: Tensor, reference: Tensor, order: Tensor,
                       collar_frames: float) -> tuple[Tensor, Tensor, Tensor]:
    """logits[B, N, T], reference[B, S, T] (logits' dtype), order[B, N] int64 -> (loss in the logits'
    dtype, keep[B, T] uint8, count int64). Trusts index values (order): the public op checks them."""
    logits, reference, order = _checked(logits, reference, order)
    B, N, T = logits.shape
    S = reference.shape[1]
    lo, hi = collar_window(collar_frames, logits.shape[2])
    keep = torch.empty((B, T), dtype=torch.uint8, device=logits.device)
    part = torch.empty(B * N, dtype=torch.float32, device=logits.device)
    if B * T:
        edges = torch.empty((B, T + 1), dtype=torch.uint8, device=logits.device)
        launchable(_boundary_kernel)[(B, cdiv(T + 1, BLOCK_T))](reference, edges, S, T, BLOCK=BLOCK_T)
        launchable(_keep_kernel)[(B, cdiv(T, BLOCK_T))](edges, keep, T, lo, hi, BLOCK=BLOCK_T)
        if N:
            launchable(_bce_kernel)[(B * N,)](logits, reference, order, keep, part, N, S, T, BLOCK=BLOCK_T)
    else:
        part.zero_()
    count = ((order >= 0).sum(1) * keep.sum(1, dtype=torch.int64)).sum()
    loss = (part.double().sum() / count.clamp_min(1)).to(logits.dtype)
    return loss, keep, count


def collar_vad_backward(grad: Tensor, logits: Tensor, reference: Tensor, order: Tensor, keep: Tensor,
                        count: Tensor) -> Tensor:
    """The logits' gradient of collar_vad_forward's loss for the upstream gradient grad (a scalar).
    Trusts index values (order): the public op checks them."""
    logits, reference, order = _checked(logits, reference, order)
    B, N, T = logits.shape
    keep, = checks.dense(keep)
    checks.shape("keep", keep, "[B, T]", B, T)
    checks.device("keep", keep, logits)
    checks.dtype("keep", keep, (torch.uint8,))
    out = torch.empty_like(logits)
    scale = (grad.double() / count.clamp_min(1)).float().reshape(1)
    if out.numel():
        launchable(_grad_kernel)[(B * N, cdiv(T, BLOCK_T))](logits, reference, order, keep, scale, out, N,
                                                                   reference.shape[1], T, BLOCK=BLOCK_T)
    return out


__all__ = ["collar_vad_forward", "collar_vad_backward"]
