"""The causal SEANet encoder and decoder of SoundStream (DESIGN.md §2).

Encoder  wav[B, 1, T] -> z[B, dim, T // hop]   (hop = prod(strides); 320 -> 75 Hz at 24 kHz)
    CausalConv(1 -> C, k7)
    per stride s (channels c = C, 2C, 4C, 8C):
        3 × ResidualUnit(c, dilation 1, 3, 9)
        CausalConv(c -> 2c, k = 2s, stride s)
    ELU -> CausalConv(16C -> dim, k3)                       [-> FiLM(condition)]

Decoder  z[B, dim, F] -> wav[B, 1, F · hop]   (the mirror image)
    [FiLM(condition) ->] CausalConv(dim -> 16C, k7)
    per stride s, in reverse order (c = 16C, 8C, 4C, 2C):
        CausalConvTranspose(c -> c/2, k = 2s, stride s)
        3 × ResidualUnit(c/2, dilation 1, 3, 9)
    ELU -> CausalConv(C -> 1, k7)                           (linear output: no tanh)

Choices, documented here once:
- Residual unit: ``y = x + ELU(Conv_k1(ELU(Conv_k7,dilation d(x))))`` — ELU *after* each conv
  (conv k7 → ELU → conv k1 → ELU, plus skip), as DESIGN.md §2 specifies for SoundStream, rather
  than the pre-activation (ELU before each conv) of later SEANet/EnCodec code. Between blocks the skip path is
  linear, so an ELU precedes the last conv of each network to give its input a nonlinearity.
- No normalisation layers and zero (not reflect) padding: both are needed for causal streaming.
- No output activation: a tanh would bound the waveform but squash loud transients; the
  reconstruction losses keep the output in range.
- Initialisation (the papers' code uses PyTorch's default): every conv weight ~ N(0, 1/fan_in)
  with fan_in = in_channels · kernel / stride for the transposed convs (the inputs one output
  sample sees), biases 0, and the last conv of every residual branch 0, so each residual unit
  starts as the identity. The network then starts as a variance-preserving chain of convs that
  passes the waveform's detail through. PyTorch's default (weights ~1/√3 of that scale, biases of
  the same size as the signal) starts bias-dominated, the output barely depends on the input,
  and training on the synthetic data stalled at a constant-spectrum output for hundreds of steps.
- FiLM (optional, e.g. denoising on/off) sits at the bottleneck: on the encoder's output and on
  the decoder's input, with per-channel γ, β from a learned embedding of an integer condition.

Both networks stream through `streaming.py`: ``with encoder.stream(): encoder(chunk)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyaudiok.ops import _checks

from .streaming import CausalConv1d, CausalConvTranspose1d, StreamingModule

__all__ = ["ResidualUnit", "FiLM", "SEANetEncoder", "SEANetDecoder"]


class ResidualUnit(nn.Module):
    """``x + ELU(Conv_k1(ELU(Conv_k(x, dilation))))``; length-preserving and causal."""

    def __init__(self, channels: int, dilation: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.dilated = CausalConv1d(channels, channels, kernel_size, dilation=dilation)
        self.pointwise = CausalConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.elu(self.pointwise(F.elu(self.dilated(x))))


class FiLM(nn.Module):
    """Feature-wise affine modulation ``(1 + γ_c) · x + β_c`` with (γ, β) = Linear(Embedding(cond)).

    `condition`: int or LongTensor[B] in [0, num_conditions); None means condition 0 (e.g.
    "denoising off"). Pointwise in time, so it needs no streaming state.
    """

    def __init__(self, channels: int, num_conditions: int = 2, embedding_dim: int = 16) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_conditions, embedding_dim)
        self.to_scale_shift = nn.Linear(embedding_dim, 2 * channels)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | int | None = None) -> torch.Tensor:
        if condition is None:
            condition = 0
        if isinstance(condition, bool) or not isinstance(condition, (int, torch.Tensor)) or (
                isinstance(condition, torch.Tensor) and (condition.is_floating_point() or condition.is_complex()
                                                         or condition.dtype == torch.bool or condition.dim() > 1
                                                         or condition.numel() not in (1, x.shape[0]))):
            got = (f"{condition.dtype} {list(condition.shape)}" if isinstance(condition, torch.Tensor)
                   else repr(condition))
            raise ValueError(f"condition must be an int or an integer tensor [B] = [{x.shape[0]}]; got {got}")
        condition = torch.as_tensor(condition, device=x.device, dtype=torch.long).reshape(-1).expand(x.shape[0])
        if not torch.compiler.is_compiling() and condition.device.type == "cpu":  # free to check on the host
            _checks.ints_within(condition, 0, self.embedding.num_embeddings - 1,
                                f"condition must lie in [0, num_conditions) = [0, {self.embedding.num_embeddings})")
        gamma, beta = self.to_scale_shift(self.embedding(condition)).to(x.dtype).chunk(2, dim=-1)
        return (1 + gamma[..., None]) * x + beta[..., None]


def _residual_units(channels: int, dilations: Sequence[int]) -> list[nn.Module]:
    return [ResidualUnit(channels, d) for d in dilations]


class _SEANet(StreamingModule):
    """What encoder and decoder share: a causal layer stack and an optional bottleneck FiLM."""

    def __init__(self, channels: int, dim: int, strides: Sequence[int], film_conditioning: bool,
                 num_conditions: int) -> None:
        super().__init__()
        if not strides or any(s < 1 for s in strides):
            raise ValueError(f"strides must be a non-empty sequence of positive ints; got {strides}")
        self.channels, self.dim, self.strides = channels, dim, tuple(strides)
        self.hop_length = math.prod(self.strides)
        self.film = FiLM(dim, num_conditions) if film_conditioning else None

    def _reset_parameters(self) -> None:
        """The initialisation described in the module docstring."""
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose1d):
                fan_in = module.in_channels * module.kernel_size[0] / module.stride[0]
            elif isinstance(module, nn.Conv1d):
                fan_in = module.in_channels * module.kernel_size[0] / module.groups
            else:
                continue
            nn.init.normal_(module.weight, std=fan_in ** -0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, ResidualUnit):
                nn.init.zeros_(module.pointwise.conv.weight)

    def _film(self, x: torch.Tensor, condition: torch.Tensor | int | None) -> torch.Tensor:
        if self.film is None:
            if condition is not None:  # silently ignoring it would hide a model built without FiLM
                raise ValueError("condition needs a model built with film_conditioning=True")
            return x
        return self.film(x, condition)


class SEANetEncoder(_SEANet):
    """wav[B, 1, T] -> z[B, dim, T // hop]: T // hop frames for any T (a trailing partial hop
    yields no frame; `SoundStream.encode` zero-pads it to a full one). Frame j depends only on
    samples < (j + 1)·hop. See the module docstring for the layer stack and choices."""

    def __init__(self, channels: int = 32, dim: int = 128, strides: Sequence[int] = (2, 4, 5, 8),
                 dilations: Sequence[int] = (1, 3, 9), film_conditioning: bool = False,
                 num_conditions: int = 2) -> None:
        super().__init__(channels, dim, strides, film_conditioning, num_conditions)
        layers: list[nn.Module] = [CausalConv1d(1, channels, 7)]
        c = channels
        for s in self.strides:
            layers += _residual_units(c, dilations)
            layers.append(CausalConv1d(c, 2 * c, 2 * s, stride=s))
            c *= 2
        layers += [nn.ELU(), CausalConv1d(c, dim, 3)]
        self.layers = nn.Sequential(*layers)
        self._reset_parameters()

    def forward(self, wav: torch.Tensor, condition: torch.Tensor | int | None = None) -> torch.Tensor:
        return self._film(self.layers(wav), condition)


class SEANetDecoder(_SEANet):
    """z[B, dim, F] -> wav[B, 1, F · hop]; output block j depends only on frames ≤ j.
    Mirror of `SEANetEncoder`; see the module docstring."""

    def __init__(self, channels: int = 32, dim: int = 128, strides: Sequence[int] = (2, 4, 5, 8),
                 dilations: Sequence[int] = (1, 3, 9), film_conditioning: bool = False,
                 num_conditions: int = 2) -> None:
        super().__init__(channels, dim, strides, film_conditioning, num_conditions)
        c = channels * 2 ** len(self.strides)
        layers: list[nn.Module] = [CausalConv1d(dim, c, 7)]
        for s in reversed(self.strides):
            layers.append(CausalConvTranspose1d(c, c // 2, 2 * s, stride=s))
            c //= 2
            layers += _residual_units(c, dilations)
        layers += [nn.ELU(), CausalConv1d(c, 1, 7)]
        self.layers = nn.Sequential(*layers)
        self._reset_parameters()

    def forward(self, z: torch.Tensor, condition: torch.Tensor | int | None = None) -> torch.Tensor:
        return self.layers(self._film(z, condition))
