"""Bilinear contrastive loss: every backend against the reference, forward and the gradients to
anchors, positives and W; edge cases, bad inputs, opcheck of the registered raw ops."""
from __future__ import annotations

import pytest
import torch

import pyaudiok
from pyaudiok.ops import bilinear_contrastive_loss
from pyaudiok.ops.bilinear_contrastive import OP, bilinear_contrastive_reference

from ..harness import assert_close, compare_with_reference, poisoned_outputs, require_backend

BACKENDS = ("cpu", "triton")
OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _inputs(B, D, device, dtype=torch.float32, scale=0.3):
    a, p = (torch.randn(B, D, dtype=torch.float64) for _ in range(2))
    w = torch.randn(D, D, dtype=torch.float64) * scale
    p = 0.5 * a + p  # correlated pairs: the diagonal matters
    return [x.to(device, dtype).requires_grad_() for x in (a, p, w)]


def _loss(symmetric, reduction):
    return lambda a, p, w: bilinear_contrastive_loss(a, p, w, symmetric=symmetric, reduction=reduction)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,D", [(37, 19), (1, 5), (50, 33), (16, 16)])
@pytest.mark.parametrize("symmetric,reduction", [(False, "mean"), (True, "none"), (False, "sum"), (True, "mean")])
def test_forward_and_gradients_match_reference(backend, B, D, symmetric, reduction):
    device = require_backend(OP, backend)
    compare_with_reference(_loss(symmetric, reduction), _inputs(B, D, device), backend)


def test_cpu_backend_in_float64_and_large_batch():
    """B well past one row block of the cpu path (blocks of 2**22 scores: 1997 rows here)."""
    require_backend(OP, "cpu", torch.float64)
    compare_with_reference(_loss(True, "mean"), _inputs(4100, 7, "cpu", torch.float64, scale=0.1), "cpu")


@pytest.mark.parametrize("symmetric,reduction", [(False, "mean"), (True, "none")])
def test_cpu_backend_with_sharp_logits(symmetric, reduction):
    """Logits spread over hundreds of units: most probabilities underflow float32 (the cpu path
    clamps their exponent above the denormal range), the result must not move."""
    require_backend(OP, "cpu")
    compare_with_reference(_loss(symmetric, reduction), _inputs(600, 24, "cpu", scale=8.0), "cpu")


def test_cpu_backend_at_4096():
    require_backend(OP, "cpu")
    compare_with_reference(_loss(False, "mean"), _inputs(4096, 9, "cpu", scale=0.1), "cpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    device = require_backend(OP, backend)
    a, p, w = (x.detach() for x in _inputs(40, 22, device))
    a_nc = a.T.contiguous().T.requires_grad_()  # column-major
    p_nc = torch.cat([p, p], 1)[:, ::2].detach().requires_grad_()  # strided
    w_nc = w.T.contiguous().T.requires_grad_()
    assert not (a_nc.is_contiguous() or p_nc.is_contiguous() or w_nc.is_contiguous())
    compare_with_reference(_loss(True, "none"), (a_nc, p_nc, w_nc), backend)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_single_pair_has_zero_loss_and_zero_gradients(backend):
    device = require_backend(OP, backend) if backend != "reference" else torch.device("cpu")
    a, p, w = _inputs(1, 6, device)
    with pyaudiok.use_backend(backend):
        loss = bilinear_contrastive_loss(a, p, w, symmetric=True)
    loss.backward()
    # lse of one score is the score itself (up to the rounding of two dot-product orders).
    assert abs(loss.item()) <= 1e-6
    for x in (a, p, w):
        assert x.grad.abs().max() <= 1e-6


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(backend, reduction):
    """B = 0: mean and sum are 0, none is [0]; gradients exist and are zero."""
    device = require_backend(OP, backend) if backend != "reference" else torch.device("cpu")
    a, p, w = _inputs(0, 4, device)
    with pyaudiok.use_backend(backend):
        loss = bilinear_contrastive_loss(a, p, w, reduction=reduction)
    assert loss.shape == ((0,) if reduction == "none" else ())
    loss.sum().backward()
    assert torch.count_nonzero(w.grad) == 0 and a.grad.shape == (0, 4)


def test_reference_matches_explicit_formula():
    a, p, w = (x.detach().double() for x in _inputs(9, 4, "cpu"))
    S = a @ w @ p.T
    rows = torch.logsumexp(S, 1) - S.diagonal()
    cols = torch.logsumexp(S, 0) - S.diagonal()
    torch.testing.assert_close(bilinear_contrastive_reference(a, p, w), rows.mean())
    torch.testing.assert_close(bilinear_contrastive_reference(a, p, w, True, "none"), 0.5 * (rows + cols))


def test_triton_rows_kernels_without_autograd():
    """The raw kernels on their own, poisoned outputs, odd sizes crossing tile edges."""
    device = require_backend(OP, "triton")
    from pyaudiok.kernels.bilinear_contrastive import rows_backward, rows_forward
    x, y = torch.randn(45, 21, device=device), torch.randn(45, 21, device=device)
    g = torch.randn(45, device=device)
    with poisoned_outputs():
        loss, lse = rows_forward(x, y)
        dx, dy = rows_backward(g, x, y, lse)
    xd, yd = x.double().requires_grad_(), y.double().requires_grad_()
    S = xd @ yd.T
    ref = torch.logsumexp(S, 1) - S.diagonal()
    (ref * g.double()).sum().backward()
    assert_close("loss", loss, ref, torch.float32)
    assert_close("lse", lse, torch.logsumexp(S, 1), torch.float32)
    assert_close("dx", dx, xd.grad, torch.float32)
    assert_close("dy", dy, yd.grad, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_registered_ops_pass_opcheck(backend):
    device = require_backend(OP, backend)
    if backend == "triton":
        from pyaudiok.ops.bilinear_contrastive import _triton_backward, _triton_forward
        forward, backward = _triton_forward(), _triton_backward()
    else:
        from pyaudiok.ops.bilinear_contrastive import _cpu_backward as backward, _cpu_forward as forward
    x, y = (torch.randn(13, 7, device=device, requires_grad=True) for _ in range(2))
    extra = () if backend == "triton" else (True,)  # cpu: with_grad (gradients for g = 1 in the forward)
    tests = OPCHECK_TESTS
    if backend == "triton" and device.type == "cpu":  # AOT tracing gives the interpreter storage-less tensors
        tests = tuple(t for t in tests if t != "test_aot_dispatch_dynamic")
    torch.library.opcheck(forward, (x, y) + extra, test_utils=tests)
    if extra:
        torch.library.opcheck(forward, (x, y, False), test_utils=tests)
    out = forward(x, y, *extra)
    loss, lse = out[0], out[2 if extra else 1]
    torch.library.opcheck(backward, (torch.randn_like(loss), x.detach(), y.detach(), lse.detach()),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_precision(dtype):
    device = require_backend(OP, "triton", dtype)
    compare_with_reference(_loss(True, "mean"), _inputs(300, 64, device, dtype, scale=0.05), "triton", scale=2.0)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument.

def _good():
    return torch.randn(4, 3), torch.randn(4, 3), torch.randn(3, 3)


@pytest.mark.parametrize("change,error,match", [
    (lambda a, p, w: (a.numpy(), p, w), TypeError, "anchors must be a torch.Tensor"),
    (lambda a, p, w: (a.long(), p, w), TypeError, "anchors must have dtype"),
    (lambda a, p, w: (a[None], p, w), ValueError, r"anchors must have shape \[B, D\]"),
    (lambda a, p, w: (a, p[:3], w), ValueError, "positives must have the shape of anchors"),
    (lambda a, p, w: (a, p, w[:2]), ValueError, r"weight must have shape \[D, D\] = \[3, 3\]"),
    (lambda a, p, w: (a, p.double(), w), TypeError, "positives must have the dtype of anchors"),
    (lambda a, p, w: (a, p, w.double()), TypeError, "weight must have the dtype of anchors"),
    (lambda a, p, w: (a, p, w[None]), ValueError, r"weight must have shape \[D, D\]"),
    (lambda a, p, w: (a[:, :0], p[:, :0], w[:0, :0]), ValueError, "D >= 1"),
])
def test_bad_inputs_raise_clear_errors(change, error, match):
    with pytest.raises(error, match=match):
        bilinear_contrastive_loss(*change(*_good()))


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="reduction must be one of"):
        bilinear_contrastive_loss(*_good(), reduction="avg")
    with pytest.raises(TypeError, match="symmetric must be a bool"):
        bilinear_contrastive_loss(*_good(), symmetric=1)
