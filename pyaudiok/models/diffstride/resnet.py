"""Pre-activation ResNet-18 with DiffStride downsampling (DESIGN §3), in 2-D (images) and 1-D
(audio features: log-mel frames [B, n_mels, T] or waveform [B, 1, T]).

Five downsampling places (the stem and the first block of each of the four stages) take the
strides `strides` (default 1, 1, 2, 2, 2); in 2-D each may also be a pair (height, width).
With pooling="diffstride" each is `conv3×3 (stride 1) → DiffStride` with a learnable stride
(per_axis=True, 2-D only: one per axis), and the block's shortcut goes through the same DiffStride
instance; "spectral" uses fixed-stride spectral pooling in the same places; "conv" is the usual
strided 3×3 convolution (and strided 1×1 shortcut), strides rounded to integers.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
from torch import nn

from pyaudiok.models._inputs import check_model_dtype
from pyaudiok.ops import _checks
from pyaudiok.nn.diffstride import DiffStride1d, DiffStride2d, SpectralPool1d, SpectralPool2d

__all__ = ["ResNet18DiffStride", "resnet18_diffstride", "POOLINGS"]

POOLINGS = ("diffstride", "spectral", "conv")
_LAYERS = {1: (nn.Conv1d, nn.BatchNorm1d, DiffStride1d, SpectralPool1d, nn.AdaptiveAvgPool1d),
           2: (nn.Conv2d, nn.BatchNorm2d, DiffStride2d, SpectralPool2d, nn.AdaptiveAvgPool2d)}


def _checked_strides(strides, dims: int) -> tuple:
    """Five strides, each a finite number >= 1 or (in 2-D) a pair of them, as floats or float pairs."""
    def valid(s) -> bool:
        return not isinstance(s, bool) and isinstance(s, numbers.Real) and math.isfinite(s) and s >= 1

    def one(s):
        if dims == 2 and isinstance(s, (tuple, list)) and len(s) == 2 and all(map(valid, s)):
            return tuple(float(v) for v in s)
        return float(s) if valid(s) else None

    values = tuple(map(one, strides)) if isinstance(strides, (tuple, list)) else ()
    if len(values) != 5 or None in values:
        pairs = " or (height, width) pairs of them" if dims == 2 else ""
        raise ValueError(f"strides must be 5 finite values >= 1{pairs} (stem and four stages); got {strides!r}")
    return values


class _Down(nn.Module):
    """conv3×3 then the downsampling of one place; `pool` (None for strided conv) is shared with
    the block's shortcut."""

    def __init__(self, dims, c_in, c_out, stride, pooling, per_axis):
        super().__init__()
        conv, _, diff, spectral, _ = _LAYERS[dims]
        if pooling == "conv":
            rounded = tuple(max(1, round(s)) for s in stride) if isinstance(stride, tuple) else max(1, round(stride))
            self.conv, self.pool = conv(c_in, c_out, 3, stride=rounded, padding=1, bias=False), None
        else:
            self.conv = conv(c_in, c_out, 3, padding=1, bias=False)
            kwargs = {"per_axis": per_axis} if pooling == "diffstride" and dims == 2 else {}
            self.pool = diff(stride, **kwargs) if pooling == "diffstride" else spectral(stride)

    def forward(self, x):
        x = self.conv(x)
        return x if self.pool is None else self.pool(x)


class _Block(nn.Module):
    """Pre-activation basic block; `down` replaces its first conv where the block downsamples."""

    def __init__(self, dims, c_in, c_out, down: _Down | None):
        super().__init__()
        conv, norm, *_ = _LAYERS[dims]
        self.norm1, self.norm2 = norm(c_in), norm(c_out)
        self.down = down
        self.conv1 = down if down is not None else conv(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=False)
        self.project = None
        strided = down is not None and down.pool is None and any(s != 1 for s in down.conv.stride)
        if c_in != c_out or strided:
            stride = down.conv.stride if strided else 1
            self.project = conv(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x):
        pre = torch.relu(self.norm1(x))
        shortcut = pre if self.down is not None else x
        if self.down is not None and self.down.pool is not None:
            shortcut = self.down.pool(shortcut)  # the same layer, the same learned stride
        if self.project is not None:
            shortcut = self.project(shortcut)
        out = self.conv2(torch.relu(self.norm2(self.conv1(pre))))
        return out + shortcut


class ResNet18DiffStride(nn.Module):
    def __init__(self, num_classes: int, strides: Sequence[float] = (1, 1, 2, 2, 2), *, in_channels: int = 3,
                 dims: int = 2, pooling: str = "diffstride", width: int = 64, per_axis: bool = False):
        super().__init__()
        if dims not in _LAYERS:
            raise ValueError(f"dims must be 1 or 2; got {dims}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            _checks.int_in_range(name, value, 1, 1 << 31)
        strides = _checked_strides(strides, dims)
        if per_axis and (dims != 2 or pooling != "diffstride"):
            raise ValueError(f"per_axis=True learns a stride per axis: it needs dims=2 and pooling='diffstride'; "
                             f"got dims={dims}, pooling={pooling!r}")
        _, norm, _, _, avgpool = _LAYERS[dims]
        self.dims, self.in_channels = dims, in_channels
        self.stem = _Down(dims, in_channels, width, strides[0], pooling, per_axis)
        channels = [width, width, 2 * width, 4 * width, 8 * width]
        blocks = []
        for stage in range(4):
            c_in, c_out = channels[stage], channels[stage + 1]
            down = _Down(dims, c_in, c_out, strides[stage + 1], pooling, per_axis)
            blocks += [_Block(dims, c_in, c_out, down), _Block(dims, c_out, c_out, None)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(norm(channels[-1]), nn.ReLU(), avgpool(1), nn.Flatten(),
                                  nn.Linear(channels[-1], num_classes))

    def forward(self, x):
        layout = "[B, C, T]" if self.dims == 1 else "[B, C, H, W]"
        _checks.float_tensor("x", x, ndim=self.dims + 2, layout=layout)
        _checks.dim_size("x", x, 1, self.in_channels, "in_channels")
        check_model_dtype("x", x, self.stem)
        return self.head(self.blocks(self.stem(x)))


def resnet18_diffstride(num_classes: int, strides: Sequence[float] = (1, 1, 2, 2, 2), **kwargs) -> ResNet18DiffStride:
    """Pre-activation ResNet-18 with DiffStride downsampling; kwargs: in_channels (3), dims (2; 1 for
    audio), pooling ("diffstride", "spectral" or "conv"), width (64), per_axis (False)."""
    return ResNet18DiffStride(num_classes, strides, **kwargs)
