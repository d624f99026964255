"""Triton kernels of GroupNorm → FiLM → PReLU (pyaudiok/ops/group_norm_film_prelu.py documents the
math and the raw ops).

One program per (item, group): the group's C/G channel rows of x[B, C, T] are one contiguous block,
walked in [BLOCK_C, BLOCK_T] tiles. Forward: the statistics of x − K (K the first tile's mean),
each tile centred on its own mean and merged by Chan's formula, so that neither a large mean nor
E[x²] − E[x]² costs float32 its precision; then the output tile by tile. Backward: per channel
row the sums Σ∂v, Σ∂v·x̂ and the PReLU slope's Σ[v ≤ 0]·v·g, then grad_x. fp32 arithmetic
whatever x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ops import _checks
from . import _launch_checks as checks
from .gpu import launchable


@triton.jit
def _tile(c0, t0, per_group, T, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    """A tile's offsets from the group's start, and which of them lie in the group."""
    c = c0 + tl.arange(0, BLOCK_C)
    t = t0 + tl.arange(0, BLOCK_T)
    ok = (c[:, None] < per_group) & (t[None, :] < T)
    return c[:, None] * T + t[None, :], ok


@triton.jit
def _channels(gain_ptr, offset_ptr, prelu_ptr, row0, channel0, c0, per_group, n_prelu, BLOCK_C: tl.constexpr):
    """The gain, offset and PReLU slope of channels c0 + [0, BLOCK_C) of the group (0 past its end);
    row0 = b·C + g·C/G is the group's first row of gain and offset, channel0 = g·C/G its first channel."""
    c = c0 + tl.arange(0, BLOCK_C)
    c_ok = c < per_group
    gain = tl.load(gain_ptr + row0 + c, mask=c_ok, other=0.0)
    offset = tl.load(offset_ptr + row0 + c, mask=c_ok, other=0.0)
    alpha = tl.load(prelu_ptr + tl.where(n_prelu == 1, 0, channel0 + c), mask=c_ok, other=0.0)
    return c, c_ok, gain, offset, alpha


@triton.jit
def _pre_activation(x_ptr, base, c0, t0, per_group, T, hi, lo, a, o, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    """A tile's offsets, mask, x − mean (= (x − hi) − lo) and v = (x − mean)·a + o: one expression for
    the forward and both backward passes, so that they take the same side of PReLU's kink."""
    offs, ok = _tile(c0, t0, per_group, T, BLOCK_C, BLOCK_T)
    xc = (tl.load(x_ptr + base + offs, mask=ok, other=0.0).to(tl.float32) - hi) - lo
    return offs, ok, xc, xc * a[:, None] + o[:, None]


@triton.jit
def _group_norm_film_prelu_forward_kernel(x_ptr, gain_ptr, offset_ptr, prelu_ptr, y_ptr, stats_ptr, C, G, T,
                                          n_prelu, eps, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    pair = tl.program_id(0)
    per_group = C // G
    base = pair.to(tl.int64) * per_group * T
    # K: the first tile's mean, a centre near the group's values.
    offs, ok = _tile(0, 0, per_group, T, BLOCK_C, BLOCK_T)
    first = tl.load(x_ptr + base + offs, mask=ok, other=0.0).to(tl.float32)
    K = tl.sum(tl.sum(first, 1), 0) / tl.maximum(tl.sum(tl.sum(ok.to(tl.float32), 1), 0), 1.0)
    count = K * 0.0
    mean = K * 0.0
    m2 = K * 0.0
    for c0 in range(0, per_group, BLOCK_C):
        for t0 in range(0, T, BLOCK_T):
            offs, ok = _tile(c0, t0, per_group, T, BLOCK_C, BLOCK_T)
            d = tl.where(ok, tl.load(x_ptr + base + offs, mask=ok, other=0.0).to(tl.float32) - K, 0.0)
            n_b = tl.sum(tl.sum(ok.to(tl.float32), 1), 0)
            mean_b = tl.sum(tl.sum(d, 1), 0) / n_b
            e = tl.where(ok, d - mean_b, 0.0)
            total = count + n_b
            delta = mean_b - mean
            mean += delta * (n_b / total)
            m2 += tl.sum(tl.sum(e * e, 1), 0) + delta * delta * (count * n_b / total)
            count = total
    rstd = 1.0 / tl.sqrt(m2 / tl.maximum(count, 1.0) + eps)
    tl.store(stats_ptr + pair * 3, K)
    tl.store(stats_ptr + pair * 3 + 1, mean)
    tl.store(stats_ptr + pair * 3 + 2, rstd)
    row0 = pair.to(tl.int64) * per_group  # b·C + g·C/G: the group's first row of gain and offset
    channel0 = (pair % G) * per_group
    for c0 in range(0, per_group, BLOCK_C):
        _, _, gain, o, alpha = _channels(gain_ptr, offset_ptr, prelu_ptr, row0, channel0, c0, per_group, n_prelu,
                                         BLOCK_C)
        a = rstd * gain
        for t0 in range(0, T, BLOCK_T):
            # (named, not `_`: the compiler would carry `_` across the loop with two types)
            offs, ok, xc, v = _pre_activation(x_ptr, base, c0, t0, per_group, T, K, mean, a, o, BLOCK_C, BLOCK_T)
            y = tl.where(v > 0, v, alpha[:, None] * v)
            tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _group_norm_film_prelu_backward_kernel(g_ptr, x_ptr, gain_ptr, offset_ptr, prelu_ptr, stats_ptr, dx_ptr,
                                           d_gain_ptr, d_offset_ptr, d_prelu_ptr, C, G, T, n_prelu,
                                           BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    pair = tl.program_id(0)
    per_group = C // G
    base = pair.to(tl.int64) * per_group * T
    row0 = pair.to(tl.int64) * per_group
    channel0 = (pair % G) * per_group
    hi = tl.load(stats_ptr + pair * 3)
    lo = tl.load(stats_ptr + pair * 3 + 1)
    rstd = tl.load(stats_ptr + pair * 3 + 2)
    k1 = rstd * 0.0  # Σ ∂x̂ and Σ ∂x̂·x̂ over the group, ∂x̂ = ∂v·gain
    k2 = rstd * 0.0
    for c0 in range(0, per_group, BLOCK_C):
        c, c_ok, gain, o, alpha = _channels(gain_ptr, offset_ptr, prelu_ptr, row0, channel0, c0, per_group, n_prelu,
                                            BLOCK_C)
        a = rstd * gain
        s1 = tl.zeros((BLOCK_C,), dtype=tl.float32)
        s2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
        s3 = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            offs, ok, xc, v = _pre_activation(x_ptr, base, c0, t0, per_group, T, hi, lo, a, o, BLOCK_C, BLOCK_T)
            g = tl.load(g_ptr + base + offs, mask=ok, other=0.0).to(tl.float32)
            positive = v > 0
            dv = tl.where(ok, tl.where(positive, g, alpha[:, None] * g), 0.0)
            s1 += tl.sum(dv, 1)
            s2 += tl.sum(dv * xc, 1)
            s3 += tl.sum(tl.where(ok & ~positive, v * g, 0.0), 1)
        tl.store(d_offset_ptr + row0 + c, s1, mask=c_ok)
        tl.store(d_gain_ptr + row0 + c, s2 * rstd, mask=c_ok)
        tl.store(d_prelu_ptr + row0 + c, s3, mask=c_ok)
        k1 += tl.sum(gain * s1, 0)
        k2 += tl.sum(gain * s2, 0) * rstd
    # grad_x = (∂v·gain − (m1 + (x − mean)·m2))·rstd: ∂v·gain and m1 rounded alike (a group of one value
    # gets exactly 0).
    inv_n = 1.0 / tl.maximum((per_group * T).to(tl.float32), 1.0)
    m1 = k1 * inv_n
    m2 = rstd * k2 * inv_n
    for c0 in range(0, per_group, BLOCK_C):
        _, _, gain, o, alpha = _channels(gain_ptr, offset_ptr, prelu_ptr, row0, channel0, c0, per_group, n_prelu,
                                         BLOCK_C)
        a = rstd * gain
        for t0 in range(0, T, BLOCK_T):
            offs, ok, xc, v = _pre_activation(x_ptr, base, c0, t0, per_group, T, hi, lo, a, o, BLOCK_C, BLOCK_T)
            g = tl.load(g_ptr + base + offs, mask=ok, other=0.0).to(tl.float32)
            dv = tl.where(v > 0, g, alpha[:, None] * g)
            dxhat = dv * gain[:, None] + 0.0  # rounded on its own (+ 0 ends the multiply-add), as m1's terms were
            dx = (dxhat - (m1 + xc * m2)) * rstd
            tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=ok)


def _blocks(per_group: int, T: int) -> tuple[int, int]:
    """A tile of up to 2 048 values: up to 16 channel rows by up to 256 steps."""
    block_c = min(16, triton.next_power_of_2(max(per_group, 1)))
    return block_c, min(256, triton.next_power_of_2(max(T, 1)), max(16, 2048 // block_c))


def _checked(x: Tensor, gain: Tensor, offset: Tensor, prelu_weight: Tensor, num_groups: int):
    """x[B, C, T], gain and offset [B, C], prelu_weight [1] or [C], checked to agree, contiguous."""
    B, C, _ = checks.shape("x", x, "[B, C, T]", None, None, None)
    if num_groups < 1 or C % num_groups:
        raise ValueError(f"num_groups must be >= 1 and divide x's channel count C = {C}; got {num_groups}")
    checks.shape("gain", gain, "[B, C]", B, C)
    checks.shape("offset", offset, "[B, C]", B, C)
    P = checks.shape("prelu_weight", prelu_weight, "[P]", None)[0]
    if P not in (1, C):
        raise ValueError(f"prelu_weight must have shape [1] or [C] = [{C}]; got [{P}]")
    checks.dtype("x", x, (torch.float32, torch.float16, torch.bfloat16))
    for name, t in (("gain", gain), ("offset", offset), ("prelu_weight", prelu_weight)):
        checks.dtype(name, t, (torch.float32,))  # the public op folds the affine terms in float32
        checks.device(name, t, x)
    return checks.dense(x, gain, offset, prelu_weight)


def group_norm_film_prelu_forward(x: Tensor, gain: Tensor, offset: Tensor, prelu_weight: Tensor, num_groups: int,
                                  eps: float) -> tuple[Tensor, Tensor]:
    """x[B, C, T] (fp32/fp16/bf16), gain, offset [B, C] and prelu_weight fp32 -> (y in x's dtype,
    stats[B, G, 3] fp32)."""
    x, gain, offset, prelu_weight = _checked(x, gain, offset, prelu_weight, num_groups)
    _checks.positive_float("eps", eps)
    B, C, T = x.shape
    y = torch.empty_like(x)
    stats = torch.empty(B, num_groups, 3, device=x.device, dtype=torch.float32)
    if B:
        block_c, block_t = _blocks(C // num_groups, T)
        launchable(_group_norm_film_prelu_forward_kernel)[(B * num_groups,)](
            x, gain, offset, prelu_weight, y, stats, C, num_groups, T, prelu_weight.shape[0], eps,
            BLOCK_C=block_c, BLOCK_T=block_t)
    return y, stats


def group_norm_film_prelu_backward(grad: Tensor, x: Tensor, gain: Tensor, offset: Tensor, prelu_weight: Tensor,
                                   stats: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (grad_x in x's dtype, and fp32 [B, C]: Σ∂v·x̂, Σ∂v, Σ[v ≤ 0]·v·g)."""
    x, gain, offset, prelu_weight = _checked(x, gain, offset, prelu_weight, num_groups)
    B, C, T = x.shape
    checks.shape("grad", grad, "[B, C, T]", B, C, T)
    checks.shape("stats", stats, "[B, G, 3]", B, num_groups, 3)
    checks.dtype("grad", grad, (x.dtype,))
    checks.dtype("stats", stats, (torch.float32,))
    for name, t in (("grad", grad), ("stats", stats)):
        checks.device(name, t, x)
    grad, stats = checks.dense(grad, stats)
    grad_x = torch.empty_like(x)
    d_gain, d_offset, d_prelu = (torch.empty(B, C, device=x.device, dtype=torch.float32) for _ in range(3))
    if B:
        block_c, block_t = _blocks(C // num_groups, T)
        launchable(_group_norm_film_prelu_backward_kernel)[(B * num_groups,)](
            grad, x, gain, offset, prelu_weight, stats, grad_x, d_gain, d_offset, d_prelu, C, num_groups, T,
            prelu_weight.shape[0], BLOCK_C=block_c, BLOCK_T=block_t)
    return grad_x, d_gain, d_offset, d_prelu
