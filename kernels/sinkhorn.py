"""Triton kernels for batched log-domain Sinkhorn (pyaudiok/ops/sinkhorn.py states the math and
the contract of the two raw ops).

* ``sinkhorn_forward(cost, log_a, log_b, eps, n_iters, tol, history)``
  -> ``(plan, f, g, iters, hist_f, hist_g)``
* ``sinkhorn_backward(grad_plan, grad_f, grad_g, cost, log_a, log_b, plan, iters, hist_f, hist_g, eps)``
  -> ``(grad_cost, grad_log_a, grad_log_b)``

One program per batch element runs every iteration in a single launch (forward and backward,
early stop included). A full row of the cost (m ≤ MAX_M) and the column potential g live in
registers; rows stream in BLOCK_R-row tiles (L2-resident for the sizes this is for), the
f-update as a row-wise log-sum-exp and the g-update as an online (rescaled) column-wise one, so
each iteration reads the cost twice. The potentials of each iteration go to the history slots,
which double as the working storage (barriers order the phases).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

MAX_M = 1024
_TILE = 4096  # elements per [BLOCK_R, BLOCK_M] tile


@triton.jit
def _slot(k, HISTORY: tl.constexpr):
    if HISTORY:
        return k
    else:
        return k % 2


@triton.jit
def _sinkhorn_forward_kernel(
    cost_ptr, la_ptr, lb_ptr,  # [B, n, m], [B, n], [B, m] fp32
    plan_ptr, f_ptr, g_ptr, iters_ptr,  # outputs
    hf_ptr, hg_ptr,  # [B, S, n], [B, S, m]
    n, m, S, n_iters, eps, tol,
    HISTORY: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    cost_b = cost_ptr + b * n * m
    hf = hf_ptr + b * S * n
    hg = hg_ptr + b * S * m
    inv_eps = 1.0 / eps
    cols = tl.arange(0, BLOCK_M)
    col_ok = cols < m
    lanes = tl.arange(0, BLOCK_R)
    lb = tl.load(lb_ptr + b * m + cols, mask=col_ok, other=0.0)
    ninf = -float("inf")

    tl.store(hg + cols, tl.zeros([BLOCK_M], tl.float32), mask=col_ok)
    for r0 in range(0, n, BLOCK_R):
        tl.store(hf + r0 + lanes, tl.zeros([BLOCK_R], tl.float32), mask=r0 + lanes < n)
    tl.debug_barrier()

    k = 1
    done = 0
    running = n_iters >= 1
    while running:
        cur = _slot(k, HISTORY)
        prev = _slot(k - 1, HISTORY)
        g_prev = tl.load(hg + prev * m + cols, mask=col_ok, other=0.0)
        err = 0.0
        for r0 in range(0, n, BLOCK_R):
            rows = r0 + lanes
            row_ok = rows < n
            c = tl.load(cost_b + rows[:, None] * m + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
            t = tl.where(col_ok[None, :], g_prev[None, :] - c, ninf)
            mx = tl.max(t, axis=1)
            safe = tl.where(mx == ninf, 0.0, mx)
            lse = safe + eps * tl.log(tl.sum(tl.exp((t - safe[:, None]) * inv_eps), axis=1))
            la = tl.load(la_ptr + b * n + rows, mask=row_ok, other=0.0)
            f_new = eps * la - lse
            f_old = tl.load(hf + prev * n + rows, mask=row_ok, other=0.0)
            term = tl.abs(tl.exp(la + (f_old - f_new) * inv_eps) - tl.exp(la))
            err += tl.sum(tl.where(row_ok & (la != ninf), term, 0.0), axis=0)
            tl.store(hf + cur * n + rows, f_new, mask=row_ok)
        tl.debug_barrier()
        stop = (tol > 0) & (k > 1) & (err <= tol)
        if not stop:
            col_max = tl.full([BLOCK_M], ninf, tl.float32)
            col_sum = tl.zeros([BLOCK_M], tl.float32)
            for r0 in range(0, n, BLOCK_R):
                rows = r0 + lanes
                row_ok = rows < n
                c = tl.load(cost_b + rows[:, None] * m + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                            other=0.0)
                f = tl.load(hf + cur * n + rows, mask=row_ok, other=0.0)
                t = tl.where(row_ok[:, None], f[:, None] - c, ninf)
                new_max = tl.maximum(col_max, tl.max(t, axis=0))
                safe = tl.where(new_max == ninf, 0.0, new_max)
                col_sum = col_sum * tl.exp((col_max - safe) * inv_eps) + tl.sum(
                    tl.exp((t - safe[None, :]) * inv_eps), axis=0)
                col_max = new_max
            g = tl.where(col_max == ninf, ninf, eps * lb - (col_max + eps * tl.log(col_sum)))
            tl.store(hg + cur * m + cols, g, mask=col_ok)
            tl.debug_barrier()
            done = k
        running = (not stop) & (k < n_iters)
        k += 1

    last = _slot(done, HISTORY)
    g = tl.load(hg + last * m + cols, mask=col_ok, other=0.0)
    tl.store(g_ptr + b * m + cols, g, mask=col_ok)
    tl.store(iters_ptr + b, done.to(tl.int64))
    for r0 in range(0, n, BLOCK_R):
        rows = r0 + lanes
        row_ok = rows < n
        ok = row_ok[:, None] & col_ok[None, :]
        f = tl.load(hf + last * n + rows, mask=row_ok, other=0.0)
        tl.store(f_ptr + b * n + rows, f, mask=row_ok)
        c = tl.load(cost_b + rows[:, None] * m + cols[None, :], mask=ok, other=0.0)
        tl.store(plan_ptr + b * n * m + rows[:, None] * m + cols[None, :],
                 tl.exp((f[:, None] + g[None, :] - c) * inv_eps), mask=ok)


@triton.jit
def _sinkhorn_backward_kernel(
    gp_ptr, gf_ptr, gg_ptr,  # gradients of plan [B, n, m], f [B, n], g [B, m]
    cost_ptr, la_ptr, lb_ptr, plan_ptr, iters_ptr, hf_ptr, hg_ptr,
    dc_ptr, dla_ptr, dlb_ptr, fbar_ptr,  # outputs, and scratch f̄ [B, n]
    n, m, S, eps,
    BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    base = b * n * m
    hf = hf_ptr + b * S * n
    hg = hg_ptr + b * S * m
    inv_eps = 1.0 / eps
    ninf = -float("inf")
    cols = tl.arange(0, BLOCK_M)
    col_ok = cols < m
    lanes = tl.arange(0, BLOCK_R)
    lb = tl.load(lb_ptr + b * m + cols, mask=col_ok, other=0.0)
    lb = tl.where(lb == ninf, 0.0, lb)  # zero mass: e^{−inf − 0} = 0 instead of NaN

    # From the plan: C̄ = −q, f̄ = grad_f + q1, ḡ = grad_g + qᵀ1, q = P̄ ⊙ P / ε.
    gbar = tl.load(gg_ptr + b * m + cols, mask=col_ok, other=0.0)
    for r0 in range(0, n, BLOCK_R):
        rows = r0 + lanes
        row_ok = rows < n
        ok = row_ok[:, None] & col_ok[None, :]
        off = base + rows[:, None] * m + cols[None, :]
        q = tl.load(gp_ptr + off, mask=ok, other=0.0) * tl.load(plan_ptr + off, mask=ok, other=0.0) * inv_eps
        tl.store(dc_ptr + off, -q, mask=ok)
        fb = tl.load(gf_ptr + b * n + rows, mask=row_ok, other=0.0) + tl.sum(q, axis=1)
        tl.store(fbar_ptr + b * n + rows, fb, mask=row_ok)
        tl.store(dla_ptr + b * n + rows, tl.zeros([BLOCK_R], tl.float32), mask=row_ok)
        gbar += tl.sum(q, axis=0)
    tl.debug_barrier()

    K = tl.load(iters_ptr + b).to(tl.int32)
    dlb = tl.zeros([BLOCK_M], tl.float32)
    for step in range(0, K):
        k = K - step
        dlb += eps * gbar
        g = tl.load(hg + k * m + cols, mask=col_ok, other=0.0)
        g_prev = tl.load(hg + (k - 1) * m + cols, mask=col_ok, other=0.0)
        gbar_prev = tl.zeros([BLOCK_M], tl.float32)
        for r0 in range(0, n, BLOCK_R):
            rows = r0 + lanes
            row_ok = rows < n
            ok = row_ok[:, None] & col_ok[None, :]
            off = base + rows[:, None] * m + cols[None, :]
            c = tl.load(cost_ptr + off, mask=ok, other=0.0)
            f = tl.load(hf + k * n + rows, mask=row_ok, other=0.0)
            la = tl.load(la_ptr + b * n + rows, mask=row_ok, other=0.0)
            la = tl.where(la == ninf, 0.0, la)
            T = tl.where(ok, tl.exp((f[:, None] + g[None, :] - c) * inv_eps - lb[None, :]), 0.0)
            fb0 = tl.load(fbar_ptr + b * n + rows, mask=row_ok, other=0.0)
            fb0 = tl.where(k == K, fb0, 0.0)
            fb = fb0 - tl.sum(gbar[None, :] * T, axis=1)
            Sw = tl.where(ok, tl.exp((f[:, None] + g_prev[None, :] - c) * inv_eps - la[:, None]), 0.0)
            tl.store(dc_ptr + off, tl.load(dc_ptr + off, mask=ok, other=0.0) + gbar[None, :] * T + fb[:, None] * Sw,
                     mask=ok)
            gbar_prev -= tl.sum(fb[:, None] * Sw, axis=0)
            dla = tl.load(dla_ptr + b * n + rows, mask=row_ok, other=0.0)
            tl.store(dla_ptr + b * n + rows, dla + eps * fb, mask=row_ok)
        tl.debug_barrier()
        gbar = gbar_prev
    tl.store(dlb_ptr + b * m + cols, dlb, mask=col_ok)


def _blocks(m: int) -> tuple[int, int]:
    block_m = max(16, triton.next_power_of_2(m))
    return max(1, min(64, _TILE // block_m)), block_m


def sinkhorn_forward(cost: Tensor, log_a: Tensor, log_b: Tensor, eps: float, n_iters: int, tol: float,
                     history: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    B, n, m = cost.shape
    if m > MAX_M:
        raise ValueError(f"the Triton Sinkhorn kernel supports m <= {MAX_M}, got m={m}")
    S = n_iters + 1 if history else 2
    plan = torch.empty_like(cost)
    f = torch.empty((B, n), dtype=cost.dtype, device=cost.device)
    g = torch.empty((B, m), dtype=cost.dtype, device=cost.device)
    iters = torch.empty((B,), dtype=torch.int64, device=cost.device)
    hist_f = torch.empty((B, S, n), dtype=cost.dtype, device=cost.device)
    hist_g = torch.empty((B, S, m), dtype=cost.dtype, device=cost.device)
    if B:
        block_r, block_m = _blocks(m)
        wrap_triton(_sinkhorn_forward_kernel)[(B,)](
            cost, log_a, log_b, plan, f, g, iters, hist_f, hist_g, n, m, S, n_iters, eps, tol,
            HISTORY=history, BLOCK_R=block_r, BLOCK_M=block_m, num_warps=8 if block_m >= 512 else 4)
    return plan, f, g, iters, hist_f, hist_g


def sinkhorn_backward(grad_plan: Tensor, grad_f: Tensor, grad_g: Tensor, cost: Tensor, log_a: Tensor, log_b: Tensor,
                      plan: Tensor, iters: Tensor, hist_f: Tensor, hist_g: Tensor, eps: float
                      ) -> tuple[Tensor, Tensor, Tensor]:
    B, n, m = cost.shape
    grad_cost = torch.empty_like(cost)
    grad_log_a = torch.empty_like(log_a)
    grad_log_b = torch.empty_like(log_b)
    if B:
        fbar = torch.empty_like(log_a)
        block_r, block_m = _blocks(m)
        wrap_triton(_sinkhorn_backward_kernel)[(B,)](
            grad_plan, grad_f, grad_g, cost, log_a, log_b, plan, iters, hist_f, hist_g,
            grad_cost, grad_log_a, grad_log_b, fbar, n, m, hist_f.shape[1], eps,
            BLOCK_R=block_r, BLOCK_M=block_m, num_warps=8 if block_m >= 512 else 4)
    return grad_cost, grad_log_a, grad_log_b
