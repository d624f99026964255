"""Triton kernels of the row cross-entropy over S = X Yᵀ (pyaudiok/ops/bilinear_contrastive.py):

    rows_forward(X[B, D], Y[B, D], with_grad) -> (loss[B], Σ loss, lse[B], gX, gY)
        loss_i = logsumexp_j S_ij − S_ii; with with_grad, (gX, gY) = ∇ Σ loss (else empty)
    rows_backward(g[B], X, Y, lse) -> (dX, dY)

The blocked algorithm of the cpu backend on tensor cores: S is formed a strip of rows at a time
(`_STRIP_ELEMENTS` scores at most, never the whole [B, B] for large B) and each strip goes through
three GEMM-shaped kernels, 3 B²D products in all (as many as the reference):
    _scores_kernel  S = X_strip Yᵀ, with each (row, column tile)'s log-sum-exp for the row's lse;
    _dx_kernel      dX_strip = g (P Y − Y_strip),       P = exp(S − lse) applied as S is loaded;
    _dy_kernel      dY += Pᵀ diag(g) X_strip (− g X on the first strip).
A flash-style design that never stores S needs a 4th product (S again in the backward) and, for
D = 512, a [rows, D] accumulator too large for registers; a strip of S costs O(strip · B) memory.

fp32 inputs take 3 TF32 tensor-core products per product ("3xTF32": x = hi + lo with hi exact in
TF32, x·y ≈ hi·hi + hi·lo + lo·hi; relative error ~4e-7 at D = 512, fp32 products ~2.4e-7; one
TF32 product ~8e-4, far outside the fp32 tolerance). On H100 / H200 that is 3 × 1/7.4 of the time
of fp32 FMAs at peak (494 vs 67 TFLOP/s): the floor of the 3 products is 2.5× below the
reference's. X and Y are split once on the host: the scores kernel is one plain TF32 GEMM over
K = 3D ([hi, hi, lo] · [hi, lo, hi]), a single product per K step, which Triton keeps
asynchronous on Hopper; the P products read the transposed parts (TF32 tensor-core operands in
shared memory must be K-major) and split P, computed in registers, in the kernel. fp16 / bf16
inputs take one native product, and so do fp32 inputs as one TF32 product where torch's matmuls
may use TF32 (torch.backends.cuda.matmul.allow_tf32). No atomics: the strips run in order, results are deterministic.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch_checks as checks
from .gpu import cdiv, launchable, sm_count as _sm_count
from .tf32 import parts as tf32_parts, split as tf32_split

_LOG2E = 1.4426950408889634
# Scores per strip on a GPU: 256 MiB of fp32, or the rows that give the dX kernel a program per SM
# if more (B = 16 384, D = 512, 132 SMs: 4224 rows, 33 × 4 programs of 128 rows × 128 features).
_STRIP_ELEMENTS = 1 << 26
_INTERPRETER_STRIP_ROWS = 32  # tests cross strip edges at small B


@triton.jit
def _dot3(a_hi, a_lo, b_hi, b_lo, acc):
    """acc + a·b from split operands: 3 TF32 tensor-core products (lo·lo, ~2⁻²⁰ relative, dropped)."""
    acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
    acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
    return tl.dot(a_hi, b_hi, acc, input_precision="tf32")


@triton.jit
def _scores_kernel(X, Y, S, T, row0, R, B, K,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STATS: tl.constexpr):
    """S[i, j] = X[row0 + i] · Y[j] (rows of K) for i < R, j < B (S is [R, B]); with STATS,
    T[i, n] = logsumexp of row i over column tile n (T is [R, cdiv(B, BLOCK_N)])."""
    # Row tiles vary fastest: the programs in flight share a few Y tiles and the strip of X (L2).
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < R, cols < B
    x_off = (row0 + rows).to(tl.int64)[:, None] * K
    y_off = cols.to(tl.int64)[:, None] * K
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):  # one product per step: Triton keeps the wgmma asynchronous
        kk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + x_off + kk[None, :], mask=row_ok[:, None] & (kk < K)[None, :], other=0.0)
        y = tl.load(Y + y_off + kk[None, :], mask=col_ok[:, None] & (kk < K)[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(y), acc, input_precision="tf32")
    out = rows.to(tl.int64)[:, None] * B + cols[None, :]
    tl.store(S + out, acc, mask=row_ok[:, None] & col_ok[None, :])
    if STATS:
        s2 = tl.where(col_ok[None, :], acc * 1.4426950408889634, float("-inf"))
        m2 = tl.max(s2, axis=1)  # finite: every tile has a valid column
        lse = (m2 + tl.log2(tl.sum(tl.exp2(s2 - m2[:, None]), axis=1))) * 0.6931471805599453
        tl.store(T + rows * tl.num_programs(1) + pid_n, lse, mask=row_ok)


@triton.jit
def _probabilities(S, LSE2, G, rows, cols, R, B, WEIGHT_ROWS: tl.constexpr):
    """P[rows, cols] = exp(S − lse) of the strip (0 outside it), times g per row if WEIGHT_ROWS."""
    row_ok = rows < R
    s = tl.load(S + rows.to(tl.int64)[:, None] * B + cols[None, :], mask=row_ok[:, None] & (cols < B)[None, :],
                other=float("-inf"))
    lse2 = tl.load(LSE2 + rows, mask=row_ok, other=float("inf"))  # log2 units
    p = tl.exp2(s * 1.4426950408889634 - lse2[:, None])
    if WEIGHT_ROWS:
        p = p * tl.load(G + rows, mask=row_ok, other=0.0)[:, None]
    return p


@triton.jit
def _accumulate_p_times(p, OPH, OPL, off, mask, acc, SPLIT: tl.constexpr):
    """acc + p · OPᵀ for one [BLOCK_D, BLOCK_K] tile of a transposed operand (OPH/OPL: its TF32 high
    part and remainder), as 3×TF32 products when SPLIT, else one product in the operand's dtype."""
    op_hi = tl.load(OPH + off, mask=mask, other=0.0)
    if SPLIT:
        p_hi, p_lo = tf32_split(p)
        op_lo = tl.load(OPL + off, mask=mask, other=0.0)
        acc = _dot3(p_hi, p_lo, tl.trans(op_hi), tl.trans(op_lo), acc)
    else:
        acc = tl.dot(p.to(op_hi.dtype), tl.trans(op_hi), acc)
    return acc


@triton.jit
def _dx_kernel(S, LSE2, G, YTH, YTL, Y, DX, row0, R, B, D,
               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr):
    """DX[row0 + i] = g_i (Σ_j P_ij Y_j − Y_i) for the strip's rows i < R; YT* are Yᵀ ([D, B])."""
    # Feature tiles vary fastest: the programs of a row tile read its strip of S together (L2).
    pid_d, pid_m = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dd < D
    yt_off = dd.to(tl.int64)[:, None] * B
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for k0 in range(0, B, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        p = _probabilities(S, LSE2 + row0, G, rows, kk, R, B, False)
        acc = _accumulate_p_times(p, YTH, YTL, yt_off + kk[None, :], d_ok[:, None] & (kk < B)[None, :], acc, SPLIT)
    row_ok = rows < R
    mask = row_ok[:, None] & d_ok[None, :]
    out = (row0 + rows).to(tl.int64)[:, None] * D + dd[None, :]
    g = tl.load(G + row0 + rows, mask=row_ok, other=0.0)
    y_own = tl.load(Y + out, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + out, (g[:, None] * (acc - y_own)).to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _dy_kernel(S, LSE2, G, XTH, XTL, X, DY, row0, R, B, D,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
               FIRST: tl.constexpr):
    """DY[j] (fp32) += Σ_i g_i P_ij X_{row0 + i} over the strip's rows i < R; the first strip
    starts from − g_j X_j instead of DY. XT* are Xᵀ ([D, B])."""
    pid_d, pid_n = tl.program_id(0), tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dd < D
    xt_off = dd.to(tl.int64)[:, None] * B + row0
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for k0 in range(0, R, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        pt = tl.trans(_probabilities(S, LSE2 + row0, G + row0, kk, cols, R, B, True))  # [cols, strip rows]
        acc = _accumulate_p_times(pt, XTH, XTL, xt_off + kk[None, :], d_ok[:, None] & (kk < R)[None, :], acc, SPLIT)
    col_ok = cols < B
    mask = col_ok[:, None] & d_ok[None, :]
    out = cols.to(tl.int64)[:, None] * D + dd[None, :]
    if FIRST:
        g = tl.load(G + cols, mask=col_ok, other=0.0)
        acc -= g[:, None] * tl.load(X + out, mask=mask, other=0.0).to(tl.float32)
    else:
        acc += tl.load(DY + out, mask=mask, other=0.0)
    tl.store(DY + out, acc, mask=mask)


# --------------------------------------------------------------------------- launchers


def _config(B: int, D: int, device: torch.device) -> dict:
    """Tiles (block_m rows or columns of S, block_d features), K step, warps, pipeline stages and
    rows per strip.

    GPU: 128-row tiles of 8 warps (2 warpgroups of wgmma m64n128k8, a 64-register fp32 accumulator
    per thread, ~180 registers, no spills), 32-wide K steps in 3 stages: 96 KiB of shared memory
    in the scores kernel (2 operand tiles of 16 KiB per stage), 144 KiB in the P products (a tile
    of S and 2 of the split operand); 64-row tiles of 4 warps when 128-row tiles would leave SMs
    idle (small B). Interpreter: 16-wide tiles and 32-row strips, so that small tests cross tile
    and strip edges."""
    if device.type != "cuda":
        return dict(block_m=16, block_d=16, block_k=16, warps=4, stages=1, strip=_INTERPRETER_STRIP_ROWS)
    block_d = min(128, max(16, triton.next_power_of_2(D)))
    sms = _sm_count(device)
    # At least the rows whose 128-row dX tiles fill the SMs (one program per tile and feature tile).
    fill = cdiv(sms, cdiv(D, block_d)) * 128
    strip = max(fill, _STRIP_ELEMENTS // max(B, 1) // 128 * 128)
    big = cdiv(min(strip, B), 128) * cdiv(D, block_d) >= 0.9 * sms
    return dict(block_m=128 if big else 64, block_d=block_d, block_k=32, warps=8 if big else 4, stages=3,
                strip=strip)


class _Operand:
    """An input's tensor-core operands. k_cat: the parts along K for the scores ([hi, hi, lo] for
    X, [hi, lo, hi] for Y: S = one GEMM over 3D columns = the three TF32 products); t_hi, t_lo:
    the transposed parts ([D, B], K-major for the P products), made when first needed.
    fp16 / bf16: the input itself, one part."""

    def __init__(self, full: Tensor, order: tuple[int, int, int]):
        self.full, self.split = full, _three_products(full.dtype)
        if self.split:
            parts = tf32_parts(full)
            self.k_cat = torch.cat([parts[i] for i in order], 1)
        else:
            self.k_cat = full
        self._order = order

    def _transposed(self, part: int) -> Tensor:
        D = self.full.shape[1]
        start = D * self._order.index(part) if self.split else 0
        return self.k_cat[:, start:start + D].T.contiguous()

    @functools.cached_property
    def t_hi(self) -> Tensor:
        return self._transposed(0)

    @functools.cached_property
    def t_lo(self) -> Tensor:
        return self._transposed(1) if self.split else self.t_hi


def _three_products(dtype: torch.dtype) -> bool:
    """fp32 operands as 3×TF32 products (fp32 accuracy), unless torch's matmuls may use TF32
    (torch.backends.cuda.matmul.allow_tf32, as latent attention follows it): then one TF32 product
    each, as torch's own fp32 matmuls would run."""
    return dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32


def _operands(x: Tensor, y: Tensor) -> tuple[_Operand, _Operand]:
    return _Operand(x, (0, 0, 1)), _Operand(y, (0, 1, 0))


def _strips(B: int, cfg: dict) -> list[tuple[int, int]]:
    """(first row, rows) of each strip of S."""
    return [(r, min(cfg["strip"], B - r)) for r in range(0, B, cfg["strip"])]


def _scores(x: _Operand, y: _Operand, row0: int, rows: int, cfg: dict, stats: bool) -> tuple[Tensor, Tensor]:
    """The strip S[rows, B] of scores and, with stats, its [rows, column tiles] log-sum-exps."""
    B, K = y.k_cat.shape
    bm = cfg["block_m"]
    s = torch.empty(rows, B, dtype=torch.float32, device=y.full.device)
    # Without stats T is never written, but a slot the kernel may write gets a tensor of its own
    # (torch.compile's kernel analysis counts it as written; tests/test_triton_sm90.py).
    t = s.new_empty(rows, cdiv(B, bm)) if stats else s.new_empty(1)
    launchable(_scores_kernel)[(cdiv(rows, bm), cdiv(B, bm))](
        x.k_cat, y.k_cat, s, t, row0, rows, B, K, BLOCK_M=bm, BLOCK_N=bm, BLOCK_K=cfg["block_k"], STATS=stats,
        num_warps=cfg["warps"], num_stages=cfg["stages"])
    return s, t


def _strip_gradients(s: Tensor, row0: int, lse2: Tensor, g: Tensor, x: _Operand, y: _Operand,
                     dx: Tensor, dy32: Tensor, cfg: dict) -> None:
    """dX of the strip's rows into dx, their share of dY added into dy32 (fp32)."""
    rows, B = s.shape
    D = x.full.shape[1]
    bm, bd = cfg["block_m"], cfg["block_d"]
    common = dict(BLOCK_D=bd, BLOCK_K=cfg["block_k"], SPLIT=x.split, num_warps=cfg["warps"],
                  num_stages=cfg["stages"])
    launchable(_dx_kernel)[(cdiv(D, bd), cdiv(rows, bm))](
        s, lse2, g, y.t_hi, y.t_lo, y.full, dx, row0, rows, B, D, BLOCK_M=bm, **common)
    launchable(_dy_kernel)[(cdiv(D, bd), cdiv(B, bm))](
        s, lse2, g, x.t_hi, x.t_lo, x.full, dy32, row0, rows, B, D, BLOCK_N=bm, FIRST=row0 == 0, **common)


def _checked(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """x, y [B, D] (one B: row i's positive is y[i]), checked and contiguous."""
    B, D = checks.shape("x", x, "[B, D]", None, None)
    checks.shape("y", y, "[B, D]", B, D)
    checks.device("y", y, x)
    return checks.dense(x, y)


def rows_forward(x: Tensor, y: Tensor, with_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, Σ loss, lse, gx, gy): per-row cross-entropy of S = x yᵀ against the diagonal and the
    row log-sum-exps (fp32); with with_grad, gx, gy = the gradients of Σ loss, computed from each
    strip of S while it is at hand (a mean or sum loss then needs no backward pass over S), else
    empty."""
    x, y = _checked(x, y)
    B, D = x.shape
    loss = torch.empty(B, dtype=torch.float32, device=x.device)
    lse, lse2 = torch.empty_like(loss), torch.empty_like(loss)
    gx = torch.empty_like(x) if with_grad else x.new_empty(0)
    gy32 = torch.empty(B, D, dtype=torch.float32, device=x.device) if with_grad else loss.new_empty(0)
    if B > 0:
        cfg = _config(B, D, x.device)
        xo, yo = _operands(x, y)
        ones = torch.ones_like(loss)
        for row0, rows in _strips(B, cfg):
            s, t = _scores(xo, yo, row0, rows, cfg, stats=True)
            strip_lse = torch.logsumexp(t, 1)
            lse[row0:row0 + rows] = strip_lse
            loss[row0:row0 + rows] = strip_lse - s.diagonal(row0)
            if with_grad:
                lse2[row0:row0 + rows] = strip_lse * _LOG2E
                _strip_gradients(s, row0, lse2, ones, xo, yo, gx, gy32, cfg)
    gy = gy32.to(y.dtype) if with_grad else y.new_empty(0)
    return loss, loss.sum(), lse, gx, gy


def rows_backward(g: Tensor, x: Tensor, y: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """(dx, dy) of rows_forward's loss for the upstream gradient g[B]: S strip by strip again."""
    x, y = _checked(x, y)
    B, D = x.shape
    for name, t in (("g", g), ("lse", lse)):
        checks.shape(name, t, "[B]", B)
        checks.device(name, t, x)
    dx = torch.empty_like(x)
    dy32 = torch.empty(B, D, dtype=torch.float32, device=x.device)
    if B > 0:
        cfg = _config(B, D, x.device)
        xo, yo = _operands(x, y)
        g = g.float().contiguous()
        lse2 = (lse.float() * _LOG2E).contiguous()
        for row0, rows in _strips(B, cfg):
            s, _ = _scores(xo, yo, row0, rows, cfg, stats=False)
            _strip_gradients(s, row0, lse2, g, xo, yo, dx, dy32, cfg)
    return dx, dy32.to(y.dtype)


__all__ = ["rows_forward", "rows_backward"]
