"""Triton kernels for bottom-right causal latent cross-attention (Perceiver AR, DESIGN §1).

Public launchers (bodies of ``torch.library.triton_op``; launches go through ``wrap_triton``):

* ``latent_attention_forward(q, k, v, key_lengths, scale, keep)`` -> ``(out, lse)``
* ``latent_attention_backward(grad_out, q, k, v, out, lse, key_lengths, scale, keep)`` -> ``(dq, dk, dv)``

``q[B, H, N, D]``, ``k, v[B, H, M, D]`` contiguous; ``key_lengths[B]`` int32 or None; ``keep[B, M']``
int64 (ascending kept key positions, gathered inside the kernels) or None. Query j of row b sees
key i (in the kept sequence) iff ``i <= L_b - N + j`` and ``i < L_b``. ``lse`` is the natural
log-sum-exp of the scaled scores over the visible keys (``-inf`` where none is visible, and then
``out`` is 0).

Flash-style: each program streams key blocks through an online softmax held in fp32 registers,
so memory is O(N + M). Key blocks that lie wholly above a block's diagonal are never loaded, and
only blocks that straddle the diagonal (or L_b) pay for the mask. The forward can split the key
range over a third grid axis (split-KV, for few query blocks and long M); the partial results are
merged by their log-sum-exp. The backward is FlashAttention-2's: one kernel owns a key block and
accumulates dK, dV over the query blocks that see it; another owns a query block for dQ. No
atomics, so results are deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

HEAD_DIMS = (16, 32, 64, 128)
_LOG2E = 1.4426950408889634


@triton.jit
def _key_rows(IDX, b, Mk, cols, col_ok, HAS_IDX: tl.constexpr):
    """Row of each (kept) key position `cols` in the full k/v tensors (int64)."""
    if HAS_IDX:
        return tl.load(IDX + b.to(tl.int64) * Mk + cols, mask=col_ok, other=0).to(tl.int64)
    return cols.to(tl.int64)


@triton.jit
def _key_length(KL, b, Mk, HAS_KL: tl.constexpr):
    if HAS_KL:
        return tl.load(KL + b)
    return Mk


@triton.jit
def _fwd_block(acc, l_i, m_i, q, K, V, IDX, b, Mk, start, end, offset, rows, d,
               qk_scale, MASKED: tl.constexpr, HAS_IDX: tl.constexpr,
               BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    for n0 in range(start, end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < end
        krow = _key_rows(IDX, b, Mk, cols, col_ok, HAS_IDX)
        k = tl.load(K + krow[:, None] * D + d[None, :], mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # log2 units
        if MASKED:
            visible = (cols[None, :] <= offset + rows[:, None]) & col_ok[None, :]
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(V + krow[:, None] * D + d[None, :], mask=col_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, KL, IDX, O, LSE, H, N, M, Mk, kv_chunk, qk_scale,
                HAS_KL: tl.constexpr, HAS_IDX: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    b = bh // H
    L = _key_length(KL, b, Mk, HAS_KL)  # in the kept sequence
    offset = L - N
    start_row = pid_m * BLOCK_M
    rows = start_row + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    d = tl.arange(0, D)
    q = tl.load(Q + bh * N * D + rows[:, None] * D + d[None, :], mask=row_ok[:, None], other=0.0)
    Kb = K + bh * M * D
    Vb = V + bh * M * D

    # Keys < hi are visible to some row of this block; keys < full to all of its rows.
    hi = tl.minimum(L, offset + start_row + BLOCK_M)
    full = tl.maximum(tl.minimum(L, offset + start_row + 1), 0)
    lo_s = split * kv_chunk
    hi_s = tl.maximum(tl.minimum(hi, lo_s + kv_chunk), lo_s)
    full_s = lo_s + (tl.maximum(tl.minimum(full, hi_s) - lo_s, 0) // BLOCK_N) * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, Kb, Vb, IDX, b, Mk, lo_s, full_s, offset, rows, d,
                               qk_scale, False, HAS_IDX, BLOCK_N, D, PREC)
    acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, Kb, Vb, IDX, b, Mk, full_s, hi_s, offset, rows, d,
                               qk_scale, True, HAS_IDX, BLOCK_N, D, PREC)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    o_off = (split * tl.num_programs(1) + bh) * N
    tl.store(O + (o_off + rows[:, None]) * D + d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + o_off + rows, lse, mask=row_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, KL, IDX, DO, LSE, DELTA, DK, DV, H, N, M, Mk, qk_scale, sm_scale,
                     HAS_KL: tl.constexpr, HAS_IDX: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    L = _key_length(KL, b, Mk, HAS_KL)
    offset = L - N
    ks = pid_n * BLOCK_N
    cols = ks + tl.arange(0, BLOCK_N)
    col_ok = cols < Mk
    d = tl.arange(0, D)
    krow = _key_rows(IDX, b, Mk, cols, col_ok, HAS_IDX)
    k = tl.load(K + bh * M * D + krow[:, None] * D + d[None, :], mask=col_ok[:, None], other=0.0)
    v = tl.load(V + bh * M * D + krow[:, None] * D + d[None, :], mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)

    # Query j sees key i iff j >= i - offset: start at the first query block that sees this block;
    # blocks wholly below the diagonal (and keys all < L) need no mask.
    q_lo = (tl.maximum(ks - offset, 0) // BLOCK_M) * BLOCK_M
    q_full = q_lo + tl.cdiv(tl.maximum(ks + BLOCK_N - 1 - offset - q_lo, 0), BLOCK_M) * BLOCK_M
    q_full = tl.where(ks + BLOCK_N <= L, tl.minimum(q_full, N), N)
    if ks < L:
        for m0 in range(q_lo, N, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = rows < N
            q = tl.load(Q + bh * N * D + rows[:, None] * D + d[None, :], mask=row_ok[:, None], other=0.0)
            do = tl.load(DO + bh * N * D + rows[:, None] * D + d[None, :], mask=row_ok[:, None], other=0.0)
            lse = tl.load(LSE + bh * N + rows, mask=row_ok, other=float("inf"))  # log2 units, +inf: none
            delta = tl.load(DELTA + bh * N + rows, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            p = tl.exp2(s - lse[:, None])
            if m0 < q_full:
                visible = (cols[None, :] <= offset + rows[:, None]) & (cols[None, :] < L)
                p = tl.where(visible, p, 0.0)
            dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PREC)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC)
    off = bh * M * D + krow[:, None] * D + d[None, :]
    tl.store(DK + off, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _bwd_dq_kernel(Q, K, V, KL, IDX, DO, LSE, DELTA, DQ, H, N, M, Mk, qk_scale, sm_scale,
                   HAS_KL: tl.constexpr, HAS_IDX: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    L = _key_length(KL, b, Mk, HAS_KL)
    offset = L - N
    start_row = pid_m * BLOCK_M
    rows = start_row + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    d = tl.arange(0, D)
    q = tl.load(Q + bh * N * D + rows[:, None] * D + d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + bh * N * D + rows[:, None] * D + d[None, :], mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + bh * N + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * N + rows, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    hi = tl.maximum(tl.minimum(L, offset + start_row + BLOCK_M), 0)
    full = tl.maximum(tl.minimum(L, offset + start_row + 1), 0)
    full = (full // BLOCK_N) * BLOCK_N
    for n0 in range(0, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < hi
        krow = _key_rows(IDX, b, Mk, cols, col_ok, HAS_IDX)
        k = tl.load(K + bh * M * D + krow[:, None] * D + d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(V + bh * M * D + krow[:, None] * D + d[None, :], mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        p = tl.exp2(s - lse[:, None])
        if n0 >= full:
            visible = (cols[None, :] <= offset + rows[:, None]) & col_ok[None, :]
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    tl.store(DQ + bh * N * D + rows[:, None] * D + d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None])


# --------------------------------------------------------------------------- launchers


def _config(D: int, dtype: torch.dtype, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    if device.type != "cuda":  # the interpreter: small tiles so tests cross many block edges
        return 16, 16, 4, 1
    if dtype == torch.float32:
        return 64, 32, 4, 2
    return (128, 64, 8, 3) if D <= 64 else (64, 64, 4, 3)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get full fp32 products (no TF32), so they match an fp32 reference.
    return "ieee" if dtype == torch.float32 else "tf32"


def _common(q, k, key_lengths, keep):
    B, H, N, D = q.shape
    if D not in HEAD_DIMS:
        raise ValueError(f"latent attention kernels support head dims {HEAD_DIMS}, got {D}")
    M = k.shape[2]
    Mk = keep.shape[1] if keep is not None else M
    kl = key_lengths.to(torch.int32).contiguous() if key_lengths is not None else q  # unread when absent
    idx = keep.contiguous() if keep is not None else q
    return B, H, N, D, M, Mk, kl, idx


def choose_splits(q: Tensor, Mk: int, block_m: int, block_n: int) -> int:
    """Split-KV when the query blocks alone cannot fill the GPU and the key range is long."""
    if q.device.type != "cuda":
        return 1
    B, H, N, _ = q.shape
    programs = triton.cdiv(N, block_m) * B * H
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    if programs >= sms or Mk < 4096:
        return 1
    return max(1, min(triton.cdiv(2 * sms, programs), Mk // 1024, 32))


def launch_forward(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None, scale: float,
                   keep: Tensor | None, splits: int | None = None) -> tuple[Tensor, Tensor]:
    B, H, N, D, M, Mk, kl, idx = _common(q, k, key_lengths, keep)
    block_m, block_n, warps, stages = _config(D, q.dtype, q.device)
    splits = splits or choose_splits(q, Mk, block_m, block_n)
    kv_chunk = triton.cdiv(triton.cdiv(Mk, splits), block_n) * block_n
    splits = triton.cdiv(Mk, kv_chunk)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if splits == 1:
        out = torch.empty_like(q)
        lse = torch.empty((B, H, N), dtype=lse_dtype, device=q.device)
    else:  # partial results, merged below
        out = torch.empty((splits, B, H, N, D), dtype=torch.float32, device=q.device)
        lse = torch.empty((splits, B, H, N), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(N, block_m), B * H, splits)
    wrap_triton(_fwd_kernel)[grid](
        q, k, v, kl, idx, out, lse, H, N, M, Mk, kv_chunk, scale * _LOG2E,
        HAS_KL=key_lengths is not None, HAS_IDX=keep is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, D=D, PREC=_precision(q.dtype),
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    if splits == 1:
        return out, lse
    total = torch.logsumexp(lse, dim=0)
    weight = torch.exp(lse - total.masked_fill(total == float("-inf"), 0.0))  # 0 for empty parts
    merged = (weight[..., None] * out).sum(0)
    return merged.to(q.dtype), total


def launch_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                    key_lengths: Tensor | None, scale: float, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    B, H, N, D, M, Mk, kl, idx = _common(q, k, key_lengths, keep)
    block_m, block_n, warps, stages = _config(D, q.dtype, q.device)
    grad_out = grad_out.contiguous()
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    delta = (grad_out.to(acc) * out.to(acc)).sum(-1)
    # log2 units; +inf where no key is visible, so those rows' probabilities are exactly 0.
    lse2 = (lse.to(acc) * _LOG2E).masked_fill(lse == float("-inf"), float("inf")).contiguous()
    dq = torch.empty_like(q)
    # Dropped keys get no gradient: their rows are never written when keys are gathered.
    dk = torch.zeros_like(k) if keep is not None else torch.empty_like(k)
    dv = torch.zeros_like(v) if keep is not None else torch.empty_like(v)
    common = dict(HAS_KL=key_lengths is not None, HAS_IDX=keep is not None, BLOCK_M=block_m, BLOCK_N=block_n,
                  D=D, PREC=_precision(q.dtype), num_warps=warps, num_stages=stages)
    wrap_triton(_bwd_dkdv_kernel)[(triton.cdiv(Mk, block_n), B * H)](
        q, k, v, kl, idx, grad_out, lse2, delta, dk, dv, H, N, M, Mk, scale * _LOG2E, scale, **common)
    wrap_triton(_bwd_dq_kernel)[(triton.cdiv(N, block_m), B * H)](
        q, k, v, kl, idx, grad_out, lse2, delta, dq, H, N, M, Mk, scale * _LOG2E, scale, **common)
    return dq, dk, dv


def latent_attention_forward(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None, scale: float,
                             keep: Tensor | None) -> tuple[Tensor, Tensor]:
    """Bottom-right causal attention of q[B, H, N, D] over k, v[B, H, M, D] -> (out, lse)."""
    return launch_forward(q, k, v, key_lengths, scale, keep)


def latent_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                              key_lengths: Tensor | None, scale: float,
                              keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of latent_attention_forward, from its saved out and lse."""
    return launch_backward(grad_out, q, k, v, out, lse, key_lengths, scale, keep)


__all__ = ["HEAD_DIMS", "latent_attention_forward", "latent_attention_backward", "choose_splits"]
