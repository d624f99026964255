"""Triton kernels for Fourier-domain cropping (DiffStride). pyaudiok/ops/fourier_crop.py holds the
math and the contract of the four raw ops; the FFTs and GEMMs around them are torch's.

* ``fourier_crop_matrix(mask, n_in, n_out)`` -> A[n_out, n_in]
* ``fourier_crop_matrix_backward(grad, mask)`` -> grad_mask[K+1]
* ``fourier_mask_crop(spectrum, mask_rows, mask_cols)`` -> Y[B, H_out, Kc, 2]
* ``fourier_mask_crop_backward(grad, spectrum, mask_rows, mask_cols)`` -> (grad_spectrum, E[H_out, Kc])

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
from torch.library import wrap_triton

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


@triton.jit
def _mask_crop_kernel(x_ptr, rows_ptr, cols_ptr, y_ptr, H, F, H_out, Kc, BN: tl.constexpr):
    row = tl.program_id(0)  # b * H_out + r
    b, r = row // H_out, row % H_out
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    ok = n < Kc
    src = x_ptr + ((b.to(tl.int64) * H + _source_row(r, H, H_out)) * F + n) * 2
    m = tl.load(rows_ptr + r) * tl.load(cols_ptr + n, mask=ok, other=0.0)
    dst = y_ptr + (row.to(tl.int64) * Kc + n) * 2
    tl.store(dst, m * tl.load(src, mask=ok, other=0.0), mask=ok)
    tl.store(dst + 1, m * tl.load(src + 1, mask=ok, other=0.0), mask=ok)


@triton.jit
def _pad_kernel(g_ptr, rows_ptr, cols_ptr, dx_ptr, H, F, H_out, Kc, BN: tl.constexpr):
    """grad_spectrum[b, i, n] = mask ⊙ G[b, r(i), n] where row i is kept, else 0 (every element)."""
    row = tl.program_id(0)  # b * H + i
    b, i = row // H, row % H
    half = (H_out - 1) // 2
    r = tl.where(i <= half, i, i - H + H_out)
    kept = (i <= half) | (r > half)
    r = tl.where(kept, r, 0)  # a safe row to read; its values are masked out below
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    in_row = n < F
    ok = in_row & (n < Kc) & ((n * 0 + kept.to(tl.int32)) != 0)  # a scalar bool mask upsets the interpreter
    src = g_ptr + ((b.to(tl.int64) * H_out + r) * Kc + n) * 2
    m = tl.load(rows_ptr + r) * tl.load(cols_ptr + n, mask=ok, other=0.0)
    dst = dx_ptr + (row.to(tl.int64) * F + n) * 2
    tl.store(dst, m * tl.load(src, mask=ok, other=0.0), mask=in_row)
    tl.store(dst + 1, m * tl.load(src + 1, mask=ok, other=0.0), mask=in_row)


@triton.jit
def _correlation_kernel(g_ptr, x_ptr, e_ptr, B, H, F, H_out, Kc, BB: tl.constexpr, BN: tl.constexpr,
                        F64: tl.constexpr):
    """E[r, n] = Σ_b Re(conj(G[b, r, n]) X[b, src(r), n])."""
    acc_t = tl.float64 if F64 else tl.float32
    r = tl.program_id(0)
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    src_row = _source_row(r, H, H_out)
    acc = tl.zeros([BB, BN], dtype=acc_t)
    for b0 in range(0, B, BB):
        b = (b0 + tl.arange(0, BB)).to(tl.int64)
        ok = (b[:, None] < B) & (n[None, :] < Kc)
        g = g_ptr + ((b[:, None] * H_out + r) * Kc + n[None, :]) * 2
        x = x_ptr + ((b[:, None] * H + src_row) * F + n[None, :]) * 2
        acc += (tl.load(g, mask=ok, other=0.0).to(acc_t) * tl.load(x, mask=ok, other=0.0).to(acc_t)
                + tl.load(g + 1, mask=ok, other=0.0).to(acc_t) * tl.load(x + 1, mask=ok, other=0.0).to(acc_t))
    tl.store(e_ptr + r * Kc + n, tl.sum(acc, axis=0).to(e_ptr.dtype.element_ty), mask=n < Kc)


def _is_f64(t: Tensor) -> bool:
    return t.dtype == torch.float64


def fourier_crop_matrix(mask: Tensor, n_in: int, n_out: int) -> Tensor:
    a = torch.empty((n_out, n_in), dtype=mask.dtype, device=mask.device)
    BT, BJ = 16, 32
    grid = (triton.cdiv(n_out, BT), triton.cdiv(n_in, BJ))
    wrap_triton(_matrix_kernel)[grid](mask.contiguous(), a, mask.shape[0] - 1, n_in, n_out, BT=BT, BJ=BJ,
                                      F64=_is_f64(mask))
    return a


def fourier_crop_matrix_backward(grad: Tensor, mask: Tensor) -> Tensor:
    out = torch.empty_like(mask)
    n_out, n_in = grad.shape
    wrap_triton(_matrix_backward_kernel)[(mask.shape[0],)](grad.contiguous(), mask, out, mask.shape[0] - 1, n_in,
                                                            n_out, BT=16, BJ=32, F64=_is_f64(grad))
    return out


def fourier_mask_crop(spectrum: Tensor, mask_rows: Tensor, mask_cols: Tensor) -> Tensor:
    x = spectrum.contiguous()
    B, H, F, _ = x.shape
    H_out, Kc = mask_rows.shape[0], mask_cols.shape[0]
    y = torch.empty((B, H_out, Kc, 2), dtype=x.dtype, device=x.device)
    BN = min(128, triton.next_power_of_2(max(Kc, 1)))
    if B:
        wrap_triton(_mask_crop_kernel)[(B * H_out, triton.cdiv(Kc, BN))](
            x, mask_rows.contiguous(), mask_cols.contiguous(), y, H, F, H_out, Kc, BN=BN)
    return y


def fourier_mask_crop_backward(grad: Tensor, spectrum: Tensor, mask_rows: Tensor,
                               mask_cols: Tensor) -> tuple[Tensor, Tensor]:
    g, x = grad.contiguous(), spectrum.contiguous()
    rows, cols = mask_rows.contiguous(), mask_cols.contiguous()
    B, H, F, _ = x.shape
    H_out, Kc = rows.shape[0], cols.shape[0]
    dx = torch.empty_like(x)
    e = torch.empty((H_out, Kc), dtype=x.dtype, device=x.device)
    BN = min(128, triton.next_power_of_2(max(F, 1)))
    if B:
        wrap_triton(_pad_kernel)[(B * H, triton.cdiv(F, BN))](g, rows, cols, dx, H, F, H_out, Kc, BN=BN)
    BNc = min(64, triton.next_power_of_2(max(Kc, 1)))
    wrap_triton(_correlation_kernel)[(H_out, triton.cdiv(Kc, BNc))](g, x, e, B, H, F, H_out, Kc, BB=16, BN=BNc,
                                                                     F64=_is_f64(x))
    return dx, e
