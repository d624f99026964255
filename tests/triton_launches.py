"""Records the Triton kernel launches the test session makes in the interpreter (no GPU here), so
that `tests/test_triton_sm90.py` can compile each one for a real GPU target afterwards: the
interpreter executes a kernel's semantics but accepts programs the GPU compiler rejects.

A launch is recorded as a spec: the kernel's module and name, its argument types in Triton's
signature notation, and its compile-time constants."""
from __future__ import annotations

import inspect
import json

import torch

SPECS: dict[str, dict] = {}  # key -> spec, first launch of each distinct specialisation
# Launches that passed one tensor in several pointer slots: key -> {"spec", "groups"}. torch.compile
# reads a kernel's stores to decide which slots it writes (conservatively: a store whose address
# comes through a slot counts as a write of that slot) and makes the compiled graph write into each
# such slot's tensor; tests/test_triton_sm90.py checks that no shared tensor sits in such a slot.
ALIASED: dict[str, dict] = {}

_POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64",
            torch.int64: "*i64", torch.int32: "*i32", torch.int16: "*i16", torch.int8: "*i8",
            torch.uint8: "*u8", torch.bool: "*i1"}


def _scalar_type(value) -> str | None:
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    return None


def _constant(value):
    """A JSON-safe compile-time constant, or raises TypeError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"unsupported constexpr {value!r}")


def _bound(fn, args: tuple, kwargs: dict) -> dict:
    """The launch's arguments by parameter name (positional and keyword; launch options left out)."""
    names = [p.name for p in inspect.signature(fn).parameters.values()]
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    return bound


def spec_of(fn, args: tuple, kwargs: dict) -> dict | None:
    """The compile spec of a launch of the Python kernel `fn`, or None if an argument has no
    Triton signature type here (the launch is then not checked)."""
    params = list(inspect.signature(fn).parameters.values())
    bound = _bound(fn, args, kwargs)
    signature, constants = {}, {}
    for p in params:
        if p.name not in bound:
            if p.default is inspect.Parameter.empty:
                return None
            bound[p.name] = p.default
        value = bound[p.name]
        try:
            if "constexpr" in str(p.annotation):
                signature[p.name] = "constexpr"
                constants[p.name] = _constant(value)
            elif isinstance(value, torch.Tensor):
                signature[p.name] = _POINTER[value.dtype]
            elif value is None:
                signature[p.name] = "constexpr"
                constants[p.name] = None
            else:
                kind = _scalar_type(value)
                if kind is None:
                    return None
                signature[p.name] = kind
        except (KeyError, TypeError):
            return None
    return {"module": fn.__module__, "name": fn.__name__, "signature": signature, "constants": constants}


def shared_tensor_slots(fn, args: tuple, kwargs: dict) -> list[list[str]]:
    """Groups of pointer parameters of one launch that received tensors with the same data pointer."""
    by_pointer: dict[int, list[str]] = {}
    for name, value in _bound(fn, args, kwargs).items():
        if isinstance(value, torch.Tensor) and value.numel():
            by_pointer.setdefault(value.data_ptr(), []).append(name)
    return [group for group in by_pointer.values() if len(group) > 1]


def _record(fn, args: tuple, kwargs: dict) -> None:
    if not fn.__module__.startswith("pyaudiok."):
        return  # a test's stand-in kernel (tests/ops/_triton_stubs.py), not the library's
    spec = spec_of(fn, args, kwargs)
    if spec is not None:
        SPECS.setdefault(json.dumps(spec, sort_keys=True), spec)
    groups = shared_tensor_slots(fn, args, kwargs)
    if spec is not None and groups:
        ALIASED.setdefault(json.dumps([spec, groups], sort_keys=True), {"spec": spec, "groups": groups})


def install() -> bool:
    """Wrap the interpreter's launch to record specs; False when Triton is not interpreting.
    Newer Triton launches through the class's `run`; older releases (3.5) set `run` per instance
    and launch `kernel[grid](...)` through `__getitem__`, which is wrapped there instead."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    if getattr(InterpretedFunction, "_records_specs", False):
        return True
    if hasattr(InterpretedFunction, "run"):
        original = InterpretedFunction.run

        def run(self, *args, grid, warmup, **kwargs):
            _record(self.fn, args, kwargs)
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)

        InterpretedFunction.run = run
    else:
        original_getitem = InterpretedFunction.__getitem__

        def getitem(self, grid):
            launch = original_getitem(self, grid)

            def recorded(*args, **kwargs):
                _record(self.fn, args, kwargs)
                return launch(*args, **kwargs)
            return recorded

        InterpretedFunction.__getitem__ = getitem
    InterpretedFunction._records_specs = True
    return True


def installed() -> bool:
    """Whether launches are being recorded (install() ran with Triton interpreting)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    return bool(getattr(InterpretedFunction, "_records_specs", False))
