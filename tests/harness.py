"""The comparison harness every op's tests use: run a public op on a backend and on the reference
(in float64), compare outputs and the gradients of every input, relative error per dtype."""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.bench.harness import threads  # noqa: F401  (re-exported for the tests)
from pyaudiok.dispatch import Op
from pyaudiok.ops._library import DirectOp

# Relative error ‖out − ref‖ / ‖ref‖ allowed against a float64 reference, per dtype of the backend run.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}

FUSED_BACKENDS = ("cpu", "triton", "cuda")


def forward_opcheck_tests(backend: str, device: torch.device) -> tuple[str, ...]:
    """opcheck's checks for a raw forward op with autograd: all of them, but AOT tracing for Triton
    in its interpreter (AOT tracing hands the interpreter storage-less tensors)."""
    tests = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    return tests[:-1] if backend == "triton" and device.type == "cpu" else tests


def opcheck(op, args, **kwargs) -> None:
    """torch.library.opcheck of a registered op, or of the registration a DirectOp calls."""
    torch.library.opcheck(op.op if isinstance(op, DirectOp) else op, args, **kwargs)


def device_for(backend: str) -> torch.device:
    """Where a backend's tests run: Triton on the GPU when there is one, else in its interpreter."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def require_backend(op: Op, backend: str, dtype: torch.dtype = torch.float32) -> torch.device:
    """The device to test `backend` of `op` on; skips the test (with the reason) if it cannot run."""
    device = device_for(backend)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{backend}: needs a CUDA device")
    impl = op.impls.get(backend)
    if impl is None:
        pytest.skip(f"{op.name} has no {backend} backend")
    reason = impl.why_not(device, dtype)
    if reason is not None:
        pytest.skip(f"{op.name}/{backend}: {reason}")
    return device


@contextlib.contextmanager
def poisoned_outputs():
    """torch.empty (also inside C++ and Triton launchers) returns NaN / max-int filled memory, so an
    output element a kernel forgot to write shows up as NaN or an absurd index."""
    old = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.utils.deterministic.fill_uninitialized_memory = old[2]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


# A fused result may be as far from the float64 reference as this many times the reference's own
# error when it runs in the same dtype: on badly conditioned draws (sums that cancel) no float32
# computation meets the fixed tolerance, and the test should say so only if the kernel is worse.
CONDITIONING_FACTOR = 4.0


def assert_close(name: str, out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, scale: float = 1.0,
                 same_dtype_ref: Callable[[], torch.Tensor] | None = None) -> None:
    """‖out − ref‖/‖ref‖ within TOLERANCE[dtype]·scale. `same_dtype_ref`, if given, computes the
    reference in `dtype`; it is run only when the fixed tolerance fails, and the check then passes
    if `out` is at most CONDITIONING_FACTOR times as far from `ref` as that computation is."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), f"{name}: NaN in output (unwritten or invalid elements)"
    err = rel_error(out, ref)
    tol = TOLERANCE[dtype] * scale
    if err <= tol:
        return
    same = same_dtype_ref() if same_dtype_ref is not None else None
    ref_err = rel_error(same, ref) if same is not None else 0.0
    assert err <= CONDITIONING_FACTOR * ref_err, (
        f"{name}: relative error {err:.3e} > {tol:.1e} ({dtype})"
        + (f" and > {CONDITIONING_FACTOR:g}× the reference's own {ref_err:.3e} in that dtype" if same is not None else ""))


def leaf_copy(x: torch.Tensor) -> torch.Tensor:
    """A leaf copy of x with x's own strides, a strided view's too (clone makes those dense, so the
    op would never see the layout a test built); overlapping layouts (stride 0) are cloned."""
    if x.is_contiguous() or 0 in x.stride() or x.numel() == 0:
        leaf = x.detach().clone()
    else:
        leaf = torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=x.device).copy_(x.detach())
    return leaf.requires_grad_(x.requires_grad)


def run_with_grads(fn: Callable, inputs: Sequence, backend: str, grad_seed: int):
    """Run fn(*inputs) on `backend` (inputs get leaf copies in their own layouts); backpropagate random
    weights through every float output; return (outputs, grads of the grad-requiring inputs)."""
    leaves = [leaf_copy(x) if isinstance(x, torch.Tensor) else x for x in inputs]
    with poisoned_outputs(), pyaudiok.use_backend(backend):
        outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    gen = torch.Generator().manual_seed(grad_seed)
    loss = 0
    for out in outputs:
        if out.is_floating_point() and out.requires_grad:
            weight = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)
            loss = loss + (out * weight).sum()
    if isinstance(loss, torch.Tensor):
        loss.backward()
    grads = [x.grad for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad]
    return outputs, grads


def compare_with_reference(fn: Callable, inputs: Sequence, backend: str, *, scale: float = 1.0,
                           exact: Sequence[int] = ()) -> tuple:
    """Check fn on `backend` against fn on the reference in float64: every float output and every
    input gradient within tolerance; outputs at indices `exact` (e.g. integer codes) identical.
    Returns (backend outputs, reference outputs)."""
    dtype = next(x.dtype for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point())
    ref_inputs = [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs]
    ref_out, ref_grads = run_with_grads(fn, ref_inputs, "reference", grad_seed=1)
    out, grads = run_with_grads(fn, inputs, backend, grad_seed=1)
    same_dtype = same_dtype_reference(fn, inputs)
    for i, (o, r) in enumerate(zip(out, ref_out)):
        if i in exact or not o.is_floating_point():
            assert torch.equal(o.cpu(), r.cpu()), f"output {i} differs from the reference"
        else:
            assert_close(f"output {i}", o, r, dtype, scale, lambda i=i: pick(same_dtype(), 0, i))
    assert len(grads) == len(ref_grads)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert (g is None) == (r is None), f"gradient of input {i}: backend None={g is None}, reference None={r is None}"
        if g is not None:
            assert_close(f"gradient of input {i}", g, r, dtype, scale, lambda i=i: pick(same_dtype(), 1, i))
    return out, ref_out


def pick(result: tuple | None, kind: int, i: int) -> torch.Tensor | None:
    """Output (kind 0) or gradient (kind 1) number i of a same_dtype_reference result, if it ran."""
    return None if result is None else result[kind][i]


def same_dtype_reference(fn: Callable, inputs: Sequence) -> Callable[[], tuple]:
    """A memoised thunk: (outputs, grads) of fn on the reference backend at the inputs' own dtype,
    for assert_close's conditioning fallback (computed only if some check needs it)."""
    cache: list = []

    def run() -> tuple:
        if not cache:
            try:
                cache.append(run_with_grads(fn, inputs, "reference", grad_seed=1))
            except (RuntimeError, NotImplementedError):  # e.g. no half-precision FFT on this device
                cache.append(None)
        return cache[0]
    return run


def native_backends(backends: Sequence[str]) -> tuple[str, ...]:
    """The backends among `backends` that run at full speed here (not Triton's interpreter)."""
    return tuple(b for b in backends if b == "cpu" or torch.cuda.is_available())


def generated_case_tests(check: Callable, backends: Sequence[str], full: dict, tiny: dict,
                         full_examples: int = 20) -> tuple[Callable, Callable]:
    """The two generated-input tests of an op: `check(data, backend, **full)` on a backend drawn from
    those that run at full speed, and `check(data, "triton", **tiny)` on tiny cases, which the Triton
    interpreter can afford (3 examples). Assign them to test_* names in the op's test module."""
    @settings(max_examples=full_examples, deadline=None)
    @given(data=st.data())
    def full_speed(data):
        check(data, data.draw(st.sampled_from(native_backends(backends)), label="backend"), **full)

    @settings(max_examples=3, deadline=None)
    @given(data=st.data())
    def tiny_on_triton(data):
        check(data, "triton", **tiny)
    return full_speed, tiny_on_triton
