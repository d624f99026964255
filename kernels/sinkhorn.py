"""Triton kernels for batched log-domain Sinkhorn (pyaudiok/ops/sinkhorn.py states the math and
the contract of the two raw ops).

* ``sinkhorn_forward(cost, log_a, log_b, eps, n_iters, tol, history)``
  -> ``(plan, f, g, iters, hist_f, hist_g)``
* ``sinkhorn_backward(grad_plan, grad_f, grad_g, cost, log_a, log_b, plan, iters, hist_f, hist_g, eps)``
  -> ``(grad_cost, grad_log_a, grad_log_b)``

Two forward routes, chosen by `_split_plan`:

* single launch: one program per batch element runs every iteration in one launch (the backward
  too, early stop included). A full row of the cost (m ≤ MAX_M) and the column potential g live in
  registers; rows stream in BLOCK_R-row tiles (L2-resident for the sizes this is for), the
  f-update as a row-wise log-sum-exp and the g-update as an online (rescaled) column-wise one, so
  each iteration reads the cost twice. The potentials of each iteration go to the history slots,
  which double as the working storage (barriers order the phases).
* split rows, for costs too large for L2 or batches too small to fill the GPU: each problem's rows
  are split over R programs and every iteration is one launch reading the cost once. Launch k
  combines the column partials (max and sum-exp of (f_i − C_ij)/ε over each row block) written
  by launch k − 1 into g⁽ᵏ⁻¹⁾, then does the f-update of its rows and writes the partials of
  f⁽ᵏ⁾ for launch k + 1; a last launch writes the plan. Early stop as in the single launch: the
  error partials of launch k − 1 decide, and a stopped problem's programs return at once (a flag
  per problem in device memory, no host sync).
"""
from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch_checks as checks
from .gpu import launchable, sm_count

MAX_M = 1024
_TILE = 4096  # elements per [BLOCK_R, BLOCK_M] tile


@triton.jit
def _slot(k, HISTORY: tl.constexpr):
    if HISTORY:
        return k
    else:
        return k % 2


@triton.jit
def _problem(cost_ptr, hf_ptr, hg_ptr, lb_ptr, b, n, m, S, BLOCK_M: tl.constexpr):
    """Batch element b's cost and history pointers, its columns (and which are real) and log b."""
    cols = tl.arange(0, BLOCK_M)
    col_ok = cols < m
    lb = tl.load(lb_ptr + b * m + cols, mask=col_ok, other=0.0)
    return cost_ptr + b * n * m, hf_ptr + b * S * n, hg_ptr + b * S * m, cols, col_ok, lb


@triton.jit
def _lse_shift(mx):
    """The shift of a log-sum-exp whose largest term is mx: 0 for an infinite mx, as in
    torch.logsumexp, so that a +inf term (from a −inf cost) gives +inf and a NaN term NaN."""
    return tl.where(tl.abs(mx) == float("inf"), 0.0, mx)


@triton.jit
def _f_update(c, g_prev, la, col_ok, eps, inv_eps):
    """f_i = ε log a_i − ε LSE_j((g_j − C_ij)/ε) for a [BLOCK_R, BLOCK_M] tile of whole rows."""
    ninf = -float("inf")
    t = tl.where(col_ok[None, :], g_prev[None, :] - c, ninf)
    safe = _lse_shift(tl.max(t, axis=1))
    lse = safe + eps * tl.log(tl.sum(tl.exp((t - safe[:, None]) * inv_eps), axis=1))
    return eps * la - lse


@triton.jit
def _row_error(la, f_old, f_new, row_ok, inv_eps):
    """Σ_i |a_i exp((f_old − f_new)/ε) − a_i| over a tile's rows (zero-mass rows contribute 0)."""
    term = tl.abs(tl.exp(la + (f_old - f_new) * inv_eps) - tl.exp(la))
    return tl.sum(tl.where(row_ok & (la != -float("inf")), term, 0.0), axis=0)


@triton.jit
def _converged(err, tol):
    """Whether the row-marginal error `err` stops the iterations: not above tol (tol > 0). A NaN
    error (a NaN or −inf in the cost) stops them too, as the reference's `err > tol` test does."""
    return (tol > 0) & ((err <= tol) | (err != err))


@triton.jit
def _col_lse_step(col_max, col_sum, f, c, row_ok, inv_eps):
    """Online column statistics of (f_i − C_ij) over one more tile of rows: the running maximum
    and Σ exp((f_i − C_ij − max)/ε)."""
    ninf = -float("inf")
    t = tl.where(row_ok[:, None], f[:, None] - c, ninf)
    new_max = tl.maximum(col_max, tl.max(t, axis=0))
    safe = _lse_shift(new_max)
    col_sum = col_sum * tl.exp((col_max - safe) * inv_eps) + tl.sum(tl.exp((t - safe[None, :]) * inv_eps), axis=0)
    return new_max, col_sum


@triton.jit
def _col_lse_merge(col_max, col_sum, other_max, other_sum, inv_eps):
    """The column statistics of two sets of rows combined (the split route's partials)."""
    new_max = tl.maximum(col_max, other_max)
    safe = _lse_shift(new_max)
    return new_max, col_sum * tl.exp((col_max - safe) * inv_eps) + other_sum * tl.exp((other_max - safe) * inv_eps)


@triton.jit
def _g_update(col_max, col_sum, lb, eps):
    """g_j = ε log b_j − ε LSE_i((f_i − C_ij)/ε) from the column statistics (−inf for a column with
    no term above −inf: a sum of 0)."""
    return tl.where(col_sum == 0, -float("inf"), eps * lb - (col_max + eps * tl.log(col_sum)))


@triton.jit
def _write_plan(cost_b, plan_b, f_out, f_hist, g, m, row_start, row_end, inv_eps,
                BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr):
    """Rows [row_start, row_end) of the plan exp((f_i + g_j − C_ij)/ε), and of f (from the history slot)."""
    cols = tl.arange(0, BLOCK_M)
    col_ok = cols < m
    lanes = tl.arange(0, BLOCK_R)
    for r0 in range(row_start, row_end, BLOCK_R):
        rows = r0 + lanes
        row_ok = rows < row_end
        ok = row_ok[:, None] & col_ok[None, :]
        f = tl.load(f_hist + rows, mask=row_ok, other=0.0)
        tl.store(f_out + rows, f, mask=row_ok)
        c = tl.load(cost_b + rows[:, None] * m + cols[None, :], mask=ok, other=0.0)
        tl.store(plan_b + rows[:, None] * m + cols[None, :], tl.exp((f[:, None] + g[None, :] - c) * inv_eps), mask=ok)


@triton.jit
def _sinkhorn_forward_kernel(
    cost_ptr, la_ptr, lb_ptr,  # [B, n, m], [B, n], [B, m] fp32
    plan_ptr, f_ptr, g_ptr, iters_ptr,  # outputs
    hf_ptr, hg_ptr,  # [B, S, n], [B, S, m]
    n, m, S, n_iters, eps, tol,
    HISTORY: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    cost_b, hf, hg, cols, col_ok, lb = _problem(cost_ptr, hf_ptr, hg_ptr, lb_ptr, b, n, m, S, BLOCK_M)
    inv_eps = 1.0 / eps
    lanes = tl.arange(0, BLOCK_R)
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
            la = tl.load(la_ptr + b * n + rows, mask=row_ok, other=0.0)
            f_new = _f_update(c, g_prev, la, col_ok, eps, inv_eps)
            f_old = tl.load(hf + prev * n + rows, mask=row_ok, other=0.0)
            err += _row_error(la, f_old, f_new, row_ok, inv_eps)
            tl.store(hf + cur * n + rows, f_new, mask=row_ok)
        tl.debug_barrier()
        stop = (k > 1) & _converged(err, tol)
        if not stop:
            col_max = tl.full([BLOCK_M], ninf, tl.float32)
            col_sum = tl.zeros([BLOCK_M], tl.float32)
            for r0 in range(0, n, BLOCK_R):
                rows = r0 + lanes
                row_ok = rows < n
                c = tl.load(cost_b + rows[:, None] * m + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                            other=0.0)
                f = tl.load(hf + cur * n + rows, mask=row_ok, other=0.0)
                col_max, col_sum = _col_lse_step(col_max, col_sum, f, c, row_ok, inv_eps)
            tl.store(hg + cur * m + cols, _g_update(col_max, col_sum, lb, eps), mask=col_ok)
            tl.debug_barrier()
            done = k
        running = (not stop) & (k < n_iters)
        k += 1

    last = _slot(done, HISTORY)
    g = tl.load(hg + last * m + cols, mask=col_ok, other=0.0)
    tl.store(g_ptr + b * m + cols, g, mask=col_ok)
    tl.store(iters_ptr + b, done.to(tl.int64))
    _write_plan(cost_b, plan_ptr + b * n * m, f_ptr + b * n, hf + last * n, g, m, 0, n, inv_eps, BLOCK_R, BLOCK_M)


@triton.jit(do_not_specialize=["k"])
def _sinkhorn_split_kernel(
    cost_ptr, la_ptr, lb_ptr,  # [B, n, m], [B, n], [B, m] fp32
    plan_ptr, f_ptr, g_ptr, iters_ptr,  # outputs
    hf_ptr, hg_ptr,  # [B, S, n], [B, S, m]; slot 0 zeroed by the launcher
    cmax_ptr, csum_ptr, err_ptr, state_ptr,  # [2, B, R, m], [2, B, R, m], [2, B, R] by parity; [B] int32
    n, m, S, R, rows_per_block, k, n_iters, eps, tol,
    HISTORY: tl.constexpr, FINAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Launch k ≤ n_iters of the split route (FINAL: launch n_iters + 1, the outputs), program r of
    batch element b. state[b] is −1 while b runs, then its final iteration count."""
    pid = tl.program_id(0)
    b = (pid // R).to(tl.int64)
    r = pid % R
    B = tl.num_programs(0) // R
    cost_b, hf, hg, cols, col_ok, lb = _problem(cost_ptr, hf_ptr, hg_ptr, lb_ptr, b, n, m, S, BLOCK_M)
    inv_eps = 1.0 / eps
    ninf = -float("inf")
    row_start = r * rows_per_block
    row_end = tl.minimum(row_start + rows_per_block, n)

    # g⁽ᵏ⁻¹⁾ and the error of iteration k − 1 from the partials of launch k − 1 (g⁽⁰⁾ = 0),
    # combined redundantly by every program of the problem.
    state = tl.load(state_ptr + b)
    live = state < 0
    have = live & (k > 1)
    part = ((k - 1) % 2 * B + b) * R
    part_ok = cols < tl.where(have, m, 0)  # (a scalar condition &-ed into a mask breaks the interpreter)
    col_max = tl.full([BLOCK_M], ninf, tl.float32)
    col_sum = tl.zeros([BLOCK_M], tl.float32)
    err = 0.0
    for j in range(0, R):
        other_max = tl.load(cmax_ptr + (part + j) * m + cols, mask=part_ok, other=ninf)
        other_sum = tl.load(csum_ptr + (part + j) * m + cols, mask=part_ok, other=0.0)
        col_max, col_sum = _col_lse_merge(col_max, col_sum, other_max, other_sum, inv_eps)
        err += tl.load(err_ptr + part + j, mask=have, other=0.0)
    g_prev = tl.where(have, _g_update(col_max, col_sum, lb, eps), 0.0)
    # Iteration k − 1 stops (its g-update undone: the state is that of k − 2) as in the single launch.
    stop = live & (k > 2) & _converged(err, tol)
    go = live & (stop == 0)

    if FINAL:
        done = tl.where(live, tl.where(stop, k - 2, k - 1), state)
        last = _slot(done, HISTORY)
        g = tl.where(go, g_prev, tl.load(hg + last * m + cols, mask=cols < tl.where(go, 0, m), other=0.0))
        if r == 0:
            tl.store(hg + last * m + cols, g, mask=cols < tl.where(go, m, 0))
            tl.store(g_ptr + b * m + cols, g, mask=col_ok)
            tl.store(iters_ptr + b, done.to(tl.int64))
        _write_plan(cost_b, plan_ptr + b * n * m, f_ptr + b * n, hf + last * n, g, m, row_start, row_end, inv_eps,
                    BLOCK_R, BLOCK_M)
    else:
        if stop & (r == 0):
            tl.store(state_ptr + b, (k - 2).to(tl.int32))
        if go:
            cur = _slot(k, HISTORY)
            prev = _slot(k - 1, HISTORY)
            if r == 0:
                tl.store(hg + prev * m + cols, g_prev, mask=col_ok)
            lanes = tl.arange(0, BLOCK_R)
            col_max = tl.full([BLOCK_M], ninf, tl.float32)
            col_sum = tl.zeros([BLOCK_M], tl.float32)
            err = 0.0
            for r0 in range(row_start, row_end, BLOCK_R):
                rows = r0 + lanes
                row_ok = rows < row_end
                c = tl.load(cost_b + rows[:, None] * m + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                            other=0.0)
                la = tl.load(la_ptr + b * n + rows, mask=row_ok, other=0.0)
                f_new = _f_update(c, g_prev, la, col_ok, eps, inv_eps)
                f_old = tl.load(hf + prev * n + rows, mask=row_ok, other=0.0)
                err += _row_error(la, f_old, f_new, row_ok, inv_eps)
                tl.store(hf + cur * n + rows, f_new, mask=row_ok)
                col_max, col_sum = _col_lse_step(col_max, col_sum, f_new, c, row_ok, inv_eps)
            q = (k % 2 * B + b) * R + r
            tl.store(cmax_ptr + q * m + cols, col_max, mask=col_ok)
            tl.store(csum_ptr + q * m + cols, col_sum, mask=col_ok)
            tl.store(err_ptr + q, err)


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


def _warps(block_m: int) -> int:
    return 8 if block_m >= 512 else 4


def _blocks(m: int) -> tuple[int, int]:
    block_m = max(16, triton.next_power_of_2(m))
    return max(1, min(64, _TILE // block_m)), block_m


ROUTES = ("single", "split")
SPLIT_BYTES = 256 * 1024  # a problem's cost above this streams from HBM rather than L2
# About two waves of the 2-3 programs an SM holds at once (≈80 registers a thread at 8 warps on
# sm_90), so that the last, partial wave is a small part of each launch.
_PROGRAMS_PER_SM = 4
_INTERPRETER_BLOCKS, _INTERPRETER_TILE_ROWS = 3, 4
_forced: str | None = None
_STOP_CHECK_EVERY = 32  # launches of the split route between host checks for early stop (eager, with tol)


@contextlib.contextmanager
def forced_route(route: str | None):
    """Run the forward on `route` ("single" or "split"; None: the automatic choice) inside the
    block, for tests and the bench."""
    global _forced
    if route is not None and route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES} or None; got {route!r}")
    old, _forced = _forced, route
    try:
        yield
    finally:
        _forced = old


def _split_plan(B: int, n: int, m: int, block_r: int, sms: int) -> tuple[int, int, int] | None:
    """(R row blocks, rows per block, BLOCK_R) of the split route, or None for the single launch.

    The single launch reads each problem's cost twice per iteration, one program per problem: good
    while the cost is on-chip or in L2 and one launch beats n_iters + 1. The split route reads it
    once per iteration with B·R programs: taken for a cost over SPLIT_BYTES per problem, or over
    half of it when B ≤ a quarter of the SMs (most of the GPU idle; below that an iteration of the
    single launch is about as short as a launch). R targets
    _PROGRAMS_PER_SM programs per SM, at most √(n/2): every program re-reads the 2·R·m
    column partials of its problem, which so stay below its own n/R·m share of the cost. In the
    interpreter (sms = 0) a split uses a few blocks of small tiles, so that tests see several of
    each and a short last block."""
    route = _forced
    if route is None:
        size = n * m * 4
        route = "split" if size > SPLIT_BYTES or (4 * B <= sms and 2 * size > SPLIT_BYTES) else "single"
    if route == "single":
        return None
    if sms:
        blocks = max(1, min(-(-_PROGRAMS_PER_SM * sms // B), math.isqrt(max(n // 2, 1))))
    else:
        blocks = min(_INTERPRETER_BLOCKS, n)
        block_r = min(block_r, _INTERPRETER_TILE_ROWS)
    rows = -(-n // blocks)
    if rows >= block_r:
        rows = -(-rows // block_r) * block_r  # whole tiles except in the last block
    else:
        block_r = triton.next_power_of_2(rows)
    return -(-n // rows), rows, block_r


def _forward_split(cost, log_a, log_b, plan, f, g, iters, hist_f, hist_g, eps, n_iters, tol, history, split,
                   block_m) -> int:
    """The split route into the given outputs; returns the number of launches made."""
    B, n, m = cost.shape
    R, rows, block_r = split
    hist_f[:, 0].zero_()
    hist_g[:, 0].zero_()
    cmax = torch.empty((2, B, R, m), dtype=cost.dtype, device=cost.device)
    csum = torch.empty_like(cmax)
    err = torch.empty((2, B, R), dtype=cost.dtype, device=cost.device)
    state = torch.full((B,), -1, dtype=torch.int32, device=cost.device)
    kernel = launchable(_sinkhorn_split_kernel)

    def launch(k: int) -> None:  # launch n_iters + 1 is the final one
        kernel[(B * R,)](cost, log_a, log_b, plan, f, g, iters, hist_f, hist_g, cmax, csum, err, state,
                         n, m, hist_f.shape[1], R, rows, k, n_iters, eps, tol,
                         HISTORY=history, FINAL=k > n_iters, BLOCK_R=block_r, BLOCK_M=block_m,
                         num_warps=_warps(block_m))

    # Eager calls with a tolerance look every _STOP_CHECK_EVERY launches whether every problem has
    # stopped, and if so go straight to the final launch (with tol alone n_iters defaults to 1000:
    # launches of returning programs would otherwise outnumber the working ones). Traced calls
    # (fake or functional tensors) cannot read device memory and queue every launch.
    check = tol > 0 and type(state) is torch.Tensor and not torch.compiler.is_compiling()
    for k in range(1, n_iters + 1):  # queued without a sync; a stopped problem's programs return
        launch(k)
        if check and k < n_iters and k % _STOP_CHECK_EVERY == 0 and bool((state >= 0).all()):
            launch(n_iters + 1)  # the outputs of the stopped problems, from their state
            return k + 1
    launch(n_iters + 1)
    return n_iters + 1


def _checked(cost: Tensor, log_a: Tensor, log_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """cost[B, n, m], log_a[B, n], log_b[B, m], checked to agree, contiguous."""
    B, n, m = checks.shape("cost", cost, "[B, n, m]", None, None, None)
    checks.shape("log_a", log_a, "[B, n]", B, n)
    checks.shape("log_b", log_b, "[B, m]", B, m)
    for name, t in (("log_a", log_a), ("log_b", log_b)):
        checks.device(name, t, cost)
    return checks.dense(cost, log_a, log_b)


def sinkhorn_forward(cost: Tensor, log_a: Tensor, log_b: Tensor, eps: float, n_iters: int, tol: float,
                     history: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    cost, log_a, log_b = _checked(cost, log_a, log_b)
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
        split = _split_plan(B, n, m, block_r, sm_count(cost.device))
        if split is not None:
            _forward_split(cost, log_a, log_b, plan, f, g, iters, hist_f, hist_g, eps, n_iters, tol, history, split,
                           block_m)
        else:
            launchable(_sinkhorn_forward_kernel)[(B,)](
                cost, log_a, log_b, plan, f, g, iters, hist_f, hist_g, n, m, S, n_iters, eps, tol,
                HISTORY=history, BLOCK_R=block_r, BLOCK_M=block_m, num_warps=_warps(block_m))
    return plan, f, g, iters, hist_f, hist_g


def sinkhorn_backward(grad_plan: Tensor, grad_f: Tensor, grad_g: Tensor, cost: Tensor, log_a: Tensor, log_b: Tensor,
                      plan: Tensor, iters: Tensor, hist_f: Tensor, hist_g: Tensor, eps: float
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Trusts index values (iters, the iterations each problem ran): the forward wrote them."""
    cost, log_a, log_b = _checked(cost, log_a, log_b)
    B, n, m = cost.shape
    expected = {"grad_plan": (grad_plan, "[B, n, m]", (B, n, m)), "grad_f": (grad_f, "[B, n]", (B, n)),
                "grad_g": (grad_g, "[B, m]", (B, m)), "plan": (plan, "[B, n, m]", (B, n, m)),
                "iters": (iters, "[B]", (B,)), "hist_f": (hist_f, "[B, S, n]", (B, None, n)),
                "hist_g": (hist_g, "[B, S, m]", (B, None, m))}
    for name, (t, layout, sizes) in expected.items():
        checks.shape(name, t, layout, *sizes)
        checks.device(name, t, cost)
    checks.shape("hist_g", hist_g, "[B, S, m] (hist_f's S)", B, hist_f.shape[1], m)
    grad_plan, grad_f, grad_g, plan, iters, hist_f, hist_g = checks.dense(grad_plan, grad_f, grad_g, plan, iters,
                                                                           hist_f, hist_g)
    grad_cost = torch.empty_like(cost)
    grad_log_a = torch.empty_like(log_a)
    grad_log_b = torch.empty_like(log_b)
    if B:
        fbar = torch.empty_like(log_a)
        block_r, block_m = _blocks(m)
        launchable(_sinkhorn_backward_kernel)[(B,)](
            grad_plan, grad_f, grad_g, cost, log_a, log_b, plan, iters, hist_f, hist_g,
            grad_cost, grad_log_a, grad_log_b, fbar, n, m, hist_f.shape[1], eps,
            BLOCK_R=block_r, BLOCK_M=block_m, num_warps=_warps(block_m))
    return grad_cost, grad_log_a, grad_log_b
