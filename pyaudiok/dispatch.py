"""One registry of op × backend, and the rule that picks a backend for a call.

Each op registers its implementations with the devices and dtypes they support and a callable
saying whether the backend is usable at all in this process (built? imported?). A call then runs
on, in order of precedence:

1. the backend named by `use_backend("…")` (innermost context wins; process-wide, not per thread,
   so that torch.compile can trace the choice), else
2. the backend named by the environment variable ``PYAUDIOK_BACKEND``, else
3. the first backend of the device's preference list (the op's own order where it set one with
   `Op.prefer`, measured to differ from the default) that is available and supports the inputs,
   and whose `auto_skip` rule (measured: another backend is faster for these inputs) does not pass
   it over; a backend passed over that way still runs when requested.

An explicitly requested backend that cannot run the call raises `BackendUnavailableError` with
the reason; an automatic choice falls back to the next backend and warns once per reason.

The fused backends define reverse-mode gradients only (torch.library's register_autograd): under
forward-mode AD (`torch.autograd.forward_ad`, `torch.func.jvp`) their outputs would carry no tangent,
and under `torch.func.grad` they cannot run. While either is active only the reference runs (plain
torch ops, which have both): the automatic choice takes it, a request for a fused backend raises.
`torch.func.vmap` alone keeps the fused backends (torch runs them once per item).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from typing import Callable, Iterator, Sequence

import torch
from torch.autograd import forward_ad

BACKENDS = ("reference", "cpu", "triton", "cuda")

# Automatic choice per device type, fastest first. The Triton interpreter is never chosen
# automatically on the CPU: it exists for testing, not speed.
PREFERENCE = {
    "cpu": ("cpu", "reference"),
    "cuda": ("triton", "cuda", "reference"),
}

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _Requested:
    """The backend `use_backend` asked for: process-wide, like torch.backends' switches. A plain
    attribute of a module global (not a ContextVar or threading.local) because torch.compile reads
    it while tracing and guards on its value, so a compiled call re-dispatches when it changes."""
    backend: str | None = None


_requested = _Requested()
_warned: set[tuple[str, str, str]] = set()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this call; the message says why."""


class BackendFallbackWarning(UserWarning):
    """The automatically preferred backend could not run a call; a slower one did."""


@dataclasses.dataclass(frozen=True)
class Implementation:
    op: str
    backend: str
    fn: Callable
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    # None when the backend is usable for tensors on this device in this process, else the reason
    # (checked per call, so it must be cheap: cache anything expensive).
    availability: Callable[[torch.device], str | None] = lambda device: None
    # Extra, op-specific limits on the inputs (e.g. a maximum width): None or the reason.
    constraint: Callable[..., str | None] | None = None
    # Inputs for which the automatic choice passes this backend over although it can run them
    # (a later one was measured faster): None or the reason. Requests ignore it.
    auto_skip: Callable[..., str | None] | None = None

    def why_not(self, device: torch.device, dtype: torch.dtype, args: tuple = ()) -> str | None:
        """None when this implementation can run a call on `device`/`dtype`, else the reason."""
        if self.backend != "reference":
            reason = _transform_needing_the_reference()
            if reason is not None:
                return reason
        if device.type not in self.devices:
            return f"runs on {'/'.join(self.devices)} tensors, not {device.type}"
        reason = self.availability(device)
        if reason is not None:
            return reason
        if dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return f"supports {names}, not {str(dtype).replace('torch.', '')}"
        if self.constraint is not None and args:
            return self.constraint(*args)
        return None


def _transform_needing_the_reference() -> str | None:
    """Why no fused backend may run now (forward-mode AD or torch.func.grad active), or None. Two
    reads of interpreter state when no transform is active."""
    if torch.compiler.is_compiling():
        return None  # traced code's transforms are applied to the graph, not to these calls
    if forward_ad._current_level >= 0:
        return ("forward-mode AD (torch.func.jvp or torch.autograd.forward_ad) is active, and the fused "
                "backends define reverse-mode gradients only: use the reference backend")
    if torch._C._functorch.maybe_current_level() is None:
        return None
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    kinds = {interpreter.key().name for interpreter in retrieve_all_functorch_interpreters()}
    if kinds & {"Jvp", "Grad"}:
        return ("torch.func.jvp or torch.func.grad is active, and the fused backends' gradients are "
                "torch.library autograd rules, which these transforms do not take: use the reference backend")
    return None


class Op:
    """The implementations of one op, keyed by backend name."""

    def __init__(self, name: str):
        self.name = name
        self.impls: dict[str, Implementation] = {}
        self.preference: dict[str, tuple[str, ...]] = {}

    def prefer(self, device_type: str, backends: Sequence[str]) -> None:
        """This op's automatic order for `device_type`, in place of PREFERENCE's (say why where it is called)."""
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; expected some of {BACKENDS}")
        self.preference[device_type] = tuple(backends)

    def order(self, device_type: str) -> tuple[str, ...]:
        """The backends tried, in order, for an automatic choice on `device_type`."""
        return self.preference.get(device_type) or PREFERENCE.get(device_type, ("reference",))

    def register(self, backend: str, fn: Callable, *, devices: Sequence[str], dtypes: Sequence[torch.dtype],
                 availability: Callable[[torch.device], str | None] | None = None,
                 constraint: Callable[..., str | None] | None = None,
                 auto_skip: Callable[..., str | None] | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        self.impls[backend] = Implementation(self.name, backend, fn, tuple(devices), tuple(dtypes),
                                             availability or (lambda device: None), constraint, auto_skip)

    def select(self, device: torch.device, dtype: torch.dtype, args: tuple = ()) -> Implementation:
        """The implementation that runs a call with inputs on `device` of `dtype`."""
        requested = requested_backend()
        if requested is not None:
            impl = self.impls.get(requested)
            if impl is None:
                raise BackendUnavailableError(f"{self.name}: backend {requested!r} is not implemented for this op "
                                              f"(it has {', '.join(self.impls)})")
            reason = impl.why_not(device, dtype, args)
            if reason is not None:
                raise BackendUnavailableError(f"{self.name}: backend {requested!r} was requested but cannot run "
                                              f"this call: {reason}")
            return impl
        skipped = []
        for backend in self.order(device.type):
            impl = self.impls.get(backend)
            if impl is None:
                continue
            reason = impl.why_not(device, dtype, args)
            if reason is None and impl.auto_skip is not None and args and impl.auto_skip(*args) is not None:
                continue  # slower for these inputs by measurement: no fallback warning
            if reason is None:
                for name, why in skipped:
                    _warn_once(self.name, name, why, backend)
                return impl
            skipped.append((backend, reason))
        details = "; ".join(f"{b}: {r}" for b, r in skipped) or "no implementation registered"
        raise BackendUnavailableError(f"{self.name}: no backend can run {device.type} {dtype} inputs ({details})")

    def __call__(self, *args, device: torch.device, dtype: torch.dtype):
        impl = self.select(device, dtype, args)
        with on_device(device):
            if torch.is_autocast_enabled(device.type):
                # The inputs' dtype chose the backend and is the dtype it computes in: autocast must not
                # recast the torch ops inside it (a matmul of its glue in bf16 beside its fp32 kernels).
                with torch.autocast(device.type, enabled=False):
                    return impl.fn(*args)
            return impl.fn(*args)


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """`device` made the current CUDA device where it is not (as ATen's device guards do): Triton
    launches a kernel on the current device, so inputs on another GPU would be read through
    pointers that are not that device's. Nothing to do elsewhere, and under torch.compile, whose
    generated code guards the device itself. (The autograd engine runs each device's backward on
    a thread whose current device is that device.)"""
    if device.type != "cuda" or device.index is None or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    if device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def _warn_once(op: str, backend: str, reason: str, used: str) -> None:
    key = (op, backend, reason)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(f"pyaudiok: {op} runs on the {used!r} backend because {backend!r} cannot: {reason}",
                  BackendFallbackWarning, stacklevel=4)


_OPS: dict[str, Op] = {}


def op(name: str) -> Op:
    """The registry entry of op `name`, created on first use."""
    return _OPS.setdefault(name, Op(name))


def registered_ops() -> dict[str, Op]:
    return dict(_OPS)


def requested_backend() -> str | None:
    """The backend forced by `use_backend` or ``PYAUDIOK_BACKEND``, or None for automatic."""
    requested = _requested.backend
    if requested is None:
        requested = os.environ.get("PYAUDIOK_BACKEND") or None
        if requested is not None and requested not in BACKENDS and requested != "auto":
            raise ValueError(f"PYAUDIOK_BACKEND={requested!r}; expected one of {BACKENDS} or 'auto'")
    return None if requested == "auto" else requested


@contextlib.contextmanager
def use_backend(backend: str | None) -> Iterator[None]:
    """Run every pyaudiok op inside the block on `backend` ('reference', 'cpu', 'triton', 'cuda';
    'auto' or None restores the automatic choice)."""
    if backend is not None and backend not in BACKENDS and backend != "auto":
        raise ValueError(f"use_backend: unknown backend {backend!r}; expected one of {BACKENDS} or 'auto'")
    previous, _requested.backend = _requested.backend, backend or "auto"
    try:
        yield
    finally:
        _requested.backend = previous
