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
the whole [B, 2F, T] intermediate in memory); `cpu` and `cuda`, two exact routes on torch ops that
keep only a block of the stride-1 intermediate at a time, forward or backward, and recompute it in
the backward:
- FFT (`cuda`: every window; `cpu`: windows ≥ FFT_MIN_WINDOW, LEAF's 401 among them): one transform
  of each waveform segment shared by all F filters, each filter's output one inverse transform of its
  product with the filter's spectrum, |·|², then the pooling as a GEMM over blocks of `stride`
  samples; a hand-written backward (two transforms per filter and segment). Its cost does not grow
  with the window. On the CPU long signals go in overlap-save segments of CPU_SEGMENT samples
  (transforms that stay in the caches) and blocks of one item and a few filters; on GPUs one
  transform per signal, in blocks of many items and filters (large batched cuFFT calls; fft_blocks).
- tiled convolution (`cpu`, shorter windows): the same GEMM-backed convolutions as the reference
  over tiles of frames (a tile of K frames needs stride·(K−1)+W modulus samples and a further W − 1
  waveform samples of halo), each tile checkpointed.
Gradients reach x and all three parameter vectors through the filters built once per call.
`triton` fuses the forward; its backward recomputes tiles with the tiled route. On GPUs it comes
after `cuda` in the automatic order (GABOR_POOL.prefer below says why).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as Fn
from torch.utils.checkpoint import checkpoint

from .. import backends, dispatch
from . import _checks
from ._library import GPU_DTYPES, accumulation_dtype, first_order, register_autograd, triton_op

__all__ = ["gabor_pool", "gabor_pool_reference", "gabor_filters", "gaussian_windows", "FLOOR"]

FLOOR = 1e-5  # the pooled energies' lower bound (keeps PCEN's log finite)


def _op_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a call computes in: float64 if x or a parameter vector is, else float32 (the
    parameters may differ from x in dtype, e.g. float32 ones with a half-precision x)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def gabor_filters(center_freqs: torch.Tensor, bandwidths: torch.Tensor, window: int) -> torch.Tensor:
    """The 2F real filters [2F, 1, W] (Re, Im interleaved) for F.conv1d. cos/sin are taken in at least
    fp32 (the phase η t reaches ~600 rad)."""
    dtype = accumulation_dtype(center_freqs.dtype)
    eta, sigma = center_freqs.to(dtype)[:, None], bandwidths.to(dtype)[:, None]
    t = torch.arange(-(window // 2), window // 2 + 1, device=eta.device, dtype=dtype)
    envelope = torch.exp(-t**2 / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    phase = eta * t
    return torch.stack([envelope * torch.cos(phase), envelope * torch.sin(phase)], dim=1).reshape(-1, 1, window)


def gaussian_windows(pool_widths: torch.Tensor, window: int) -> torch.Tensor:
    """The F pooling windows [F, 1, W] (peak 1, not normalised) for a depthwise F.conv1d."""
    dtype = accumulation_dtype(pool_widths.dtype)
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
    dtype = _op_dtype(x, center_freqs, bandwidths, pool_widths)
    half = window // 2
    u = Fn.conv1d(x.to(dtype)[:, None], gabor_filters(center_freqs.to(dtype), bandwidths.to(dtype), window),
                  padding=half)
    energy = u[:, 0::2] ** 2 + u[:, 1::2] ** 2
    pooled = Fn.conv1d(energy, gaussian_windows(pool_widths.to(dtype), window), stride=stride, padding=half,
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
    """The [2F, 1, W] Gabor filters and [F, 1, W] pooling windows on x's device, in the call's dtype."""
    dtype = _op_dtype(x, center_freqs, bandwidths, pool_widths)
    return (gabor_filters(center_freqs.to(dtype), bandwidths.to(dtype), window).to(x.device),
            gaussian_windows(pool_widths.to(dtype), window).to(x.device))


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
    """K[f] = fft(φ_f reversed, n) from the interleaved real filters [2F, 1, W]: ifft(X · K_f)[i] is the
    cross-correlation u_f at sample i − h of the segment whose transform is X (i ≥ W − 1: no wrap-around)."""
    phi = torch.complex(filters[0::2, 0], filters[1::2, 0])  # [F, W], t = −h … h
    return torch.fft.fft(phi.flip(-1), n=n, dim=-1)


def _blocked_windows(windows: torch.Tensor, stride: int) -> torch.Tensor:
    """The pooling windows [F, W] zero-padded to R = ⌈W/stride⌉ blocks of `stride` taps: [F, R, stride]."""
    R = -(-windows.shape[-1] // stride)
    return Fn.pad(windows, (0, R * stride - windows.shape[-1])).unflatten(-1, (R, stride))


def _pool(energy: torch.Tensor, blocked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The strided pooling of the padded energies [..., G, M·stride] with windows [G, R, stride] as one
    GEMM over non-overlapping blocks of `stride` samples, Z[m, r] = Σ_s E[stride·m + s] w[stride·r + s],
    then y[k] = Σ_r Z[k + r, r]: it reads E once, where unfolding the 2.5×-overlapping windows copies them.
    Returns (y [..., G, M − R + 1], the blocks view of E)."""
    R, stride = blocked.shape[-2:]
    blocks = energy.unflatten(-1, (-1, stride))
    Z = torch.matmul(blocks, blocked.transpose(-1, -2))  # [..., G, M, R]
    K = Z.shape[-2] - R + 1
    y = Z[..., :K, 0]
    for r in range(1, R):
        y = y + Z[..., r:r + K, r]
    return y, blocks


def _pool_output_grad(dy: torch.Tensor, R: int) -> torch.Tensor:
    """∂L/∂Z [..., G, M, R] from ∂L/∂y [..., G, K] (the transpose of y[k] = Σ_r Z[k + r, r])."""
    K = dy.shape[-1]
    dZ = dy.new_zeros(*dy.shape[:-1], K + R - 1, R)
    for r in range(R):
        dZ[..., r:r + K, r] = dy
    return dZ


class _Segments(NamedTuple):
    """Overlap-save segmentation of the waveform for the FFT route: segments of n samples every hop
    = n − (W − 1) of x padded by h on the left, so the last hop outputs of segment s's circular
    correlation are u[s·hop … s·hop + hop − 1] (the first W − 1 wrap around). One segment (n ≥ T + W − 1)
    is the whole-signal transform."""
    n: int
    hop: int
    count: int

    @staticmethod
    def plan(T: int, window: int, n: int) -> "_Segments":
        hop = n - (window - 1)
        return _Segments(n, hop, max(1, -(-T // hop)))

    @property
    def padded_length(self) -> int:
        """Samples of the padded x that the segments cover."""
        return (self.count - 1) * self.hop + self.n

    def spectra(self, x: torch.Tensor, items: int, half: int):
        """(b0, b1, fft of the segments [items, count, n]) per block of items."""
        padded = Fn.pad(x, (half, self.padded_length - half - x.shape[-1]))
        for b0 in range(0, x.shape[0], items):
            b1 = min(x.shape[0], b0 + items)
            yield b0, b1, torch.fft.fft(padded[b0:b1].unfold(-1, self.n, self.hop), dim=-1)

    def energy(self, u: torch.Tensor, T: int, half: int, length: int) -> torch.Tensor:
        """|u|² on the pooling's padded frame [..., G, length] from the segments' correlations
        u[..., count, G, n]: sample i of the signal at h + i, zeros elsewhere; written straight from
        each segment's outputs (no gathered copy of the signal)."""
        head, span = self.n - self.hop, self.count * self.hop
        valid = u[..., head:].transpose(-3, -2)  # [..., G, count, hop]
        energy = u.real.new_empty(*valid.shape[:-2], max(length, half + span))
        out = energy[..., half:half + span].unflatten(-1, (self.count, self.hop))
        if torch.compiler.is_compiling():  # tracing cannot write `out=` into a view
            out.copy_(valid.real.square() + valid.imag.square())
        else:
            torch.mul(valid.real, valid.real, out=out).addcmul_(valid.imag, valid.imag)
        energy[..., :half].zero_()
        energy[..., half + min(T, length - half):].zero_()  # past the signal (samples past `length` are unused)
        return energy[..., :length]

    def adjoint_product_(self, u: torch.Tensor, dE: torch.Tensor, T: int, half: int) -> torch.Tensor:
        """g = u · ∂L/∂|u|² (dE[..., G, length] on the padded frame) at each segment's output
        positions, zero at the wrapped heads and past the signal: written over u[..., count, G, n]."""
        head, span = self.n - self.hop, self.count * self.hop
        body = min(T, dE.shape[-1] - half)
        d = dE.new_zeros(*dE.shape[:-1], span)
        d[..., :body] = dE[..., half:half + body]
        u[..., :head] = 0
        u[..., head:].mul_(d.unflatten(-1, (self.count, self.hop)).transpose(-3, -2))
        return u

    def overlap_add(self, d: torch.Tensor, T: int, half: int) -> torch.Tensor:
        """The transpose of `spectra`' segmentation: d[..., count, n] (per-segment gradients of the
        padded x) summed back into x[..., T]."""
        out = d.new_zeros(*d.shape[:-2], self.padded_length)
        for s in range(self.count):
            out[..., s * self.hop:s * self.hop + self.n] += d[..., s, :]
        return out[..., half:half + T]


class _PoolFFT(torch.autograd.Function):
    """y[b, f, k] = Σ_j w_f(j) |u_{b,f}[stride·k + j − h]|² with u_{b,f} (i ∈ [0, T)) from the
    overlap-save segments: u[s·hop + i] = ifft(X_{b,s} · K_f)[n − hop + i] (_Segments, filter_spectra),
    |u| = 0 outside [0, T).

    Inputs: x[B, T] (real), the filter spectra K[F, n] (complex, n the segment length), the windows
    [F, W], and the block sizes: the [items, segments, filters, n] complex blocks are all that is held
    at a time, and only y is kept; the backward recomputes the blocks. With g = 2 u ∂L/∂|u|² put back
    in each segment's output positions (zero elsewhere) and G = fft(g) (PyTorch's convention for complex
    gradients: grad z = ∂L/∂Re z + i ∂L/∂Im z):
        ∂L/∂K_f = Σ_{b,s} conj(X_{b,s}) G_{b,s,f} / n,
        ∂L/∂x_b = the overlap-add over segments of Re ifft(Σ_f conj(K_f) G_{b,s,f})."""

    @staticmethod
    def forward(ctx, x, spectra, windows, stride, items, group):
        ctx.save_for_backward(x, spectra, windows)
        ctx.blocks = stride, items, group
        B, T = x.shape
        F, W = windows.shape
        segments = _Segments.plan(T, W, spectra.shape[-1])
        blocked = _blocked_windows(windows, stride)
        length = (n_frames(T, stride) + blocked.shape[1] - 1) * stride  # the padded energies' length
        y = windows.new_empty(B, F, n_frames(T, stride))
        for b0, b1, X in segments.spectra(x, items, W // 2):
            for f0 in range(0, F, group):
                f1 = min(F, f0 + group)
                u = torch.fft.ifft(X[:, :, None] * spectra[f0:f1], dim=-1)
                y[b0:b1, f0:f1] = _pool(segments.energy(u, T, W // 2, length), blocked[f0:f1])[0]
        return y

    @staticmethod
    @first_order("gabor_pool")
    def backward(ctx, dy):
        x, spectra, windows = ctx.saved_tensors
        stride, items, group = ctx.blocks
        T = x.shape[1]
        F, W = windows.shape
        n, half = spectra.shape[-1], W // 2
        segments = _Segments.plan(T, W, n)
        need_x, need_k, need_w = ctx.needs_input_grad[:3]
        blocked = _blocked_windows(windows, stride)
        R = blocked.shape[1]
        length = (n_frames(T, stride) + R - 1) * stride
        dx = torch.zeros_like(x) if need_x else None
        dk = torch.zeros_like(spectra) if need_k else None
        dblocked = torch.zeros_like(blocked) if need_w else None
        dZ = _pool_output_grad(dy.to(windows.dtype), R)  # [B, F, M, R]: small (stride× smaller than E)
        # Conjugates materialised once: a lazy conj() is resolved again by every product that reads it.
        spectra_conj = spectra.conj().resolve_conj() if need_x else None
        for b0, b1, X in segments.spectra(x, items, half):
            gX = torch.zeros_like(X) if need_x else None
            X_conj = X.conj().resolve_conj()[:, :, None] if need_k else None
            for f0 in range(0, F, group):
                f1 = min(F, f0 + group)
                u = torch.fft.ifft(X[:, :, None] * spectra[f0:f1], dim=-1)
                dZ_block = dZ[b0:b1, f0:f1]
                if need_w:
                    _, blocks = _pool(segments.energy(u, T, half, length), blocked[f0:f1])
                    dblocked[f0:f1] += torch.matmul(blocks.transpose(-1, -2), dZ_block).sum(0).transpose(-1, -2)
                if not (need_x or need_k):
                    continue
                # g = 2 u ∂L/∂|u|² on the signal's samples; ∂L/∂|u|² is the pooling's transpose (the 2
                # folded into the windows).
                dE = torch.matmul(dZ_block, 2 * blocked[f0:f1]).flatten(-2)
                G = torch.fft.fft(segments.adjoint_product_(u, dE, T, half), dim=-1)
                if need_x:
                    gX += (G * spectra_conj[f0:f1]).sum(2)
                if need_k:
                    dk[f0:f1] += G.mul_(X_conj).sum((0, 1))
            if need_x:
                dx[b0:b1] = segments.overlap_add(torch.fft.ifft(gX, dim=-1).real, T, half)
        dw = dblocked.flatten(1)[:, :W] if need_w else None
        return dx, dk / n if need_k else None, dw, None, None, None


# Segment length of the FFT route on the CPU: transforms that stay in the caches (measured on
# LEAF's sizes, T = 64 000, W = 401: 4 096-sample segments ran the forward ~1.3x faster than one
# 64 800-sample transform per signal). GPUs keep one transform per signal (large batched cuFFT calls).
CPU_SEGMENT = 4096


def segment_length(T: int, window: int, device: torch.device) -> int:
    """n: one segment when the whole signal fits (or on GPUs), else CPU_SEGMENT (at least 4 W)."""
    whole = fft_length(T + window - 1)
    if device.type == "cuda":
        return whole
    return min(whole, max(CPU_SEGMENT, fft_length(4 * window)))


def fft_blocks(batch: int, n_filters: int, n: int, device: torch.device) -> tuple[int, int]:
    """(items, filters) per block of the [items, filters, n] complex intermediates (n: all of an
    item's segments).
    CPU: one item and a [G, n] block near 2^19 elements (4 MB in complex64, about what the caches hold:
    measured fastest). GPU: up to 2^23 elements (64 MB) of as many items as fit, then filters: at LEAF's
    sizes (B = 32, n = 64 800) blocks of 32 × 4, so each cuFFT call transforms 128 signals (~0.17 ms
    of memory traffic at ~4 TB/s) against ~15 launches per block forward and ~30 backward (~5 µs
    each): the GPU stays the bottleneck, and peak memory is a few blocks (~0.25 GB, the reference's
    [B, 2F, T] and [B, F, T] intermediates take 1.56 GB)."""
    budget = 1 << (23 if device.type == "cuda" else 19)
    items = 1 if device.type != "cuda" else min(max(1, batch), max(1, budget // n))
    return items, max(1, min(n_filters, budget // (items * n)))


def pool_fft(x, filters, windows, stride, filters_per_block=None, items_per_block=None, segment=None):
    """The op from its filter tensors ([2F, 1, W] and [F, 1, W]) by the FFT route; `segment`: the
    overlap-save segment length (default segment_length)."""
    B, T = x.shape
    window = filters.shape[-1]
    n = segment or segment_length(T, window, x.device)
    if n < window:
        raise ValueError(f"segment must be >= the window ({window}); got {n}")
    spectra = filter_spectra(filters, n)
    items, group = fft_blocks(B, windows.shape[0], _Segments.plan(T, window, n).count * n, x.device)
    y = _PoolFFT.apply(x.to(filters.dtype), spectra, windows[:, 0], stride, items_per_block or items,
                       filters_per_block or group)
    return y.clamp_min(FLOOR)


def gabor_pool_fft(x, center_freqs, bandwidths, pool_widths, window=401, stride=160, filters_per_block=None,
                   items_per_block=None, segment=None):
    filters, windows = _filter_tensors(x, center_freqs, bandwidths, pool_widths, window)
    return pool_fft(x, filters, windows, stride, filters_per_block, items_per_block, segment).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Triton: fused forward (kernels/gabor_pool.py); the backward recomputes tiles with pool_tiles. After
# the cuFFT route in the automatic order on GPUs (GABOR_POOL.prefer below says why).

def _register_triton(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(x, re, im, windows, stride, floor):
        return x.new_empty((x.shape[0], re.shape[1], n_frames(x.shape[1], stride)))

    def setup_context(ctx, inputs, output):
        x, re, im, windows, stride, _ = inputs
        ctx.save_for_backward(x, re, im, windows)
        ctx.stride = stride

    @first_order("gabor_pool")
    def backward(ctx, grad):
        leaves = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]
        x, re, im, windows = leaves
        with torch.enable_grad():
            filters = torch.stack([re.T, im.T], dim=1).reshape(-1, 1, re.shape[0])
            y = pool_tiles(x, filters, windows.T[:, None], ctx.stride)
            grads = torch.autograd.grad(y, leaves, grad.to(y.dtype), allow_unused=True)
        return (grads[0].to(x.dtype), *grads[1:], None, None)

    register_autograd(qualname, backward, setup_context=setup_context)


def _triton_forward():
    return triton_op("gabor_pool_forward_triton", "gabor_pool", "gabor_pool_forward", _register_triton)


def _gabor_pool_triton(x, center_freqs, bandwidths, pool_widths, window=401, stride=160):
    filters = gabor_filters(center_freqs.float(), bandwidths.float(), window).to(x.device)
    windows = gaussian_windows(pool_widths.float(), window).to(x.device)
    re, im = filters[0::2, 0].T.contiguous(), filters[1::2, 0].T.contiguous()
    return _triton_forward()(x.contiguous(), re, im, windows[:, 0].T.contiguous(), stride, FLOOR)


FFT_MIN_WINDOW = 129  # below, the tiled convolution is faster forward and as fast forward+backward


def gabor_pool_cpu(x, center_freqs, bandwidths, pool_widths, window=401, stride=160):
    """The FFT route for long windows, but for items with a NaN or inf sample: a transform spreads it
    over its whole segment, where the reference makes NaN only the frames that see it, so those
    items take the tiled route (asking which they are is a cheap host read on the CPU; a traced
    graph cannot branch on it and keeps the FFT route)."""
    args = (center_freqs, bandwidths, pool_widths, window, stride)
    if window < FFT_MIN_WINDOW:
        return gabor_pool_tiled(x, *args)
    finite = torch.isfinite(x).all(-1)
    if torch.compiler.is_compiling() or bool(finite.all()):
        return gabor_pool_fft(x, *args)
    return _by_item_route(x, finite, args)


def _by_item_route(x, finite, args):
    """Items with non-finite samples by the tiled route, the others by the FFT route, in x's order."""
    bad, good = (~finite).nonzero()[:, 0], finite.nonzero()[:, 0]
    parts = [gabor_pool_tiled(x[bad], *args)] + ([gabor_pool_fft(x[good], *args)] if good.numel() else [])
    return torch.cat(parts)[torch.cat([bad, good]).argsort()]


GABOR_POOL = dispatch.op("gabor_pool")
GABOR_POOL.register("reference", gabor_pool_reference, devices=("cpu", "cuda"), dtypes=dispatch.FLOAT_DTYPES)
# The FFT and tiled routes run on torch's FFTs and convolutions, so they need no extension: "cpu" is
# the automatic choice on the CPU (cache-sized blocks), "cuda" on GPUs (the FFT route in GPU-sized
# blocks: cuFFT and cuBLAS, every window length).
GABOR_POOL.register("cpu", gabor_pool_cpu, devices=("cpu",), dtypes=dispatch.FLOAT_DTYPES)
GABOR_POOL.register("cuda", gabor_pool_fft, devices=("cuda",), dtypes=dispatch.FLOAT_DTYPES)
GABOR_POOL.register("triton", _gabor_pool_triton, devices=("cuda", "cpu"), dtypes=GPU_DTYPES,
                    availability=backends.triton_reason)
# CUDA tensors: the cuFFT route first. The fused Triton kernel is a direct convolution whose fp32
# tl.dot ("ieee", for the fp32 tolerance) runs on CUDA cores, each frame recomputing the W modulus
# samples under its window (overlap W/stride = 2.5×): ≈ 2.8·10¹¹ FMAs at LEAF's sizes (B 32, T 64 000,
# F 40, W 401), 4× a direct convolution's; measured on an H200, its forward took 21 ms against 3.8 ms
# for the cuFFT route and 5.5 ms for the cuDNN reference (bench/results/2026-11-26_h200_*). A direct
# convolution costs 2·F·W multiply-adds per sample even on tensor cores; the FFT route's cost does not
# grow with the window.
GABOR_POOL.prefer("cuda", ("cuda", "triton", "reference"))


# ----------------------------------------------------------------------------------------------
# Public API.

def _check_positive(name: str, value: torch.Tensor) -> None:
    _checks.values_hold((value > 0) & torch.isfinite(value), f"{name} must be positive and finite",
                        lambda: f"values from {value.min().item():.4g} to {value.max().item():.4g}")


def gabor_pool(x: torch.Tensor, center_freqs: torch.Tensor, bandwidths: torch.Tensor, pool_widths: torch.Tensor,
               *, window: int = 401, stride: int = 160) -> torch.Tensor:
    """Gaussian-pooled squared modulus of a complex Gabor filterbank: x[B, T] -> [B, F, ⌈T/stride⌉].

    center_freqs (rad/sample), bandwidths (samples) and pool_widths (fraction of half the window)
    are [F]; gradients reach x and all three. Needs T >= window.
    """
    x = _checks.float_tensor("x", x, ndim=2, layout="[B, T]")
    # window 1 has no pooling width (h = 0: the Gaussian's (j − h)/(σ_p h) is 0/0)
    window = _checks.int_in_range("window", window, 3, 1 << 20)
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
    if F == 0:  # no filters: an empty result (convolutions and FFTs reject empty filter banks), zero gradients
        zero = (x.sum() + center_freqs.sum() + bandwidths.sum() + pool_widths.sum()) * 0
        return (x.new_zeros(x.shape[0], 0, n_frames(x.shape[1], stride)) + zero).to(x.dtype)
    return GABOR_POOL(x, center_freqs, bandwidths, pool_widths, window, stride, device=x.device, dtype=x.dtype)
