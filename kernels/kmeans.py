"""Triton kernel for batched Lloyd iterations (pyaudiok/ops/kmeans.py).

``lloyd(x[B, P, d], centroids[B, k, d], n_iters)`` -> ``(centroids[B, k, d], assignments[B, P] int64)``

One launch per iteration: program (b, tile of BLOCK_P points) keeps its points in registers,
streams item b's centroids in chunks of BLOCK_K computing ‖c‖² − 2 x·c with ``tl.dot`` (fp32,
no TF32) and a running argmin (ties → lowest index), writes the assignments and adds its points
to the per-cluster sums and counts with atomics, and counts the assignments it changed. An item
whose iteration changed none has reached Lloyd's fixed point: later launches mask it out (flags on
the device, so no host round trip); the final assignment pass covers every item. The centroid
update (sum / count, empty clusters unchanged) is a [B, k, d]-sized torch expression.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch_checks as checks
from .gpu import cdiv, launchable

MAX_D = 256  # a tile of points lives in registers


@triton.jit
def _assign_kernel(x_ptr, c_ptr, cnorm_ptr, assign_ptr, moving_ptr, changed_ptr, sums_ptr, counts_ptr, P, K, D,
                   ACCUMULATE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    points = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    live = tl.minimum(tl.load(moving_ptr + b), 1)  # moving_ptr holds counts of changes; 0: settled
    point_ok = points < P * live  # a settled item reads and writes nothing
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < D
    x = tl.load(x_ptr + b * P * D + points[:, None].to(tl.int64) * D + dims[None, :],
                mask=point_ok[:, None] & dim_ok[None, :], other=0.0).to(tl.float32)
    best = tl.full((BLOCK_P,), float("inf"), dtype=tl.float32)
    best_index = tl.zeros((BLOCK_P,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        c = tl.load(c_ptr + b * K * D + ks[:, None] * D + dims[None, :], mask=k_ok[:, None] & dim_ok[None, :],
                    other=0.0).to(tl.float32)
        cnorm = tl.load(cnorm_ptr + b * K + ks, mask=k_ok, other=float("inf"))
        score = cnorm[None, :] - 2 * tl.dot(x, tl.trans(c), input_precision="ieee")  # [BLOCK_P, BLOCK_K]
        chunk_best = tl.min(score, 1)
        chunk_index = tl.argmin(score, 1).to(tl.int32) + k0  # first minimum within the chunk
        better = chunk_best < best  # strict: an earlier chunk keeps ties
        best_index = tl.where(better, chunk_index, best_index)
        best = tl.where(better, chunk_best, best)
    previous = tl.load(assign_ptr + b * P + points, mask=point_ok, other=0)
    tl.store(assign_ptr + b * P + points, best_index.to(tl.int64), mask=point_ok)
    if ACCUMULATE:
        # relaxed atomics: the sums and counts are read only after the launch (no ordering needed)
        tl.atomic_add(changed_ptr + b, tl.sum((point_ok & (previous != best_index.to(tl.int64))).to(tl.int32), 0),
                      sem="relaxed")
        target = b * K + best_index.to(tl.int64)
        tl.atomic_add(sums_ptr + target[:, None] * D + dims[None, :], x, mask=point_ok[:, None] & dim_ok[None, :],
                      sem="relaxed")
        tl.atomic_add(counts_ptr + target, tl.full((BLOCK_P,), 1.0, dtype=tl.float32), mask=point_ok, sem="relaxed")


def _assign(x: Tensor, c: Tensor, assignments: Tensor, moving: Tensor, accumulate: bool):
    """One assignment pass over the moving items (updating `assignments` in place); returns the
    cluster sums and counts and, per item, how many assignments changed."""
    B, P, D = x.shape
    K = c.shape[1]
    changed = torch.zeros(B, dtype=torch.int32, device=x.device)
    sums = torch.zeros(B, K, D, dtype=torch.float32, device=x.device)
    counts = torch.zeros(B, K, dtype=torch.float32, device=x.device)
    cnorm = c.float().square().sum(-1).contiguous()
    block_d = max(16, triton.next_power_of_2(D))
    block_p, block_k = (64, 32) if block_d <= 128 else (32, 32)
    grid = (B, cdiv(P, block_p))
    launchable(_assign_kernel)[grid](x, c, cnorm, assignments, moving, changed, sums, counts, P, K, D,
                                     ACCUMULATE=accumulate, BLOCK_P=block_p, BLOCK_K=block_k, BLOCK_D=block_d)
    return sums, counts, changed


def lloyd(x: Tensor, centroids: Tensor, n_iters: int) -> tuple[Tensor, Tensor]:
    """n_iters Lloyd iterations from `centroids`; returns the final centroids and assignments.

    The centroids stay in float32 through the iterations and are rounded to the input's dtype once,
    at the end, as the reference does: rounding half-precision centroids after every update would
    move later assignments."""
    B, P, D = checks.shape("x", x, "[B, P, d]", None, None, None)
    checks.shape("centroids", centroids, "[B, k, d]", B, None, D)
    checks.device("centroids", centroids, x)
    if D > MAX_D:
        raise ValueError(f"the Triton k-means kernel supports d <= {MAX_D}; got d = {D}")
    if n_iters < 0:
        raise ValueError(f"n_iters must be >= 0; got {n_iters}")
    x, = checks.dense(x)
    c = centroids.float().contiguous()
    assignments = torch.full((B, P), -1, dtype=torch.int64, device=x.device)
    moving = torch.ones(B, dtype=torch.int32, device=x.device)
    for _ in range(n_iters):
        sums, counts, changed = _assign(x, c, assignments, moving, accumulate=True)
        # A settled item has zero counts, so it keeps its centroids.
        c = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], c)
        moving = changed
    _assign(x, c, assignments, torch.ones_like(moving), accumulate=False)
    rounded = c.to(centroids.dtype)
    return rounded.clone() if n_iters == 0 else rounded, assignments
