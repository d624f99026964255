"""LEAF's learnable filterbank: complex Gabor filters, squared modulus, Gaussian low-pass pooling (DESIGN §4).

`gabor_pool(x, center_freqs, bandwidths, pool_widths, *, window=401, stride=160)` maps waveforms
x[B, T] to y[B, F, ⌈T/stride⌉]. With W = window, h = W // 2, for filter f (η = center_freqs[f]
in rad/sample, σ = bandwidths[f] in samples, σ_p = pool_widths[f]):

    φ_f(t) = exp(i η t) · exp(−t²/(2σ²)) / (√(2π) σ),            t = −h … h
    u_f[n] = Σ_t φ_f(t) x[n + t]        (cross-correlation, x = 0 outside [0, T): "same" output)
    w_f(j) = exp(−½ ((j − h) / (σ_p h))²),                       j = 0 … W − 1 (peak 1)
    y[f, k] = max(Σ_j w_f(j) |u_f[stride·k + j − h]|², 1e-5)     (|u| = 0 outside [0, T))

Padding convention: frame k is centred on sample stride·k whatever T (SpeechBrain's: h zeros on both
sides of the modulus), so there are ⌈T/stride⌉ frames; the official TF code's "SAME" padding shifts
the centres by a T-dependent offset instead. The op applies the parameters as given: clipping to
the DESIGN's ranges is pyaudiok.nn.GaborFilterbank's / GaussianLowpass's job.

Backends: `reference` (conv1d with the 2F real filters → squared modulus → depthwise pooling conv,
the whole [B, 2F, T] intermediate in memory), and `cpu` — on any device, in fact: the same GEMM-backed
convolutions run over tiles of frames (a tile of K frames needs stride·(K−1)+W modulus samples and a
further W − 1 waveform samples of halo), each tile checkpointed so the backward recomputes it. Only
one tile's stride-1 intermediate exists at a time, forward or backward; gradients reach x and all
three parameter vectors through the filters built once per call.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch.utils.checkpoint import checkpoint

from .. import backends, dispatch
from . import _checks
from ._library import GPU_DTYPES, triton_op

__all__ = ["gabor_pool", "gabor_pool_reference", "gabor_filters", "gaussian_windows", "FLOOR"]

FLOOR = 1e-5  # the pooled energies' lower bound (keeps PCEN's log finite)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gabor_filters(center_freqs: torch.Tensor, bandwidths: torch.Tensor, window: int) -> torch.Tensor:
    """The 2F real filters [2F, 1, W] (Re, Im interleaved) for F.conv1d. cos/sin are taken in at least
    fp32 (the phase η t reaches ~600 rad)."""
    dtype = _compute_dtype(center_freqs.dtype)
    eta, sigma = center_freqs.to(dtype)[:, None], bandwidths.to(dtype)[:, None]
    t = torch.arange(-(window // 2), window // 2 + 1, device=eta.device, dtype=dtype)
    envelope = torch.exp(-t**2 / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    phase = eta * t
    return torch.stack([envelope * torch.cos(phase), envelope * torch.sin(phase)], dim=1).reshape(-1, 1, window)


def gaussian_windows(pool_widths: torch.Tensor, window: int) -> torch.Tensor:
    """The F pooling windows [F, 1, W] (peak 1, not normalised) for a depthwise F.conv1d."""
    dtype = _compute_dtype(pool_widths.dtype)
    half = window // 2
    j = torch.arange(window, device=pool_widths.device, dtype=dtype) - half
    return torch.exp(-0.5 * (j / (pool_widths.to(dtype)[:, None] * half)) ** 2)[:, None, :]


def n_frames(n_samples: int, stride: int) -> int:
    return -(-n_samples // stride)


# ----------------------------------------------------------------------------------------------
# Reference: the definition of the op.

def gabor_pool_reference(x: torch.Tensor, center_freqs: torch.Tensor, bandwidths: torch.Tensor,
                         pool_widths: torch.Tensor, window: int = 401, stride: int = 160) -> torch.Tensor:
    """x[B, T] -> y[B, F, ⌈T/stride⌉] through the full stride-1 intermediates."""
    dtype = _compute_dtype(x.dtype)
    half = window // 2
    u = Fn.conv1d(x.to(dtype)[:, None], gabor_filters(center_freqs, bandwidths, window), padding=half)
    energy = u[:, 0::2] ** 2 + u[:, 1::2] ** 2
    pooled = Fn.conv1d(energy, gaussian_windows(pool_widths, window), stride=stride, padding=half,
                       groups=energy.shape[1])
    return pooled.clamp_min(FLOOR).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Tiled backend.

def _tile(segment, filters, windows, first, n_samples, stride):
    """Frames of one tile from its waveform segment; `first` is the tile's first modulus sample,
    so samples outside [0, n_samples) are masked to the pooling's zero padding."""
    u = Fn.conv1d(segment, filters)
    energy = u[:, 0::2] ** 2 + u[:, 1::2] ** 2
    position = first + torch.arange(energy.shape[-1], device=energy.device)
    energy = energy * ((position >= 0) & (position < n_samples)).to(energy.dtype)
    return Fn.conv1d(energy, windows, stride=stride, groups=energy.shape[1])


def tile_frames(batch: int, n_filters: int, stride: int, budget: int = 1 << 23) -> int:
    """Frames per tile so that a tile's [B, 2F, L] intermediate stays near `budget` elements (32 MB in fp32:
    smaller tiles cost more than the recompute, measured on CPU)."""
    return max(1, budget // max(1, batch * 2 * n_filters * stride))


def pool_tiles(x, filters, windows, stride, frames_per_tile=None):
    """The op from its filter tensors ([2F, 1, W] and [F, 1, W]), tile by tile."""
    B, T = x.shape
    window = filters.shape[-1]
    half, K = window // 2, n_frames(T, stride)
    tile = frames_per_tile or tile_frames(B, windows.shape[0], stride)
    padded = Fn.pad(x.to(filters.dtype), (2 * half, 2 * half))[:, None]  # padded[i] = x[i − 2h]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, filters, windows))
    outs = []
    for k0 in range(0, K, tile):
        k1 = min(K, k0 + tile)
        first = stride * k0 - half                       # first modulus sample of the tile
        segment = padded[..., stride * k0: stride * (k1 - 1) + 4 * half + 1]  # x[first − h … last + h]
        args = (segment, filters, windows, first, T, stride)
        outs.append(checkpoint(_tile, *args, use_reentrant=False) if needs_grad else _tile(*args))
    return torch.cat(outs, dim=-1).clamp_min(FLOOR)


def gabor_pool_tiled(x, center_freqs, bandwidths, pool_widths, window=401, stride=160, frames_per_tile=None):
    filters = gabor_filters(center_freqs, bandwidths, window).to(x.device)
    windows = gaussian_windows(pool_widths, window).to(x.device)
    return pool_tiles(x, filters, windows, stride, frames_per_tile).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Triton: fused forward (kernels/gabor_pool.py); the backward recomputes tiles with pool_tiles.

def _register_triton(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(x, re, im, windows, stride, floor):
        return x.new_empty((x.shape[0], re.shape[1], n_frames(x.shape[1], stride)))

    def setup_context(ctx, inputs, output):
        x, re, im, windows, stride, _ = inputs
        ctx.save_for_backward(x, re, im, windows)
        ctx.stride = stride

    def backward(ctx, grad):
        leaves = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]
        x, re, im, windows = leaves
        with torch.enable_grad():
            filters = torch.stack([re.T, im.T], dim=1).reshape(-1, 1, re.shape[0])
            y = pool_tiles(x, filters, windows.T[:, None], ctx.stride)
            grads = torch.autograd.grad(y, leaves, grad.to(y.dtype), allow_unused=True)
        return (grads[0].to(x.dtype), *grads[1:], None, None)

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)


def _triton_forward():
    return triton_op("gabor_pool_forward_triton", "gabor_pool", "gabor_pool_forward", _register_triton)


def _gabor_pool_triton(x, center_freqs, bandwidths, pool_widths, window=401, stride=160):
    filters = gabor_filters(center_freqs.float(), bandwidths.float(), window).to(x.device)
    windows = gaussian_windows(pool_widths.float(), window).to(x.device)
    re, im = filters[0::2, 0].T.contiguous(), filters[1::2, 0].T.contiguous()
    return _triton_forward()(x.contiguous(), re, im, windows[:, 0].T.contiguous(), stride, FLOOR)


GABOR_POOL = dispatch.op("gabor_pool")
GABOR_POOL.register("reference", gabor_pool_reference, devices=("cpu", "cuda"), dtypes=dispatch.FLOAT_DTYPES)
# The tiled route runs on torch's GEMM-backed convolutions, so it needs no extension; it is the
# automatic choice on the CPU and a fallback on GPUs.
GABOR_POOL.register("cpu", gabor_pool_tiled, devices=("cpu", "cuda"), dtypes=dispatch.FLOAT_DTYPES)
GABOR_POOL.register("triton", _gabor_pool_triton, devices=("cuda", "cpu"), dtypes=GPU_DTYPES,
                    availability=backends.triton_reason)


# ----------------------------------------------------------------------------------------------
# Public API.

def _check_positive(name: str, value: torch.Tensor) -> None:
    if value.numel() and not bool((value > 0).all()):
        raise ValueError(f"{name} must be positive; got a minimum of {value.min().item():.4g}")


def gabor_pool(x: torch.Tensor, center_freqs: torch.Tensor, bandwidths: torch.Tensor, pool_widths: torch.Tensor,
               *, window: int = 401, stride: int = 160) -> torch.Tensor:
    """Gaussian-pooled squared modulus of a complex Gabor filterbank: x[B, T] -> [B, F, ⌈T/stride⌉].

    center_freqs (rad/sample), bandwidths (samples) and pool_widths (fraction of half the window)
    are [F]; gradients reach x and all three. Needs T >= window.
    """
    x = _checks.float_tensor("x", x, ndim=2, layout="[B, T]")
    window = _checks.int_in_range("window", window, 1, 1 << 20)
    stride = _checks.int_in_range("stride", stride, 1, 1 << 20)
    if window % 2 == 0:
        raise ValueError(f"window must be odd (filters centred on t = 0); got {window}")
    if x.shape[1] < window:
        raise ValueError(f"x must have shape [B, T] with T >= window = {window}; got {_checks.shape_str(x.shape)}")
    F = center_freqs.shape[0] if isinstance(center_freqs, torch.Tensor) and center_freqs.dim() == 1 else None
    for name, p in (("center_freqs", center_freqs), ("bandwidths", bandwidths), ("pool_widths", pool_widths)):
        _checks.float_tensor(name, p, ndim=1, layout="[F]")
        _checks.dim_size(name, p, 0, F, "center_freqs' length F")
        _checks.same_device(name, p, "x", x)
    _check_positive("bandwidths", bandwidths)
    _check_positive("pool_widths", pool_widths)
    return GABOR_POOL(x, center_freqs, bandwidths, pool_widths, window, stride, device=x.device, dtype=x.dtype)
