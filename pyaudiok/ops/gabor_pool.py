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
the whole [B, 2F, T] intermediate in memory), and `cpu` — on any device, in fact, with two exact
routes, the faster one per window length (measured on CPU; both keep only a block of the stride-1
intermediate at a time, forward or backward, and recompute it in the backward):
- FFT (windows ≥ FFT_MIN_WINDOW, LEAF's 401 among them): one transform of each waveform shared by
  all F filters, each filter's output one inverse transform of its product with the filter's
  spectrum; a hand-written backward (two transforms per filter and item). Its cost does not grow
  with the window: 3× the tiled route's speed forward and 5× forward+backward at LEAF's sizes.
- tiled convolution (shorter windows): the same GEMM-backed convolutions as the reference over tiles
  of frames (a tile of K frames needs stride·(K−1)+W modulus samples and a further W − 1 waveform
  samples of halo), each tile checkpointed.
Gradients reach x and all three parameter vectors through the filters built once per call.
`triton` fuses the forward; its backward recomputes tiles with the tiled route.
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


def _filter_tensors(x, center_freqs, bandwidths, pool_widths, window):
    """The [2F, 1, W] Gabor filters and [F, 1, W] pooling windows on x's device."""
    return (gabor_filters(center_freqs, bandwidths, window).to(x.device),
            gaussian_windows(pool_widths, window).to(x.device))


def gabor_pool_tiled(x, center_freqs, bandwidths, pool_widths, window=401, stride=160, frames_per_tile=None):
    filters, windows = _filter_tensors(x, center_freqs, bandwidths, pool_widths, window)
    return pool_tiles(x, filters, windows, stride, frames_per_tile).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# FFT route: one transform of each waveform shared by all F filters.

def fft_length(n: int) -> int:
    """The smallest 2^a·3^b·5^c ≥ n (sizes the FFT libraries handle without a slow prime path)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def filter_spectra(filters: torch.Tensor, n: int) -> torch.Tensor:
    """K[f, ω] = Σ_t φ_f(t) e^{+2πiωt/n}: the spectra that turn the cross-correlation with φ_f into a
    circular product, from the interleaved real filters [2F, 1, W]."""
    window = filters.shape[-1]
    half = window // 2
    phi = torch.complex(filters[0::2, 0], filters[1::2, 0])  # [F, W], t = −h … h
    # φ(t) at index t mod n: t = 0 … h first, t = −h … −1 last.
    placed = torch.cat([phi[:, half:], phi.new_zeros(phi.shape[0], n - window), phi[:, :half]], dim=1)
    return torch.fft.ifft(placed, dim=-1) * n


class _PoolFFT(torch.autograd.Function):
    """y[b, f, k] = Σ_j w_f(j) |u_{b,f}[stride·k + j − h]|² with u_{b,f} = ifft(X_b · K_f) on [0, T).

    Inputs: x[B, T] (real), the filter spectra K[F, n] (complex, n ≥ T + h) and the windows
    [F, W]. Works one item and a few filters at a time, so each [G, n] complex block stays in
    cache and only y is kept; the backward recomputes the blocks. With g = 2 u ∂L/∂|u|² and
    G = fft(g) (PyTorch's convention for complex gradients: grad z = ∂L/∂Re z + i ∂L/∂Im z):
        ∂L/∂K_f = Σ_b conj(X_b) G_{b,f} / n,    ∂L/∂x_b = Re ifft(Σ_f conj(K_f) G_{b,f}) on [0, T)."""

    @staticmethod
    def forward(ctx, x, spectra, windows, stride, group):
        ctx.save_for_backward(x, spectra, windows)
        ctx.stride, ctx.group = stride, group
        B, T = x.shape
        F, W = windows.shape
        y = windows.new_empty(B, F, n_frames(T, stride))
        for b in range(B):
            X = torch.fft.fft(x[b], n=spectra.shape[-1])
            for f0 in range(0, F, group):
                f1 = min(F, f0 + group)
                frames = _pooling_frames(_filtered(X, spectra[f0:f1], T), W, stride)
                y[b, f0:f1] = torch.bmm(frames, windows[f0:f1, :, None])[..., 0]
        return y

    @staticmethod
    def backward(ctx, dy):
        x, spectra, windows = ctx.saved_tensors
        stride, group = ctx.stride, ctx.group
        B, T = x.shape
        F, W = windows.shape
        n, half = spectra.shape[-1], W // 2
        need_x, need_k, need_w = ctx.needs_input_grad[:3]
        dx = torch.zeros_like(x) if need_x else None
        dk = torch.zeros_like(spectra) if need_k else None
        dw = torch.zeros_like(windows) if need_w else None
        dy = dy.to(windows.dtype)
        for b in range(B):
            X = torch.fft.fft(x[b], n=n)
            gX = torch.zeros_like(X) if need_x else None
            for f0 in range(0, F, group):
                f1 = min(F, f0 + group)
                u = _filtered(X, spectra[f0:f1], T)
                if need_w:
                    dw[f0:f1] += torch.bmm(dy[b, f0:f1, None, :], _pooling_frames(u, W, stride))[:, 0]
                if not (need_x or need_k):
                    continue
                # ∂L/∂|u|² on [0, T): the pooling's transpose, frame k's window starting at stride·k − h.
                dE = Fn.conv_transpose1d(dy[b, f0:f1][None], windows[f0:f1, None, :], stride=stride,
                                         groups=f1 - f0)[0, :, half:half + T]
                G = torch.fft.fft(2 * dE * u, n=n, dim=-1)  # g is zero beyond T: fft pads it
                if need_x:
                    gX += (spectra[f0:f1].conj() * G).sum(0)
                if need_k:
                    dk[f0:f1] += X.conj() * G / n
            if need_x:
                dx[b] = torch.fft.ifft(gX).real[:T]
        return dx, dk, dw, None, None


def _filtered(X, spectra, T):
    """u = ifft(X · K) on [0, T) for a block of filters [G, n]."""
    return torch.fft.ifft(X * spectra, dim=-1)[:, :T]


def _pooling_frames(u, W, stride):
    """The pooling windows of |u|² as a strided view [G, frames, W] (zero padding: |u| = 0 outside
    [0, T))."""
    T, half = u.shape[-1], W // 2
    energy = u.real.square() + u.imag.square()
    frames = n_frames(T, stride)
    padded = Fn.pad(energy, (half, max(0, stride * (frames - 1) + W - half - T)))
    return padded.unfold(-1, W, stride)[:, :frames]


def fft_filters_per_block(n: int, budget: int = 1 << 19) -> int:
    """Filters per block so that a [G, n] complex block stays near `budget` elements (4 MB in
    complex64: about what the CPU's caches hold)."""
    return max(1, budget // max(1, n))


def pool_fft(x, filters, windows, stride, filters_per_block=None):
    """The op from its filter tensors ([2F, 1, W] and [F, 1, W]) by the FFT route."""
    T = x.shape[1]
    half = filters.shape[-1] // 2
    n = fft_length(T + half)  # T + h: a correlation with taps −h … h never wraps onto [0, T)
    spectra = filter_spectra(filters, n)
    group = filters_per_block or fft_filters_per_block(n)
    y = _PoolFFT.apply(x.to(filters.dtype), spectra, windows[:, 0], stride, group)
    return y.clamp_min(FLOOR)


def gabor_pool_fft(x, center_freqs, bandwidths, pool_widths, window=401, stride=160, filters_per_block=None):
    filters, windows = _filter_tensors(x, center_freqs, bandwidths, pool_widths, window)
    return pool_fft(x, filters, windows, stride, filters_per_block).to(x.dtype)


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


FFT_MIN_WINDOW = 129  # below, the tiled convolution is faster forward and as fast forward+backward


def gabor_pool_cpu(x, center_freqs, bandwidths, pool_widths, window=401, stride=160):
    route = gabor_pool_fft if window >= FFT_MIN_WINDOW else gabor_pool_tiled
    return route(x, center_freqs, bandwidths, pool_widths, window, stride)


GABOR_POOL = dispatch.op("gabor_pool")
GABOR_POOL.register("reference", gabor_pool_reference, devices=("cpu", "cuda"), dtypes=dispatch.FLOAT_DTYPES)
# Both routes run on torch's FFTs and convolutions, so they need no extension; the automatic choice
# on the CPU and a fallback on GPUs.
GABOR_POOL.register("cpu", gabor_pool_cpu, devices=("cpu", "cuda"), dtypes=dispatch.FLOAT_DTYPES)
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
