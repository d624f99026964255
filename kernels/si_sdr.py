"""Triton kernels of the SI-SDR matrix (pyaudiok/ops/si_sdr.py).

``si_sdr_matrix(estimates[B, N, T], references[B, M, T], zero_mean, eps)`` ->
``(matrix[B, N, M] fp32, ee[B, N], rr[B, M], er[B, N, M] fp64)``: the SI-SDR of every pair and the
statistics it follows from — the squared norms and every cross product of the (optionally
mean-centred) signals, kept for the backward.

Two launches, no atomics (the result is deterministic):

1. ``_partials_kernel``, one program per (item, chunk): each program reduces one T-chunk of one item for all
   N × M pairs at once, reading each signal once (a second sweep for the centred products re-reads
   the chunk from L1/L2). It centres on the chunk's own means, so a DC offset never meets the
   cancellation of ``Σer − ΣeΣr/T``. The products are a ``tl.dot`` when there are ≥ 16 rows (its
   minimum tile) and a broadcast multiply-reduce below, where padding to 16 rows would waste up to
   64× the FMAs.
2. ``_combine_kernel``, one program per (item, estimate): one program per estimate row merges the chunks' partials in
   float64 (Chan et al.'s pairwise update: ``Σ_c C_c + n_c (μe_c − μe)(μr_c − μr)``) and evaluates the
   SI-SDR formula of the row in float64, as the other backends do.

Why this is fast: the inputs are a few MB, so the time is latency, not bandwidth. Splitting T
into chunks gives ~``TARGET_PROGRAMS`` programs (≈ 8 per SM of an H100/H200, all resident at
once) of a handful of loop iterations each, instead of B programs each walking all of T serially;
everything after the statistics happens in the second launch on [B, N, M]-sized data instead of
a dozen small PyTorch ops. Both grids are flat (1-D), so B is not bound by CUDA's 65 535 limit
on the other grid axes.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch_checks as checks
from .gpu import cdiv, launchable

MAX_SOURCES = 64        # rows of E and R held in registers per program
TARGET_PROGRAMS = 1024  # programs of the first launch: ≈ 8 per SM, one wave, short serial loops
MIN_DOT_ROWS = 16       # tl.dot's smallest tile
COMBINE_TILE = 1024     # chunk × column values per float64 tile of the second launch
DB_PER_NEPER: tl.constexpr = tl.constexpr(10 / math.log(10))  # 10 log10(x) = DB_PER_NEPER ln(x)


@triton.jit
def _partials_kernel(e_ptr, r_ptr, me_ptr, mr_ptr, ee_ptr, rr_ptr, er_ptr, N, M, T, CHUNKS, CHUNK,
                     ZERO_MEAN: tl.constexpr, USE_DOT: tl.constexpr, BLOCK_S: tl.constexpr,
                     BLOCK_T: tl.constexpr):
    part = tl.program_id(0).to(tl.int64)  # partials are [B, CHUNKS, BLOCK_S(, BLOCK_S)], padding included
    b, c = part // CHUNKS, (part % CHUNKS).to(tl.int32)
    start = c * CHUNK
    end = tl.minimum(start + CHUNK, T)
    rows = tl.arange(0, BLOCK_S)
    e_rows, r_rows = rows < N, rows < M
    e_base = e_ptr + b * N * T + rows[:, None].to(tl.int64) * T
    r_base = r_ptr + b * M * T + rows[:, None].to(tl.int64) * T
    e_mean = tl.zeros((BLOCK_S,), dtype=tl.float32)
    r_mean = tl.zeros((BLOCK_S,), dtype=tl.float32)
    if ZERO_MEAN:
        for t0 in range(start, end, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            ok = t[None, :] < end
            e_mean += tl.sum(tl.load(e_base + t[None, :], mask=e_rows[:, None] & ok, other=0.0).to(tl.float32), 1)
            r_mean += tl.sum(tl.load(r_base + t[None, :], mask=r_rows[:, None] & ok, other=0.0).to(tl.float32), 1)
        e_mean = e_mean / (end - start)
        r_mean = r_mean / (end - start)
        tl.store(me_ptr + part * BLOCK_S + rows, e_mean)
        tl.store(mr_ptr + part * BLOCK_S + rows, r_mean)
    ee = tl.zeros((BLOCK_S,), dtype=tl.float32)
    rr = tl.zeros((BLOCK_S,), dtype=tl.float32)
    er = tl.zeros((BLOCK_S, BLOCK_S), dtype=tl.float32)
    for t0 in range(start, end, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        ok = t[None, :] < end
        e_mask, r_mask = e_rows[:, None] & ok, r_rows[:, None] & ok
        e = tl.load(e_base + t[None, :], mask=e_mask, other=0.0).to(tl.float32)
        r = tl.load(r_base + t[None, :], mask=r_mask, other=0.0).to(tl.float32)
        e = tl.where(e_mask, e - e_mean[:, None], 0.0)
        r = tl.where(r_mask, r - r_mean[:, None], 0.0)
        ee += tl.sum(e * e, 1)
        rr += tl.sum(r * r, 1)
        if USE_DOT:
            er += tl.dot(e, tl.trans(r), input_precision="ieee")  # fp32 products: no TF32
        else:
            er += tl.sum(e[:, None, :] * r[None, :, :], 2)
    tl.store(ee_ptr + part * BLOCK_S + rows, ee)
    tl.store(rr_ptr + part * BLOCK_S + rows, rr)
    tl.store(er_ptr + part * BLOCK_S * BLOCK_S + rows[:, None] * BLOCK_S + rows[None, :], er)


@triton.jit
def _combine_kernel(me_ptr, mr_ptr, pee_ptr, prr_ptr, per_ptr, out_ptr, ee_ptr, rr_ptr, er_ptr,
                    N, M, T, CHUNKS, CHUNK, eps, ZERO_MEAN: tl.constexpr, BLOCK_S: tl.constexpr,
                    BLOCK_C: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b, i = pid // N, pid % N
    cols = tl.arange(0, BLOCK_S)
    col_ok = cols < M
    # Global means (Σ n_c μ_c / T), then every statistic in float64, chunk by chunk; the
    # accumulators keep one lane per chunk slot and are summed once at the end (fixed order).
    mu_e_acc = tl.zeros((BLOCK_C,), dtype=tl.float64)
    mu_r_acc = tl.zeros((BLOCK_C, BLOCK_S), dtype=tl.float64)
    if ZERO_MEAN:
        for c0 in range(0, CHUNKS, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            c_ok = cs < CHUNKS
            n_c = tl.where(c_ok, tl.minimum(cs * CHUNK + CHUNK, T) - cs * CHUNK, 0).to(tl.float64)
            part = b * CHUNKS + cs
            me = tl.load(me_ptr + part * BLOCK_S + i, mask=c_ok, other=0.0).to(tl.float64)
            mr = tl.load(mr_ptr + part[:, None] * BLOCK_S + cols[None, :], mask=c_ok[:, None], other=0.0)
            mu_e_acc += n_c * me
            mu_r_acc += n_c[:, None] * mr.to(tl.float64)
    mu_e = tl.sum(mu_e_acc, 0) / T
    mu_r = tl.sum(mu_r_acc, 0) / T
    ee_acc = tl.zeros((BLOCK_C,), dtype=tl.float64)
    rr_acc = tl.zeros((BLOCK_C, BLOCK_S), dtype=tl.float64)
    er_acc = tl.zeros((BLOCK_C, BLOCK_S), dtype=tl.float64)
    for c0 in range(0, CHUNKS, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        c_ok = cs < CHUNKS
        part = b * CHUNKS + cs
        c_2d = c_ok[:, None] & col_ok[None, :]
        ee_acc += tl.load(pee_ptr + part * BLOCK_S + i, mask=c_ok, other=0.0).to(tl.float64)
        rr_acc += tl.load(prr_ptr + part[:, None] * BLOCK_S + cols[None, :], mask=c_2d, other=0.0).to(tl.float64)
        er_acc += tl.load(per_ptr + part[:, None] * BLOCK_S * BLOCK_S + i * BLOCK_S + cols[None, :], mask=c_2d,
                          other=0.0).to(tl.float64)
        if ZERO_MEAN:  # the spread of the chunk means around the global ones
            n_c = tl.where(c_ok, tl.minimum(cs * CHUNK + CHUNK, T) - cs * CHUNK, 0).to(tl.float64)
            de = tl.load(me_ptr + part * BLOCK_S + i, mask=c_ok, other=0.0).to(tl.float64) - mu_e
            dr = tl.load(mr_ptr + part[:, None] * BLOCK_S + cols[None, :], mask=c_2d, other=0.0).to(tl.float64)
            dr = dr - mu_r[None, :]
            ee_acc += n_c * de * de
            rr_acc += n_c[:, None] * dr * dr
            er_acc += (n_c * de)[:, None] * dr
    ee = tl.sum(ee_acc, 0)
    rr = tl.sum(rr_acc, 0)
    er = tl.sum(er_acc, 0)
    # The formula of pyaudiok/ops/si_sdr.py::_si_sdr_from_stats, in float64.
    alpha = er / (rr + eps)
    target = alpha * alpha * rr
    noise = tl.maximum(ee - 2 * alpha * er + target, 0.0)
    value = tl.log((target + eps) / (noise + eps)) * DB_PER_NEPER
    row = pid * M
    tl.store(out_ptr + row + cols, value.to(tl.float32), mask=col_ok)
    tl.store(er_ptr + row + cols, er, mask=col_ok)
    tl.store(ee_ptr + pid, ee)
    if i == 0:  # rr is the same in every row's program
        tl.store(rr_ptr + b * M + cols, rr, mask=col_ok)


def _launch_config(B: int, N: int, M: int, T: int) -> tuple[int, int, int, int]:
    """(BLOCK_S, BLOCK_T, chunk, chunks) of the first launch."""
    block_s = triton.next_power_of_2(max(N, M))
    if block_s >= MIN_DOT_ROWS:
        block_t = 128 if block_s == MIN_DOT_ROWS else 64
    else:  # broadcast products: BLOCK_S² × BLOCK_T ≈ 4096 fp32 values per program
        block_t = min(1024, max(64, 4096 // (block_s * block_s)))
    chunks = max(1, min(cdiv(T, block_t), cdiv(TARGET_PROGRAMS, B)))
    chunk = cdiv(cdiv(T, chunks), block_t) * block_t
    return block_s, block_t, chunk, cdiv(T, chunk)


def si_sdr_matrix(estimates: Tensor, references: Tensor, zero_mean: bool,
                  eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """estimates[B, N, T], references[B, M, T] (N, M ≤ MAX_SOURCES) -> (matrix fp32, ee, rr, er fp64)."""
    B, N, T = checks.shape("estimates", estimates, "[B, N, T]", None, None, None)
    M = checks.shape("references", references, "[B, M, T]", B, None, T)[1]
    checks.device("references", references, estimates)
    estimates, references = checks.dense(estimates, references)
    device = estimates.device
    matrix = torch.empty(B, N, M, device=device, dtype=torch.float32)
    if B == 0 or N == 0 or M == 0:  # nothing to reduce
        zeros = lambda *shape: torch.zeros(shape, device=device, dtype=torch.float64)  # noqa: E731
        return matrix, zeros(B, N), zeros(B, M), zeros(B, N, M)
    ee = torch.empty(B, N, device=device, dtype=torch.float64)
    rr = torch.empty(B, M, device=device, dtype=torch.float64)
    er = torch.empty(B, N, M, device=device, dtype=torch.float64)
    block_s, block_t, chunk, chunks = _launch_config(B, N, M, T)
    p_me, p_mr, p_ee, p_rr = torch.empty(4, B, chunks, block_s, device=device, dtype=torch.float32)
    p_er = torch.empty(B, chunks, block_s, block_s, device=device, dtype=torch.float32)
    launchable(_partials_kernel)[(B * chunks,)](estimates, references, p_me, p_mr, p_ee, p_rr, p_er, N, M, T,
                                                chunks, chunk,
                                                ZERO_MEAN=zero_mean, USE_DOT=block_s >= MIN_DOT_ROWS,
                                                BLOCK_S=block_s, BLOCK_T=block_t)
    block_c = max(1, min(triton.next_power_of_2(chunks), COMBINE_TILE // block_s))
    launchable(_combine_kernel)[(B * N,)](p_me, p_mr, p_ee, p_rr, p_er, matrix, ee, rr, er, N, M, T, chunks, chunk,
                                          eps, ZERO_MEAN=zero_mean, BLOCK_S=block_s, BLOCK_C=block_c)
    return matrix, ee, rr, er
