"""Triton kernels of the distance log-sum-exp (pyaudiok/ops/distance_logsumexp.py documents the math
and the raw ops):

    lse_forward(h[R, d], table[S, d], alpha, keep) -> (lse[R], m[R], P: empty, never kept)
    lse_backward(g[R], h, table, alpha, m, P) -> (dh, dtable, dalpha)

Flash-style: a program owns a block of rows (or, for dtable, a block of table rows and a share of
the rows) and walks the other side a tile at a time; the scores of a tile are a tensor-core product
over d in chunks, and nothing of size [R, S] is written. The forward keeps an online log-sum-exp.
The backward recomputes the probabilities in two kernels without atomics:
    _rows_kernel   dh = 2α g (P E − h) for a chunk of d columns, and each row's share of dα;
    _table_kernel  Σ_rows g p h (a chunk of d columns) and Σ_rows g p for a tile of the table over one
                   share of the rows; the shares are added on the host (deterministic).
A chunk of d other than the first recomputes the scores: free for d <= 128 (one chunk), the
price of not holding [rows, d] accumulators in registers beyond that.
Products on tensor cores (fp32 as 3xTF32, or TF32 where torch's matmuls may use it), fp32
accumulation and softmax arithmetic; α is read on the device (no host sync).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch_checks as checks
from .gpu import cdiv, dot_block, dot_precision, launchable, sm_count

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)  # for the kernels (a plain global is not readable inside @jit)


@triton.jit
def _scores(H, E, rows, cols, R, S, D, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
            PREC: tl.constexpr):
    """h[rows] · e[cols] over all of d: [BLOCK_R, BLOCK_S] in fp32 (zero outside R × S)."""
    acc = tl.zeros((BLOCK_R, BLOCK_S), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        k = d0 + tl.arange(0, BLOCK_D)
        h = tl.load(H + rows[:, None] * D + k[None, :], mask=(rows[:, None] < R) & (k[None, :] < D), other=0.0)
        e = tl.load(E + cols[None, :] * D + k[:, None], mask=(cols[None, :] < S) & (k[:, None] < D), other=0.0)
        acc = tl.dot(h, e, acc, input_precision=PREC)
    return acc


@triton.jit
def _logits2(H, E, ESQ, ALPHA, rows, cols, R, S, D, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
             BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    """(2α h·e − α‖e‖²) · log2(e) of a tile, −inf outside the table (base-2 exponent units)."""
    alpha = tl.load(ALPHA).to(tl.float32)
    s = _scores(H, E, rows, cols, R, S, D, BLOCK_R, BLOCK_S, BLOCK_D, PREC)
    e_sq = tl.load(ESQ + cols, mask=cols < S, other=0.0)
    logit = (2.0 * alpha * s - alpha * e_sq[None, :]) * _LOG2E
    inside = (tl.zeros((BLOCK_R, BLOCK_S), dtype=tl.int32) + cols[None, :]) < S
    return tl.where(inside, logit, float("-inf"))


@triton.jit
def _forward_kernel(H, E, ESQ, HSQ, ALPHA, LSE, M, R, S, D, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
                    BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    top = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        cols = s0 + tl.arange(0, BLOCK_S)
        logit = _logits2(H, E, ESQ, ALPHA, rows, cols, R, S, D, BLOCK_R, BLOCK_S, BLOCK_D, PREC)
        new_top = tl.maximum(top, tl.max(logit, 1))
        total = total * tl.exp2(top - new_top) + tl.sum(tl.exp2(logit - new_top[:, None]), 1)
        top = new_top
    alpha = tl.load(ALPHA).to(tl.float32)
    h_sq = tl.load(HSQ + rows, mask=rows < R, other=0.0)
    m = (top + tl.log2(total)) / _LOG2E
    tl.store(M + rows, m, mask=rows < R)
    tl.store(LSE + rows, m - alpha * h_sq, mask=rows < R)


@triton.jit
def _weighted_dot(w, x, acc, PREC: tl.constexpr, SPLIT: tl.constexpr):
    """acc + w @ x for float32 weights w and x in the input dtype. SPLIT (half-precision x): w goes
    to the tensor cores as two halves of x's dtype, hi + lo, so the weights keep ~16 bits rather than
    bf16's 8. The gradients subtract this sum from one of its own size (Σ p e against Σ p · h), so a
    weight rounded to bf16 put 4 % errors into them."""
    hi = w.to(x.dtype)
    acc = tl.dot(hi, x, acc, input_precision=PREC)
    if SPLIT:
        acc = tl.dot((w - hi.to(tl.float32)).to(x.dtype), x, acc, input_precision=PREC)
    return acc


@triton.jit
def _rows_kernel(H, E, ESQ, HSQ, ALPHA, M2, G, DH, DALPHA, R, S, D, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
                 BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr):
    """dh[rows, chunk] and the rows' share of dα from that chunk (DALPHA[chunk, rows])."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    chunk = tl.program_id(1)
    c = chunk * BLOCK_C + tl.arange(0, BLOCK_C)
    m2 = tl.load(M2 + rows, mask=rows < R, other=float("inf"))  # rows past R: p = 0 (not exp(−α‖e‖²), inf for α < 0)
    mean_e = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)  # Σ_s p_s e_s, this chunk
    mean_e_sq = tl.zeros((BLOCK_R,), dtype=tl.float32)      # Σ_s p_s ‖e_s‖²
    # Σ_s p_s as recomputed: it misses 1 by the rounding of scores ~α‖h‖², and far from the origin
    # Σ_s p_s (h − e_s) cancels to much less than h, so h is weighted by it, not by 1.
    p_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        cols = s0 + tl.arange(0, BLOCK_S)
        p = tl.exp2(_logits2(H, E, ESQ, ALPHA, rows, cols, R, S, D, BLOCK_R, BLOCK_S, BLOCK_D, PREC) - m2[:, None])
        e = tl.load(E + cols[:, None] * D + c[None, :], mask=(cols[:, None] < S) & (c[None, :] < D), other=0.0)
        mean_e = _weighted_dot(p, e, mean_e, PREC, SPLIT)
        mean_e_sq += tl.sum(p * tl.load(ESQ + cols, mask=cols < S, other=0.0)[None, :], 1)
        p_sum += tl.sum(p, 1)
    alpha = tl.load(ALPHA).to(tl.float32)
    g = tl.load(G + rows, mask=rows < R, other=0.0)
    inside = (rows[:, None] < R) & (c[None, :] < D)
    h = tl.load(H + rows[:, None] * D + c[None, :], mask=inside, other=0.0).to(tl.float32)
    dh = 2.0 * alpha * g[:, None] * (mean_e - p_sum[:, None] * h)
    tl.store(DH + rows[:, None] * D + c[None, :], dh.to(DH.dtype.element_ty), mask=inside)
    # Σ_s p_s ‖h − e_s‖² = Σ_s p_s ‖h‖² + Σ_s p_s ‖e_s‖² − 2 h·Σ_s p_s e_s: the first chunk adds the first two.
    first = (tl.zeros((BLOCK_R,), dtype=tl.int32) + chunk) == 0
    whole = tl.where(first, p_sum * tl.load(HSQ + rows, mask=rows < R, other=0.0) + mean_e_sq, 0.0)
    tl.store(DALPHA + chunk * R + rows, -g * (whole - 2.0 * tl.sum(h * mean_e, 1)), mask=rows < R)


@triton.jit
def _table_kernel(H, E, ESQ, ALPHA, M2, G, WH, MASS, R, S, D, ROWS_PER_SHARE, BLOCK_R: tl.constexpr,
                  BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, PREC: tl.constexpr,
                  SPLIT: tl.constexpr):
    """WH[share, cols, chunk] = Σ over the share's rows of g p h; MASS[share, cols] = Σ g p (chunk 0)."""
    cols = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    chunk, share = tl.program_id(1), tl.program_id(2).to(tl.int64)
    c = chunk * BLOCK_C + tl.arange(0, BLOCK_C)
    weighted = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    mass = tl.zeros((BLOCK_S,), dtype=tl.float32)
    r_begin = share * ROWS_PER_SHARE
    for r0 in range(0, ROWS_PER_SHARE, BLOCK_R):
        rows = r_begin + r0 + tl.arange(0, BLOCK_R)
        m2 = tl.load(M2 + rows, mask=rows < R, other=float("inf"))  # rows past R: p = 0
        g = tl.load(G + rows, mask=rows < R, other=0.0)
        p = tl.exp2(_logits2(H, E, ESQ, ALPHA, rows, cols, R, S, D, BLOCK_R, BLOCK_S, BLOCK_D, PREC) - m2[:, None])
        gp = p * g[:, None]                                                          # [BLOCK_R, BLOCK_S]
        h = tl.load(H + rows[:, None] * D + c[None, :], mask=(rows[:, None] < R) & (c[None, :] < D), other=0.0)
        weighted = _weighted_dot(tl.trans(gp), h, weighted, PREC, SPLIT)
        mass += tl.sum(gp, 0)
    out = WH + (share * S + cols[:, None]) * D + c[None, :]
    tl.store(out, weighted, mask=(cols[:, None] < S) & (c[None, :] < D))
    first = (tl.zeros((BLOCK_S,), dtype=tl.int32) + chunk) == 0
    tl.store(MASS + share * S + cols, mass, mask=(cols < S) & first)


def _config(R: int, S: int, D: int) -> dict:
    return {"BLOCK_R": 64, "BLOCK_S": dot_block(S, 64), "BLOCK_D": dot_block(D, 64), "BLOCK_C": dot_block(D, 128)}


def _squares(t: Tensor) -> Tensor:
    return t.float().square().sum(1)


def _checked(h: Tensor, table: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """h[R, d], table[S, d] and the one-value alpha, checked to agree, contiguous."""
    D = checks.shape("h", h, "[R, d]", None, None)[1]
    checks.shape("table", table, "[S, d]", None, D)
    if alpha.numel() != 1:
        raise ValueError(f"alpha must hold one value; got shape {list(alpha.shape)}")
    for name, t in (("table", table), ("alpha", alpha)):
        checks.device(name, t, h)
    return checks.dense(h, table, alpha)


def lse_forward(h: Tensor, table: Tensor, alpha: Tensor, keep: bool) -> tuple[Tensor, Tensor, Tensor]:
    if keep:
        raise ValueError("the Triton kernels keep no probabilities (keep must be False)")
    h, table, alpha = _checked(h, table, alpha)
    R, D = h.shape
    S = table.shape[0]
    lse, m = h.new_empty(R, dtype=torch.float32), h.new_empty(R, dtype=torch.float32)
    if R == 0:
        return lse, m, h.new_empty(0)
    cfg = _config(R, S, D)
    grid = (cdiv(R, cfg["BLOCK_R"]),)
    launchable(_forward_kernel)[grid](h, table, _squares(table), _squares(h), alpha, lse, m, R, S, D,
                                      cfg["BLOCK_R"], cfg["BLOCK_S"], cfg["BLOCK_D"], dot_precision(h.dtype))
    return lse, m, h.new_empty(0)


def _shares(R: int, tiles: int, block: int, device: torch.device) -> int:
    """How many shares of the rows the table kernel splits over: about two programs per SM in all."""
    target = max(1, 2 * sm_count(device) // max(tiles, 1)) if device.type == "cuda" else 2
    return max(1, min(target, cdiv(R, block)))


def lse_backward(g: Tensor, h: Tensor, table: Tensor, alpha: Tensor, m: Tensor,
                 probabilities: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients from P recomputed a tile at a time (`probabilities`: empty, never kept here)."""
    h, table, alpha = _checked(h, table, alpha)
    R, D = h.shape
    for name, t in (("g", g), ("m", m)):
        checks.shape(name, t, "[R]", R)
        checks.device(name, t, h)
    g, m = checks.dense(g, m)
    S = table.shape[0]
    if R == 0:
        return torch.empty_like(h), torch.zeros_like(table), torch.zeros_like(alpha)
    cfg = _config(R, S, D)
    BR, BS, BD, BC = cfg["BLOCK_R"], cfg["BLOCK_S"], cfg["BLOCK_D"], cfg["BLOCK_C"]
    prec, split = dot_precision(h.dtype), h.dtype in (torch.float16, torch.bfloat16)
    e_sq, h_sq = _squares(table), _squares(h)
    m2 = m * LOG2E  # the log-sum-exp of the linear logits, base 2
    g = g.float()
    chunks = cdiv(D, BC)
    dh = torch.empty_like(h)
    dalpha_rows = h.new_empty(chunks, R, dtype=torch.float32)
    launchable(_rows_kernel)[(cdiv(R, BR), chunks)](
        h, table, e_sq, h_sq, alpha, m2, g, dh, dalpha_rows, R, S, D, BR, BS, BD, BC, prec, split)
    tiles = cdiv(S, BS) * chunks
    shares = _shares(R, tiles, BR, h.device)
    rows_per_share = cdiv(cdiv(R, shares), BR) * BR
    shares = cdiv(R, rows_per_share)
    weighted = h.new_empty(shares, S, D, dtype=torch.float32)
    mass = h.new_empty(shares, S, dtype=torch.float32)
    launchable(_table_kernel)[(cdiv(S, BS), chunks, shares)](
        h, table, e_sq, alpha, m2, g, weighted, mass, R, S, D, rows_per_share, BR, BS, BD, BC, prec, split)
    dtable = (weighted.sum(0) - table.float() * mass.sum(0)[:, None]) * (2 * alpha)
    return dh, dtable.to(table.dtype), dalpha_rows.sum().to(alpha.dtype)
