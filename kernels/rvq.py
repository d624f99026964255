"""Triton kernels for residual vector quantization (RVQ).

Public launchers (plain functions, meant to be bodies of ``torch.library.triton_op``;
every launch goes through ``torch.library.wrap_triton`` and nothing syncs with the host):

* ``rvq_forward(x, codebooks, n_q)`` -> ``(quantized, codes, sqerr)``
* ``rvq_decode(codes, codebooks, weights)`` -> ``out``

Reference semantics (what the kernels reproduce), with ``r = x.float()`` and ``acc = 0``::

    for q in range(n_q):
        C = codebooks[q].float()
        k = argmin((C * C).sum(-1)[None] - 2 * (r @ C.T), dim=1)   # ties -> lowest index
        acc = acc + C[k];  r = r - C[k];  sqerr[q] = (r * r).sum()
    quantized = acc.to(x.dtype)

The forward is a single launch: each program owns ``BLOCK_N`` rows, keeps their fp32
residual and accumulator in registers for all stages and streams each stage's codebook
in ``BLOCK_K`` chunks, so the ``[N, K]`` score matrix never touches memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

# Largest supported feature dimension (the residual row lives in registers).
# Block-size defaults are tuned for D <= 512; up to 1024 works with smaller tiles.
MAX_D = 1024
# In-kernel offsets inside one codebook are int32 (row offsets into x / out are int64).
_MAX_CODEBOOK_NUMEL = 2**31 - 1


# --------------------------------------------------------------------------- kernels


@triton.jit
def _rvq_forward_kernel(
    x_ptr,  # [N, D]  x.dtype
    cb_ptr,  # [Q, K, D] x.dtype
    cnorm_ptr,  # [Q, K] fp32, ||C_qk||^2
    quant_ptr,  # [N, D]  x.dtype (out)
    codes_ptr,  # [N, n_q] int64 (out)
    partial_ptr,  # [num_programs, n_q] fp32 (out), per-program squared-error sums
    N,
    D,
    K,
    n_q,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)  # row * D may exceed 2**31
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    tile_ok = row_ok[:, None] & col_ok[None, :]
    tile_off = rows64[:, None] * D + cols[None, :]

    # Padded rows/columns are zero and stay zero, so they add nothing to sqerr.
    r = tl.load(x_ptr + tile_off, mask=tile_ok, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    k_lane = tl.arange(0, BLOCK_K)

    # Per-stage base pointers; pointer arithmetic is 64-bit, offsets within one
    # codebook (< K*D elements) fit in int32.
    cb_q = cb_ptr
    cnorm_q = cnorm_ptr
    for q in range(0, n_q):
        best = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
        best_k = tl.zeros([BLOCK_N], dtype=tl.int32)

        for k0 in range(0, K, BLOCK_K):
            ks = k0 + k_lane
            k_ok = ks < K
            c = tl.load(
                cb_q + ks[:, None] * D + cols[None, :],
                mask=k_ok[:, None] & col_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            cn = tl.load(cnorm_q + ks, mask=k_ok, other=0.0)
            # fp32 FMA dot ("ieee", no TF32) so codes match the fp32 reference.
            dot = tl.dot(r, tl.trans(c), input_precision="ieee")
            score = cn[None, :] - 2.0 * dot
            score = tl.where(k_ok[None, :], score, float("inf"))

            # Lowest index among the chunk's minima; chunks are visited in increasing k,
            # so replacing only on a strictly smaller score keeps the global lowest index.
            chunk_min = tl.min(score, axis=1)
            chunk_k = tl.min(tl.where(score == chunk_min[:, None], ks[None, :], K), axis=1)
            better = chunk_min < best
            best = tl.where(better, chunk_min, best)
            best_k = tl.where(better, chunk_k, best_k)

        # Gather the chosen codewords (masked rows read nothing and contribute zero).
        cw = tl.load(cb_q + best_k[:, None] * D + cols[None, :], mask=tile_ok, other=0.0)
        cw = cw.to(tl.float32)
        acc = acc + cw
        r = r - cw

        tl.store(codes_ptr + rows64 * n_q + q, best_k.to(tl.int64), mask=row_ok)
        tl.store(partial_ptr + pid * n_q + q, tl.sum(tl.sum(r * r, axis=1), axis=0))
        cb_q += K * D
        cnorm_q += K

    tl.store(quant_ptr + tile_off, acc.to(quant_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _rvq_decode_kernel(
    codes_ptr,  # [N, n_q] int64
    cb_ptr,  # [Q, K, D]
    w_ptr,  # [n_q] fp32 (unused unless HAS_WEIGHTS)
    out_ptr,  # [N, D] codebooks.dtype (out)
    N,
    D,
    K,
    n_q,
    HAS_WEIGHTS: tl.constexpr,
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
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# --------------------------------------------------------------------------- helpers


def _check_codebooks(codebooks: Tensor) -> None:
    if codebooks.dim() != 3:
        raise ValueError(f"codebooks must be [Q, K, D], got shape {tuple(codebooks.shape)}")
    if codebooks.shape[2] > MAX_D:
        raise ValueError(f"rvq kernels support D <= {MAX_D}, got D={codebooks.shape[2]}")
    if codebooks.shape[1] * codebooks.shape[2] > _MAX_CODEBOOK_NUMEL:
        raise ValueError("one codebook (K * D elements) must have fewer than 2**31 elements")


# (max BLOCK_D, BLOCK_N, BLOCK_K, num_warps). The fp32 "ieee" tl.dot runs on CUDA-core FMAs,
# whose operand fragments are register-hungry: these are the largest tiles that compile
# without register spills for sm_90 (checked with cuobjdump, num_stages=2, fp32/fp16/bf16).
# tl.dot needs every dim >= 16. D in (512, 1024] works but spills a little.
_FORWARD_CONFIGS = (
    (16, 64, 64, 8),
    (32, 32, 32, 4),
    (128, 32, 32, 8),
    (256, 16, 16, 4),
    (MAX_D, 16, 16, 8),
)


def _forward_config(block_d: int) -> tuple[int, int, int]:
    """Default (BLOCK_N, BLOCK_K, num_warps) for a padded feature dim BLOCK_D."""
    for max_d, block_n, block_k, num_warps in _FORWARD_CONFIGS:
        if block_d <= max_d:
            return block_n, block_k, num_warps
    raise ValueError(f"BLOCK_D={block_d} exceeds {MAX_D}")


def _launch_forward(
    x: Tensor,
    codebooks: Tensor,
    n_q: int,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
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

    quantized = torch.empty((N, D), dtype=x.dtype, device=x.device)
    codes = torch.empty((N, n_q), dtype=torch.int64, device=x.device)
    if N == 0:
        return quantized, codes, torch.zeros(n_q, dtype=torch.float32, device=x.device)

    x = x.contiguous()
    codebooks = codebooks.contiguous()
    cnorm = codebooks.float().pow(2).sum(-1)  # [Q, K] fp32

    block_d = max(16, triton.next_power_of_2(D))
    dflt_n, dflt_k, dflt_warps = _forward_config(block_d)
    block_n = block_n or dflt_n
    block_k = block_k or dflt_k
    num_warps = num_warps or dflt_warps

    num_programs = triton.cdiv(N, block_n)
    # One row of partial sums per program, reduced below: deterministic, no atomics.
    partial = torch.empty((num_programs, n_q), dtype=torch.float32, device=x.device)
    wrap_triton(_rvq_forward_kernel)[(num_programs,)](
        x, codebooks, cnorm, quantized, codes, partial,
        N, D, K, n_q,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return quantized, codes, partial.sum(dim=0)


def _launch_decode(
    codes: Tensor,
    codebooks: Tensor,
    weights: Tensor | None,
    *,
    block_n: int | None = None,
    num_warps: int | None = None,
) -> Tensor:
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

    wrap_triton(_rvq_decode_kernel)[(triton.cdiv(N, block_n),)](
        codes, codebooks, w, out,
        N, D, K, n_q,
        HAS_WEIGHTS=has_weights, BLOCK_N=block_n, BLOCK_D=block_d,
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
    accumulated in fp32 in stage order and returned in ``codebooks.dtype``."""
    return _launch_decode(codes, codebooks, weights)
