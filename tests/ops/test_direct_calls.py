"""How the custom ops defined in Python are called (Triton launchers and the CPU kernels' glue): directly
in eager mode (`DirectOp`), inside an autograd.Function of the op's own autograd rule when a gradient is
taken, Triton launches without `wrap_triton` then (`launchable`); through the registered custom op under
tracers, forward-mode AD and torch.func transforms."""
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from pyaudiok import dispatch, ops
from pyaudiok.ops import _library
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


def test_triton_op_goes_through_the_registration_for_tracers_and_forward_ad():
    device = require_backend(FOURIER_CROP, "triton")
    matrix = _triton_kernels().matrix
    mask = torch.rand(5, device=device, requires_grad=True)
    with _refusing(matrix) as registered:
        registered.side_effect = None
        registered.return_value = "registered"
        with FakeTensorMode():
            assert matrix(torch.empty(5), 16, 9) == "registered"
        with torch.autograd.forward_ad.dual_level():  # forward-mode AD: tangents are the registration's
            assert matrix(mask.detach(), 16, 9) == "registered"
            assert matrix(mask, 16, 9) == "registered"


def test_eager_training_calls_the_kernel_inside_the_ops_own_autograd_rule():
    """A call taking a gradient in plain eager mode skips the registered op: its kernel runs in an
    autograd.Function made of the rule given to register_autograd, whose backward is that rule's."""
    device = require_backend(FOURIER_CROP, "triton")
    matrix = _triton_kernels().matrix
    mask = torch.rand(5, device=device, requires_grad=True)
    backward, setup_context = _library._AUTOGRAD[matrix.name]
    counting = mock.Mock(wraps=backward)
    with _refusing(matrix), mock.patch.dict(_library._AUTOGRAD, {matrix.name: (counting, setup_context)}):
        out = matrix(mask, 16, 9)
        assert type(out.grad_fn).__name__ == "EagerAutograd_pyaudiok_fourier_crop_matrix_tritonBackward"
        grad = torch.randn_like(out)
        (got,) = torch.autograd.grad(out, mask, grad)
    assert counting.call_count == 1
    (expected,) = torch.autograd.grad(matrix.op(mask, 16, 9), mask, grad)
    assert torch.equal(got, expected)
    assert_close("backward op, called directly", _triton_matrix_backward()(grad, mask.detach()), expected,
                 torch.float32)


def _latent_cpu(device):
    from pyaudiok.ops.latent_attention import _cpu_forward
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    return _cpu_forward, (q, k, v, torch.tensor([4]), 0.3, None), (0, 1, 2)


def _bilinear_cpu(device):
    from pyaudiok.ops.bilinear_contrastive import _cpu_forward
    return _cpu_forward, (torch.randn(6, 4), torch.randn(6, 5), torch.randn(4, 5), True), (0, 1, 2)


def _group_norm_cpp(device):
    args = (torch.randn(2, 4, 6), torch.randn(2, 4), torch.randn(2, 4), torch.full((4,), 0.25), 2, 1e-5)
    return _library.cpp_op("group_norm_film_prelu_forward"), args, (0, 1, 2, 3)


def _collar_vad_cpp(device):
    args = (torch.randn(2, 3, 10), (torch.rand(2, 3, 10) > 0.5).float(), torch.arange(3).expand(2, 3).contiguous(), 2.0)
    return _library.cpp_op("collar_vad_forward"), args, (0,)


def _fourier_matrix_triton(device):
    return _triton_kernels().matrix, (torch.rand(5, device=device), 16, 9), (0,)


def _soft_rank_triton(device):
    from pyaudiok.ops.soft_rank import _triton_forward
    return _triton_forward(), (torch.randn(2, 6, device=device), 0.5, False, True, False), (0,)


def _rvq_triton(device):
    from pyaudiok.ops.rvq import _triton_forward
    return _triton_forward(), (torch.randn(5, 4, device=device), torch.randn(2, 3, 4, device=device), 2), (0,)


# A raw op's test name -> (the public op it serves, its backend, the op and its inputs).
RAW_OPS = {"latent_attention cpu": ("latent_cross_attention", "cpu", _latent_cpu),
           "bilinear_contrastive cpu": ("bilinear_contrastive_loss", "cpu", _bilinear_cpu),
           "group_norm_film_prelu C++": ("group_norm_film_prelu", "cpu", _group_norm_cpp),
           "collar_vad C++": ("collar_vad_loss", "cpu", _collar_vad_cpp),
           "fourier_crop_matrix triton": ("fourier_crop", "triton", _fourier_matrix_triton),
           "soft_sort_rank triton": ("soft_rank", "triton", _soft_rank_triton),
           "rvq_forward triton": ("residual_vq", "triton", _rvq_triton)}


def _outputs_and_gradients(call, args, differentiable, used):
    """call's outputs and the gradients of its outputs at `used` (fixed cotangents) to the inputs at
    `differentiable`."""
    torch.manual_seed(0)
    leaves = [a.clone().requires_grad_() if i in differentiable else a for i, a in enumerate(args)]
    out = call(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    taken = [outs[i] for i in used]
    grads = torch.autograd.grad(taken, [leaves[i] for i in differentiable], [torch.randn_like(t) for t in taken])
    return outs, grads


@pytest.mark.parametrize("name", RAW_OPS)
@pytest.mark.parametrize("used", ("first output", "every floating output"))
def test_eager_autograd_gives_the_registered_ops_outputs_and_gradients(name, used):
    public, backend, make = RAW_OPS[name]
    device = require_backend(dispatch.op(public), backend)
    op, args, differentiable = make(device)
    outs = op.op(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    taken = (0,) if used == "first output" else tuple(i for i, t in enumerate(outs) if t.is_floating_point())
    with _refusing(op):
        got, got_grads = _outputs_and_gradients(op, args, differentiable, taken)
    want, want_grads = _outputs_and_gradients(op.op, args, differentiable, taken)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and torch.equal(g, w), f"output {i}"
        assert g.requires_grad == w.requires_grad == g.is_floating_point(), f"output {i}: integer outputs take none"
    for i, g, w in zip(differentiable, got_grads, want_grads):
        assert torch.equal(g, w), f"gradient of input {i}"


def test_eager_autograd_hands_unused_outputs_none_where_the_rule_asks():
    """ctx.set_materialize_grads(False) in the rule's setup_context holds: an unused output's gradient
    reaches the backward as None, not as zeros."""
    from pyaudiok.ops.latent_attention import OP, _cpu_forward
    require_backend(OP, "cpu")
    backward, setup_context = _library._AUTOGRAD[_cpu_forward.name]
    received = []

    def recording(ctx, *grads):
        received.append(grads)
        return backward(ctx, *grads)

    q, k, v = (torch.randn(1, 2, 3, 8, requires_grad=True) for _ in range(3))
    with _refusing(_cpu_forward), mock.patch.dict(_library._AUTOGRAD, {_cpu_forward.name: (recording, setup_context)}):
        out, _ = _cpu_forward(q, k, v, None, 0.3, None)
        out.sum().backward()
    ((grad_out, grad_lse),) = received
    assert grad_out is not None and grad_lse is None


def test_eager_autograd_keeps_first_order_backwards_from_being_differentiated_again():
    from pyaudiok.ops.latent_attention import OP, _cpu_forward
    require_backend(OP, "cpu")
    q, k, v = (torch.randn(1, 2, 3, 8, requires_grad=True) for _ in range(3))
    with _refusing(_cpu_forward):
        out, _ = _cpu_forward(q, k, v, None, 0.3, None)
    (dq,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="not differentiable again"):
        dq.sum().backward()


def test_make_fx_and_vmap_see_the_registered_op_when_gradients_are_taken():
    from torch.fx.experimental.proxy_tensor import make_fx
    from pyaudiok.ops.latent_attention import OP, _cpu_forward
    require_backend(OP, "cpu")
    q, k, v = (torch.randn(1, 2, 3, 8, requires_grad=True) for _ in range(3))
    graph = make_fx(lambda *qkv: _cpu_forward(*qkv, None, 0.3, None)[0])(q, k, v)
    assert torch.ops.pyaudiok.latent_attention_cpu.default in {node.target for node in graph.graph.nodes}
    queries = torch.randn(2, 1, 2, 3, 8)  # batched; k and v, captured, take gradients
    with mock.patch.object(_cpu_forward, "op", mock.Mock(wraps=_cpu_forward.op)) as registered:
        out = torch.func.vmap(lambda q: _cpu_forward(q, k, v, None, 0.3, None)[0])(queries)
    assert registered.call_count == 1 and "EagerAutograd" not in type(out.grad_fn).__name__


def test_torch_compile_traces_the_registered_op_when_gradients_are_taken():
    device = require_backend(FOURIER_CROP, "triton")
    matrix = _triton_kernels().matrix
    targets = set()

    def recording_backend(gm, example_inputs):
        targets.update(node.target for node in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    mask = torch.rand(5, device=device, requires_grad=True)
    out = torch.compile(lambda m: matrix(m, 16, 9) * 2, backend=recording_backend, fullgraph=True)(mask)
    assert torch.ops.pyaudiok.fourier_crop_matrix_triton in targets or \
        torch.ops.pyaudiok.fourier_crop_matrix_triton.default in targets
    (got,) = torch.autograd.grad(out.sum(), mask)
    (expected,) = torch.autograd.grad((matrix.op(mask, 16, 9) * 2).sum(), mask)
    assert_close("compiled gradient", got, expected, torch.float32)


@pytest.mark.parametrize("requires_grad", (False, True))
def test_direct_call_keeps_the_op_name_in_profiles(requires_grad):
    device = require_backend(FOURIER_CROP, "triton")
    matrix = _triton_kernels().matrix
    with _refusing(matrix), torch.profiler.profile() as prof:
        matrix(torch.rand(5, device=device, requires_grad=requires_grad), 16, 9)
    assert "pyaudiok::fourier_crop_matrix_triton" in {event.name for event in prof.events()}


@pytest.mark.parametrize("requires_grad", (False, True))
def test_cpp_op_called_directly_keeps_its_name_once_in_profiles(requires_grad):
    """The C++ op's dispatch records it (below autograd too): no second record around it."""
    from pyaudiok.ops.collar_vad import OP
    require_backend(OP, "cpu")
    forward, args, _ = _collar_vad_cpp(torch.device("cpu"))
    with _refusing(forward), torch.profiler.profile() as prof:
        forward(args[0].requires_grad_(requires_grad), *args[1:])
    assert [event.name for event in prof.events()].count("pyaudiok::collar_vad_forward") == 1


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
    registration in inference, and in training too (inside the op's own autograd rule)."""
    from pyaudiok.ops.latent_attention import OP, _cpu_forward
    require_backend(OP, "cpu")
    q, k, v = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16)
    expected = _cpu_forward.op(q, k, v, None, 0.25, None)
    with _refusing(_cpu_forward), torch.no_grad():
        for got, want in zip(_cpu_forward(q, k, v, None, 0.25, None), expected):
            assert_close("direct call", got, want, torch.float32)
    with _refusing(_cpu_forward):
        out, _ = _cpu_forward(q.requires_grad_(), k, v, None, 0.25, None)
    assert type(out.grad_fn).__name__ == "EagerAutograd_pyaudiok_latent_attention_cpuBackward"
