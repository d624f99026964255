"""LeafClassifier (DESIGN §4): a learnable LEAF frontend (or a fixed log-mel baseline with the same
frame layout) → a 2-D conv classifier over [F, frames]. The default head is the official example's
6-layer ConvNet (64-128-256-256-512-512, 3×3 conv + batch norm + ReLU, 2×2 max pooling after the
first four) + global max pool + linear."""
from __future__ import annotations

import torch
from torch import nn

from pyaudiok.nn._spectral import on_fft_friendly_input
from pyaudiok.nn.leaf import Leaf, mel_filterbank
from pyaudiok.ops import _checks

__all__ = ["LeafClassifier", "LogMel", "ConvNet"]


class LogMel(nn.Module):
    """Fixed log-mel frontend with LEAF's framing (25 ms Hann window, 10 ms hop, 40 bands 60–7800 Hz):
    the baseline LEAF replaces. [B, T] → [B, F, ⌈T/hop⌉ + 1]."""

    def __init__(self, n_filters: int = 40, sample_rate: int = 16_000, window_ms: float = 25.0, hop_ms: float = 10.0,
                 min_freq: float = 60.0, max_freq: float = 7800.0, n_fft: int = 512):
        super().__init__()
        self.n_fft, self.hop = n_fft, int(round(sample_rate * hop_ms / 1000))
        self.win = int(sample_rate * window_ms / 1000)
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)
        self.register_buffer("bank", mel_filterbank(n_filters, n_fft, sample_rate, min_freq, max_freq).float(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[1] == 1:  # [B, 1, T], as Leaf takes
            x = x[:, 0]
        x = _checks.float_tensor("x", x, ndim=2, layout="[B, T] or [B, 1, T]")
        if x.shape[1] <= self.n_fft // 2:  # the centred STFT reflects n_fft/2 samples at each end
            raise ValueError(f"x must have T > n_fft / 2 = {self.n_fft // 2} samples; got {_checks.shape_str(x.shape)}")
        return on_fft_friendly_input(self._log_mel, x)

    def _log_mel(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x, self.n_fft, self.hop, self.win, self.window.to(x.dtype), return_complex=True).abs() ** 2
        return torch.log(self.bank.to(x.dtype) @ spec + 1e-6)


class ConvNet(nn.Module):
    """[B, F, frames] → logits: conv blocks over the (F, frames) plane, global max pool, linear."""

    def __init__(self, n_classes: int, channels=(64, 128, 256, 256, 512, 512), pooled_layers: int = 4):
        super().__init__()
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < pooled_layers:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h = self.features(feats[:, None])
        return self.head(h.amax(dim=(2, 3)))


class LeafClassifier(nn.Module):
    """Waveforms [B, T] → class logits; `frontend` is "leaf" (learnable) or "mel" (fixed baseline).
    Features are normalised per channel over time (instance norm) before the classifier."""

    def __init__(self, n_classes: int, frontend: str = "leaf", n_filters: int = 40, sample_rate: int = 16_000,
                 channels=(64, 128, 256, 256, 512, 512), **frontend_options):
        super().__init__()
        _checks.int_in_range("n_classes", n_classes, 1, 1 << 31)
        if not channels:
            raise ValueError("channels must hold at least one conv width")
        if frontend == "leaf":
            self.frontend = Leaf(n_filters, sample_rate, **frontend_options)
        elif frontend == "mel":
            self.frontend = LogMel(n_filters, sample_rate, **frontend_options)
        else:
            raise ValueError(f"frontend must be 'leaf' or 'mel'; got {frontend!r}")
        self.norm = nn.InstanceNorm1d(n_filters)
        self.classifier = ConvNet(n_classes, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(self.frontend(x)))
