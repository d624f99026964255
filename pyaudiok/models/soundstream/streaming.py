"""Causal convolutions that run offline or streaming, with identical output (DESIGN.md §2).

Streaming design
----------------
Every module that needs memory across chunks derives from `StreamingModule`. Outside a stream
(the default) `forward(x[B, C, T])` processes a whole signal. Inside ``with module.stream():``
every `StreamingModule` in the tree gets a fresh `StreamState`, and `forward(chunk)` consumes one
chunk of any length (0 included) and returns exactly the output samples that chunk completes:

    with encoder.stream():
        parts = [encoder(chunk) for chunk in chunks]
    torch.cat(parts, -1)  ≈ encoder(torch.cat(chunks, -1))   (to float rounding)

The two convolutions carry:
- `CausalConv1d`: the input samples it has not finished with — initially the zero left padding,
  then the receptive-field context plus, for a strided conv, the leftover samples of an
  incomplete stride (so chunk lengths need not be multiples of the stride);
- `CausalConvTranspose1d`: the overlap-add tail, the `kernel − stride` output samples that later
  input frames still add to.

Offline mode is the same code run on a fresh state that is then dropped, so the two modes agree
by construction, not by a second implementation. Pointwise layers (ELU, FiLM) need no state.
Carried tensors are not detached: stream under `torch.no_grad()` for inference.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Iterator, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StreamState", "StreamingModule", "streaming", "CausalConv1d", "CausalConvTranspose1d"]

M = TypeVar("M", bound=nn.Module)


@dataclass
class StreamState:
    """What one streaming module carries between chunks; `buffer` is None until the first chunk
    (its batch size, device and dtype are only known then)."""
    buffer: torch.Tensor | None = None


class StreamingModule(nn.Module):
    """Base of the modules that can run streaming; see the module docstring for the contract."""

    def __init__(self) -> None:
        super().__init__()
        self._stream_state: StreamState | None = None

    @property
    def is_streaming(self) -> bool:
        return self._stream_state is not None

    def stream(self: M) -> AbstractContextManager[M]:
        """Context manager: stream this module (and everything in it) with fresh state."""
        return streaming(self)

    def reset_stream(self) -> None:
        """Drop the carried state of a running stream, as if it had just started."""
        for module in _streaming_modules(self):
            if module.is_streaming:
                module._stream_state = StreamState()

    def _state(self) -> StreamState:
        # Offline: a throwaway state, so offline == one chunk of a fresh stream.
        return self._stream_state if self._stream_state is not None else StreamState()


def _streaming_modules(module: nn.Module) -> list[StreamingModule]:
    return [m for m in module.modules() if isinstance(m, StreamingModule)]


@contextmanager
def streaming(module: M) -> Iterator[M]:
    """Put every `StreamingModule` inside `module` (any nn.Module) into streaming mode."""
    modules = _streaming_modules(module)
    if any(m.is_streaming for m in modules):
        raise RuntimeError(f"{type(module).__name__} (or a module inside it) is already streaming")
    for m in modules:
        m._stream_state = StreamState()
    try:
        yield module
    finally:
        for m in modules:
            m._stream_state = None


def _check_input(name: str, x: torch.Tensor, channels: int) -> None:
    if x.ndim != 3 or x.shape[1] != channels:
        raise ValueError(f"{name} expects input [B, {channels}, T]; got {tuple(x.shape)}")


class CausalConv1d(StreamingModule):
    """Conv1d whose output frame i depends only on inputs up to the end of its stride.

    Receptive field r = (k − 1)·dilation + 1. The input is zero-padded on the left only, by
    r − stride = (k − 1)·dilation − (stride − 1) samples: for stride 1 that is the usual
    (k − 1)·dilation; for stride s, frame i covers the r samples ending at i·s + s − 1, so a frame is
    emitted as soon as its hop is complete and no input sample is left unseen.

    Output length (offline): T // stride for any T. Samples of a trailing incomplete stride
    produce no frame offline; in a stream they wait in the buffer for the next chunk.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride,
                              dilation=dilation, groups=groups, bias=bias)
        self.stride = stride
        self.receptive_field = (kernel_size - 1) * dilation + 1
        if self.receptive_field < stride:
            raise ValueError(f"receptive field {self.receptive_field} < stride {stride} would skip "
                             "input samples")
        self.left_padding = self.receptive_field - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(type(self).__name__, x, self.conv.in_channels)
        state = self._state()
        if state.buffer is None:
            state.buffer = x.new_zeros(x.shape[0], x.shape[1], self.left_padding)
        buffer = torch.cat([state.buffer, x], dim=-1)
        frames = max(0, (buffer.shape[-1] - self.receptive_field) // self.stride + 1)
        # Keep what later frames still need: everything from the first unproduced frame's start.
        state.buffer = buffer[..., frames * self.stride:]
        if frames == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        return self.conv(buffer[..., :(frames - 1) * self.stride + self.receptive_field])


class CausalConvTranspose1d(StreamingModule):
    """ConvTranspose1d (kernel k ≥ stride s) trimmed on the right so T input frames give exactly
    T·s output samples; output block i (samples i·s … i·s + s − 1) depends on input frames ≤ i.

    The k − s trimmed samples are not lost in a stream: they are the overlap-add tail that the next
    chunk's first frames add to. Offline, the tail of the last frame is dropped.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel_size {kernel_size} < stride {stride} would leave gaps in the output")
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        self.stride = stride
        self.tail = kernel_size - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(type(self).__name__, x, self.conv.in_channels)
        state = self._state()
        B, out_channels = x.shape[0], self.conv.out_channels
        if state.buffer is None:
            state.buffer = x.new_zeros(B, out_channels, self.tail)
        length = x.shape[-1] * self.stride
        if length == 0:
            return x.new_zeros(B, out_channels, 0)
        # Bias is added once per emitted sample, so the carried tail holds weights' sums only.
        full = F.conv_transpose1d(x, self.conv.weight, None, stride=self.stride)
        full = torch.cat([full[..., :self.tail] + state.buffer, full[..., self.tail:]], dim=-1)
        state.buffer = full[..., length:]
        out = full[..., :length]
        return out if self.conv.bias is None else out + self.conv.bias[:, None]
