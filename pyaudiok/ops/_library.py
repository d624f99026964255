"""Access to the registered `torch.ops.pyaudiok.*` ops of each backend.

C++ ops (cpu, cuda) are defined by the extension's TORCH_LIBRARY block; Triton ops are registered
here, lazily, with `torch.library.triton_op`, so `import pyaudiok` does not import Triton.
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable

import torch
from torch._library import utils as library_utils

from .. import _extension, backends, dispatch

GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the fused backends accumulate (and keep statistics) in: float64 for float64 inputs, else
    float32 (half precision included)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def float32_under_autocast(device_type: str, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Under autocast on `device_type`, when any operand is half precision, every half-precision one in
    float32: the policy autocast applies to norms, softmaxes and distances (F.group_norm, log_softmax,
    cdist). Otherwise the tensors as they are (None kept)."""
    if torch.is_autocast_enabled(device_type) and any(t is not None and t.dtype in HALF_DTYPES for t in tensors):
        return tuple(t.float() if t is not None and t.dtype in HALF_DTYPES else t for t in tensors)
    return tensors


def extension_loaded() -> bool:
    return _extension.load()[0] is not None


_CPP_OPS: dict[str, DirectOp] = {}


def cpp_op(name: str) -> DirectOp:
    """torch.ops.pyaudiok.<name>, defined by the compiled extension (loaded at import), as a DirectOp
    whose kernel is the op dispatched below autograd: its autograd rule (`register_autograd`) is
    then applied by the DirectOp, as for the ops defined in Python, and a call that takes no gradient
    skips the dispatcher's autograd layer (for a rule registered from Python, a Python function a
    call)."""
    op = _CPP_OPS.get(name)
    if op is None:
        registered = getattr(torch.ops.pyaudiok, name)
        op = _CPP_OPS[name] = DirectOp(f"pyaudiok::{name}", registered, _below_autograd(registered),
                                        profiled=False)
    return op


def _below_autograd(op) -> Callable:
    """op called with the autograd dispatch keys skipped, as torch.library's own autograd rule calls
    the kernel (with no input taking a gradient here, or in a Function's forward, autograd has
    nothing to record)."""
    def run(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)
    return run


def upcast_half(fn: Callable, *, float32_outputs: tuple[int, ...] = ()) -> Callable:
    """A float32 backend's call made to take half-precision inputs: fp16 / bf16 tensor arguments are
    upcast to float32 (differentiably, so their gradients come back in their own dtypes). When the
    op's main input (its first floating tensor argument) is half, the floating results are rounded
    to its dtype, except the outputs at `float32_outputs` (sums the reference also returns in
    float32, where half precision would overflow or cancel); a half-precision side input (a
    parameter, a stride) sets no output's dtype. The CPU kernels run in fp32 as the GPU kernels do
    for half inputs, instead of the reference running in half precision (with its O(N²)
    intermediates where it has them)."""
    def run(*args):
        if not any(isinstance(a, torch.Tensor) and a.dtype in HALF_DTYPES for a in args):
            return fn(*args)
        main = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
        out = fn(*(a.float() if isinstance(a, torch.Tensor) and a.dtype in HALF_DTYPES else a for a in args))
        return _round_floating(out, main, float32_outputs) if main in HALF_DTYPES else out
    return run


def _round_floating(out, dtype: torch.dtype, keep: tuple[int, ...] = ()):
    """out's floating tensors (alone, or in a tuple or NamedTuple, but those at positions `keep`: a
    lone tensor is position 0) in `dtype`; the rest as it is."""
    if isinstance(out, torch.Tensor):
        return out.to(dtype) if out.is_floating_point() and 0 not in keep else out
    if isinstance(out, tuple):
        items = [item if i in keep else _round_floating(item, dtype) for i, item in enumerate(out)]
        return type(out)(*items) if hasattr(out, "_fields") else tuple(items)
    return out


def eager_under_compile(fn: Callable) -> Callable:
    """For a public op whose output sizes are data (read on the host): torch.compile splits its
    graph at the call and runs the op as it is, instead of tracing into it and splitting every frame
    below (which recompiles the dispatcher's frame per call site). Outside compilation, fn itself.
    The skipping wrapper is made while tracing: made at import, it would import torch._dynamo with
    pyaudiok, which breaks Triton's interpreter in the test runs."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if torch.compiler.is_compiling():
            return torch.compiler.disable(fn)(*args, **kwargs)
        return fn(*args, **kwargs)
    return run


def without_autocast(backward: Callable) -> Callable:
    """An autograd.Function's backward run with autocast off on its gradients' device: it computes in
    the dtypes its forward saved, as the forward did (the dispatcher runs backends with autocast
    off), also when the caller runs backward() inside an autocast region."""
    @functools.wraps(backward)
    def run(ctx, *grads):
        device = next((g.device.type for g in grads if isinstance(g, torch.Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            return backward(ctx, *grads)
    return run


def first_order(op_name: str) -> Callable[[Callable], Callable]:
    """For a fused backend's backward (an autograd.Function's or a torch.library registration's):
    its gradients come from kernels (or glue that is not differentiable again), so a second
    differentiation through them, e.g. a gradient penalty under create_graph=True, would be silently
    wrong. Under create_graph the gradients are made to raise a clear error when differentiated
    again; a first-order backward costs one flag check."""
    message = (f"pyaudiok.{op_name}: this backend's backward is not differentiable again; for higher-order "
               f"gradients (create_graph=True), run the op on the reference backend: "
               f"`with pyaudiok.use_backend('reference'): ...`").encode()

    def wrap(backward: Callable) -> Callable:
        @functools.wraps(backward)
        def run(ctx, *grads):
            if not torch.is_grad_enabled():
                return backward(ctx, *grads)
            with torch.no_grad():
                out = backward(ctx, *grads)
            # The node's other inputs tie it to what the gradients depend on (the saved inputs, inputs
            # anchored by `anchor_inputs`, the incoming gradients), so differentiating with respect
            # to any of those reaches it and raises.
            tied = (*ctx.saved_tensors, *getattr(ctx, "anchors", ()), *grads)
            anchors = [t for t in tied if isinstance(t, torch.Tensor) and t.requires_grad]
            return _raising_when_differentiated(out, anchors, message)
        return run
    return wrap


def anchor_inputs(ctx, *inputs) -> None:
    """For a forward that does not save some of its differentiable inputs: empty tensors that
    depend on them (without keeping their memory alive), so that `first_order` can tie its guard
    to them. Costs a few µs per input in a forward that takes gradients."""
    with torch.enable_grad():
        ctx.anchors = tuple(t.narrow(0, 0, 0).clone() for t in inputs
                            if isinstance(t, torch.Tensor) and t.requires_grad and t.dim() > 0)


def _raising_when_differentiated(out, anchors: list[torch.Tensor], message: bytes):
    """out's floating tensors (alone or in a tuple; the rest kept) passed through one node that
    raises `message` when a backward pass reaches it."""
    items = out if isinstance(out, tuple) else (out,)
    positions = [i for i, t in enumerate(items) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not positions:
        return out
    inputs = [items[i].detach().requires_grad_() for i in positions] + anchors
    guarded = torch._C._functions.DelayedError(message, len(inputs))(*inputs)
    guarded = guarded if isinstance(guarded, tuple) else (guarded,)
    result = list(items)
    for i, t in zip(positions, guarded):
        result[i] = t
    return tuple(result) if isinstance(out, tuple) else result[0]


def tracing() -> bool:
    """Whether a tracer sees the calls: torch.compile, or a dispatch mode (fake and functional
    tensors, make_fx, opcheck's checks). Registered ops and `wrap_triton` are what tracers record."""
    return torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0


# The autograd rules registered through `register_autograd`, by qualname: (backward, setup_context).
_AUTOGRAD: dict[str, tuple[Callable, Callable]] = {}


def register_autograd(qualname: str, backward: Callable, *, setup_context: Callable) -> None:
    """torch.library.register_autograd, the rule also kept for the op's eager calls (`DirectOp`). A rule
    registered with torch.library.register_autograd alone is not seen here: use this one."""
    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    _AUTOGRAD[qualname] = (backward, setup_context)


class DirectOp:
    """A custom op: `op`, the registered torch.ops.pyaudiok.<name> with its fake and autograd
    registrations (what torch.compile, opcheck, forward-mode AD and torch.func see), and `impl`, its
    kernel: the Python function registered as such (a Triton launcher, or the C++ kernels' glue), or
    for an op of the extension the op itself dispatched below autograd (`cpp_op`).

    Outside a tracer (`tracing`), a call goes to `impl` directly: as it is when no input takes a
    gradient here (grad mode off, as in every backward and in inference, or no input requiring one),
    and inside an autograd.Function made of the op's own autograd rule (`register_autograd`) when one
    does, so that training steps skip the custom-op dispatch too. The registered op runs the same
    rule through more layers (the dispatcher, torch.library's generated Function, a redispatch), tens
    of µs of host time a call (more on a GPU machine, `bench/host_cost.py`), as much as a small call's
    own work: a Triton launch, or one token of a cached sampling step. Forward-mode AD and torch.func
    transforms, which torch.library's rules serve and a plain Function does not, still take the
    registered op. Under the profiler the direct call keeps the op's name as a record (a C++ op's
    dispatch records it itself)."""

    def __init__(self, qualname: str, op, impl: Callable, *, profiled: bool = True):
        self.name, self.op, self.impl = qualname, op, impl
        self.profiled = profiled  # record the op's name under the profiler (a C++ op's dispatch records it)
        # (the rule, impl through an autograd.Function made of it): one tuple, so that a thread never
        # pairs a new rule with the Function of an older one
        self._with_autograd: tuple[tuple[Callable, Callable], Callable | None] | None = None

    def __call__(self, *args):
        # tracing() asks is_compiling() first: under torch.compile nothing else here is traced.
        if tracing():
            return self.op(*args)
        call = self.impl
        if _takes_grad(args):
            call = self._eager_autograd()
            if call is None:
                return self.op(*args)
        if self.profiled and torch.autograd._profiler_enabled():
            with torch.profiler.record_function(self.name):
                return call(*args)
        return call(*args)

    def _eager_autograd(self) -> Callable | None:
        """impl with the op's autograd rule, for plain reverse-mode autograd; None where only the
        registered op serves (forward-mode AD, a torch.func transform, no rule recorded)."""
        if torch.autograd.forward_ad._current_level >= 0 or torch._C._functorch.maybe_current_level() is not None:
            return None
        rule = _AUTOGRAD.get(self.name)
        if rule is None:
            return None
        built = self._with_autograd
        if built is None or built[0] is not rule:  # built on first use: the rule is registered after the op
            built = self._with_autograd = (rule, _autograd_function(self.name, self.impl, *rule))
        return built[1]

    def __repr__(self) -> str:
        return f"DirectOp({self.name})"


def _autograd_function(qualname: str, impl: Callable, backward: Callable, setup_context: Callable
                       ) -> Callable | None:
    """`impl` called through an autograd.Function with the rule torch.library runs for the op: the same
    setup_context(ctx, inputs, output) and backward(ctx, *grads), inputs with the schema's defaults
    filled in as the dispatcher fills them. None for a schema the plain Function cannot take
    (keyword-only or tensor-list arguments, which torch.library's Function repacks)."""
    namespace, name = qualname.split("::")
    schema = getattr(getattr(torch.ops, namespace), name).default._schema
    if any(a.kwarg_only or library_utils.is_tensorlist_like_type(a.type) for a in schema.arguments) or any(
            library_utils.is_tensorlist_like_type(r.type) for r in schema.returns):
        return None

    # setup_context runs inside forward, not as the Function's own staticmethod: Function.apply
    # binds a separate setup_context's arguments with inspect.signature, ~20 µs a call. The Function
    # is never applied under a torch.func transform, the one place where the two forms differ.
    def forward(ctx, *args):
        output = impl(*args)
        setup_context(ctx, args, output)
        return output

    function = type(f"EagerAutograd_{qualname.replace('::', '_')}", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward)})
    arity, apply = len(schema.arguments), function.apply

    def run(*args):
        if len(args) < arity:
            args, _ = library_utils.fill_defaults(schema, args, {})
        return apply(*args)
    return run


def _takes_grad(args) -> bool:
    """Whether autograd may need the registration: an input requiring a gradient in grad mode, or
    forward-mode AD active (dual tensors' tangents would be dropped by a direct call)."""
    if torch.autograd.forward_ad._current_level >= 0:
        return True
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def custom_op(qualname: str, *, device_types: str) -> Callable[[Callable], DirectOp]:
    """torch.library.custom_op (no mutated arguments) for a Python kernel, returned as a DirectOp."""
    def register(fn: Callable) -> DirectOp:
        torch.library.custom_op(qualname, mutates_args=(), device_types=device_types)(fn)
        namespace, name = qualname.split("::")
        return DirectOp(qualname, getattr(getattr(torch.ops, namespace), name), fn)
    return register


_TRITON_OPS: dict[str, DirectOp] = {}


def triton_op(name: str, kernel_module: str, function: str,
              register: Callable[[str], None] | None = None) -> DirectOp:
    """Register `pyaudiok.kernels.<kernel_module>.<function>` as the op pyaudiok::<name> (once) and
    return it as a DirectOp. `register(qualname)` adds its fake/autograd registrations."""
    if name not in _TRITON_OPS:
        _TRITON_OPS[name] = _register_triton_op(name, kernel_module, function, register)
    return _TRITON_OPS[name]


def _register_triton_op(name, kernel_module, function, register) -> DirectOp:
    launcher = getattr(importlib.import_module(f"pyaudiok.kernels.{kernel_module}"), function)
    torch.library.triton_op(f"pyaudiok::{name}", mutates_args=())(launcher)
    if register is not None:
        register(f"pyaudiok::{name}")
    return DirectOp(f"pyaudiok::{name}", getattr(torch.ops.pyaudiok, name), launcher)


def register_backends(op: dispatch.Op, *, reference: Callable, cpu: Callable | None = None,
                      triton: Callable | None = None, cuda: Callable | None = None,
                      cpu_dtypes=(torch.float32,), gpu_dtypes=GPU_DTYPES,
                      triton_constraint: Callable | None = None,
                      cuda_constraint: Callable | None = None,
                      triton_auto_skip: Callable | None = None) -> None:
    """The usual registration of an op's backends: the reference anywhere in any float dtype, the
    C++ kernels where the extension has them, Triton on GPUs (and its interpreter on the CPU).
    `triton_auto_skip(*args)`: why the automatic choice passes Triton over for a call (measured
    slower there), or None."""
    op.register("reference", reference, devices=("cpu", "cuda"), dtypes=dispatch.FLOAT_DTYPES)
    if cpu is not None:
        op.register("cpu", cpu, devices=("cpu",), dtypes=cpu_dtypes, availability=backends.cpu_reason)
    if triton is not None:
        op.register("triton", triton, devices=("cuda", "cpu"), dtypes=gpu_dtypes, availability=backends.triton_reason,
                    constraint=triton_constraint, auto_skip=triton_auto_skip)
    if cuda is not None:
        op.register("cuda", cuda, devices=("cuda",), dtypes=gpu_dtypes, availability=backends.cuda_reason,
                    constraint=cuda_constraint)
