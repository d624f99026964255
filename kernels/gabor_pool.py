"""Triton forward of the fused Gabor filterbank + squared modulus + Gaussian pooling
(pyaudiok/ops/gabor_pool.py documents the math and the padding convention).

One program per (item, frame k): the W modulus samples under the frame's pooling window,
p = stride·k − h + n (n < W), are computed in chunks of BLOCK_N as a GEMM of the waveform's
sliding windows X[n, j] = x[p_n + j − h] (zero outside [0, T)) with the [W, F] real and imaginary
filter matrices (tl.dot with fp32 products, see Cost); squared, weighted by the pooling
window and reduced at once. Nothing of size T·F is written: the output is the [B, F, K] frames.
Neighbouring frames recompute the ~60 % of samples their windows share; that buys independence
of the programs (no halo exchange) at 2.5× the minimal multiply count.

Cost: fp32 dots with input_precision="ieee" run on the CUDA cores (FMA), not the tensor cores, so
the kernel is bound by its 2 · W² · BLOCK_F / stride FMAs per sample and item (the 2.5× window
overlap and F = 40 padded to BLOCK_F = 64: 4× a direct convolution's 2F·W at LEAF's W = 401):
3.6× slower than the cuDNN reference on an H200. The FFT route is cheaper for such windows; the
dispatcher tries the cuFFT route first on CUDA tensors (GABOR_POOL.prefer in
pyaudiok/ops/gabor_pool.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch_checks as checks
from .gpu import launchable


@triton.jit
def _gabor_pool_forward_kernel(x_ptr, re_ptr, im_ptr, win_ptr, y_ptr, T, K, F, W, stride, half, floor,
                               BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_F: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1)
    fs = tl.arange(0, BLOCK_F)
    f_ok = fs < F
    x_row = x_ptr + b * T
    acc = tl.zeros((BLOCK_F,), dtype=tl.float32)
    for n0 in range(0, W, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        p = stride * k - half + n
        re = tl.zeros((BLOCK_N, BLOCK_F), dtype=tl.float32)
        im = tl.zeros((BLOCK_N, BLOCK_F), dtype=tl.float32)
        for j0 in range(0, W, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            src = p[:, None] + j[None, :] - half
            X = tl.load(x_row + src, mask=(src >= 0) & (src < T) & (j[None, :] < W), other=0.0).to(tl.float32)
            f_mask = (j[:, None] < W) & f_ok[None, :]
            Fr = tl.load(re_ptr + j[:, None] * F + fs[None, :], mask=f_mask, other=0.0)
            Fi = tl.load(im_ptr + j[:, None] * F + fs[None, :], mask=f_mask, other=0.0)
            re += tl.dot(X, Fr, input_precision="ieee")
            im += tl.dot(X, Fi, input_precision="ieee")
        valid = (p >= 0) & (p < T) & (n < W)
        w = tl.load(win_ptr + n[:, None] * F + fs[None, :], mask=valid[:, None] & f_ok[None, :], other=0.0)
        # Selected, not weighted by 0: a sample outside the window may see a NaN or inf of x (0 · NaN is
        # NaN), where the reference's frame does not.
        acc += tl.sum(tl.where(valid[:, None], w * (re * re + im * im), 0.0), 0)
    out = y_ptr + (b * F + fs) * K + k
    # NaN stays NaN, as in the reference's clamp_min (tl.maximum may return the floor for it)
    y = tl.where(acc != acc, acc, tl.maximum(acc, floor))
    tl.store(out, y.to(y_ptr.dtype.element_ty), mask=f_ok)


def gabor_pool_forward(x: Tensor, re: Tensor, im: Tensor, windows: Tensor, stride: int, floor: float) -> Tensor:
    """x[B, T]; fp32 re, im, windows [W, F]; stride >= 1 -> y[B, F, ⌈T/stride⌉] in x's dtype."""
    B, T = checks.shape("x", x, "[B, T]", None, None)
    W, F = checks.shape("re", re, "[W, F]", None, None)
    for name, t in (("re", re), ("im", im), ("windows", windows)):
        checks.shape(name, t, "[W, F]", W, F)
        checks.dtype(name, t, (torch.float32,))
        checks.device(name, t, x)
    if stride < 1:
        raise ValueError(f"stride must be >= 1; got {stride}")
    x, re, im, windows = checks.dense(x, re, im, windows)
    K = -(-T // stride)
    y = torch.empty(B, F, K, device=x.device, dtype=x.dtype)
    if B == 0 or F == 0:
        return y
    block_f = max(16, triton.next_power_of_2(F))
    launchable(_gabor_pool_forward_kernel)[(B, K)](x, re, im, windows, y, T, K, F, W, stride, W // 2, floor,
                                                   BLOCK_N=32, BLOCK_J=32, BLOCK_F=block_f)
    return y
