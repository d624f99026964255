"""How the custom ops defined in Python are called (Triton launchers and the CPU kernels' glue): directly
in eager mode when neither autograd nor a tracer needs the registered custom op (`DirectOp`), Triton
launches without `wrap_triton` then (`launchable`), and the registered op otherwise."""
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from pyaudiok import dispatch, ops
from pyaudiok.ops.fourier_crop import FOURIER_CROP, _triton_kernels, _triton_matrix_backward

from ..harness import assert_close, require_backend

pytest.importorskip("triton")


def _refusing(op):
    """The DirectOp with its registered op replaced by one that fails the test if called."""
    return mock.patch.object(op, "op", mock.Mock(side_effect=AssertionError("went through the registered op")))


def test_launchable_is_the_kernel_itself_unless_a_tracer_watches():
    """Eager: the kernel itself, launched with FP contraction requested (Triton 3.10 turns its default
    off); under a tracer: wrap_triton's kernel, whose compile options are inductor's."""
    from pyaudiok.kernels import gpu
    from pyaudiok.kernels.fourier_crop import _matrix_kernel
    from pyaudiok.ops._library import tracing
    with mock.patch.object(gpu, "wrap_triton", return_value="wrapped") as wrap:
        assert not tracing()
        assert gpu.launchable(_matrix_kernel).kernel is _matrix_kernel
        with FakeTensorMode():  # a tracer records launches through wrap_triton
            assert tracing()
            assert gpu.launchable(_matrix_kernel) == "wrapped"
    wrap.assert_called_once_with(_matrix_kernel)
    kernel = mock.MagicMock()
    gpu.launchable(kernel)[(3, 1)](1, 2, BLOCK=16, num_warps=4)
    kernel.__getitem__.assert_called_once_with((3, 1))
    kernel.__getitem__.return_value.assert_called_once_with(1, 2, BLOCK=16, num_warps=4, enable_fp_fusion=True)


def test_triton_op_calls_its_launcher_directly_when_nothing_needs_the_registration():
    device = require_backend(FOURIER_CROP, "triton")
    matrix = _triton_kernels().matrix
    mask = torch.rand(5, device=device)
    expected = matrix.op(mask, 16, 9)
    with _refusing(matrix):
        assert_close("direct call", matrix(mask, 16, 9), expected, torch.float32)  # no input takes a gradient
        with torch.no_grad():
            assert_close("direct call, no_grad", matrix(mask.requires_grad_(), 16, 9), expected, torch.float32)


def test_triton_op_goes_through_the_registration_for_autograd_and_tracers():
    device = require_backend(FOURIER_CROP, "triton")
    matrix = _triton_kernels().matrix
    mask = torch.rand(5, device=device, requires_grad=True)
    out = matrix(mask, 16, 9)  # grad mode on, an input requiring one: the registered autograd
    assert out.grad_fn is not None
    grad = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, mask, grad)
    assert_close("backward op, called directly", _triton_matrix_backward()(grad, mask.detach()), expected,
                 torch.float32)
    with _refusing(matrix) as registered:
        registered.side_effect = None
        registered.return_value = "registered"
        with FakeTensorMode():
            assert matrix(torch.empty(5), 16, 9) == "registered"
        assert matrix(mask, 16, 9) == "registered"
        with torch.autograd.forward_ad.dual_level():  # forward-mode AD: tangents are the registration's
            assert matrix(mask.detach(), 16, 9) == "registered"


def test_direct_call_keeps_the_op_name_in_profiles():
    device = require_backend(FOURIER_CROP, "triton")
    matrix = _triton_kernels().matrix
    with _refusing(matrix), torch.profiler.profile() as prof:
        matrix(torch.rand(5, device=device), 16, 9)
    assert "pyaudiok::fourier_crop_matrix_triton" in {event.name for event in prof.events()}


def test_public_op_with_direct_calls_matches_the_reference_forward_and_backward():
    """fourier_crop's Triton path calls every kernel directly (inside its own autograd nodes)."""
    device = require_backend(FOURIER_CROP, "triton")
    x = torch.randn(2, 3, 12, 10, device=device, dtype=torch.float64)
    outputs = {}
    for backend in ("reference", "triton"):
        xb = x.float().requires_grad_()
        strides = torch.tensor([1.7, 2.2], device=device, requires_grad=True)
        with dispatch.use_backend(backend):
            y = ops.fourier_crop(xb, strides, method="fft" if backend == "triton" else None)
        y.backward(torch.ones_like(y))
        outputs[backend] = (y.detach(), xb.grad, strides.grad)
    for name, out, ref in zip(("y", "dx", "dstrides"), outputs["triton"], outputs["reference"]):
        assert_close(name, out, ref, torch.float32)


def test_torch_compile_traces_a_triton_op_call_without_a_graph_break():
    """Under torch.compile the call is the registered op, and deciding so breaks no graph."""
    device = require_backend(FOURIER_CROP, "triton")
    matrix = _triton_kernels().matrix

    def double(mask):
        return matrix(mask, 16, 9) * 2

    torch._dynamo.reset()
    mask = torch.rand(5, device=device)
    assert_close("compiled", torch.compile(double, backend="eager", fullgraph=True)(mask), double(mask),
                 torch.float32)


def test_cpu_custom_op_calls_its_python_kernel_directly_without_gradients():
    """The CPU kernels' glue (Perceiver AR's attention in a cached sampling step) skips the
    registration in inference, and takes it when a gradient is needed."""
    from pyaudiok.ops.latent_attention import OP, _cpu_forward
    require_backend(OP, "cpu")
    q, k, v = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16)
    expected = _cpu_forward.op(q, k, v, None, 0.25, None)
    with _refusing(_cpu_forward), torch.no_grad():
        for got, want in zip(_cpu_forward(q, k, v, None, 0.25, None), expected):
            assert_close("direct call", got, want, torch.float32)
    out, _ = _cpu_forward(q.requires_grad_(), k, v, None, 0.25, None)
    assert out.grad_fn is not None  # through the registered autograd
