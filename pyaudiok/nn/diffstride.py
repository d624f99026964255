"""DiffStride layers (DESIGN §3): Fourier-domain cropping with learnable strides, spectral pooling
with fixed ones, and the complexity regulariser.

    layer = DiffStride2d(stride=2.0)                      # one shared stride, learnable
    ...
    loss = task_loss + lam * diffstride_penalty(model)
    loss.backward(); optimizer.step(); clamp_strides_(model)   # keep every stride >= 1
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from pyaudiok.ops import _checks

from pyaudiok.ops.fourier_crop import fourier_crop, fourier_crop_output_size

__all__ = ["DiffStride1d", "DiffStride2d", "SpectralPool1d", "SpectralPool2d", "diffstride_penalty",
           "clamp_strides_", "learned_strides"]


class _FourierCrop(nn.Module):
    dims = 0

    def __init__(self, stride: float | Sequence[float] | torch.Tensor = 2.0, *, per_axis: bool = False,
                 smoothness: float = 4.0, learnable: bool = True, lower_bound: float = 1.0):
        super().__init__()
        if isinstance(stride, torch.Tensor):  # a tensor of one stride, or of one per axis
            stride = stride.detach().flatten().tolist()
        values = [float(s) for s in (stride if isinstance(stride, (list, tuple)) else [stride])]
        if len(values) == 1 and per_axis:
            values = values * self.dims
        if len(values) not in {1, self.dims} or (self.dims == 1 and len(values) != 1):
            raise ValueError(f"stride: expected 1 value{' or 2' if self.dims == 2 else ''}; got {values}")
        # The op takes strides >= 1 only: a lower bound below 1 would let clamp_ keep invalid ones.
        if not (math.isfinite(lower_bound) and lower_bound >= 1):
            raise ValueError(f"lower_bound must be a finite number >= 1; got {lower_bound}")
        if not all(math.isfinite(v) and v >= lower_bound for v in values):
            raise ValueError(f"stride must be finite and >= {lower_bound}; got {values}")
        _checks.positive_float("smoothness", smoothness)
        strides = torch.tensor(values, dtype=torch.float32)
        if learnable:
            self.strides = nn.Parameter(strides)
        else:
            self.register_buffer("strides", strides)
        self.smoothness, self.lower_bound = float(smoothness), float(lower_bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2:
            raise ValueError(f"{type(self).__name__} expects {self.dims + 2}-D input; got shape {tuple(x.shape)}")
        # float64 strides for float64 maps; never rounded to half precision (the op computes in fp32 there).
        strides = self.strides.to(torch.promote_types(self.strides.dtype, x.dtype))
        return fourier_crop(x, strides, smoothness=self.smoothness)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.strides.clamp_(min=self.lower_bound)

    def area_ratio(self) -> torch.Tensor:
        """Output area over input area as the continuous 1/Π S (differentiable in the strides)."""
        per_axis = self.strides.expand(self.dims) if self.strides.numel() == 1 else self.strides
        return 1.0 / per_axis.prod()

    def output_size(self, *sizes: int) -> tuple[int, ...]:
        if len(sizes) != self.dims:
            raise ValueError(f"{type(self).__name__}.output_size takes {self.dims} input size(s); got {len(sizes)}")
        values = self.strides.detach().double().cpu().tolist()
        values = values * self.dims if len(values) == 1 else values
        rfft = (True,) if self.dims == 1 else (False, True)
        return tuple(fourier_crop_output_size(n, s, self.smoothness, r) for n, s, r in zip(sizes, values, rfft))

    def extra_repr(self) -> str:
        values = ", ".join(f"{s:.3f}" for s in self.strides.detach().cpu().tolist())
        kind = "learnable" if isinstance(self.strides, nn.Parameter) else "fixed"
        return f"strides=({values}), {kind}, smoothness={self.smoothness}"


class DiffStride1d(_FourierCrop):
    """Learnable-stride Fourier cropping of x[B, C, T]."""
    dims = 1


class DiffStride2d(_FourierCrop):
    """Learnable-stride Fourier cropping of x[B, C, H, W]; one shared stride or (per_axis) two."""
    dims = 2


class SpectralPool1d(DiffStride1d):
    """Spectral pooling with a fixed stride (the same cropping, no gradient to the stride)."""

    def __init__(self, stride: float = 2.0, *, smoothness: float = 4.0):
        super().__init__(stride, smoothness=smoothness, learnable=False)


class SpectralPool2d(DiffStride2d):
    def __init__(self, stride: float | Sequence[float] = 2.0, *, smoothness: float = 4.0):
        super().__init__(stride, smoothness=smoothness, learnable=False)


def _layers(model: nn.Module) -> list[_FourierCrop]:
    return [m for m in model.modules() if isinstance(m, _FourierCrop)]


def diffstride_penalty(model: nn.Module, *, learnable_only: bool = True) -> torch.Tensor:
    """Σ over the DiffStride layers (in module order = forward order) of the area of the feature
    map after the layer relative to the network's input, Π_{k <= l} 1/(S_h S_w)_k: a differentiable
    proxy of the FLOPs that follow. Fixed SpectralPool layers shrink the maps too, so they enter the
    products, but only learnable layers' terms are summed when learnable_only."""
    total, running = None, None
    for layer in _layers(model):
        ratio = layer.area_ratio()
        running = ratio if running is None else running * ratio
        if learnable_only and not isinstance(layer.strides, nn.Parameter):
            continue
        total = running if total is None else total + running
    if total is None:
        return torch.zeros(())
    return total


@torch.no_grad()
def clamp_strides_(model: nn.Module) -> None:
    """Clamp every DiffStride stride to its lower bound (>= 1): call after each optimiser step."""
    for layer in _layers(model):
        layer.clamp_()


def learned_strides(model: nn.Module) -> list[list[float]]:
    """The current strides of every DiffStride/SpectralPool layer, in module order."""
    return [[round(v, 4) for v in layer.strides.detach().cpu().tolist()] for layer in _layers(model)]
