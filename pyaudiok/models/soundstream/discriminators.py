"""SoundStream's discriminators (DESIGN.md §2): three multi-scale waveform discriminators and one
STFT discriminator.

Every discriminator returns a `DiscriminatorOutput(logits, features)` holding one entry per
sub-discriminator: `logits[k]` the per-position logits (any shape, averaged by the losses) and
`features[k]` the list of intermediate feature maps used for feature matching. The bundle
`SoundStreamDiscriminators` concatenates the lists, so losses treat all K = 4 alike.

Choices: LeakyReLU(0.2) throughout and weight normalisation on every conv (MelGAN's recipe for
stable hinge training; the SoundStream paper names neither, so `weight_norm=False` turns it off).
Audio shorter than a discriminator's `min_length` (computed from its configuration) is refused with
a ValueError rather than padded: neither DESIGN §2 nor the paper pads, and padding would feed the
discriminators silence that is neither real nor generated audio. Training crops are far longer (the
default minimum is 1792 samples, 75 ms at 24 kHz).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from ...ops import _checks

__all__ = ["DiscriminatorOutput", "WaveformDiscriminator", "STFTDiscriminator", "SoundStreamDiscriminators"]

_SLOPE = 0.2


class DiscriminatorOutput(NamedTuple):
    logits: list[torch.Tensor]          # one tensor per sub-discriminator
    features: list[list[torch.Tensor]]  # per sub-discriminator: its intermediate feature maps


def _check_length(wav: torch.Tensor, min_length: int) -> None:
    if wav.shape[-1] < min_length:
        raise ValueError(f"wav must hold at least {min_length} samples (the minimum for this discriminator "
                         f"configuration); got shape {_checks.shape_str(wav.shape)}")


def _normed(conv: nn.Module, weight_norm: bool) -> nn.Module:
    return _weight_norm(conv) if weight_norm else conv


def _run_stack(layers: nn.ModuleList, head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """LeakyReLU after every layer of `layers` (each output kept as a feature), then the head."""
    features = []
    for layer in layers:
        x = F.leaky_relu(layer(x), _SLOPE)
        features.append(x)
    return head(x), features


class _ScaleDiscriminator(nn.Module):
    """MelGAN's waveform discriminator: a wide conv, grouped strided convs (groups = in/4, so the
    parameter count stays moderate as channels grow), a conv k5, and a k3 conv to one logit."""

    def __init__(self, channels: int, max_channels: int, downsample: Sequence[int], weight_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(1, channels, 15, padding=7)]
        c = channels
        for factor in downsample:
            out = min(c * factor, max_channels)
            layers.append(nn.Conv1d(c, out, 10 * factor + 1, stride=factor, padding=5 * factor,
                                    groups=max(1, c // 4)))
            c = out
        layers.append(nn.Conv1d(c, c, 5, padding=2))
        self.layers = nn.ModuleList(_normed(layer, weight_norm) for layer in layers)
        self.head = _normed(nn.Conv1d(c, 1, 3, padding=1), weight_norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _run_stack(self.layers, self.head, x)


class WaveformDiscriminator(nn.Module):
    """Multi-scale waveform discriminator: `num_scales` MelGAN discriminators on the waveform at
    scales 1, 1/2, 1/4, … (each scale average-pooled by 2 from the previous one).

    Defaults are MelGAN's (16 → 1024 channels, four ×4 downsamplings with k41 grouped convs).
    Input wav[B, 1, T], T >= `min_length` = 2^(num_scales − 1); logits[k]: [B, 1, ≈T / (2^k · 256)].
    """

    def __init__(self, num_scales: int = 3, channels: int = 16, max_channels: int = 1024,
                 downsample: Sequence[int] = (4, 4, 4, 4), weight_norm: bool = True) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            _ScaleDiscriminator(channels, max_channels, downsample, weight_norm) for _ in range(num_scales))
        # count_include_pad=False: the zero padding must not darken the edges of the coarser scales.
        self.pool = nn.AvgPool1d(4, stride=2, padding=1, count_include_pad=False)
        # Each pooling maps T -> floor(T / 2) and needs T >= 2; the convs take any T >= 1.
        self.min_length = 1 << max(0, num_scales - 1)

    def forward(self, wav: torch.Tensor) -> DiscriminatorOutput:
        _check_length(wav, self.min_length)
        logits, features = [], []
        x = wav
        for k, discriminator in enumerate(self.discriminators):
            if k > 0:
                x = self.pool(x)
            out, feats = discriminator(x)
            logits.append(out)
            features.append(feats)
        return DiscriminatorOutput(logits, features)


class _STFTResidualBlock(nn.Module):
    """ResNet block: ``shortcut(x) + conv_(s_t+2)×(s_f+2),stride(s_t,s_f)(LReLU(conv_3×3(x)))``;
    (3×4 for stride (1, 2), 4×4 for (2, 2), as in the paper); the shortcut is a conv with
    kernel = stride."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int], weight_norm: bool) -> None:
        super().__init__()
        kernel = (stride[0] + 2, stride[1] + 2)
        self.conv = _normed(nn.Conv2d(in_channels, in_channels, 3, padding=1), weight_norm)
        self.down = _normed(nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=1), weight_norm)
        # Kernel = stride: the same output size as `down` for odd sizes too.
        self.shortcut = _normed(nn.Conv2d(in_channels, out_channels, stride, stride=stride), weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.down(F.leaky_relu(self.conv(x), _SLOPE))


class STFTDiscriminator(nn.Module):
    """The paper's STFT discriminator: complex STFT (window `n_fft` = 1024, hop 256, Hann) with real
    and imaginary parts as 2 channels of a [B, 2, frames, n_fft/2] image (the Nyquist bin dropped so
    the frequency axis halves evenly), a 7×7 conv to `channels`, residual blocks alternating strides
    (time, freq) = (1, 2) and (2, 2) with channels × `channel_mults`, and a final
    1 × (n_fft/2 / 2^6) conv that sums over the remaining frequency bins into a 1-D logit signal.
    Input wav[B, 1, T], T >= `min_length` = (2^3 − 1) · hop by default; logits[0]: [B, 1, ≈T / (hop · 8), 1].
    """

    def __init__(self, n_fft: int = 1024, hop_length: int = 256, channels: int = 32,
                 channel_mults: Sequence[int] = (2, 2, 4, 4, 8, 8), weight_norm: bool = True) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        strides = [(1, 2) if i % 2 == 0 else (2, 2) for i in range(len(channel_mults))]
        freq = n_fft // 2
        if freq % 2 ** len(strides):
            raise ValueError(f"n_fft / 2 = {freq} must be divisible by 2^{len(strides)} (one halving per block)")
        layers: list[nn.Module] = [_normed(nn.Conv2d(2, channels, 7, padding=3), weight_norm)]
        c = channels
        for mult, stride in zip(channel_mults, strides):
            layers.append(_STFTResidualBlock(c, channels * mult, stride, weight_norm))
            c = channels * mult
        self.layers = nn.ModuleList(layers)
        self.head = _normed(nn.Conv2d(c, 1, (1, freq // 2 ** len(strides))), weight_norm)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        # The centred STFT gives 1 + T // hop frames; each (2, 2) block maps frames -> floor(frames / 2)
        # and needs frames >= 2, so h of them need 2^h frames.
        time_halvings = sum(stride[0] == 2 for stride in strides)
        self.min_length = max(1, ((1 << time_halvings) - 1) * hop_length)

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """wav[B, 1, T] -> [B, 2, frames, n_fft/2] (real, imaginary)."""
        spec = torch.stft(wav.reshape(-1, wav.shape[-1]), self.n_fft, self.hop_length,
                          window=self.window.to(wav.dtype), center=True, pad_mode="constant",
                          return_complex=True)
        return torch.view_as_real(spec[:, :-1]).permute(0, 3, 2, 1)

    def forward(self, wav: torch.Tensor) -> DiscriminatorOutput:
        _check_length(wav, self.min_length)
        logits, features = _run_stack(self.layers, self.head, self.spectrogram(wav))
        return DiscriminatorOutput([logits], [features])


class SoundStreamDiscriminators(nn.Module):
    """Both discriminators; their outputs concatenated (waveform scales first, then STFT)."""

    def __init__(self, waveform: WaveformDiscriminator | None = None, stft: STFTDiscriminator | None = None) -> None:
        super().__init__()
        self.waveform = waveform if waveform is not None else WaveformDiscriminator()
        self.stft = stft if stft is not None else STFTDiscriminator()

    @property
    def min_length(self) -> int:
        return max(self.waveform.min_length, self.stft.min_length)

    def forward(self, wav: torch.Tensor) -> DiscriminatorOutput:
        _check_length(wav, self.min_length)
        a, b = self.waveform(wav), self.stft(wav)
        return DiscriminatorOutput(a.logits + b.logits, a.features + b.features)
