"""Triton kernel for the statistics of the SI-SDR matrix (pyaudiok/ops/si_sdr.py).

``si_sdr_stats(estimates[B, N, T], references[B, M, T], zero_mean)`` ->
``(ee[B, N], rr[B, M], er[B, N, M])``, all fp32: the squared norms and every cross product of the
(optionally mean-centred) signals. One program per batch item: a first sweep over time takes the
row means (centring before the products avoids the cancellation of ``Σer − ΣeΣr/T`` for signals
with a DC offset), a second accumulates ``E Rᵀ`` with ``tl.dot`` and the norms, tile by tile, so
nothing of size T is written.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

MAX_SOURCES = 64  # rows of E and R held in registers per program


@triton.jit
def _si_sdr_stats_kernel(e_ptr, r_ptr, ee_ptr, rr_ptr, er_ptr, N, M, T,
                         ZERO_MEAN: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_T: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_S)
    e_rows, r_rows = rows < N, rows < M
    e_base = e_ptr + b * N * T + rows[:, None].to(tl.int64) * T
    r_base = r_ptr + b * M * T + rows[:, None].to(tl.int64) * T
    e_mean = tl.zeros((BLOCK_S,), dtype=tl.float32)
    r_mean = tl.zeros((BLOCK_S,), dtype=tl.float32)
    if ZERO_MEAN:
        for t0 in range(0, T, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            ok = t[None, :] < T
            e_mean += tl.sum(tl.load(e_base + t[None, :], mask=e_rows[:, None] & ok, other=0.0).to(tl.float32), 1)
            r_mean += tl.sum(tl.load(r_base + t[None, :], mask=r_rows[:, None] & ok, other=0.0).to(tl.float32), 1)
        e_mean = e_mean / T
        r_mean = r_mean / T
    ee = tl.zeros((BLOCK_S,), dtype=tl.float32)
    rr = tl.zeros((BLOCK_S,), dtype=tl.float32)
    er = tl.zeros((BLOCK_S, BLOCK_S), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        ok = t[None, :] < T
        e_mask, r_mask = e_rows[:, None] & ok, r_rows[:, None] & ok
        e = tl.load(e_base + t[None, :], mask=e_mask, other=0.0).to(tl.float32)
        r = tl.load(r_base + t[None, :], mask=r_mask, other=0.0).to(tl.float32)
        e = tl.where(e_mask, e - e_mean[:, None], 0.0)
        r = tl.where(r_mask, r - r_mean[:, None], 0.0)
        ee += tl.sum(e * e, 1)
        rr += tl.sum(r * r, 1)
        er += tl.dot(e, tl.trans(r), input_precision="ieee")  # fp32 products: no TF32
    tl.store(ee_ptr + b * N + rows, ee, mask=e_rows)
    tl.store(rr_ptr + b * M + rows, rr, mask=r_rows)
    er_offsets = b * N * M + rows[:, None] * M + rows[None, :]
    tl.store(er_ptr + er_offsets, er, mask=e_rows[:, None] & r_rows[None, :])


def si_sdr_stats(estimates: Tensor, references: Tensor, zero_mean: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Contiguous estimates[B, N, T], references[B, M, T] (N, M ≤ MAX_SOURCES) -> fp32 statistics."""
    B, N, T = estimates.shape
    M = references.shape[1]
    device = estimates.device
    ee = torch.empty(B, N, device=device, dtype=torch.float32)
    rr = torch.empty(B, M, device=device, dtype=torch.float32)
    er = torch.empty(B, N, M, device=device, dtype=torch.float32)
    if B == 0:
        return ee, rr, er
    block_s = max(16, triton.next_power_of_2(max(N, M)))  # tl.dot needs tiles of at least 16
    block_t = 128 if block_s <= 16 else 64
    wrap_triton(_si_sdr_stats_kernel)[(B,)](estimates, references, ee, rr, er, N, M, T,
                                            ZERO_MEAN=zero_mean, BLOCK_S=block_s, BLOCK_T=block_t)
    return ee, rr, er
