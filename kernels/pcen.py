"""Triton kernels of sPCEN (pyaudiok/ops/pcen.py documents the math and the raw ops).

The smoother M_t = a_t M_{t−1} + b_t (a_0 = 0, b_0 = E_0; a_t = 1 − s, b_t = s E_t) is a first-order
linear recurrence, so each program takes BLOCK_R channels and walks time in chunks of BLOCK_T: an
associative scan of the affine maps (a, b) inside the chunk, the chunk's last state carried to the
next. The backward runs the adjoint recurrence λ_t = gM_t + (1 − s) λ_{t+1} the same way over
time-reversed chunks. State and arithmetic are fp32 whatever E's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch_checks as checks
from .gpu import cdiv, launchable


@triton.jit
def _affine(a1, b1, a2, b2):
    # x -> a1 x + b1 followed by x -> a2 x + b2
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _params(p_ptr, rows, row_ok, F):
    f = rows % F
    alpha = tl.load(p_ptr + f, mask=row_ok, other=1.0)
    delta = tl.load(p_ptr + F + f, mask=row_ok, other=1.0)
    inv_r = 1.0 / tl.load(p_ptr + 2 * F + f, mask=row_ok, other=1.0)
    s = tl.load(p_ptr + 3 * F + f, mask=row_ok, other=0.0)
    return alpha, delta, inv_r, s


@triton.jit
def _pcen_forward_kernel(e_ptr, p_ptr, y_ptr, m_ptr, R, F, T, eps, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    alpha, delta, inv_r, s = _params(p_ptr, rows, row_ok, F)
    delta_root = tl.exp(tl.log(delta) * inv_r)
    base = rows.to(tl.int64)[:, None] * T
    carry = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)[None, :]
        ok = row_ok[:, None] & (t < T)
        e = tl.load(e_ptr + base + t, mask=ok, other=0.0).to(tl.float32)
        a = tl.where(t == 0, 0.0, 1.0 - s[:, None]) + tl.zeros_like(e)
        b = tl.where(t == 0, e, s[:, None] * e)
        a, b = tl.associative_scan((a, b), 1, _affine)
        m = a * carry[:, None] + b
        last = tl.minimum(t0 + BLOCK_T, T) - 1
        carry = tl.sum(tl.where(t == last, m, 0.0), 1)
        tl.store(m_ptr + base + t, m, mask=ok)
        z = e * tl.exp(-alpha[:, None] * tl.log(eps + m)) + delta[:, None]
        y = tl.exp(tl.log(z) * inv_r[:, None]) - delta_root[:, None]
        tl.store(y_ptr + base + t, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _pcen_backward_kernel(g_ptr, e_ptr, m_ptr, p_ptr, de_ptr, part_ptr, R, F, T, eps,
                          BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    alpha, delta, inv_r, s = _params(p_ptr, rows, row_ok, F)
    log_delta = tl.log(delta)
    delta_root = tl.exp(log_delta * inv_r)
    base = rows.to(tl.int64)[:, None] * T
    carry = tl.zeros((BLOCK_R,), dtype=tl.float32)
    d_alpha = tl.zeros((BLOCK_R,), dtype=tl.float32)
    d_delta = tl.zeros((BLOCK_R,), dtype=tl.float32)
    d_root = tl.zeros((BLOCK_R,), dtype=tl.float32)
    d_s = tl.zeros((BLOCK_R,), dtype=tl.float32)
    n_chunks = tl.cdiv(T, BLOCK_T)
    for c in range(0, n_chunks):
        # Chunk c from the end, its columns in reverse time order.
        t = (n_chunks - 1 - c) * BLOCK_T + (BLOCK_T - 1 - tl.arange(0, BLOCK_T))[None, :]
        ok = row_ok[:, None] & (t < T)
        g = tl.load(g_ptr + base + t, mask=ok, other=0.0).to(tl.float32)
        e = tl.load(e_ptr + base + t, mask=ok, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + base + t, mask=ok, other=1.0)
        has_prev = ok & (t >= 1)
        m_prev = tl.load(m_ptr + base + t - 1, mask=has_prev, other=0.0)
        log_m = tl.log(eps + m)
        P = tl.exp(-alpha[:, None] * log_m)
        z = e * P + delta[:, None]
        log_z = tl.log(z)
        z_root = tl.exp(log_z * inv_r[:, None])
        gz = g * inv_r[:, None] * z_root / z
        gzeP = gz * e * P
        gm = tl.where(ok, -alpha[:, None] * gzeP / (eps + m), 0.0)
        a = (1.0 - s[:, None]) + tl.zeros_like(gm)
        a, lam = tl.associative_scan((a, gm), 1, _affine)
        lam = a * carry[:, None] + lam
        carry = tl.sum(tl.where(tl.arange(0, BLOCK_T)[None, :] == BLOCK_T - 1, lam, 0.0), 1)
        de = gz * P + tl.where(t >= 1, s[:, None] * lam, lam)
        tl.store(de_ptr + base + t, de.to(de_ptr.dtype.element_ty), mask=ok)
        d_alpha += tl.sum(tl.where(ok, -gzeP * log_m, 0.0), 1)
        d_delta += tl.sum(tl.where(ok, gz - g * inv_r[:, None] * delta_root[:, None] / delta[:, None], 0.0), 1)
        d_root += tl.sum(tl.where(ok, -g * inv_r[:, None] * inv_r[:, None]
                                  * (z_root * log_z - (delta_root * log_delta)[:, None]), 0.0), 1)
        d_s += tl.sum(tl.where(has_prev, lam * (e - m_prev), 0.0), 1)
    out = part_ptr + rows.to(tl.int64) * 4
    tl.store(out, d_alpha, mask=row_ok)
    tl.store(out + 1, d_delta, mask=row_ok)
    tl.store(out + 2, d_root, mask=row_ok)
    tl.store(out + 3, d_s, mask=row_ok)


BLOCK_R, BLOCK_T = 16, 64


def _grid(R: int):
    return (cdiv(R, BLOCK_R),)


def _checked(E: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """E[B, F, T] and params[4, F] (rows α, δ, r, s), checked to agree, contiguous."""
    F = checks.shape("E", E, "[B, F, T]", None, None, None)[1]
    checks.shape("params", params, "[4, F]", 4, F)
    checks.device("params", params, E)
    return checks.dense(E, params)


def pcen_forward(E: Tensor, params: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """E[B, F, T], params[4, F] fp32 -> (y in E's dtype, M fp32)."""
    E, params = _checked(E, params)
    B, F, T = E.shape
    y = torch.empty_like(E)
    M = torch.empty(E.shape, device=E.device, dtype=torch.float32)
    if E.numel():
        launchable(_pcen_forward_kernel)[_grid(B * F)](E, params, y, M, B * F, F, T, eps,
                                                         BLOCK_R=BLOCK_R, BLOCK_T=BLOCK_T)
    return y, M


def pcen_backward(grad: Tensor, E: Tensor, M: Tensor, params: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """-> (grad_E in E's dtype, partial[B·F, 4] fp32 per-row parameter gradients)."""
    E, params = _checked(E, params)
    B, F, T = E.shape
    for name, t in (("grad", grad), ("M", M)):
        checks.shape(name, t, "[B, F, T]", B, F, T)
        checks.device(name, t, E)
    grad, M = checks.dense(grad, M)
    grad_E = torch.empty_like(E)
    partial = torch.empty(B * F, 4, device=E.device, dtype=torch.float32)
    if E.numel():
        launchable(_pcen_backward_kernel)[_grid(B * F)](grad, E, M, params, grad_E, partial, B * F, F, T, eps,
                                                          BLOCK_R=BLOCK_R, BLOCK_T=BLOCK_T)
    return grad_E, partial
