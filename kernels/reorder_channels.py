"""Triton kernels of CHARM's fused reordering (pyaudiok/ops/reorder_channels.py documents the op and
its raw ops).

Forward, one launch: a program per item × tile of T computes the item's masked [K, C] softmax in
registers (fp32), then y = A x for its tile with tl.dot (fp32 accumulation); the first tile's
program writes A. Backward, two launches: dx = Aᵀ dy per item × tile of T, and per item
dlogits = A ⊙ (G − Σ_c A ⊙ G) with G = dy xᵀ (+ dA) summed over the tiles of T in a loop (a program
owns its item's sum: deterministic, no partial buffers). Both recompute A in fp32 from the logits
(K·C exponentials, cheap beside the products), so a half-precision A is never differentiated.

Sizes: K, C <= 128 (TRITON_MAX_CHANNELS), padded to powers of two >= 16 (tl.dot's minimum).
fp32 products as 3xTF32, or TF32 where torch's matmuls may use it (kernels.gpu.dot_precision).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch_checks as checks
from .gpu import cdiv, dot_block, dot_precision, launchable


@triton.jit
def _softmax(logits_ptr, mask_ptr, b, K, C, HAS_MASK: tl.constexpr, BLOCK_K: tl.constexpr,
             BLOCK_C: tl.constexpr):
    """Item b's A [BLOCK_K, BLOCK_C] in fp32: 0 on absent channels and in the padding."""
    k = tl.arange(0, BLOCK_K)
    c = tl.arange(0, BLOCK_C)
    present = c < C
    if HAS_MASK:
        present = present & (tl.load(mask_ptr + b * C + c, mask=c < C, other=0) != 0)
    inside = (k[:, None] < K) & present[None, :]
    s = tl.load(logits_ptr + (b * K + k[:, None]) * C + c[None, :], mask=inside, other=float("-inf")).to(tl.float32)
    top = tl.where(k < K, tl.max(s, 1), 0.0)  # padding rows are all −inf
    e = tl.exp(s - top[:, None])
    total = tl.where(k < K, tl.sum(e, 1), 1.0)
    return e / total[:, None]


@triton.jit
def _forward_kernel(logits_ptr, mask_ptr, x_ptr, y_ptr, a_ptr, K, C, T, HAS_MASK: tl.constexpr,
                    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, PREC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    A = _softmax(logits_ptr, mask_ptr, b, K, C, HAS_MASK, BLOCK_K, BLOCK_C)
    k = tl.arange(0, BLOCK_K)
    c = tl.arange(0, BLOCK_C)
    if tl.program_id(1) == 0:
        tl.store(a_ptr + (b * K + k[:, None]) * C + c[None, :], A.to(a_ptr.dtype.element_ty),
                 mask=(k[:, None] < K) & (c[None, :] < C))
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    x = tl.load(x_ptr + (b * C + c[:, None]) * T + t[None, :], mask=(c[:, None] < C) & (t[None, :] < T), other=0.0)
    y = tl.dot(A.to(x.dtype), x, input_precision=PREC)
    tl.store(y_ptr + (b * K + k[:, None]) * T + t[None, :], y.to(y_ptr.dtype.element_ty),
             mask=(k[:, None] < K) & (t[None, :] < T))


@triton.jit
def _dx_kernel(logits_ptr, mask_ptr, dy_ptr, dx_ptr, K, C, T, HAS_MASK: tl.constexpr, BLOCK_K: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, PREC: tl.constexpr):
    """dx[b, :, tile] = Aᵀ dy[b, :, tile]."""
    b = tl.program_id(0).to(tl.int64)
    A = _softmax(logits_ptr, mask_ptr, b, K, C, HAS_MASK, BLOCK_K, BLOCK_C)
    k = tl.arange(0, BLOCK_K)
    c = tl.arange(0, BLOCK_C)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    dy = tl.load(dy_ptr + (b * K + k[:, None]) * T + t[None, :], mask=(k[:, None] < K) & (t[None, :] < T),
                 other=0.0)
    dx = tl.dot(tl.trans(A.to(dy.dtype)), dy, input_precision=PREC)
    tl.store(dx_ptr + (b * C + c[:, None]) * T + t[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=(c[:, None] < C) & (t[None, :] < T))


@triton.jit
def _dlogits_kernel(logits_ptr, mask_ptr, dy_ptr, x_ptr, da_ptr, dl_ptr, K, C, T, HAS_MASK: tl.constexpr,
                    HAS_DA: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
                    PREC: tl.constexpr):
    """dlogits[b] = A ⊙ (G − Σ_c A ⊙ G), G = Σ over T of dy xᵀ (+ dA)."""
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    c = tl.arange(0, BLOCK_C)
    G = tl.zeros((BLOCK_K, BLOCK_C), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        dy = tl.load(dy_ptr + (b * K + k[:, None]) * T + t[None, :], mask=(k[:, None] < K) & (t[None, :] < T),
                     other=0.0)
        x = tl.load(x_ptr + (b * C + c[:, None]) * T + t[None, :], mask=(c[:, None] < C) & (t[None, :] < T),
                    other=0.0)
        G = tl.dot(dy, tl.trans(x), G, input_precision=PREC)
    inside = (k[:, None] < K) & (c[None, :] < C)
    offsets = (b * K + k[:, None]) * C + c[None, :]
    if HAS_DA:
        G += tl.load(da_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    A = _softmax(logits_ptr, mask_ptr, b, K, C, HAS_MASK, BLOCK_K, BLOCK_C)
    dl = A * (G - tl.sum(A * G, 1)[:, None])
    tl.store(dl_ptr + offsets, dl.to(dl_ptr.dtype.element_ty), mask=inside)


def _config(logits: Tensor, x: Tensor, mask: Tensor | None) -> dict:
    """Block sizes, warps and flags of a launch."""
    K, C = logits.shape[1:]
    block_k, block_c = dot_block(K), dot_block(C)
    wide = max(block_k, block_c) > 64
    block_t = dot_block(x.shape[2], 32 if wide else 64)
    return {"HAS_MASK": mask is not None, "BLOCK_K": block_k, "BLOCK_C": block_c, "BLOCK_T": block_t,
            "PREC": dot_precision(x.dtype), "num_warps": 8 if wide else 4}


def _mask_arg(mask: Tensor | None, logits: Tensor) -> Tensor:
    """The mask as bytes; an absent mask's slot gets a tensor of its own (never read), not an input's."""
    return mask.view(torch.uint8) if mask is not None else logits.new_empty(1, dtype=torch.uint8)


def _checked(logits: Tensor, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """logits[B, K, C], x[B, C, T] and mask[B, C] (bool) or None, checked to agree, contiguous."""
    B, _, C = checks.shape("logits", logits, "[B, K, C]", None, None, None)
    checks.shape("x", x, "[B, C, T]", B, C, None)
    checks.device("x", x, logits)
    if mask is not None:
        checks.shape("mask", mask, "[B, C]", B, C)
        checks.dtype("mask", mask, (torch.bool,))
        checks.device("mask", mask, logits)
    return checks.dense(logits, x, mask)


def reorder_channels_forward(logits: Tensor, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """logits[B, K, C], x[B, C, T] (one dtype), mask[B, C] bool or None -> (y[B, K, T], A)."""
    logits, x, mask = _checked(logits, x, mask)
    B, K, C = logits.shape
    T = x.shape[2]
    y = x.new_empty((B, K, T))
    A = torch.empty_like(logits)
    cfg = _config(logits, x, mask)
    if B * K:  # T = 0: one empty tile, whose program writes A
        tiles = max(1, cdiv(T, cfg["BLOCK_T"]))
        launchable(_forward_kernel)[(B, tiles)](logits, _mask_arg(mask, logits), x, y, A, K, C, T, **cfg)
    return y, A


def reorder_channels_backward(dy: Tensor, dA: Tensor | None, x: Tensor, logits: Tensor,
                              mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """(dlogits, dx) of reorder_channels_forward for the output gradients dy and dA (or None)."""
    logits, x, mask = _checked(logits, x, mask)
    B, K, C = logits.shape
    checks.shape("dy", dy, "[B, K, T]", B, K, x.shape[2])
    checks.device("dy", dy, logits)
    if dA is not None:
        checks.shape("dA", dA, "[B, K, C]", B, K, C)
        checks.device("dA", dA, logits)
    dy, dA = checks.dense(dy, dA)
    T = x.shape[2]
    dlogits, dx = torch.empty_like(logits), torch.empty_like(x)
    cfg = _config(logits, x, mask)
    m = _mask_arg(mask, logits)
    if B * C and T:
        if K:
            launchable(_dx_kernel)[(B, cdiv(T, cfg["BLOCK_T"]))](logits, m, dy, dx, K, C, T, **cfg)
        else:
            dx.zero_()
    if B * K:
        da = dA if dA is not None else logits.new_empty(1)
        launchable(_dlogits_kernel)[(B,)](logits, m, dy, x, da, dlogits, K, C, T, HAS_DA=dA is not None, **cfg)
    return dlogits, dx


__all__ = ["reorder_channels_forward", "reorder_channels_backward"]
