"""Argument checks of the Triton launchers, the bodies of the raw `*_triton` ops.

The kernels index dense rows (`row * width + column`), so a launcher makes its inputs contiguous (free
for inputs that already are) and checks that their shapes agree: a mismatch would otherwise be read
out of bounds or masked into silently wrong numbers. The checks read tensor metadata only, never
values, so they cost no device sync; index values (codes, orders, blocks, lengths, positions) are
the public op's to check, and a raw op trusts them.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..ops import _checks
from ..ops._checks import shape_str


def shape(name: str, t: Tensor, layout: str, *sizes: int | None) -> tuple[int, ...]:
    """t's shape, checked to have len(sizes) dims of the given sizes (None: any); ValueError naming
    `name` and its `layout` (e.g. "[B, N, T]") otherwise."""
    if t.dim() != len(sizes) or any(want is not None and got != want for got, want in zip(t.shape, sizes)):
        expected = ", ".join("*" if s is None else str(s) for s in sizes)
        raise ValueError(f"{name} must have shape {layout} = [{expected}]; got {shape_str(t.shape)}")
    return tuple(t.shape)


def dtype(name: str, t: Tensor, allowed: Sequence[torch.dtype]) -> None:
    """TypeError naming `name` unless t's dtype is one of `allowed` (the public ops' message)."""
    _checks.tensor(name, t, dtypes=allowed)


def device(name: str, t: Tensor, ref: Tensor) -> None:
    """ValueError naming `name` unless t is on ref's device (the kernels take one device's pointers)."""
    _checks.same_device(name, t, "the op's first input", ref)


def at_most(name: str, value: int, bound: int, bound_name: str) -> None:
    """ValueError unless value <= bound (e.g. a cropped size against the size it is cropped from)."""
    if value > bound:
        raise ValueError(f"{name} must be <= {bound_name} = {bound}; got {value}")


def dense(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """The tensors made contiguous (None kept): the kernels read rows at `row * width`."""
    return tuple(t if t is None else t.contiguous() for t in tensors)
