"""Triton kernels of GroupNorm → FiLM → PReLU (pyaudiok/ops/group_norm_film_prelu.py documents the
math and the raw ops).

The work spreads over channel rows, not groups: every launch runs one program per block of BLOCK_C
channel rows of x[B, C, T] within one (item, group) (BLOCK_C = 1 unless the rows are short), each
walking its rows in [BLOCK_C, BLOCK_T] tiles. A group of C/G rows is thus C/G / BLOCK_C programs,
which fills a GPU at GroupNorm's usual sizes (B·G alone is a handful).

Forward, two launches: (1) each row's mean and centred sum of squares (fp32 within the row, each tile
centred on its own mean and merged by Chan's formula, so that neither a large mean nor
E[x²] − E[x]² costs float32 its precision); (2) each program merges its group's row moments itself
in float64 (a few hundred bytes, cheaper read again than a launch of its own), the group's first
program writes the stats, and every program writes its rows of y. Backward, two launches: (1) per
channel row the sums Σ∂v, Σ∂v·x̂ and the PReLU slope's Σ[v ≤ 0]·v·g (the raw op's outputs);
(2) grad_x, each program reading its group's channel sums for ∂x̂'s group means. fp32 arithmetic
whatever x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ops import _checks
from . import _launch_checks as checks
from .gpu import cdiv, launchable


@triton.jit
def _row_block(per_group, BLOCK_C: tl.constexpr):
    """This program's rows: channels c0 + [0, BLOCK_C) of group `pair` = b·G + g (those < C/G exist); and
    first = b·C + g·C/G, the group's first row of x viewed as [B·C, T] (int64), and of gain and offset."""
    pid = tl.program_id(0)
    blocks = tl.cdiv(per_group, BLOCK_C)
    pair = pid // blocks
    return pair, (pid % blocks) * BLOCK_C, pair.to(tl.int64) * per_group


@triton.jit
def _tile(c0, t0, per_group, T, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    """A tile's offsets from the program's first row (channel c0 of the group), and which of them exist."""
    r = tl.arange(0, BLOCK_C)
    t = t0 + tl.arange(0, BLOCK_T)
    ok = (c0 + r[:, None] < per_group) & (t[None, :] < T)
    return r[:, None] * T + t[None, :], ok


@triton.jit
def _channels(gain_ptr, offset_ptr, prelu_ptr, pair, G, c0, per_group, n_prelu, BLOCK_C: tl.constexpr):
    """The gain, offset and PReLU slope of channels c0 + [0, BLOCK_C) of group `pair` = b·G + g (0 past
    its end), and those channels' rows of gain and offset, b·C + g·C/G + c, with which of them exist."""
    c = c0 + tl.arange(0, BLOCK_C)
    c_ok = c < per_group
    rows = pair.to(tl.int64) * per_group + c
    gain = tl.load(gain_ptr + rows, mask=c_ok, other=0.0)
    offset = tl.load(offset_ptr + rows, mask=c_ok, other=0.0)
    alpha = tl.load(prelu_ptr + tl.where(n_prelu == 1, 0, (pair % G) * per_group + c), mask=c_ok, other=0.0)
    return rows, c_ok, gain, offset, alpha


@triton.jit
def _pre_activation(x_ptr, base, c0, t0, per_group, T, hi, lo, a, o, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    """A tile's offsets, mask, x − mean (= (x − hi) − lo) and v = (x − mean)·a + o: one expression for
    the forward and both backward passes, so that they take the same side of PReLU's kink."""
    offs, ok = _tile(c0, t0, per_group, T, BLOCK_C, BLOCK_T)
    xc = (tl.load(x_ptr + base + offs, mask=ok, other=0.0).to(tl.float32) - hi) - lo
    return offs, ok, xc, xc * a[:, None] + o[:, None]


@triton.jit
def _upstream(g_ptr, x_ptr, base, c0, t0, per_group, T, hi, lo, a, o, alpha, BLOCK_C: tl.constexpr,
              BLOCK_T: tl.constexpr):
    """A tile's _pre_activation, the incoming gradient g and ∂v (0 outside the tile's values)."""
    offs, ok, xc, v = _pre_activation(x_ptr, base, c0, t0, per_group, T, hi, lo, a, o, BLOCK_C, BLOCK_T)
    g = tl.load(g_ptr + base + offs, mask=ok, other=0.0).to(tl.float32)
    return offs, ok, xc, v, g, tl.where(ok, tl.where(v > 0, g, alpha[:, None] * g), 0.0)


@triton.jit
def _merged(count, mean, m2, x, ok, K, n):
    """(count, mean, m2) of each row's x − K merged with a tile's n values x (Chan's formula): the tile
    centred on its own mean first."""
    d = tl.where(ok, x - K[:, None], 0.0)
    mean_b = tl.sum(d, 1) / n
    e = tl.where(ok, d - mean_b[:, None], 0.0)
    total = count + n
    delta = mean_b - mean
    return total, mean + delta * (n / total), m2 + tl.sum(e * e, 1) + delta * delta * (count * n / total)


@triton.jit
def _row_moments_kernel(x_ptr, moments_ptr, C, G, T, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    """moments[row] = (the row's mean, its Σ(x − mean)²) in float64 for the rows of x[B·C, T]."""
    per_group = C // G
    _, c0, first = _row_block(per_group, BLOCK_C)
    base = (first + c0) * T
    offs, ok = _tile(c0, 0, per_group, T, BLOCK_C, BLOCK_T)
    x = tl.load(x_ptr + base + offs, mask=ok, other=0.0).to(tl.float32)
    n = tl.minimum(T, BLOCK_T).to(tl.float32)
    K = tl.sum(x, 1) / n  # each row's first tile's mean: a centre near the row's values
    count, mean, m2 = _merged(K * 0.0, K * 0.0, K * 0.0, x, ok, K, n)
    for t0 in range(BLOCK_T, T, BLOCK_T):
        offs, ok = _tile(c0, t0, per_group, T, BLOCK_C, BLOCK_T)
        x = tl.load(x_ptr + base + offs, mask=ok, other=0.0).to(tl.float32)
        count, mean, m2 = _merged(count, mean, m2, x, ok, K, tl.minimum(T - t0, BLOCK_T).to(tl.float32))
    r = tl.arange(0, BLOCK_C)
    r_ok = c0 + r < per_group
    tl.store(moments_ptr + (first + c0 + r) * 2, K.to(tl.float64) + mean.to(tl.float64), mask=r_ok)
    tl.store(moments_ptr + (first + c0 + r) * 2 + 1, m2.to(tl.float64), mask=r_ok)


@triton.jit
def _group_stats(moments_ptr, first, per_group, T, eps, BLOCK_G: tl.constexpr):
    """The group's (mean_hi, mean_lo, rstd) from its rows' moments, merged in float64. Every row has T
    values, so Chan's merge is the mean of the row means and M2 = Σ M2_row + T·Σ(mean_row − mean)²."""
    sums = tl.zeros((BLOCK_G,), dtype=tl.float64)
    for c0 in range(0, per_group, BLOCK_G):
        c = c0 + tl.arange(0, BLOCK_G)
        sums += tl.load(moments_ptr + (first + c) * 2, mask=c < per_group, other=0.0)
    mean = tl.sum(sums, 0) / per_group
    squares = tl.zeros((BLOCK_G,), dtype=tl.float64)
    for c0 in range(0, per_group, BLOCK_G):
        c = c0 + tl.arange(0, BLOCK_G)
        row_mean = tl.load(moments_ptr + (first + c) * 2, mask=c < per_group, other=0.0)
        row_m2 = tl.load(moments_ptr + (first + c) * 2 + 1, mask=c < per_group, other=0.0)
        squares += tl.where(c < per_group, row_m2 + T * (row_mean - mean) * (row_mean - mean), 0.0)
    variance = tl.sum(squares, 0) / (per_group.to(tl.float64) * T)
    hi = mean.to(tl.float32)
    return hi, (mean - hi.to(tl.float64)).to(tl.float32), (1.0 / tl.sqrt(variance + eps)).to(tl.float32)


@triton.jit
def _normalize_kernel(x_ptr, moments_ptr, gain_ptr, offset_ptr, prelu_ptr, y_ptr, stats_ptr, C, G, T, n_prelu, eps,
                      BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr):
    per_group = C // G
    pair, c0, first = _row_block(per_group, BLOCK_C)
    base = (first + c0) * T
    hi, lo, rstd = _group_stats(moments_ptr, first, per_group, T, eps, BLOCK_G)
    if c0 == 0:  # every program of the group computed the same stats: its first writes them
        tl.store(stats_ptr + pair * 3, hi)
        tl.store(stats_ptr + pair * 3 + 1, lo)
        tl.store(stats_ptr + pair * 3 + 2, rstd)
    _, _, gain, o, alpha = _channels(gain_ptr, offset_ptr, prelu_ptr, pair, G, c0, per_group, n_prelu, BLOCK_C)
    a = rstd * gain
    for t0 in range(0, T, BLOCK_T):
        # (named, not `_`: the compiler would carry `_` across the loop with two types)
        offs, ok, xc, v = _pre_activation(x_ptr, base, c0, t0, per_group, T, hi, lo, a, o, BLOCK_C, BLOCK_T)
        y = tl.where(v > 0, v, alpha[:, None] * v)
        tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _stats_of(stats_ptr, pair):
    """The group's (mean_hi, mean_lo, rstd)."""
    return tl.load(stats_ptr + pair * 3), tl.load(stats_ptr + pair * 3 + 1), tl.load(stats_ptr + pair * 3 + 2)


@triton.jit
def _channel_sums_kernel(g_ptr, x_ptr, gain_ptr, offset_ptr, prelu_ptr, stats_ptr, d_gain_ptr, d_offset_ptr,
                         d_prelu_ptr, C, G, T, n_prelu, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    """Per channel row: d_offset = Σ∂v, d_gain = Σ∂v·x̂, d_prelu = Σ[v ≤ 0]·v·g."""
    per_group = C // G
    pair, c0, first = _row_block(per_group, BLOCK_C)
    base = (first + c0) * T
    hi, lo, rstd = _stats_of(stats_ptr, pair)
    rows, c_ok, gain, o, alpha = _channels(gain_ptr, offset_ptr, prelu_ptr, pair, G, c0, per_group, n_prelu, BLOCK_C)
    a = rstd * gain
    s1 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    s3 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs, ok, xc, v, g, dv = _upstream(g_ptr, x_ptr, base, c0, t0, per_group, T, hi, lo, a, o, alpha, BLOCK_C,
                                           BLOCK_T)
        s1 += tl.sum(dv, 1)
        s2 += tl.sum(dv * xc, 1)
        s3 += tl.sum(tl.where(ok & ~(v > 0), v * g, 0.0), 1)
    tl.store(d_offset_ptr + rows, s1, mask=c_ok)
    tl.store(d_gain_ptr + rows, s2 * rstd, mask=c_ok)
    tl.store(d_prelu_ptr + rows, s3, mask=c_ok)


@triton.jit
def _grad_x_kernel(g_ptr, x_ptr, gain_ptr, offset_ptr, prelu_ptr, stats_ptr, d_gain_ptr, d_offset_ptr, dx_ptr, C, G, T,
                   n_prelu, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr):
    per_group = C // G
    pair, c0, first = _row_block(per_group, BLOCK_C)
    base = (first + c0) * T
    hi, lo, rstd = _stats_of(stats_ptr, pair)
    # Σ ∂x̂ and Σ ∂x̂·x̂ over the group, ∂x̂ = ∂v·gain: gain times the channel sums of the launch before.
    k1 = tl.zeros((BLOCK_G,), dtype=tl.float32)
    k2 = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for g0 in range(0, per_group, BLOCK_G):
        c = g0 + tl.arange(0, BLOCK_G)
        gain_c = tl.load(gain_ptr + first + c, mask=c < per_group, other=0.0)
        k1 += gain_c * tl.load(d_offset_ptr + first + c, mask=c < per_group, other=0.0)
        k2 += gain_c * tl.load(d_gain_ptr + first + c, mask=c < per_group, other=0.0)
    # grad_x = (∂v·gain − (m1 + (x − mean)·m2))·rstd: ∂v·gain and m1 rounded alike (a group of one value
    # gets exactly 0).
    # (in float32 before the product: per_group · T in int32 wraps for groups of 2^31 values or more)
    inv_n = 1.0 / tl.maximum((per_group * 1.0) * T, 1.0)
    m1 = tl.sum(k1, 0) * inv_n
    m2 = rstd * tl.sum(k2, 0) * inv_n
    _, _, gain, o, alpha = _channels(gain_ptr, offset_ptr, prelu_ptr, pair, G, c0, per_group, n_prelu, BLOCK_C)
    a = rstd * gain
    for t0 in range(0, T, BLOCK_T):
        offs, ok, xc, v, g, dv = _upstream(g_ptr, x_ptr, base, c0, t0, per_group, T, hi, lo, a, o, alpha, BLOCK_C,
                                           BLOCK_T)
        dxhat = dv * gain[:, None] + 0.0  # rounded on its own (+ 0 ends the multiply-add), as m1's terms were
        dx = (dxhat - (m1 + xc * m2)) * rstd
        tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=ok)


# Programs per (item, group) at most: each program of the second launches reads its whole group's
# per-row values, so the group's reads grow as programs × C/G (64 × C/G values: 64/T times x's own).
MAX_PROGRAMS_PER_GROUP = 64


def _blocks(per_group: int, T: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_T, BLOCK_G): a program's rows (one, or enough short rows for a tile of 256 values,
    or more for groups wider than MAX_PROGRAMS_PER_GROUP rows), its tile's steps (up to 1 024:
    Wavesplit's rows of 1 001 in one tile; 2 048 values a tile of several long rows) and the chunk its
    group's per-channel values are read in."""
    block_t = min(1024, triton.next_power_of_2(max(T, 1)))
    block_c = min(triton.next_power_of_2(max(per_group, 1)), max(1, 256 // block_t))
    fewest = triton.next_power_of_2(cdiv(max(per_group, 1), MAX_PROGRAMS_PER_GROUP))
    if fewest > block_c:
        block_c, block_t = fewest, min(block_t, max(16, 2048 // fewest))
    return block_c, block_t, min(256, triton.next_power_of_2(max(per_group, 1)))


def _grid(B: int, num_groups: int, per_group: int, block_c: int) -> tuple[int]:
    """One program per block of rows of each (item, group)."""
    return (B * num_groups * cdiv(per_group, block_c),)


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
        moments = torch.empty(B * C, 2, device=x.device, dtype=torch.float64)
        block_c, block_t, block_g = _blocks(C // num_groups, T)
        grid = _grid(B, num_groups, C // num_groups, block_c)
        launchable(_row_moments_kernel)[grid](x, moments, C, num_groups, T, BLOCK_C=block_c, BLOCK_T=block_t)
        launchable(_normalize_kernel)[grid](
            x, moments, gain, offset, prelu_weight, y, stats, C, num_groups, T, prelu_weight.shape[0], eps,
            BLOCK_C=block_c, BLOCK_T=block_t, BLOCK_G=block_g)
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
        block_c, block_t, block_g = _blocks(C // num_groups, T)
        grid = _grid(B, num_groups, C // num_groups, block_c)
        launchable(_channel_sums_kernel)[grid](
            grad, x, gain, offset, prelu_weight, stats, d_gain, d_offset, d_prelu, C, num_groups, T,
            prelu_weight.shape[0], BLOCK_C=block_c, BLOCK_T=block_t)
        launchable(_grad_x_kernel)[grid](
            grad, x, gain, offset, prelu_weight, stats, d_gain, d_offset, grad_x, C, num_groups, T,
            prelu_weight.shape[0], BLOCK_C=block_c, BLOCK_T=block_t, BLOCK_G=block_g)
    return grad_x, d_gain, d_offset, d_prelu
