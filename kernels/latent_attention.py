"""Triton kernels for bottom-right causal latent cross-attention (Perceiver AR, DESIGN §1).

Public launchers (bodies of ``torch.library.triton_op``; launches go through ``gpu.launchable``):

* ``latent_attention_forward(q, k, v, key_lengths, scale, keep)`` -> ``(out, lse)``
* ``latent_attention_backward(grad_out, q, k, v, out, lse, key_lengths, scale, keep)`` -> ``(dq, dk, dv)``

``q[B, H, N, D]``, ``k, v[B, H, M, D]`` contiguous; ``key_lengths[B]`` int32 or None; ``keep[B, M']``
int64 (ascending kept key positions, gathered inside the kernels) or None. Query j of row b sees
key i (in the kept sequence) iff ``i <= L_b - N + j`` and ``i < L_b``. ``lse`` is the natural
log-sum-exp of the scaled scores over the visible keys (``-inf`` where none is visible, and then
``out`` is 0).

Flash-style: each program streams key blocks through an online softmax held in fp32 registers,
so memory is O(N + M). Key blocks that lie wholly above a block's diagonal are never loaded, and
only blocks that straddle the diagonal (or L_b) pay for the mask; the others run a loop with no
mask and no bounds checks at all. When the query blocks alone leave SMs idle (few latents, long M)
the key range is split over a third grid axis (split-KV) in the forward and in the dQ pass; the
forward's partial results are merged by their log-sum-exp, the dQ parts are summed. The backward is
FlashAttention-2's without atomics: one kernel owns a key block and accumulates dK, dV over the
query blocks that see it, another owns a query block (and key range) for dQ, so the scores and dP
are computed twice (7 matmuls of the forward's size in all, against 5 with atomic dQ, which may
serialise thousands of key blocks on the few query blocks of a latent layer); results are
deterministic. The atomic scheme is there as an option (``DQ_MODE``), to be timed against it, and
so is another order of the forward's loop (``FORWARD_LOOP``), software-pipelined by a block.

Every product runs on tensor cores: bf16/fp16 operands directly, fp32 operands as TF32 when
``torch.backends.cuda.matmul.allow_tf32`` is set, else as 3×TF32 (``tf32x3``: fp32 accuracy, the
scheme of PyTorch's fp32 memory-efficient SDPA). A plain fp32 ("ieee") dot lowers to FMA loops
that hold whole operand rows in registers: on sm_90 the dK/dV kernel spilled ~13 KB a thread.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ops import _checks
from ..ops import _library
from . import _launch_checks as checks
from .gpu import cdiv, dot_precision as _precision, launchable, sm_count as _sm_count

HEAD_DIMS = (16, 32, 64, 128)
_LOG2E = 1.4426950408889634
_LAZY_RESCALE_LOG2: tl.constexpr = tl.constexpr(8.0)  # lazy rescale: largest stale-max lag, log2 units


@triton.jit
def _key_rows(IDX, b, Mk, cols, col_ok, HAS_IDX: tl.constexpr, CHECK: tl.constexpr):
    """Row of each (kept) key position `cols` in the full k/v tensors (int64)."""
    if HAS_IDX:
        if CHECK:
            return tl.load(IDX + b.to(tl.int64) * Mk + cols, mask=col_ok, other=0).to(tl.int64)
        return tl.load(IDX + b.to(tl.int64) * Mk + cols).to(tl.int64)
    return cols.to(tl.int64)


@triton.jit
def _rows(P, rows, d, ok, D: tl.constexpr, CHECK: tl.constexpr):
    """Rows `rows` of the [*, D] matrix at P; rows with `ok` false read as 0 when CHECK."""
    ptrs = P + rows[:, None] * D + d[None, :]
    if CHECK:
        return tl.load(ptrs, mask=ok[:, None], other=0.0)
    return tl.load(ptrs)


@triton.jit
def _key_length(KL, b, Mk, HAS_KL: tl.constexpr):
    if HAS_KL:
        return tl.load(KL + b)
    return Mk


@triton.jit
def _key_range(L, offset, start_row, split, kv_chunk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(lo, full, hi) of the keys a query block's split visits: [lo, full) whole blocks every row
    sees (no mask), [full, hi) the rest that some row sees."""
    hi = tl.minimum(L, offset + start_row + BLOCK_M)
    full = tl.maximum(tl.minimum(L, offset + start_row + 1), 0)
    lo_s = split * kv_chunk
    hi_s = tl.maximum(tl.minimum(hi, lo_s + kv_chunk), lo_s)
    full_s = lo_s + (tl.maximum(tl.minimum(full, hi_s) - lo_s, 0) // BLOCK_N) * BLOCK_N
    return lo_s, full_s, hi_s


@triton.jit
def _probabilities(s, l_i, m_i, qk_scale, MASKED: tl.constexpr):
    """A key block's probabilities p = exp2(s * scale - m) from raw scores s[BLOCK_M, BLOCK_N] (-inf
    where masked), the factor alpha that rescales what the running (acc, l_i) hold to the new max,
    and the updated (l_i, m_i); m_i in log2 units.

    The scale is applied to the row maxima, then folded with the max subtraction into the one FMA
    that feeds exp2 (qk_scale > 0, checked by the public op): one op a score fewer than scaling the
    tile first, and the softmax, not the matmuls, is what bounds this loop at d <= 64. The FMAs are
    explicit (tl.fma), as the backward's are: Triton 3.10 is to stop contracting a * b - c by default."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
    m_safe = m_new
    if MASKED:  # rows with nothing visible yet; in unmasked blocks every row has a finite score
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(tl.fma(s, qk_scale, -m_safe[:, None]))
    alpha = tl.exp2(m_i - m_safe)
    return p, alpha, l_i * alpha + tl.sum(p, axis=1), m_new


@triton.jit
def _softmax_update(acc, l_i, m_i, s, v, qk_scale, MASKED: tl.constexpr, LAZY_RESCALE: tl.constexpr,
                    PREC: tl.constexpr):
    """One key block of the online softmax: raw scores s and values v[BLOCK_N, D] into the running
    (acc, l_i, m_i) (see _probabilities)."""
    if LAZY_RESCALE and not MASKED:
        # Keep the running max unless some row's grew by more than 2^8: the probabilities stay
        # below 256 (no overflow in fp32 sums or 16-bit P), and the O(BLOCK_M * D) rescale of the
        # accumulator is skipped on almost every block of a long key range. Every row's scores
        # are finite here; a row's first block (m_i = -inf) always rescales.
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
        if tl.max(m_new - m_i, axis=0) > _LAZY_RESCALE_LOG2:
            alpha = tl.exp2(m_i - m_new)
            acc = acc * alpha[:, None]
            l_i = l_i * alpha
            m_i = m_new
        p = tl.exp2(tl.fma(s, qk_scale, -m_i[:, None]))
        l_i += tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
    else:
        p, alpha, l_i, m_i = _probabilities(s, l_i, m_i, qk_scale, MASKED)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return acc, l_i, m_i


@triton.jit
def _key_block(P, IDX, b, Mk, n0, d, HAS_IDX: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """Keys (or values) n0 ... n0 + BLOCK_N - 1 of the kept sequence, rows of P[*, D], all in range."""
    cols = n0 + tl.arange(0, BLOCK_N)
    in_range = cols < Mk  # unread: nothing is checked
    return _rows(P, _key_rows(IDX, b, Mk, cols, in_range, HAS_IDX, False), d, in_range, D, False)


@triton.jit
def _fwd_block(acc, l_i, m_i, q, K, V, IDX, b, Mk, start, end, offset, rows, d,
               qk_scale, MASKED: tl.constexpr, HAS_IDX: tl.constexpr, LAZY_RESCALE: tl.constexpr,
               BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    """Key blocks [start, end) in turn: each block's QK^T, its softmax, its PV product.

    Within a CTA the softmax overlaps no tensor-core work in this order: Triton (3.6 to 3.9) waits
    for a wgmma whose result is not an accumulator right after issuing it, and for the PV product
    left in flight with the next QK^T, before the softmax. Even issuing block j + 1's QK^T before
    block j's softmax (FlashAttention-3's intra-warpgroup overlap, written out) gets that wait
    straight after the issue (seen in the sm_90 TTGIR). _fwd_block_overlapped reorders the loop so
    that PV's wait falls after the softmax; otherwise only a second CTA on the SM overlaps. TMA loads
    with warp_specialize=True do not help here either: Triton's Hopper pass leaves a kernel of 8 warps
    alone, and the loop had more instructions with the TMA loads than with cp.async. A kernel of its
    own that the pass did take (4 warps, a TMA producer and two consumer warpgroups) measured slower
    than this loop on an H200 and gave NaN in 16 bits with Triton 3.6, so it was dropped."""
    for n0 in range(start, end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < end
        krow = _key_rows(IDX, b, Mk, cols, col_ok, HAS_IDX, MASKED)
        s = tl.dot(q, tl.trans(_rows(K, krow, d, col_ok, D, MASKED)), input_precision=PREC)
        if MASKED:
            visible = (cols[None, :] <= offset + rows[:, None]) & col_ok[None, :]
            s = tl.where(visible, s, float("-inf"))
        v = _rows(V, krow, d, col_ok, D, MASKED)
        acc, l_i, m_i = _softmax_update(acc, l_i, m_i, s, v, qk_scale, MASKED, LAZY_RESCALE, PREC)
    return acc, l_i, m_i


@triton.jit
def _fwd_block_overlapped(acc, l_i, m_i, q, K, V, IDX, b, Mk, start, end, d, qk_scale, HAS_IDX: tl.constexpr,
                          BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    """The unmasked key blocks [start, end) (whole blocks, all visible), software-pipelined by one:
    block j + 1's QK^T is issued after block j's softmax and before block j's PV product, so that
    the PV product runs on the tensor cores through block j + 1's softmax.

    Triton (3.6 to 3.9, sm_90) keeps an accumulating wgmma in flight until the wait of the next
    wgmma, and waits for any other right after issuing it (see _fwd_block). In _fwd_block's order the
    next wgmma is the next block's QK^T, issued before its softmax, so PV only overlaps that issue;
    here the next one comes after the softmax (the sm_90 TTGIR shows PV's wait moved past it). The
    accumulator's rescale follows the QK^T for the same reason: it is the PV result's first use."""
    if start < end:
        s = tl.dot(q, tl.trans(_key_block(K, IDX, b, Mk, start, d, HAS_IDX, BLOCK_N, D)),
                   input_precision=PREC)
        for n0 in range(start, end - BLOCK_N, BLOCK_N):
            p, alpha, l_i, m_i = _probabilities(s, l_i, m_i, qk_scale, False)
            s = tl.dot(q, tl.trans(_key_block(K, IDX, b, Mk, n0 + BLOCK_N, d, HAS_IDX, BLOCK_N, D)),
                       input_precision=PREC)
            v = _key_block(V, IDX, b, Mk, n0, d, HAS_IDX, BLOCK_N, D)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
        p, alpha, l_i, m_i = _probabilities(s, l_i, m_i, qk_scale, False)  # the last block: no next QK^T
        v = _key_block(V, IDX, b, Mk, end - BLOCK_N, d, HAS_IDX, BLOCK_N, D)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, KL, IDX, O, LSE, H, N, M, Mk, kv_chunk, qk_scale,
                HAS_KL: tl.constexpr, HAS_IDX: tl.constexpr, LAZY_RESCALE: tl.constexpr, OVERLAPPED: tl.constexpr,
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
    q = _rows(Q + bh * N * D, rows, d, row_ok, D, True)
    Kb = K + bh * M * D
    Vb = V + bh * M * D
    lo, full, hi = _key_range(L, offset, start_row, split, kv_chunk, BLOCK_M, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    if OVERLAPPED:
        acc, l_i, m_i = _fwd_block_overlapped(acc, l_i, m_i, q, Kb, Vb, IDX, b, Mk, lo, full, d, qk_scale,
                                              HAS_IDX, BLOCK_N, D, PREC)
    else:
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, Kb, Vb, IDX, b, Mk, lo, full, offset, rows, d,
                                   qk_scale, False, HAS_IDX, LAZY_RESCALE, BLOCK_N, D, PREC)
    acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, Kb, Vb, IDX, b, Mk, full, hi, offset, rows, d,
                               qk_scale, True, HAS_IDX, False, BLOCK_N, D, PREC)
    _store_part(O, LSE, acc, l_i, m_i, (split * tl.num_programs(1) + bh) * N, rows, row_ok, d, D)


@triton.jit
def _store_part(O, LSE, acc, l_i, m_i, o_off, rows, row_ok, d, D: tl.constexpr):
    """A query tile's normalised output and natural-log lse (0 and -inf for rows that saw no key) at
    rows o_off + rows of O[*, D], LSE[*]."""
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(O + (o_off + rows[:, None]) * D + d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + o_off + rows, lse, mask=row_ok)


@triton.jit
def _merge_kernel(OP, LSEP, O, LSE, S, R, BLOCK: tl.constexpr, D: tl.constexpr):
    """out, lse of R rows from S split-KV parts OP[S, R, D], LSEP[S, R] (each normalised over its keys)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < R
    d = tl.arange(0, D)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    for s in range(S):
        m = tl.maximum(m, tl.load(LSEP + s * R + rows, mask=ok, other=float("-inf")))
    m = tl.where(m == float("-inf"), 0.0, m)  # all parts empty: weights 0, out 0
    den = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, D], tl.float32)
    for s in range(S):
        w = tl.exp(tl.load(LSEP + s * R + rows, mask=ok, other=float("-inf")) - m)
        den += w
        acc += w[:, None] * _rows(OP + s * R * D, rows, d, ok, D, True)
    empty = den == 0.0
    tl.store(O + rows[:, None] * D + d[None, :], (acc / tl.where(empty, 1.0, den)[:, None]).to(O.dtype.element_ty),
             mask=ok[:, None])
    tl.store(LSE + rows, tl.where(empty, float("-inf"), m + tl.log(tl.where(empty, 1.0, den))), mask=ok)


@triton.jit
def _bwd_prep_kernel(O, DO, LSE, DELTA, NEG_LSE2, R, BLOCK: tl.constexpr, D: tl.constexpr):
    """delta = rowsum(dO * O) and minus the lse in log2 units (-inf where no key is visible, so those
    rows' probabilities come out exactly 0) for R rows: the backward's exp2(fma(s, scale, -lse))
    then adds it as it is (a broadcast negation costs an FADD per score with Triton 3.6)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < R
    d = tl.arange(0, D)
    o = _rows(O, rows, d, ok, D, True).to(tl.float32)
    do = _rows(DO, rows, d, ok, D, True).to(tl.float32)
    tl.store(DELTA + rows, tl.sum(o * do, axis=1), mask=ok)
    lse = tl.load(LSE + rows, mask=ok, other=0.0)
    neg_lse2 = tl.where(lse == float("-inf"), float("-inf"), lse * -1.4426950408889634)
    tl.store(NEG_LSE2 + rows, neg_lse2, mask=ok)


@triton.jit
def _row_values(P, rows, ok, other, CHECK: tl.constexpr):
    """P[rows] of a vector; rows with `ok` false read as `other` when CHECK."""
    if CHECK:
        return tl.load(P + rows, mask=ok, other=other)
    return tl.load(P + rows)


@triton.jit
def _dkdv_block(dk, dv, k, v, Q, DO, NEG_LSE, DELTA, DQ, N, start, end, offset, L, cols, d, qk_scale, sm_scale,
                MASKED: tl.constexpr, ATOMIC_DQ: tl.constexpr, CHECK_ROWS: tl.constexpr, BLOCK_M: tl.constexpr,
                D: tl.constexpr, PREC: tl.constexpr):
    # Scores are formed transposed, [keys, queries], so P^T and dS^T come out of the tensor cores
    # in the layout the dV and dK products take them in (no transpose through shared memory).
    # ATOMIC_DQ: this block's share of dQ = dS K is added into the fp32 accumulator DQ as well,
    # so no second pass recomputes the scores for it. CHECK_ROWS false (N a multiple of BLOCK_M:
    # every query block is whole) drops the row checks, ~23 of the unmasked loop's 350 instructions
    # (Triton 3.9, sm_90; 31 of 372 with 3.6).
    for m0 in range(start, end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < N
        q = _rows(Q, rows, d, row_ok, D, CHECK_ROWS)
        do = _rows(DO, rows, d, row_ok, D, CHECK_ROWS)
        neg_lse = _row_values(NEG_LSE, rows, row_ok, float("-inf"), CHECK_ROWS)  # -lse (log2); -inf: none visible
        delta = _row_values(DELTA, rows, row_ok, 0.0, CHECK_ROWS)
        st = tl.dot(k, tl.trans(q), input_precision=PREC)
        pt = tl.exp2(tl.fma(st, qk_scale, neg_lse[None, :]))
        if MASKED:
            visible = (cols[:, None] <= offset + rows[None, :]) & (cols[:, None] < L)
            pt = tl.where(visible, pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PREC)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(dst.to(k.dtype)), k, input_precision=PREC)
            # relaxed: the sums are read only after the launch. Triton's default (acq_rel) fences every
            # add (ATOMG with MEMBAR, ERRBAR, CCTL around it in the sm_90 SASS: bench/sass_census.py);
            # FlashAttention's atomicAdd is relaxed too
            dq_rows = DQ + rows[:, None] * D + d[None, :]
            if CHECK_ROWS:
                tl.atomic_add(dq_rows, dq * sm_scale, mask=row_ok[:, None], sem="relaxed")
            else:
                tl.atomic_add(dq_rows, dq * sm_scale, sem="relaxed")
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, KL, IDX, DO, NEG_LSE, DELTA, DK, DV, DQ, H, N, M, Mk, qk_scale, sm_scale,
                     HAS_KL: tl.constexpr, HAS_IDX: tl.constexpr, ATOMIC_DQ: tl.constexpr, CHECK_ROWS: tl.constexpr,
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
    krow = _key_rows(IDX, b, Mk, cols, col_ok, HAS_IDX, True)
    k = _rows(K + bh * M * D, krow, d, col_ok, D, True)
    v = _rows(V + bh * M * D, krow, d, col_ok, D, True)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)

    # Query j sees key i iff j >= i - offset: start at the first query block that sees this block
    # (none if the block starts at or after L); from q_full on every row sees every key of the
    # block (and the keys are all < L), so no mask.
    q_lo = tl.where(ks < L, (tl.maximum(ks - offset, 0) // BLOCK_M) * BLOCK_M, N)
    q_full = q_lo + tl.cdiv(tl.maximum(ks + BLOCK_N - 1 - offset - q_lo, 0), BLOCK_M) * BLOCK_M
    q_full = tl.where(ks + BLOCK_N <= L, tl.minimum(q_full, N), N)
    Qb, DOb, NEG_LSEb, DELTAb = Q + bh * N * D, DO + bh * N * D, NEG_LSE + bh * N, DELTA + bh * N
    DQb = DQ + bh * N * D if ATOMIC_DQ else DQ
    dk, dv = _dkdv_block(dk, dv, k, v, Qb, DOb, NEG_LSEb, DELTAb, DQb, N, q_lo, q_full, offset, L, cols, d, qk_scale,
                         sm_scale, True, ATOMIC_DQ, CHECK_ROWS, BLOCK_M, D, PREC)
    dk, dv = _dkdv_block(dk, dv, k, v, Qb, DOb, NEG_LSEb, DELTAb, DQb, N, q_full, N, offset, L, cols, d, qk_scale,
                         sm_scale, False, ATOMIC_DQ, CHECK_ROWS, BLOCK_M, D, PREC)
    off = bh * M * D + krow[:, None] * D + d[None, :]
    tl.store(DK + off, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _dq_block(dq, q, do, neg_lse, delta, K, V, IDX, b, Mk, start, end, offset, rows, d, qk_scale,
              MASKED: tl.constexpr, HAS_IDX: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
              PREC: tl.constexpr):
    for n0 in range(start, end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < end
        krow = _key_rows(IDX, b, Mk, cols, col_ok, HAS_IDX, MASKED)
        k = _rows(K, krow, d, col_ok, D, MASKED)
        v = _rows(V, krow, d, col_ok, D, MASKED)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)
        p = tl.exp2(tl.fma(s, qk_scale, neg_lse[:, None]))
        if MASKED:
            visible = (cols[None, :] <= offset + rows[:, None]) & col_ok[None, :]
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, KL, IDX, DO, NEG_LSE, DELTA, DQ, H, N, M, Mk, kv_chunk, qk_scale, sm_scale,
                   HAS_KL: tl.constexpr, HAS_IDX: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    b = bh // H
    L = _key_length(KL, b, Mk, HAS_KL)
    offset = L - N
    start_row = pid_m * BLOCK_M
    rows = start_row + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    d = tl.arange(0, D)
    q = _rows(Q + bh * N * D, rows, d, row_ok, D, True)
    do = _rows(DO + bh * N * D, rows, d, row_ok, D, True)
    neg_lse = tl.load(NEG_LSE + bh * N + rows, mask=row_ok, other=float("-inf"))
    delta = tl.load(DELTA + bh * N + rows, mask=row_ok, other=0.0)
    Kb = K + bh * M * D
    Vb = V + bh * M * D
    lo, full, hi = _key_range(L, offset, start_row, split, kv_chunk, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    dq = _dq_block(dq, q, do, neg_lse, delta, Kb, Vb, IDX, b, Mk, lo, full, offset, rows, d, qk_scale,
                   False, HAS_IDX, BLOCK_N, D, PREC)
    dq = _dq_block(dq, q, do, neg_lse, delta, Kb, Vb, IDX, b, Mk, full, hi, offset, rows, d, qk_scale,
                   True, HAS_IDX, BLOCK_N, D, PREC)
    o_off = (split * tl.num_programs(1) + bh) * N
    tl.store(DQ + (o_off + rows[:, None]) * D + d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None])


# --------------------------------------------------------------------------- launchers


class _Tile(NamedTuple):
    block_m: int  # queries per tile
    block_n: int  # keys per tile
    warps: int
    stages: int


_INTERPRETER = _Tile(16, 16, 4, 1)  # small tiles so the tests cross many block edges


def _tiles(D: int, dtype: torch.dtype, device: torch.device) -> tuple[_Tile, _Tile, _Tile]:
    """Tiles of the (forward, dK/dV, dQ) kernels on a Hopper GPU.

    bf16/fp16: 128-query accumulators over two warpgroups (8 warps) issuing wgmma, with 2–3 stages
    of cp.async prefetch. At d ≤ 64 the forward needs ~124 registers a thread and 64 KiB of shared
    memory, so two CTAs share an SM and one's softmax overlaps the other's matmuls. The dK/dV
    kernel keeps two [128 keys, d] fp32 accumulators and streams 64-query tiles of q and dO (the
    wider the key tile, the fewer times q and dO are re-read). fp32 runs 3xTF32: every operand
    tile is split into two TF32 halves in registers, so its tiles are halved. Each choice compiles
    for sm_90 without register spills, but fp32's backward at d = 128 (a little, at any tile tried).
    The 16-bit backward tiles at d ≤ 64 come from a timed sweep on an H200 (bench/tile_sweep.py,
    bench/results/2026-11-26_h200_tile_sweep.txt): one warpgroup with 32-query tiles for dK/dV and
    4 stages for dQ cut the backward from 1.71 to 1.45 ms at N = 1024, M = 65 536 (SDPA: 1.65 ms).
    """
    if device.type != "cuda":
        return _INTERPRETER, _INTERPRETER, _INTERPRETER
    return _GPU_TILES[dtype == torch.float32, D <= 64]


_GPU_TILES = {  # (fp32, d <= 64) -> tiles of the (forward, dK/dV, dQ) kernels, see _tiles
    (True, True): (_Tile(64, 64, 4, 2), _Tile(32, 128, 8, 2), _Tile(64, 32, 4, 2)),
    (True, False): (_Tile(64, 32, 4, 2), _Tile(16, 32, 4, 2), _Tile(32, 32, 4, 2)),  # the backward spills a little
    (False, True): (_Tile(128, 64, 8, 3), _Tile(32, 128, 4, 3), _Tile(128, 64, 4, 4)),
    (False, False): (_Tile(128, 64, 8, 2), _Tile(32, 128, 8, 2), _Tile(128, 64, 8, 2)),
}


def choose_splits(programs: int, Mk: int, device: torch.device) -> int:
    """Key-range splits for a launch of `programs` query tiles over Mk keys.

    An SM holds up to two of these CTAs, so the launch runs in ceil(programs·S / (2·SMs)) waves
    of programs 1/S as long: take the fewest splits S that minimise waves / S. E.g. 64 query tiles
    (N = 1024 in tiles of 128, B·H = 8) on 132 SMs: S = 4, 256 CTAs in one wave, which also runs in
    two waves at 97 % occupancy where only one CTA fits an SM. Each split keeps ≥ 1024 keys, so
    the prologue, epilogue and merge stay small beside its loop.
    """
    if device.type != "cuda":
        return 1
    most, slots = max(1, min(32, Mk // 1024)), 2 * _sm_count(device)
    if isinstance(programs, int) and isinstance(most, int):  # not symbolic sizes (a tracer's): cached
        return _fewest_waves(programs, most, slots)
    return _fewest_waves.__wrapped__(programs, most, slots)


@functools.lru_cache(maxsize=1024)
def _fewest_waves(programs: int, most: int, slots: int) -> int:
    """The fewest splits, of 1 ... `most`, that minimise waves / S with `slots` CTAs resident at once:
    a search that would cost a launch of the bench's size ~6 µs of host time each call."""
    if programs >= slots:
        return 1
    return min(range(1, most + 1), key=lambda s: (cdiv(programs * s, slots) / s, s))


def _checked(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None,
             keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v contiguous, their shapes (and key_lengths', keep's) checked to agree, M >= N and
    N <= M' <= M as the public op requires. Trusts index values (key_lengths, keep): the public op
    checks them."""
    B, H, N, D = checks.shape("q", q, "[B, H, N, D]", None, None, None, None)
    M = checks.shape("k", k, "[B, H, M, D]", B, H, None, D)[2]
    checks.shape("v", v, "[B, H, M, D]", B, H, M, D)
    if M < N:
        raise ValueError(f"k must have M >= N keys (bottom-right causal latents); got M = {M} < N = {N}")
    for name, t in (("k", k), ("v", v), ("key_lengths", key_lengths), ("keep", keep)):
        if t is not None:
            checks.device(name, t, q)
    if key_lengths is not None:
        checks.shape("key_lengths", key_lengths, "[B]", B)
    if keep is not None:
        checks.shape("keep", keep, "[B, M']", B, None)
        if not N <= keep.shape[1] <= M:
            raise ValueError(f"keep must keep M' keys with N = {N} <= M' <= M = {M}; got M' = {keep.shape[1]}")
    return checks.dense(q, k, v)


_UNUSED: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}


def _unused(slot: str, q: Tensor, dtype: torch.dtype) -> Tensor:
    """A tensor on q's device for the kernel argument `slot` when it is never read nor written (an
    absent KL or IDX, the atomic dQ accumulator when dQ has a pass of its own): one per slot, device
    and dtype, kept, as an eager call's allocation costs host time. Never one tensor in two slots, and
    a tracer gets a new one each time: torch.compile's analysis of the dK/dV kernel counts IDX as
    written (the stores' rows come through it), so a tensor shared with another argument would be
    written into in the compiled graph (tests/test_triton_sm90.py checks the slots)."""
    if _library.tracing() or (q.is_cuda and torch.cuda.is_current_stream_capturing()):
        return q.new_empty(1, dtype=dtype)  # (a capture's allocation would pin a block of its graph's pool)
    key = (slot, q.device, dtype)
    if key not in _UNUSED:
        _UNUSED[key] = q.new_empty(1, dtype=dtype)
    return _UNUSED[key]


def _common(q, k, key_lengths, keep):
    B, H, N, D = q.shape
    if D not in HEAD_DIMS:
        raise ValueError(f"latent attention kernels support head dims {HEAD_DIMS}, got {D}")
    M = k.shape[2]
    Mk = keep.shape[1] if keep is not None else M
    kl = key_lengths.to(torch.int32).contiguous() if key_lengths is not None else _unused("KL", q, torch.int32)
    idx = keep.contiguous() if keep is not None else _unused("IDX", q, torch.int32)
    flags = {"HAS_KL": key_lengths is not None, "HAS_IDX": keep is not None, "D": D, "PREC": _precision(q.dtype)}
    return B, H, N, D, M, Mk, kl, idx, flags


# How the backward computes dQ: "separate" (default), a kernel of its own per query block that
# recomputes the scores, deterministic; or "atomic", added by the dK/dV kernel into an fp32
# accumulator (5 matmuls of the forward's size instead of 7, FlashAttention-2's scheme; the sums'
# order varies from run to run). Not the default until timed on a GPU: at M >> N thousands of key
# blocks add into the few query blocks of a latent layer. Deterministic mode keeps "separate".
DQ_MODE = "separate"


def _setting(name: str, allowed: tuple[str, ...]) -> str:
    """This module's setting `name`, checked."""
    return _checks.one_of(name, globals()[name], allowed)


def dq_mode() -> str:
    mode = _setting("DQ_MODE", ("separate", "atomic"))
    return "separate" if torch.are_deterministic_algorithms_enabled() else mode


# How the forward's online softmax rescales its accumulator: "always", on every key block (the
# FlashAttention-2 loop), or "lazy", only when a row's running max has grown by more than 2^8
# (FlashAttention-4's conditional rescaling; exact all the same, the stale max cancels in out and
# lse). Not the default until timed on a GPU: it trades the rescale's multiplies for a block-wide
# max and a branch in the pipelined loop.
FORWARD_RESCALE = "always"


def forward_rescale() -> str:
    return _setting("FORWARD_RESCALE", ("always", "lazy"))


# The forward's loop over the key blocks every query of a tile sees: "sequential", each block's QK^T,
# softmax and PV product in turn; "overlapped", software-pipelined by one block so that a block's
# PV product runs on the tensor cores through the next block's softmax (_fwd_block_overlapped). Not
# the default: on an H200 it timed the same as the sequential loop, within noise (see
# _forward_loop_for for where it applies).
FORWARD_LOOP = "sequential"


def forward_loop() -> str:
    loop = _setting("FORWARD_LOOP", ("sequential", "overlapped"))
    if loop != "sequential" and forward_rescale() == "lazy":
        raise ValueError(f"FORWARD_LOOP {loop!r} rescales on every block: it needs FORWARD_RESCALE 'always', "
                         "got 'lazy'")
    return loop


@contextlib.contextmanager
def settings_set(**settings: str):
    """This module's settings (DQ_MODE, FORWARD_RESCALE, FORWARD_LOOP) as given meanwhile, checked on
    entry, restored after."""
    unknown = set(settings) - {"DQ_MODE", "FORWARD_RESCALE", "FORWARD_LOOP"}
    if unknown:
        raise TypeError(f"settings_set() got unknown settings {sorted(unknown)}")
    saved = {name: globals()[name] for name in settings}
    globals().update(settings)
    try:
        dq_mode()
        forward_loop()  # and FORWARD_RESCALE
        yield
    finally:
        globals().update(saved)


def _forward_loop_for(D: int, dtype: torch.dtype, device: torch.device) -> tuple[str, dict]:
    """(the loop a forward launch runs under FORWARD_LOOP, its launch options).

    The overlapped loop, from bench/sass_census.py (sm_90, Triton 3.6 and 3.9): in 16 bits at d <= 64
    ptxas takes 139 registers a thread, so one CTA of 8 warps an SM; capped at 128, two fit, as with
    the sequential loop (124), and nothing spills in the loop (3.9 spills 9 words outside it). At
    d = 128 it takes what the sequential loop does (~190, one CTA an SM). fp32 on a GPU keeps the
    sequential loop: its 3xTF32 operands, split in registers, spill ~50 words an iteration when a
    block's scores are carried over."""
    loop = forward_loop()
    if loop == "sequential" or (device.type == "cuda" and dtype == torch.float32):
        return "sequential", {}
    if device.type == "cuda" and D <= 64:
        return loop, {"maxnreg": 128}
    return loop, {}


def _split_range(Mk: int, splits: int, block_n: int) -> tuple[int, int]:
    """(keys per split, a multiple of block_n; number of non-empty splits)."""
    chunk = cdiv(cdiv(Mk, splits), block_n) * block_n
    return chunk, cdiv(Mk, chunk)


_ROWS_BLOCK = 64  # rows per program of the small row-wise kernels (merge, backward preprocessing)


def launch_forward(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None, scale: float,
                   keep: Tensor | None, splits: int | None = None) -> tuple[Tensor, Tensor]:
    q, k, v = _checked(q, k, v, key_lengths, keep)
    B, H, N, D, M, Mk, kl, idx, flags = _common(q, k, key_lengths, keep)
    loop, options = _forward_loop_for(D, q.dtype, q.device)
    tile = _tiles(D, q.dtype, q.device)[0]
    programs = cdiv(N, tile.block_m) * B * H
    kv_chunk, splits = _split_range(Mk, splits or choose_splits(programs, Mk, q.device), tile.block_n)
    out, lse = _outputs(q)
    if splits == 1:
        part_out, part_lse = out, lse
    else:  # partial results, merged below
        part_out, part_lse = _parts(splits, q)
    launchable(_fwd_kernel, **options)[(cdiv(N, tile.block_m), B * H, splits)](
        q, k, v, kl, idx, part_out, part_lse, H, N, M, Mk, kv_chunk, scale * _LOG2E,
        LAZY_RESCALE=forward_rescale() == "lazy", OVERLAPPED=loop == "overlapped",
        BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, num_warps=tile.warps, num_stages=tile.stages, **flags)
    if splits > 1:
        _merge(part_out, part_lse, out, lse)
    return out, lse


def _outputs(q: Tensor) -> tuple[Tensor, Tensor]:
    """The forward's (out, lse) for q[B, H, N, D]: out like q, lse [B, H, N] fp32."""
    return torch.empty_like(q), torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)


def _parts(splits: int, q: Tensor) -> tuple[Tensor, Tensor]:
    """fp32 (out, lse) for `splits` partial results of q's attention, merged by _merge."""
    B, H, N, D = q.shape
    return (torch.empty((splits, B, H, N, D), dtype=torch.float32, device=q.device),
            torch.empty((splits, B, H, N), dtype=torch.float32, device=q.device))


def _merge(part_out: Tensor, part_lse: Tensor, out: Tensor, lse: Tensor) -> None:
    splits, R, D = part_out.shape[0], lse.numel(), out.shape[-1]
    launchable(_merge_kernel)[(cdiv(R, _ROWS_BLOCK),)](part_out, part_lse, out, lse, splits, R,
                                                        BLOCK=_ROWS_BLOCK, D=D, num_warps=4)


def launch_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                    key_lengths: Tensor | None, scale: float, keep: Tensor | None,
                    splits: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v = _checked(q, k, v, key_lengths, keep)
    for name, t in (("grad_out", grad_out), ("out", out)):
        checks.shape(name, t, "[B, H, N, D]", *q.shape)
    checks.shape("lse", lse, "[B, H, N]", *q.shape[:3])
    B, H, N, D, M, Mk, kl, idx, flags = _common(q, k, key_lengths, keep)
    _, t_kv, t_q = _tiles(D, q.dtype, q.device)
    grad_out, out, lse = checks.dense(grad_out, out, lse)
    R = B * H * N
    delta = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    neg_lse2 = torch.empty((B, H, N), dtype=torch.float32, device=q.device)  # -lse, log2 units
    launchable(_bwd_prep_kernel)[(cdiv(R, _ROWS_BLOCK),)](out, grad_out, lse, delta, neg_lse2, R,
                                                           BLOCK=_ROWS_BLOCK, D=D, num_warps=4)
    # Dropped keys get no gradient: their rows are never written when keys are gathered.
    dk = torch.zeros_like(k) if keep is not None else torch.empty_like(k)
    dv = torch.zeros_like(v) if keep is not None else torch.empty_like(v)
    atomic = dq_mode() == "atomic"
    # The dQ accumulator (fp32) where the dK/dV kernel adds dQ; unused otherwise.
    dq_acc = q.new_zeros((B, H, N, D), dtype=torch.float32) if atomic else _unused("DQ", q, torch.float32)
    launchable(_bwd_dkdv_kernel)[(cdiv(Mk, t_kv.block_n), B * H)](
        q, k, v, kl, idx, grad_out, neg_lse2, delta, dk, dv, dq_acc, H, N, M, Mk, scale * _LOG2E, scale,
        BLOCK_M=t_kv.block_m, BLOCK_N=t_kv.block_n, num_warps=t_kv.warps, num_stages=t_kv.stages,
        ATOMIC_DQ=atomic, CHECK_ROWS=N % t_kv.block_m != 0, **flags)
    if atomic:
        return dq_acc.to(q.dtype), dk, dv
    programs = cdiv(N, t_q.block_m) * B * H
    kv_chunk, splits = _split_range(Mk, splits or choose_splits(programs, Mk, q.device), t_q.block_n)
    dq = torch.empty_like(q) if splits == 1 else torch.empty((splits, B, H, N, D), dtype=torch.float32,
                                                              device=q.device)
    launchable(_bwd_dq_kernel)[(cdiv(N, t_q.block_m), B * H, splits)](
        q, k, v, kl, idx, grad_out, neg_lse2, delta, dq, H, N, M, Mk, kv_chunk, scale * _LOG2E, scale,
        BLOCK_M=t_q.block_m, BLOCK_N=t_q.block_n, num_warps=t_q.warps, num_stages=t_q.stages, **flags)
    if splits > 1:  # the parts are sums over disjoint key ranges
        dq = dq.sum(0).to(q.dtype)
    return dq, dk, dv


def latent_attention_forward(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None, scale: float,
                             keep: Tensor | None) -> tuple[Tensor, Tensor]:
    """Bottom-right causal attention of q[B, H, N, D] over k, v[B, H, M, D] -> (out, lse). Trusts
    index values (key_lengths, keep): the public op checks them."""
    return launch_forward(q, k, v, key_lengths, scale, keep)


def latent_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                              key_lengths: Tensor | None, scale: float,
                              keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of latent_attention_forward, from its saved out and lse. Trusts index values
    (key_lengths, keep): the public op checks them."""
    return launch_backward(grad_out, q, k, v, out, lse, key_lengths, scale, keep)


__all__ = ["HEAD_DIMS", "latent_attention_forward", "latent_attention_backward", "choose_splits"]
