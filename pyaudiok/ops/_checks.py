"""Argument checks shared by every op: run once, in Python, before any kernel, with messages that
name the argument and say what was expected. Kernels may then assume valid input."""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Sequence

import torch

from ..dispatch import FLOAT_DTYPES


class ValueCheck(NamedTuple):
    """A check on tensor values: every element of the bool tensor `ok` must be true, else `error`
    ("<expectation>; got <got()>"), got() reading the offending values."""
    ok: torch.Tensor
    expectation: str
    got: Callable[[], str] | None = None
    error: type[Exception] = ValueError


def all_hold(checks: Sequence[ValueCheck | None]) -> None:
    """Run value checks (None: nothing to check) with one device-to-host wait for all of them: eagerly
    the first that fails raises. Inside torch.compile, where tracing cannot branch on values, each
    becomes an assertion in the graph (RuntimeError with the expectation), so compiled code is
    checked too and keeps one graph."""
    checks = [c for c in checks if c is not None]
    if not checks:
        return
    if torch.compiler.is_compiling():
        for c in checks:
            torch._assert_async(c.ok.all(), c.expectation)
        return
    for c in checks:
        if c.ok.device.type == "meta":
            raise ValueError(f"{c.expectation}; got a meta tensor, whose values cannot be checked "
                             "(pass CPU or CUDA tensors)")
    devices = {c.ok.device for c in checks}
    if len(devices) == 1:
        passed = torch.stack([c.ok.all() for c in checks]).tolist()
    else:  # e.g. lengths given on the host beside tensors on a GPU: each checked where it is
        passed = [bool(c.ok.all()) for c in checks]
    for c, fine in zip(checks, passed):
        if not fine:
            raise c.error(c.expectation if c.got is None else f"{c.expectation}; got {c.got()}")


def values_hold(ok: torch.Tensor, expectation: str, got: Callable[[], str] | None = None,
                error: type[Exception] = ValueError) -> None:
    """all_hold of one check."""
    all_hold([ValueCheck(ok, expectation, got, error)])


def ints_within_check(value: torch.Tensor, low: int, high: int, expectation: str) -> ValueCheck | None:
    """The check low <= value <= high over an integer tensor, in one pass (aminmax); None when empty."""
    if value.numel() == 0:
        return None
    lo, hi = torch.aminmax(value)
    return ValueCheck((lo >= low) & (hi <= high), expectation, lambda: f"values in [{int(lo)}, {int(hi)}]")


def ints_within(value: torch.Tensor, low: int, high: int, expectation: str) -> None:
    all_hold([ints_within_check(value, low, high, expectation)])


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def tensor(name: str, value, *, ndim: int | None = None, min_ndim: int | None = None, layout: str = "",
           dtypes: Sequence[torch.dtype] | None = None, shape: Sequence[int] | None = None) -> torch.Tensor:
    """Check that `value` is a tensor of an allowed dtype and rank (or of exactly `shape`); `layout`
    (e.g. "[Q, K, D]") is how the expected shape is described in the error message."""
    if shape is not None:
        ndim = len(shape)

    def expected() -> str:  # formatted only for an error: under torch.compile the sizes may be symbolic
        if shape is None:
            return layout
        return f"{layout} = {shape_str(shape)}" if layout else shape_str(shape)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{' of shape ' + expected() if expected() else ''}, "
                        f"got {type(value).__name__}")
    if dtypes is not None and value.dtype not in dtypes:
        allowed = ", ".join(_dtype_name(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {_dtype_name(value.dtype)}")
    if (ndim is not None and value.dim() != ndim) or (min_ndim is not None and value.dim() < min_ndim) \
            or (shape is not None and tuple(value.shape) != tuple(shape)):
        raise ValueError(f"{name} must have shape {expected() or f'of rank {ndim}'}; got {shape_str(value.shape)}")
    return value


INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


def int_vector(name: str, value, length: int, low: int, high: int, device) -> torch.Tensor:
    """`value` (an integer tensor, a sequence of ints or a numpy integer array) of shape [length]
    with values in [low, high], on `device`. The values are checked where they lie: given on the
    host, they cost no wait for a GPU."""
    if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        value = torch.from_numpy(value) if value.dtype.kind in "iu" else value
    if isinstance(value, Sequence) and not isinstance(value, (torch.Tensor, str)):
        if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in value):
            raise TypeError(f"{name} must be a tensor or a sequence of ints of shape [B] = [{length}]; got "
                            f"{[type(x).__name__ for x in value]}")
        value = torch.tensor(list(value), dtype=torch.int64)
    value = tensor(name, value, ndim=1, layout=f"[B] = [{length}]", dtypes=INDEX_DTYPES)
    if value.shape[0] != length:
        raise ValueError(f"{name} must have shape [B] = [{length}]; got {shape_str(value.shape)}")
    ints_within(value, low, high, f"{name} must lie in [{low}, {high}]")
    return value.to(device)


def float_tensor(name: str, value, **kwargs) -> torch.Tensor:
    return tensor(name, value, dtypes=FLOAT_DTYPES, **kwargs)


def same_dtype(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({_dtype_name(ref.dtype)}); "
                        f"got {_dtype_name(value.dtype)}")


def holds_data(name: str, value: torch.Tensor) -> None:
    """The ops compute on CPU and CUDA tensors; a meta tensor (shapes without data) is refused up front
    rather than failing deep inside with an error that names no argument."""
    if value.device.type == "meta":
        raise ValueError(f"{name} must be a CPU or CUDA tensor; got one on the meta device (no data)")


def same_device(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}); got {value.device}")


def dim_size(name: str, value: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if value.shape[dim] != expected:
        raise ValueError(f"{name} has size {value.shape[dim]} in dim {dim} ({shape_str(value.shape)}); "
                         f"expected {expected} to match {what}")


def one_of(name: str, value, allowed: Sequence) -> object:
    """`value` when it is one of `allowed` (a module setting, a mode), else a ValueError listing them."""
    if value not in allowed:
        choices = ", ".join(map(repr, allowed[:-1])) + f" or {allowed[-1]!r}" if len(allowed) > 1 else repr(allowed[0])
        raise ValueError(f"{name} must be {choices}; got {value!r}")
    return value


# Upper bounds from here on are limits of the arithmetic, not of the meaning: messages say ">= low".
_NO_PRACTICAL_BOUND = 1 << 31


def int_in_range(name: str, value, low: int, high: int) -> int:
    """An int with low <= value <= high (bools are not ints here)."""
    bounds = f">= {low}" if high >= _NO_PRACTICAL_BOUND else f"in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int {bounds}; got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be {bounds}; got {value}")
    return value


def real_in_range(name: str, value, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
                  high_open: bool = False, what: str | None = None) -> float:
    """A finite real number (bools are not numbers here) with low <= value <= high (strict at an open
    end), as a float; otherwise a ValueError naming `name` and the range (or `what`)."""
    inside = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
              and (low < value if low_open else low <= value) and (value < high if high_open else value <= high))
    if not inside:
        if what is None:
            what = "a finite number" + (f" {'>' if low_open else '>='} {low:g}" if math.isinf(high) else
                                        "" if math.isinf(low) else
                                        f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return float(value)


def positive_float(name: str, value) -> float:
    """A finite real number > 0 (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive float; got {type(value).__name__}")
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{name} must be a finite number > 0; got {value}")
    return float(value)
