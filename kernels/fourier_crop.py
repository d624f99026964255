"""Triton kernels for Fourier-domain cropping (DiffStride). pyaudiok/ops/fourier_crop.py holds the
math and the contract of the four raw ops; the FFTs and GEMMs around them are torch's.

* ``fourier_crop_matrix(mask, n_in, n_out)`` -> A[n_out, n_in]
* ``fourier_crop_matrix_backward(grad, mask)`` -> grad_mask[K+1]
* ``fourier_mask_crop(spectrum, mask_rows, mask_cols)`` -> Y[B, H_out, Kc, 2]
* ``fourier_mask_crop_backward(grad, spectrum, mask_rows, mask_cols)`` -> (grad_spectrum, E[H_out, Kc])
* ``strided_products(a, b, reduce_batch)`` -> the matmul route's products as Triton GEMMs (a candidate
  to torch's, see ``PRODUCTS`` in the op's module)

Matrix entries take cos(2π (f·p mod P) / P) with the exact integer phase p = t·n_in − j·n_out
(mod P = n_in·n_out), so large frequencies lose no accuracy in float32.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch_checks as checks
from .gpu import cdiv, dot_precision, launchable, sm_count

# 2π as the sum of two float32 numbers: Triton makes float constants float32, and the float64
# kernels need 2π to float64 precision (hi + lo is exact to ~1e-15).
# Globals a kernel reads must be tl.constexpr: the interpreter accepts a plain float, the GPU
# compiler does not.
TWO_PI_HI = tl.constexpr(float(np.float32(2 * math.pi)))
TWO_PI_LO = tl.constexpr(float(np.float32(2 * math.pi - TWO_PI_HI.value)))


@triton.jit
def _angle(phase, period, acc_t: tl.constexpr):
    frac = phase.to(acc_t) / period.to(acc_t)
    return frac * TWO_PI_HI + frac * TWO_PI_LO


@triton.jit
def _bin_weight(f, K, n_in, n_out, acc_t: tl.constexpr):
    """c_f / n_in: c_f = 1 for f = 0 and for the Nyquist bin of an even n_out, else 2."""
    single = (f == 0) | ((n_out % 2 == 0) & (f == K))
    return tl.where(single, 1.0, 2.0).to(acc_t) / n_in.to(acc_t)


@triton.jit
def _matrix_kernel(mask_ptr, a_ptr, K, n_in, n_out, BT: tl.constexpr, BJ: tl.constexpr, F64: tl.constexpr):
    acc_t = tl.float64 if F64 else tl.float32
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    j = tl.program_id(1) * BJ + tl.arange(0, BJ)
    period = n_in.to(tl.int64) * n_out
    p = (t[:, None].to(tl.int64) * n_in - j[None, :].to(tl.int64) * n_out) % period
    p = tl.where(p < 0, p + period, p)
    acc = tl.zeros([BT, BJ], dtype=acc_t)
    for f in range(0, K + 1):
        w = tl.load(mask_ptr + f).to(acc_t) * _bin_weight(f, K, n_in, n_out, acc_t)
        angle = _angle((p * f) % period, period, acc_t)
        acc += w * tl.cos(angle)
    ok = (t[:, None] < n_out) & (j[None, :] < n_in)
    tl.store(a_ptr + t[:, None].to(tl.int64) * n_in + j[None, :], acc.to(a_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _matrix_backward_kernel(grad_ptr, mask_ptr, out_ptr, K, n_in, n_out, BT: tl.constexpr, BJ: tl.constexpr,
                            F64: tl.constexpr):
    acc_t = tl.float64 if F64 else tl.float32
    f = tl.program_id(0)
    period = n_in.to(tl.int64) * n_out
    acc = tl.zeros([BT, BJ], dtype=acc_t)
    for t0 in range(0, n_out, BT):
        t = t0 + tl.arange(0, BT)
        for j0 in range(0, n_in, BJ):
            j = j0 + tl.arange(0, BJ)
            ok = (t[:, None] < n_out) & (j[None, :] < n_in)
            g = tl.load(grad_ptr + t[:, None].to(tl.int64) * n_in + j[None, :], mask=ok, other=0.0).to(acc_t)
            p = (t[:, None].to(tl.int64) * n_in - j[None, :].to(tl.int64) * n_out) % period
            p = tl.where(p < 0, p + period, p)
            angle = _angle((p * f) % period, period, acc_t)
            acc += g * tl.cos(angle)
    total = tl.sum(tl.sum(acc, axis=1), axis=0) * _bin_weight(f, K, n_in, n_out, acc_t)
    tl.store(out_ptr + f, total.to(out_ptr.dtype.element_ty))


@triton.jit
def _source_row(r, H, H_out):
    return tl.where(r > (H_out - 1) // 2, r + H - H_out, r)


# The spectrum kernels work on tiles of BR rows × BC floats of the interleaved (re, im) pairs, so
# every load and store runs along contiguous memory (float column c is bin c // 2); a row of a
# spectrum is often short (17 bins of a 32-wide map), so a program takes many rows.

@triton.jit
def _mask_crop_kernel(x_ptr, rows_ptr, cols_ptr, y_ptr, B, H, F, H_out, Kc, BR: tl.constexpr, BC: tl.constexpr):
    row = tl.program_id(0) * BR + tl.arange(0, BR)  # b * H_out + r
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    row_ok = row < B * H_out
    b, r = (row // H_out).to(tl.int64), row % H_out
    ok = row_ok[:, None] & (c < 2 * Kc)[None, :]
    src = x_ptr + ((b * H + _source_row(r, H, H_out)) * F * 2)[:, None] + c[None, :]
    m = (tl.load(rows_ptr + r, mask=row_ok, other=0.0)[:, None]
         * tl.load(cols_ptr + c // 2, mask=c < 2 * Kc, other=0.0)[None, :])
    dst = y_ptr + (row.to(tl.int64) * Kc * 2)[:, None] + c[None, :]
    tl.store(dst, m * tl.load(src, mask=ok, other=0.0), mask=ok)


@triton.jit
def _pad_kernel(g_ptr, rows_ptr, cols_ptr, dx_ptr, B, H, F, H_out, Kc, BR: tl.constexpr, BC: tl.constexpr):
    """grad_spectrum[b, i, n] = mask ⊙ G[b, r(i), n] where row i is kept, else 0 (every element)."""
    row = tl.program_id(0) * BR + tl.arange(0, BR)  # b * H + i
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    row_ok = row < B * H
    b, i = (row // H).to(tl.int64), row % H
    half = (H_out - 1) // 2
    r = tl.where(i <= half, i, i - H + H_out)
    kept = row_ok & ((i <= half) | (r > half))
    r = tl.where(kept, r, 0)  # a safe row to read; its values are masked out below
    ok = kept[:, None] & (c < 2 * Kc)[None, :]
    src = g_ptr + ((b * H_out + r) * Kc * 2)[:, None] + c[None, :]
    m = (tl.load(rows_ptr + r, mask=kept, other=0.0)[:, None]
         * tl.load(cols_ptr + c // 2, mask=c < 2 * Kc, other=0.0)[None, :])
    dst = dx_ptr + (row.to(tl.int64) * F * 2)[:, None] + c[None, :]
    tl.store(dst, m * tl.load(src, mask=ok, other=0.0), mask=row_ok[:, None] & (c < 2 * F)[None, :])


@triton.jit
def _correlation_kernel(g_ptr, x_ptr, part_ptr, B, H, F, H_out, Kc, rows_per_split, BB: tl.constexpr,
                        BC: tl.constexpr, F64: tl.constexpr):
    """part[s, r, c] = Σ_{b in split s} G[b, r, c] X[b, src(r), c] over the interleaved floats c;
    summing the pairs (re·re + im·im) and the splits gives E[r, n] = Σ_b Re(conj(G) X)."""
    acc_t = tl.float64 if F64 else tl.float32
    r = tl.program_id(0)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    split = tl.program_id(2)
    src_row = _source_row(r, H, H_out)
    b_end = tl.minimum(B, (split + 1) * rows_per_split)
    acc = tl.zeros([BB, BC], dtype=acc_t)
    for b0 in range(split * rows_per_split, b_end, BB):
        b = (b0 + tl.arange(0, BB)).to(tl.int64)
        ok = (b < b_end)[:, None] & (c < 2 * Kc)[None, :]
        g = tl.load(g_ptr + ((b * H_out + r) * Kc * 2)[:, None] + c[None, :], mask=ok, other=0.0)
        x = tl.load(x_ptr + ((b * H + src_row) * F * 2)[:, None] + c[None, :], mask=ok, other=0.0)
        acc += g.to(acc_t) * x.to(acc_t)
    dst = part_ptr + (split.to(tl.int64) * H_out + r) * Kc * 2 + c
    tl.store(dst, tl.sum(acc, axis=0).to(part_ptr.dtype.element_ty), mask=c < 2 * Kc)


def _is_f64(t: Tensor) -> bool:
    return t.dtype == torch.float64


def _check_mask(mask: Tensor, n_in: int, n_out: int) -> Tensor:
    """mask[n_out // 2 + 1] for a crop of n_in samples to 1 <= n_out <= n_in, contiguous."""
    if not 1 <= n_out <= n_in:
        raise ValueError(f"n_out must lie in [1, n_in] = [1, {n_in}]; got {n_out}")
    checks.shape("mask", mask, "[n_out // 2 + 1]", n_out // 2 + 1)
    return mask.contiguous()


def fourier_crop_matrix(mask: Tensor, n_in: int, n_out: int) -> Tensor:
    mask = _check_mask(mask, n_in, n_out)
    a = torch.empty((n_out, n_in), dtype=mask.dtype, device=mask.device)
    BT, BJ = 16, 32
    grid = (cdiv(n_out, BT), cdiv(n_in, BJ))
    launchable(_matrix_kernel)[grid](mask, a, mask.shape[0] - 1, n_in, n_out, BT=BT, BJ=BJ,
                                     F64=_is_f64(mask))
    return a


def fourier_crop_matrix_backward(grad: Tensor, mask: Tensor) -> Tensor:
    n_out, n_in = checks.shape("grad", grad, "[n_out, n_in]", None, None)
    mask = _check_mask(mask, n_in, n_out)
    checks.device("mask", mask, grad)
    out = torch.empty_like(mask)
    launchable(_matrix_backward_kernel)[(mask.shape[0],)](grad.contiguous(), mask, out, mask.shape[0] - 1, n_in,
                                                            n_out, BT=16, BJ=32, F64=_is_f64(grad))
    return out


def _spectrum_tiles(rows: int, row_floats: int) -> tuple[int, int]:
    """(BR, BC) for a spectrum kernel: up to 256 floats of a row, and rows enough for ~4096 floats."""
    BC = min(256, triton.next_power_of_2(max(row_floats, 1)))
    BR = min(triton.next_power_of_2(max(rows, 1)), max(1, 4096 // BC))
    return BR, BC


# Rows of the batch one program of the correlation kernel sums at most: long batches are split
# across programs (partial sums added by torch), so a map with few rows still fills the GPU.
CORRELATION_ROWS_PER_SPLIT = 512
_CORRELATION_PROGRAMS = 4  # per multiprocessor, the splits' target


def _correlation_splits(B: int, programs: int, BB: int, device: torch.device) -> int:
    wanted = cdiv(_CORRELATION_PROGRAMS * sm_count(device), max(programs, 1))
    return max(1, min(max(wanted, cdiv(B, CORRELATION_ROWS_PER_SPLIT)), cdiv(B, BB)))


def _checked_crop(spectrum: Tensor, mask_rows: Tensor, mask_cols: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """spectrum[B, H, F, 2], mask_rows[H_out <= H] and mask_cols[Kc <= F] checked, contiguous."""
    _, H, F, _ = checks.shape("spectrum", spectrum, "[B, H, F, 2]", None, None, None, 2)
    checks.at_most("mask_rows' length H_out", checks.shape("mask_rows", mask_rows, "[H_out]", None)[0], H, "H")
    checks.at_most("mask_cols' length Kc", checks.shape("mask_cols", mask_cols, "[Kc]", None)[0], F, "F")
    for name, t in (("mask_rows", mask_rows), ("mask_cols", mask_cols)):
        checks.device(name, t, spectrum)
    return checks.dense(spectrum, mask_rows, mask_cols)


def fourier_mask_crop(spectrum: Tensor, mask_rows: Tensor, mask_cols: Tensor) -> Tensor:
    x, rows, cols = _checked_crop(spectrum, mask_rows, mask_cols)
    B, H, F, _ = x.shape
    H_out, Kc = rows.shape[0], cols.shape[0]
    y = torch.empty((B, H_out, Kc, 2), dtype=x.dtype, device=x.device)
    BR, BC = _spectrum_tiles(B * H_out, 2 * Kc)
    if B:
        launchable(_mask_crop_kernel)[(cdiv(B * H_out, BR), cdiv(2 * Kc, BC))](
            x, rows, cols, y, B, H, F, H_out, Kc, BR=BR, BC=BC)
    return y


def fourier_mask_crop_backward(grad: Tensor, spectrum: Tensor, mask_rows: Tensor,
                               mask_cols: Tensor) -> tuple[Tensor, Tensor]:
    x, rows, cols = _checked_crop(spectrum, mask_rows, mask_cols)
    B, H, F, _ = x.shape
    H_out, Kc = rows.shape[0], cols.shape[0]
    checks.shape("grad", grad, "[B, H_out, Kc, 2]", B, H_out, Kc, 2)
    checks.device("grad", grad, x)
    g = grad.contiguous()
    dx = torch.empty_like(x)
    if B:
        BR, BC = _spectrum_tiles(B * H, 2 * F)
        launchable(_pad_kernel)[(cdiv(B * H, BR), cdiv(2 * F, BC))](
            g, rows, cols, dx, B, H, F, H_out, Kc, BR=BR, BC=BC)
    BB, BC = 16, min(128, triton.next_power_of_2(max(2 * Kc, 1)))
    col_blocks = cdiv(2 * Kc, BC)
    splits = _correlation_splits(B, H_out * col_blocks, BB, x.device)
    rows_per_split = cdiv(cdiv(B, splits), BB) * BB
    splits = cdiv(B, rows_per_split) if B else 1
    part = torch.empty((splits, H_out, Kc, 2), dtype=x.dtype, device=x.device)
    launchable(_correlation_kernel)[(H_out, col_blocks, splits)](
        g, x, part, B, H, F, H_out, Kc, rows_per_split, BB=BB, BC=BC, F64=_is_f64(x))
    return dx, part.sum((0, 3))


# ----------------------------------------------------------------------------------------------
# The matmul route's products (y = A_h · x · A_wᵀ and its gradients) as one strided GEMM kernel:
# batches given by strides (0: the same matrix for every batch), so the route's transposed views
# need no copies, and float32 products on tensor cores as 3xTF32 (split in registers, fp32
# accuracy) where torch's would run as SGEMM on the CUDA cores.

@triton.jit
def _products_kernel(A, B, C, M, N, K, batches, per_group, per_split, sa_b, sa_m, sa_k, sb_b, sb_k, sb_n,
                     sc_s, sc_g, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """C[split, group, m, n] = Σ over the group's batches and the split's share of K of A[b] @ B[b]."""
    tiles_n = tl.cdiv(N, BN)
    pm, pn = tl.program_id(0) // tiles_n, tl.program_id(0) % tiles_n
    group, split = tl.program_id(1), tl.program_id(2)
    rm = (pm * BM + tl.arange(0, BM)).to(tl.int64)
    rn = (pn * BN + tl.arange(0, BN)).to(tl.int64)
    k_lo = split * per_split
    k_hi = tl.minimum(K, k_lo + per_split)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    b_lo = group.to(tl.int64) * per_group
    for i in range(0, tl.minimum(batches - b_lo, per_group)):
        a_base = A + (b_lo + i) * sa_b
        b_base = B + (b_lo + i) * sb_b
        for k0 in range(k_lo, k_hi, BK):
            rk = (k0 + tl.arange(0, BK)).to(tl.int64)
            a_ok = (rm[:, None] < M) & (rk[None, :] < k_hi)
            b_ok = (rk[:, None] < k_hi) & (rn[None, :] < N)
            a = tl.load(a_base + rm[:, None] * sa_m + rk[None, :] * sa_k, mask=a_ok, other=0.0)
            bt = tl.load(b_base + rk[:, None] * sb_k + rn[None, :] * sb_n, mask=b_ok, other=0.0)
            acc = tl.dot(a, bt, acc, input_precision=PREC)
    out = C + split.to(tl.int64) * sc_s + group.to(tl.int64) * sc_g + rm[:, None] * N + rn[None, :]
    tl.store(out, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def _batch_stride(t: Tensor) -> int:
    """A batched operand's batch stride; 0 for a single matrix, which every batch then reads."""
    return t.stride(0) if t.shape[0] > 1 else 0


_PRODUCT_TILE = (64, 64, 32, 4, 3)  # BM, BN, BK, warps, stages (3xTF32 doubles the operands' registers)
_PRODUCT_PROGRAMS = 2  # per multiprocessor: the reductions' target for batch groups and K splits


def strided_products(a: Tensor, b: Tensor, reduce_batch: bool) -> Tensor:
    """a[i] @ b[i] for a [Ba, M, K] and b [Bb, K, N] of any strides, Ba and Bb 1 or the batch count
    (1: one matrix for every batch): [batches, M, N] float32, or with `reduce_batch` their sum
    [M, N]. Reductions (over batches, or a long K) are split over programs whose partial sums torch
    adds, so that a product with few output tiles still fills the GPU."""
    Ba, M, K = checks.shape("a", a, "[Ba, M, K]", None, None, None)
    Bb, _, N = checks.shape("b", b, "[Bb, K, N]", None, K, None)
    checks.device("b", b, a)
    if Ba != Bb and 1 not in (Ba, Bb):
        raise ValueError(f"a and b must have one batch count (or 1 for either); got {Ba} and {Bb}")
    batches = Bb if Ba == 1 else Ba
    if not (batches and K and M and N):  # nothing to multiply: zeros of the result's shape
        return a.new_zeros((M, N) if reduce_batch else (batches, M, N), dtype=torch.float32)
    BM, BN, BK, warps, stages = _PRODUCT_TILE
    tiles = cdiv(M, BM) * cdiv(N, BN)
    target = max(1, _PRODUCT_PROGRAMS * sm_count(a.device)) if a.device.type == "cuda" else 2
    # Batches per program: one, or for a sum over them as many as leave ~target programs.
    per_group = cdiv(batches, min(batches, cdiv(target, tiles))) if reduce_batch else 1
    groups = cdiv(batches, per_group)
    splits = min(max(1, target // (tiles * groups)), cdiv(K, 4 * BK))
    per_split = cdiv(cdiv(K, splits), BK) * BK
    splits = cdiv(K, per_split)
    out = torch.empty((splits, groups, M, N), dtype=torch.float32, device=a.device)
    launchable(_products_kernel)[(tiles, groups, splits)](
        a, b, out, M, N, K, batches, per_group, per_split, _batch_stride(a), a.stride(1), a.stride(2),
        _batch_stride(b), b.stride(1), b.stride(2), groups * M * N, M * N, BM=BM, BN=BN, BK=BK,
        PREC=dot_precision(a.dtype), num_warps=warps, num_stages=stages)
    out = out.sum(0) if splits > 1 else out[0]
    return out.sum(0) if reduce_batch else out
