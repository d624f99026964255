"""Bilinear contrastive loss: every backend against the reference, forward and the gradients to
anchors, positives and W; edge cases, bad inputs, opcheck of the registered raw ops."""
from __future__ import annotations

from itertools import pairwise
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import bilinear_contrastive_loss
from pyaudiok.ops.bilinear_contrastive import OP, REDUCTIONS, bilinear_contrastive_reference

from ..harness import (TOLERANCE, assert_close, compare_with_reference, forward_opcheck_tests, opcheck,
                       poisoned_outputs, require_backend)

BACKENDS = ("cpu", "triton")


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


def _check_generated_batch(data, backend, batches, max_features, dtypes):
    """A drawn batch on `backend` against the reference, the loss and its gradients to anchors, positives
    and W: odd and even B and D, either direction set, each reduction, logits from flat to sharp,
    inputs laid out column-major now and then."""
    device = require_backend(OP, backend)
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    B = data.draw(st.integers(*batches), label="B")
    D = data.draw(st.integers(1, max_features), label="D")
    dtype = data.draw(st.sampled_from(dtypes), label="dtype")
    # The logits spread by about W's scale times D: up to 10. Sharper, a small batch can have every off-diagonal
    # probability near float32's rounding (the loss lse − S_ii then cancels) or below its normal range, which
    # no float32 computation holds to a relative tolerance (test_cpu_backend_with_sharp_logits: large B).
    scale = 10 ** data.draw(st.floats(-1.0, 1.0), label="log10 spread") / D
    loss = _loss(data.draw(st.booleans(), label="symmetric"), data.draw(st.sampled_from(REDUCTIONS)))
    # Column-major, as a strided view would not survive the harness's copy of the inputs.
    transposed = data.draw(st.tuples(*[st.booleans()] * 3), label="column-major")
    inputs = [x.detach().T.contiguous().T.requires_grad_() if t else x
              for x, t in zip(_inputs(B, D, device, dtype, scale), transposed)]
    compare_with_reference(loss, inputs, backend)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_generated_batches_match_reference(data):
    _check_generated_batch(data, "cpu", batches=(0, 40), max_features=33, dtypes=(torch.float32, torch.float64))


@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_generated_batches_match_reference_on_triton(data):
    # Three examples in the interpreter: none of them spent on an empty batch (handled before any backend).
    _check_generated_batch(data, "triton", batches=(1, 20), max_features=12, dtypes=(torch.float32,))


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_single_pair_has_zero_loss_and_zero_gradients(backend):
    device = require_backend(OP, backend) if backend != "reference" else torch.device("cpu")
    a, p, w = _inputs(1, 6, device)
    with pyaudiok.use_backend(backend):
        loss = bilinear_contrastive_loss(a, p, w, symmetric=True)
    loss.backward()
    # lse of one score is the score itself (up to the rounding of two dot-product orders).
    assert abs(loss.item()) <= 1e-6
    # The GPU route recomputes the score for the gradient as 3×TF32 products summed in another
    # order, so P = exp(S − lse) is 1 only to a few float32 ulps (1.4e-6 seen on an H200).
    for x in (a, p, w):
        assert x.grad.abs().max() <= 5e-6


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_again_through_a_retained_graph(backend):
    """The forward's precomputed gradients are handed on (scaled in place) by the first backward; a
    second backward through the retained graph must recompute them, not reuse the scaled buffers."""
    device = require_backend(OP, backend)
    inputs = _inputs(40, 12, device)
    with pyaudiok.use_backend(backend):
        loss = bilinear_contrastive_loss(*inputs, symmetric=True)
    first = torch.autograd.grad(loss * 3.0, inputs, retain_graph=True)
    second = torch.autograd.grad(loss * 3.0, inputs)
    expected = torch.autograd.grad(bilinear_contrastive_reference(*inputs, symmetric=True) * 3.0, inputs)
    for name, a, b, ref in zip(("anchors", "positives", "weight"), first, second, expected):
        assert_close(f"first d{name}", a, ref, torch.float32)
        assert_close(f"second d{name}", b, ref, torch.float32)


def test_reference_matches_explicit_formula():
    a, p, w = (x.detach().double() for x in _inputs(9, 4, "cpu"))
    S = a @ w @ p.T
    rows = torch.logsumexp(S, 1) - S.diagonal()
    cols = torch.logsumexp(S, 0) - S.diagonal()
    torch.testing.assert_close(bilinear_contrastive_reference(a, p, w), rows.mean())
    torch.testing.assert_close(bilinear_contrastive_reference(a, p, w, True, "none"), 0.5 * (rows + cols))


def test_triton_rows_kernels_without_autograd():
    """The raw kernels on their own, poisoned outputs, odd sizes crossing tile and strip edges
    (two strips of S in the interpreter); the forward's own gradients of Σ loss included."""
    device = require_backend(OP, "triton")
    from pyaudiok.kernels.bilinear_contrastive import rows_backward, rows_forward
    x, y = torch.randn(45, 21, device=device), torch.randn(45, 21, device=device)
    g = torch.randn(45, device=device)
    with poisoned_outputs():
        loss, total, lse, gx, gy = rows_forward(x, y, True)
        loss_only = rows_forward(x, y, False)
        dx, dy = rows_backward(g, x, y, lse)
    xd, yd = x.double().requires_grad_(), y.double().requires_grad_()
    S = xd @ yd.T
    ref = torch.logsumexp(S, 1) - S.diagonal()
    gx_ref, gy_ref = torch.autograd.grad(ref.sum(), (xd, yd), retain_graph=True)
    (ref * g.double()).sum().backward()
    for out in (loss, loss_only[0]):
        assert_close("loss", out, ref, torch.float32)
    assert_close("total", total, ref.sum(), torch.float32)
    assert_close("lse", lse, torch.logsumexp(S, 1), torch.float32)
    assert_close("gx", gx, gx_ref, torch.float32)
    assert_close("gy", gy, gy_ref, torch.float32)
    assert loss_only[3].numel() == loss_only[4].numel() == 0
    assert_close("dx", dx, xd.grad, torch.float32)
    assert_close("dy", dy, yd.grad, torch.float32)


def test_triton_tf32_split_is_exact():
    """hi is exact in TF32 (13 low mantissa bits clear), hi + lo = x exactly; the operands hold
    [hi, hi, lo] (X) and [hi, lo, hi] (Y) along K and the transposed parts."""
    from pyaudiok.kernels.bilinear_contrastive import _operands
    from pyaudiok.kernels.tf32 import parts as tf32_parts
    x = torch.randn(33, 7) * torch.logspace(-30, 30, 7)
    hi, lo = tf32_parts(x)
    assert torch.equal(hi + lo, x)
    assert not (hi.view(torch.int32) & 8191).any()
    assert (lo.abs() <= x.abs() * 2.0**-10).all()
    xo, yo = _operands(x, 2 * x)
    assert torch.equal(xo.k_cat, torch.cat([hi, hi, lo], 1)) and torch.equal(yo.k_cat, 2 * torch.cat([hi, lo, hi], 1))
    assert torch.equal(xo.t_hi, hi.T) and torch.equal(xo.t_lo, lo.T)
    half, _ = _operands(x.half(), x.half())
    assert not half.split and half.k_cat is half.full and half.t_lo is half.t_hi
    assert torch.equal(half.t_hi, half.full.T)


@pytest.mark.parametrize("allow_tf32", [False, True])
def test_triton_follows_torchs_tf32_switch(allow_tf32):
    """fp32 operands are split for 3×TF32 products unless torch's matmuls may use TF32, as for
    latent attention: then one TF32 product, still against the reference's tolerance scaled for it
    (exact in the interpreter, which computes the products in fp32)."""
    from pyaudiok.kernels.bilinear_contrastive import _operands
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        xo, _ = _operands(torch.randn(5, 3), torch.randn(5, 3))
        assert xo.split is not allow_tf32
        assert xo.k_cat.shape == ((5, 3) if allow_tf32 else (5, 9))
        device = require_backend(OP, "triton")
        # One TF32 product rounds each operand to 10 mantissa bits: ~1e-3 relative on a GPU.
        compare_with_reference(_loss(True, "mean"), _inputs(40, 24, device), "triton",
                               scale=500.0 if allow_tf32 else 1.0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _tf32(t):
    """What a TF32 tensor core reads of an fp32 value: the 13 low mantissa bits dropped."""
    return (t.view(torch.int32) & -8192).view(torch.float32)


def test_three_tf32_products_reach_float32_tolerance():
    """The GPU kernels' products, emulated: hi·hi + hi·lo + lo·hi of TF32-truncated parts (fp32
    sums) of the bench's scale (D = 512) stay within the fp32 tolerance of the exact product,
    where one TF32 product does not (why fp32 inputs take 3 tensor-core products)."""
    from pyaudiok.kernels.tf32 import parts as tf32_parts
    x, y = torch.randn(256, 512), torch.randn(512, 256)
    exact = x.double() @ y.double()
    (xh, xl), (yh, yl) = tf32_parts(x), tf32_parts(y)
    three = xh @ _tf32(yl) + _tf32(xl) @ yh + xh @ yh
    one = _tf32(x) @ _tf32(y)
    def err(out):
        return ((out.double() - exact).norm() / exact.norm()).item()

    assert err(three) <= 0.1 * TOLERANCE[torch.float32] < err(one)


def test_triton_gpu_plan():
    """The GPU configuration: strips covering B of at most _STRIP_ELEMENTS scores unless the dX
    kernel needs more rows to give every SM a program; 128-row tiles then, 64-row tiles for small B."""
    from pyaudiok.kernels import bilinear_contrastive as k
    cuda = torch.device("cuda", 0)
    with patch.object(k, "_sm_count", lambda device: 132):
        for B in (1024, 4096, 8192, 16384, 50000):
            cfg = k._config(B, 512, cuda)
            strips = k._strips(B, cfg)
            assert strips[0][0] == 0 and sum(rows for _, rows in strips) == B
            assert all(r + n == r2 for (r, n), (r2, _) in pairwise(strips))
            assert cfg["strip"] * B <= k._STRIP_ELEMENTS or cfg["strip"] // 128 * 4 in range(132, 136)
            assert cfg["block_m"] == (64 if B == 1024 else 128)


@pytest.mark.gpu
@pytest.mark.parametrize("B,D,strip_elements", [(4096, 512, None), (700, 72, 1 << 16)])
def test_triton_on_gpu_tiles_and_strips(B, D, strip_elements):
    """The GPU's 128-row tiles of 8 warps (132 SMs, as on an H100 / H200): at B = 4096, D = 512
    (one strip), and over several strips with a ragged last one (a small strip budget)."""
    device = require_backend(OP, "triton")
    from pyaudiok.kernels import bilinear_contrastive as k
    with patch.object(k, "_STRIP_ELEMENTS", strip_elements or k._STRIP_ELEMENTS), \
            patch.object(k, "_sm_count", lambda device: 132 if strip_elements is None else 1):
        cfg = k._config(B, D, device)
        assert cfg["block_m"] == 128 and len(k._strips(B, cfg)) == (1 if strip_elements is None else 6)
        for symmetric, reduction in ((True, "mean"), (False, "none")):
            compare_with_reference(_loss(symmetric, reduction), _inputs(B, D, device, scale=0.05), "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_registered_ops_pass_opcheck(backend):
    device = require_backend(OP, backend)
    if backend == "triton":
        from pyaudiok.ops.bilinear_contrastive import _triton_backward, _triton_forward
        forward, backward = _triton_forward(), _triton_backward()
    else:
        from pyaudiok.ops.bilinear_contrastive import _cpu_backward as backward, _cpu_forward as forward
    x, y = (torch.randn(13, 7, device=device, requires_grad=True) for _ in range(2))
    inputs = (x, y)
    if backend == "cpu":  # the cpu pair applies W itself: S = (x w) yᵀ
        inputs += (torch.randn(7, 7, device=device, requires_grad=True),)
    tests = forward_opcheck_tests(backend, device)
    for with_grad in (True, False):  # with_grad: the gradients for g = 1 come with the forward
        opcheck(forward, (*inputs, with_grad), test_utils=tests)
    loss, _, lse, *_ = forward(*inputs, True)
    opcheck(backward, (torch.randn_like(loss), *(t.detach() for t in inputs), lse.detach()),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", ("cpu", pytest.param("triton", marks=pytest.mark.gpu)))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, dtype):
    """Half inputs: Triton's kernels take them as they are, the CPU kernels compute in float32."""
    device = require_backend(OP, backend, dtype)
    out, _ = compare_with_reference(_loss(True, "mean"), _inputs(300, 64, device, dtype, scale=0.05), backend,
                                    scale=2.0)
    assert out[0].dtype == dtype


def test_triton_float16_in_the_interpreter():
    """Half inputs through the Triton kernels at a small batch, forward and backward (bfloat16 only on
    a GPU: the interpreter's bfloat16 dot products are not exact)."""
    device = require_backend(OP, "triton", torch.float16)
    out, _ = compare_with_reference(_loss(True, "mean"), _inputs(37, 16, device, torch.float16, scale=0.05), "triton",
                                    scale=2.0)
    assert out[0].dtype == torch.float16


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
