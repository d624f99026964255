"""Triton kernels for residual vector quantization (RVQ).

Public launchers (plain functions, meant to be bodies of ``torch.library.triton_op``;
every launch goes through ``gpu.launchable`` and nothing syncs with the host):

* ``rvq_forward(x, codebooks, n_q)`` -> ``(quantized, codes, sqerr)``
* ``rvq_decode(codes, codebooks, weights)`` -> ``out``

Reference semantics (what the kernels reproduce), with ``r = x.float()`` and ``acc = 0``::

    for q in range(n_q):
        C = codebooks[q].float()
        k = argmin((C * C).sum(-1)[None] - 2 * (r @ C.T), dim=1)   # ties -> lowest index, NaN first
        acc = acc + C[k];  r = r - C[k];  sqerr[q] = (r * r).sum()
    quantized = (acc + (x - x)).to(x.dtype)   # NaN where x is NaN or inf

The forward is one search launch plus a decode: each search program owns ``BLOCK_N`` rows,
keeps their fp32 residual on chip for all stages and streams each stage's codebook in
``BLOCK_K`` chunks, so the ``[N, K]`` score matrix never touches memory; ``quantized`` is
then the decode of the codes (same fp32 accumulation order). Up to D = 128 the scores come
from TF32 tensor cores with a 3-product hi/lo split (about fp32 accuracy; exact for small
integers), above that from fp32 FMAs.

NaN and inf: the search's hot loop takes the plain minimum (a GPU's min skips NaN; a TF32 split of
an inf is inf + NaN), so it flags what it cannot order as the reference does: the rows whose final
residual is not finite (a NaN or inf in x, or a codeword's, reached them) and every row of a block
that met a codeword with a non-finite squared norm (one check per chunk of codes, not per score).
A second launch searches the flagged blocks again with fp32 FMAs in torch.argmin's order (the first
NaN score before every number) and returns at once for the others; the decode then makes
``quantized`` NaN where x is NaN or inf.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gpu import cdiv, launchable
from .tf32 import parts as tf32_parts, split as tf32_split

# Largest supported feature dimension (the residual row lives on chip).
# Block-size defaults are tuned for D <= 512; up to 1024 works with smaller tiles.
MAX_D = 1024
# In-kernel offsets inside one codebook, padded or not, are int32 (row offsets into x / out
# are int64).
_MAX_CODEBOOK_NUMEL = 2**31 - 1


# --------------------------------------------------------------------------- kernels


@triton.jit
def _rvq_forward_kernel(
    x_ptr,  # [N, D]  x.dtype
    cb_ptr,  # [Q, K, D] x.dtype
    chi_ptr,  # [Q, KP, BLOCK_D] fp32 codebooks, zero-padded (TF32-rounded if TF32X3)
    clo_ptr,  # [Q, KP, BLOCK_D] fp32, codebooks - chi (read only if TF32X3 and C_LO)
    cnorm_ptr,  # [Q, KP] fp32, ||C_qk||^2, +inf for the padding codes
    codes_ptr,  # [N, n_q] int64 (out)
    partial_ptr,  # [num_programs, n_q] fp32 (out), per-program squared-error sums
    nonfinite_ptr,  # [N] int8 (out), 1 where the final residual row holds a NaN or inf
    N,
    D,
    K,
    KP,  # K rounded up to a multiple of BLOCK_K
    n_q,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TF32X3: tl.constexpr,  # tensor-core dot from TF32 parts, else fp32 FMA ("ieee")
    C_LO: tl.constexpr,  # codebooks have a nonzero TF32 remainder (fp32 codebooks)
    REDO_FLAGGED: tl.constexpr,  # only the blocks with a row flagged in nonfinite_ptr, all stages again,
    # in torch.argmin's NaN-first order (else: every block, the plain order, flags set)
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)  # row * D may exceed 2**31
    cols = tl.arange(0, BLOCK_D)
    tile_ok = row_ok[:, None] & (cols < D)[None, :]

    # Padded rows/columns are zero and stay zero, so they add nothing to sqerr.
    r = tl.load(x_ptr + rows64[:, None] * D + cols[None, :], mask=tile_ok, other=0.0).to(tl.float32)
    k_lane = tl.arange(0, BLOCK_K)
    # Padded codebook tiles need no masks (fewer registers, vector loads): padding codes
    # are zero vectors with score +inf, never chosen.
    c_tile = k_lane[:, None] * BLOCK_D + cols[None, :]

    # Per-stage base pointers (64-bit pointer arithmetic); offsets within one codebook fit in int32.
    cb_q = cb_ptr
    chi_q = chi_ptr
    clo_q = clo_ptr
    cnorm_q = cnorm_ptr
    stages = n_q
    written = row_ok
    bad_codes = tl.zeros([BLOCK_K], dtype=tl.int1)  # real codes met with a non-finite squared norm
    if REDO_FLAGGED:  # flagged blocks only; the others return at once
        flagged = tl.load(nonfinite_ptr + rows64, mask=row_ok, other=0)
        stages = n_q * tl.max(flagged, axis=0).to(tl.int32)
        written = tl.where(row_ok, stages, 0) > 0
    for q in range(0, stages):
        best = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
        best_k = tl.zeros([BLOCK_N], dtype=tl.int32)
        if TF32X3:
            r_hi, r_lo = tf32_split(r)

        for k0 in range(0, KP, BLOCK_K):
            c = tl.load(chi_q + k0 * BLOCK_D + c_tile)
            cn = tl.load(cnorm_q + k0 + k_lane)
            if TF32X3:
                # r.c to about fp32 accuracy from three TF32 tensor-core products
                # (lo*lo is below fp32 rounding), small terms first.
                dot = tl.dot(r_lo, tl.trans(c), input_precision="tf32")
                if C_LO:
                    c_lo = tl.load(clo_q + k0 * BLOCK_D + c_tile)
                    dot = tl.dot(r_hi, tl.trans(c_lo), dot, input_precision="tf32")
                dot = tl.dot(r_hi, tl.trans(c), dot, input_precision="tf32")
            else:
                dot = tl.dot(r, tl.trans(c), input_precision="ieee")
            score = cn[None, :] - 2.0 * dot

            # Lowest index among the chunk's minima; chunks are visited in increasing k,
            # so replacing only on a strictly smaller score keeps the global lowest index.
            # torch.argmin's order puts a NaN score (from a NaN or inf in the row or a codeword)
            # before every number.
            ks = k0 + k_lane
            if REDO_FLAGGED:  # torch.argmin's order: the first NaN score before every number
                chunk_min, chunk_k = _nan_first_min(score, ks, K, KP)
                better = (chunk_min < best) | ((chunk_min != chunk_min) & (best == best))
            else:  # NaN scores come only from what is flagged for the second launch
                bad_codes |= ((cn != cn) | (cn == float("inf"))) & (ks < K)
                chunk_min = tl.min(score, axis=1)
                chunk_k = tl.min(tl.where(score == chunk_min[:, None], ks[None, :], KP), axis=1)
                better = chunk_min < best
            best = tl.where(better, chunk_min, best)
            best_k = tl.where(better, chunk_k, best_k)

        # Gather the chosen codewords (masked rows read nothing and contribute zero).
        cw = tl.load(cb_q + best_k[:, None] * D + cols[None, :], mask=tile_ok, other=0.0)
        r = r - cw.to(tl.float32)

        tl.store(codes_ptr + rows64 * n_q + q, best_k.to(tl.int64), mask=row_ok)
        tl.store(partial_ptr + pid * n_q + q, tl.sum(tl.sum(r * r, axis=1), axis=0))
        cb_q += K * D
        chi_q += KP * BLOCK_D
        clo_q += KP * BLOCK_D
        cnorm_q += KP

    # A NaN or inf in x leaves one in the residual: the decode then reads those rows of x again.
    nonfinite = tl.max(((r != r) | (tl.abs(r) == float("inf"))).to(tl.int8), axis=1)
    nonfinite = tl.maximum(nonfinite, tl.max(bad_codes.to(tl.int8), axis=0))
    tl.store(nonfinite_ptr + rows64, nonfinite, mask=written)


@triton.jit
def _nan_first_min(score, ks, K, KP):
    """(minimum, its first index) of each row of a chunk's scores in torch.argmin's order: the first
    NaN if there is one, else the first minimum. Padding codes (index >= K) never count: their
    scores are NaN for a row with an inf (inf · 0)."""
    real = (ks < K)[None, :]
    nan = (score != score) & real
    nan_k = tl.min(tl.where(nan, ks[None, :], KP), axis=1)
    numbers = tl.where(real & (score == score), score, float("inf"))
    low = tl.min(numbers, axis=1)
    low_k = tl.min(tl.where(numbers == low[:, None], ks[None, :], KP), axis=1)
    has_nan = nan_k < KP
    return tl.where(has_nan, float("nan"), low), tl.where(has_nan, nan_k, low_k)


@triton.jit
def _rvq_decode_kernel(
    codes_ptr,  # [N, n_q] int64
    cb_ptr,  # [Q, K, D]
    w_ptr,  # [n_q] fp32 (unused unless HAS_WEIGHTS)
    x_ptr,  # [N, D] (unused unless NAN_FROM_X)
    nonfinite_ptr,  # [N] int8, rows of x to read (unused unless NAN_FROM_X)
    out_ptr,  # [N, D] codebooks.dtype (out)
    N,
    D,
    K,
    n_q,
    HAS_WEIGHTS: tl.constexpr,
    NAN_FROM_X: tl.constexpr,  # the forward's quantized: NaN where x is NaN or inf
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D

    # Same accumulation order as the forward (0 + C0[k0] + C1[k1] + ...), so
    # unweighted fp32 decode reproduces the forward's `quantized` bitwise.
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    cb_q = cb_ptr
    for q in range(0, n_q):
        k = tl.load(codes_ptr + rows64 * n_q + q, mask=row_ok, other=0)
        # Out-of-range codes are masked (contribute zero) instead of faulting.
        k_ok = row_ok & (k >= 0) & (k < K)
        cw = tl.load(
            cb_q + k[:, None] * D + cols[None, :],
            mask=k_ok[:, None] & col_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        if HAS_WEIGHTS:
            cw = cw * tl.load(w_ptr + q)
        acc = acc + cw
        cb_q += K * D

    out_off = rows64[:, None] * D + cols[None, :]
    if NAN_FROM_X:
        # The reference's straight-through ẑ + (x − x) is NaN where x is NaN or inf; only rows whose
        # residual was not finite can hold such an x, so only they are read.
        flagged = tl.load(nonfinite_ptr + rows64, mask=row_ok, other=0) != 0
        xv = tl.load(x_ptr + out_off, mask=(flagged & row_ok)[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        acc = tl.where((xv != xv) | (tl.abs(xv) == float("inf")), float("nan"), acc)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# --------------------------------------------------------------------------- helpers


def _check_codebooks(codebooks: Tensor) -> None:
    if codebooks.dim() != 3:
        raise ValueError(f"codebooks must be [Q, K, D], got shape {tuple(codebooks.shape)}")
    if codebooks.shape[2] > MAX_D:
        raise ValueError(f"rvq kernels support D <= {MAX_D}, got D={codebooks.shape[2]}")
    if codebooks.shape[1] * codebooks.shape[2] > _MAX_CODEBOOK_NUMEL:
        raise ValueError("one codebook (K * D elements) must have fewer than 2**31 elements")


# (max BLOCK_D, BLOCK_N, BLOCK_K, num_warps, num_stages, TF32X3) per padded feature dim.
# The whole problem is 2*N*K*D*n_q FLOP of r @ C.T; only tensor cores are fast enough, so up to
# BLOCK_D = 128 the dot is three TF32 wgmma products. Each program keeps its residual split
# (r_hi, r_lo) in shared memory (2 * BLOCK_N * BLOCK_D * 4 bytes) and streams the codebook's
# hi/lo tiles through a num_stages-deep cp.async pipeline: at BLOCK_D = 128 that is
# 64 KB + 2 stages x 64 KB = 192 KB, one 4-warp program per SM. 64 x 64 tiles are the smallest at which
# the operand traffic (A reloaded from shared memory per product, B streamed) stays within
# shared-memory bandwidth, and BLOCK_N = 64 still gives N / 64 programs (4096 for N = 2**18
# against 132 SMs). Larger residual rows do not fit beside the operands (the wgmma A fragment
# alone is BLOCK_D / 2 registers per thread), so BLOCK_D >= 256 keeps the fp32 FMA dot.
# All configs compile for sm_90 without register spills for fp32/fp16/bf16 (cuobjdump) except
# fp16/bf16 at BLOCK_D = 1024 (40 bytes).
_FORWARD_CONFIGS = (
    (32, 64, 64, 4, 3, True),
    (128, 64, 64, 4, 2, True),
    (256, 64, 32, 8, 2, False),
    (512, 32, 32, 8, 2, False),
    (MAX_D, 16, 32, 8, 2, False),
)


def _forward_config(block_d: int) -> tuple[int, int, int, int, bool]:
    """Default (BLOCK_N, BLOCK_K, num_warps, num_stages, TF32X3) for a padded feature dim."""
    for max_d, *config in _FORWARD_CONFIGS:
        if block_d <= max_d:
            return tuple(config)
    raise ValueError(f"BLOCK_D={block_d} exceeds {MAX_D}")


def _codebook_operands(codebooks: Tensor, n_q: int, block_k: int, block_d: int, tf32x3: bool):
    """The first n_q codebooks as the kernel streams them: fp32, padded to [n_q, KP, BLOCK_D]
    (TF32 hi/lo parts when tf32x3), and their squared norms [n_q, KP], +inf for padding codes."""
    cb = codebooks[:n_q].float()
    _, K, D = cb.shape
    kp = cdiv(K, block_k) * block_k
    padded = cb.new_zeros((n_q, kp, block_d))
    padded[:, :K, :D] = cb
    cnorm = cb.new_full((n_q, kp), float("inf"))
    cnorm[:, :K] = cb.pow(2).sum(-1)
    # fp16/bf16 values are exact in TF32: no remainder, two products instead of three.
    if not tf32x3 or codebooks.dtype != torch.float32:
        return padded, padded, cnorm, False, padded
    hi, lo = tf32_parts(padded)
    return hi, lo, cnorm, True, padded


def _launch_forward(
    x: Tensor,
    codebooks: Tensor,
    n_q: int,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_codebooks(codebooks)
    Q, K, D = codebooks.shape
    if x.dim() != 2 or x.shape[1] != D:
        raise ValueError(f"x must be [N, {D}], got shape {tuple(x.shape)}")
    if x.dtype != codebooks.dtype:
        raise ValueError(f"x ({x.dtype}) and codebooks ({codebooks.dtype}) must share a dtype")
    if not 1 <= n_q <= Q:
        raise ValueError(f"n_q must be in [1, {Q}], got {n_q}")
    N = x.shape[0]

    codes = torch.empty((N, n_q), dtype=torch.int64, device=x.device)
    if N == 0:
        quantized = torch.empty((N, D), dtype=x.dtype, device=x.device)
        return quantized, codes, torch.zeros(n_q, dtype=torch.float32, device=x.device)

    x = x.contiguous()
    codebooks = codebooks.contiguous()
    block_d = max(16, triton.next_power_of_2(D))
    dflt_n, dflt_k, dflt_warps, dflt_stages, tf32x3 = _forward_config(block_d)
    block_n = block_n or dflt_n
    block_k = block_k or dflt_k
    if cdiv(K, block_k) * block_k * block_d > _MAX_CODEBOOK_NUMEL:
        raise ValueError("one padded codebook (K * D elements) must have fewer than 2**31 elements")
    chi, clo, cnorm, c_lo, exact = _codebook_operands(codebooks, n_q, block_k, block_d, tf32x3)

    num_programs = cdiv(N, block_n)
    # One row of partial sums per program, reduced below: deterministic, no atomics.
    partial = torch.empty((num_programs, n_q), dtype=torch.float32, device=x.device)
    nonfinite = torch.empty(N, dtype=torch.int8, device=x.device)
    launchable(_rvq_forward_kernel)[(num_programs,)](
        x, codebooks, chi, clo, cnorm, codes, partial, nonfinite,
        N, D, K, cnorm.shape[1], n_q,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, TF32X3=tf32x3, C_LO=c_lo, REDO_FLAGGED=False,
        num_warps=num_warps or dflt_warps, num_stages=num_stages or dflt_stages,
    )  # fmt: skip
    # The blocks that met a NaN or inf, again in fp32 and torch.argmin's order (programs with no
    # flagged row return at once: without one anywhere, this launch costs its launch).
    launchable(_rvq_forward_kernel)[(num_programs,)](
        x, codebooks, exact, exact, cnorm, codes, partial, nonfinite,
        N, D, K, cnorm.shape[1], n_q,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, TF32X3=False, C_LO=False, REDO_FLAGGED=True,
        num_warps=8, num_stages=2,
    )  # fmt: skip
    # quantized = the chosen codewords summed in fp32 in stage order: exactly the decode of the
    # codes. This memory-bound launch (0.25 ms at N = 2**18, D = 128 on an H200) keeps an
    # fp32 accumulator out of the search kernel's registers, which its tensor-core tiles need.
    quantized = _launch_decode(codes, codebooks, None, nan_from=(x, nonfinite))
    return quantized, codes, partial.sum(dim=0)


def _launch_decode(
    codes: Tensor,
    codebooks: Tensor,
    weights: Tensor | None,
    *,
    nan_from: tuple[Tensor, Tensor] | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
) -> Tensor:
    """`nan_from`: (x, its rows' non-finite flags) of the forward: the output is NaN where x is."""
    _check_codebooks(codebooks)
    Q, K, D = codebooks.shape
    if codes.dim() != 2 or not 1 <= codes.shape[1] <= Q:
        raise ValueError(f"codes must be [N, n_q] with 1 <= n_q <= {Q}, got {tuple(codes.shape)}")
    N, n_q = codes.shape
    if weights is not None and tuple(weights.shape) != (n_q,):
        raise ValueError(f"weights must be [{n_q}], got shape {tuple(weights.shape)}")

    out = torch.empty((N, D), dtype=codebooks.dtype, device=codebooks.device)
    if N == 0:
        return out

    codes = codes.contiguous()
    codebooks = codebooks.contiguous()
    block_d = triton.next_power_of_2(D)
    # Memory-bound gather: ~2K fp32 accumulators per program keeps registers low
    # (<= ~80 on sm_90, no spills) with plenty of programs in flight.
    block_n = block_n or max(1, min(64, 2048 // block_d))
    num_warps = num_warps or (8 if block_n * block_d >= 2048 else 4)
    has_weights = weights is not None
    # Without weights the pointer is never read; any tensor will do.
    w = weights.float().contiguous() if has_weights else codebooks
    x, nonfinite = nan_from if nan_from is not None else (codebooks, codes)  # unread without nan_from

    launchable(_rvq_decode_kernel)[(cdiv(N, block_n),)](
        codes, codebooks, w, x, nonfinite, out,
        N, D, K, n_q,
        HAS_WEIGHTS=has_weights, NAN_FROM_X=nan_from is not None, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=num_warps,
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------- public


def rvq_forward(x: Tensor, codebooks: Tensor, n_q: int) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy residual VQ of ``x[N, D]`` against ``codebooks[Q, K, D]`` (first ``n_q`` stages).

    Returns ``(quantized[N, D] in x.dtype, codes[N, n_q] int64, sqerr[n_q] float32)`` where
    ``sqerr[q]`` is the total squared residual after stage ``q``. Distances are computed in
    fp32 (half inputs are upcast in-kernel); ties pick the lowest codeword index.
    """
    return _launch_forward(x, codebooks, n_q)


def rvq_decode(codes: Tensor, codebooks: Tensor, weights: Tensor | None) -> Tensor:
    """``out[N, D] = sum_q weights[q] * codebooks[q, codes[:, q]]`` (weights default 1),
    accumulated in fp32 in stage order and returned in ``codebooks.dtype``. Trusts index values
    (codes in [0, K)): the public op checks them."""
    return _launch_decode(codes, codebooks, weights)
