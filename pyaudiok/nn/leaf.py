"""LEAF, the learnable audio frontend (DESIGN §4): Gabor filterbank → squared modulus → Gaussian
low-pass pooling (one fused op, `pyaudiok.ops.gabor_pool`) → sPCEN (`pyaudiok.ops.pcen`).

The parameters live in three modules that also work alone (`GaborFilterbank` gives the stride-1
squared modulus, `GaussianLowpass` pools it, `SPCEN` compresses); `Leaf` holds one of each and runs
the fused path. Each module clips its parameters to the DESIGN's ranges in the forward.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as Fn

from ..ops import _checks
from ..ops.gabor_pool import FLOOR, _op_dtype, gabor_filters, gabor_pool, gaussian_windows
from ..ops.pcen import pcen
from .mel import MelOptionNames, check_mel_options, mel_filterbank as general_mel_filterbank

__all__ = ["GaborFilterbank", "GaussianLowpass", "SPCEN", "Leaf", "mel_filterbank", "mel_gabor_init"]

_FWHM = math.sqrt(2 * math.log(2))
_LEAF_MEL_NAMES = MelOptionNames(n_mels="n_filters", f_min="min_freq", f_max="max_freq")


def mel_filterbank(n_filters: int, n_fft: int, sample_rate: int, min_freq: float, max_freq: float) -> torch.Tensor:
    """LEAF's convention, in LEAF's argument order: triangular HTK-mel filters [n_filters, n_fft // 2 + 1]
    (float64, linear in mel between their edges, DC bin zero), the matrix the official LEAF initialisation
    reads its centres and widths from (and the fixed log-mel frontend applies). A fresh tensor, free to
    modify; `pyaudiok.nn.mel.mel_filterbank` is the general (cached) form."""
    check_mel_options(n_fft, n_filters, sample_rate, min_freq, max_freq, names=_LEAF_MEL_NAMES)
    return general_mel_filterbank(n_fft, n_filters, sample_rate, min_freq, max_freq, dtype=torch.float64,
                                  triangles="mel").clone()


def mel_gabor_init(n_filters: int = 40, sample_rate: int = 16_000, min_freq: float = 60.0,
                   max_freq: float = 7800.0, n_fft: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(η, σ) of Gabor filters matching a mel filterbank: η at each band's peak bin · 2π/n_fft and
    σ = √(2 ln 2) · n_fft / (π · FWHM in bins) of the square-rooted band."""
    bank = mel_filterbank(n_filters, n_fft, sample_rate, min_freq, max_freq).sqrt()
    peaks, peak_bins = bank.max(dim=1)
    fwhm = (bank >= peaks[:, None] / 2).sum(dim=1).to(torch.float64)
    return peak_bins.to(torch.float64) * 2 * math.pi / n_fft, _FWHM * n_fft / (math.pi * fwhm)


class GaborFilterbank(nn.Module):
    """Complex Gabor filters (learnable centre frequencies, rad/sample, and bandwidths, samples),
    mel-initialised. Alone: x[B, T] → squared modulus [B, F, T] (stride 1, unfused)."""

    def __init__(self, n_filters: int = 40, window: int = 401, sample_rate: int = 16_000, min_freq: float = 60.0,
                 max_freq: float = 7800.0, n_fft: int = 512):
        super().__init__()
        if window % 2 == 0 or window < 3:
            raise ValueError(f"window must be an odd number of taps >= 3; got {window}")
        self.window = window
        eta, sigma = mel_gabor_init(n_filters, sample_rate, min_freq, max_freq, n_fft)
        self.center_freqs = nn.Parameter(eta.float())
        self.bandwidths = nn.Parameter(sigma.float())

    def clipped(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(η ∈ [0, π], σ ∈ [4√(2ln2)/π, W√(2ln2)/π])."""
        eta = self.center_freqs.clamp(0.0, math.pi)
        sigma = self.bandwidths.clamp(4 * _FWHM / math.pi, self.window * _FWHM / math.pi)
        return eta, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.float_tensor("x", x, ndim=2, layout="[B, T]")
        # float64 if x or the parameters are, else float32, as gabor_pool computes
        dtype = _op_dtype(x, self.center_freqs, self.bandwidths)
        filters = gabor_filters(*(p.to(dtype) for p in self.clipped()), self.window)
        u = Fn.conv1d(x[:, None].to(dtype), filters, padding=self.window // 2)
        return u[:, 0::2] ** 2 + u[:, 1::2] ** 2


class GaussianLowpass(nn.Module):
    """Per-channel Gaussian pooling windows (learnable width σ_p, init 0.4, clipped to [2/W, 0.5]).
    Alone: energies [B, F, T] → [B, F, ⌈T/stride⌉] (floored at 1e-5)."""

    def __init__(self, n_channels: int = 40, window: int = 401, stride: int = 160, init: float = 0.4):
        super().__init__()
        _checks.int_in_range("n_channels", n_channels, 1, 1 << 20)
        _checks.int_in_range("window", window, 1, 1 << 30)
        _checks.int_in_range("stride", stride, 1, 1 << 30)
        self.window, self.stride = window, stride
        self.pool_widths = nn.Parameter(torch.full((n_channels,), float(init)))

    def clipped(self) -> torch.Tensor:
        return self.pool_widths.clamp(2.0 / self.window, 0.5)

    def forward(self, energy: torch.Tensor) -> torch.Tensor:
        # Float only: integer energies would round the window to its centre tap (plain subsampling).
        layout = f"[B, F, T] with F = n_channels = {self.pool_widths.shape[0]}"
        _checks.float_tensor("energy", energy, ndim=3, layout=layout)
        if energy.shape[1] != self.pool_widths.shape[0]:
            raise ValueError(f"energy must have shape {layout}; got {_checks.shape_str(energy.shape)}")
        w = gaussian_windows(self.clipped(), self.window).to(energy.dtype)
        pooled = Fn.conv1d(energy, w, stride=self.stride, padding=self.window // 2, groups=energy.shape[1])
        return pooled.clamp_min(FLOOR)


class SPCEN(nn.Module):
    """sPCEN with learnable per-channel α (≤ 1), δ, r (≥ 1) and smoothing s (∈ [0, 1])."""

    def __init__(self, n_channels: int = 40, alpha: float = 0.96, delta: float = 2.0, root: float = 2.0,
                 smooth: float = 0.04, eps: float = 1e-12):
        super().__init__()
        _checks.int_in_range("n_channels", n_channels, 1, 1 << 20)
        self.eps = eps
        full = lambda v: nn.Parameter(torch.full((n_channels,), float(v)))  # noqa: E731
        self.alpha, self.delta, self.root, self.smooth = full(alpha), full(delta), full(root), full(smooth)

    def forward(self, energy: torch.Tensor) -> torch.Tensor:
        return pcen(energy, self.alpha.clamp(max=1.0), self.delta, self.root.clamp(min=1.0),
                    self.smooth.clamp(0.0, 1.0), eps=self.eps)


class Leaf(nn.Module):
    """Waveforms [B, T] (or [B, 1, T]) → features [B, n_filters, ⌈T/hop⌉]: a drop-in replacement for a
    log-mel frontend. 280 parameters at the defaults (40 filters × (η, σ, σ_p, α, δ, r, s))."""

    def __init__(self, n_filters: int = 40, sample_rate: int = 16_000, window_ms: float = 25.0,
                 hop_ms: float = 10.0, min_freq: float = 60.0, max_freq: float = 7800.0, n_fft: int = 512,
                 compression: bool = True):
        super().__init__()
        _checks.positive_float("sample_rate", sample_rate)
        _checks.positive_float("window_ms", window_ms)
        _checks.positive_float("hop_ms", hop_ms)
        window = int(sample_rate * window_ms / 1000) // 2 * 2 + 1  # 25 ms at 16 kHz: 401 taps
        self.stride = max(1, int(round(sample_rate * hop_ms / 1000)))
        self.window = window
        self.filterbank = GaborFilterbank(n_filters, window, sample_rate, min_freq, max_freq, n_fft)
        self.pooling = GaussianLowpass(n_filters, window, self.stride)
        self.compression = SPCEN(n_filters) if compression else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[1] == 1:
            x = x[:, 0]
        eta, sigma = self.filterbank.clipped()
        energy = gabor_pool(x, eta, sigma, self.pooling.clipped(), window=self.window, stride=self.stride)
        return energy if self.compression is None else self.compression(energy)
