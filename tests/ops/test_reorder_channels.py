"""CHARM's fused reordering (masked softmax + batched product): every backend against the reference,
forward and both gradients; masks, odd and empty sizes, strided inputs, the raw ops, bad inputs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import reorder_channels
from pyaudiok.ops.reorder_channels import OP, TRITON_MAX_CHANNELS, reorder_channels_reference

from ..harness import compare_with_reference, forward_opcheck_tests, opcheck, require_backend

BACKENDS = ("cpu", "triton")
SIZES = [(2, 3, 5, 7), (3, 16, 16, 64), (2, 5, 19, 33), (1, 33, 6, 130), (4, 1, 1, 3), (2, 7, 70, 17)]  # B, K, C, T


def _mask(B, C, kind, device):
    """None, a random mask (a present channel per item guaranteed), or a single present channel per item."""
    if kind == "none":
        return None
    if kind == "single":
        return torch.nn.functional.one_hot(torch.randint(0, C, (B,)), C).bool().to(device)
    mask = torch.rand(B, C) > 0.4
    mask[torch.arange(B), torch.randint(0, C, (B,))] = True
    return mask.to(device)


def _inputs(B, K, C, T, device, dtype=torch.float32):
    logits = (2 * torch.randn(B, K, C, dtype=torch.float64)).to(device, dtype).requires_grad_()
    x = torch.randn(B, C, T, dtype=torch.float64).to(device, dtype).requires_grad_()
    return logits, x


def _compare(backend, logits, x, mask):
    return compare_with_reference(lambda lg, xs: reorder_channels(lg, xs, mask), (logits, x), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_kind", ["none", "random", "single"])
@pytest.mark.parametrize("B,K,C,T", SIZES)
def test_forward_and_gradients_match_reference(backend, B, K, C, T, mask_kind):
    device = require_backend(OP, backend)
    logits, x = _inputs(B, K, C, T, device)
    mask = _mask(B, C, mask_kind, device)
    (y, A), _ = _compare(backend, logits, x, mask)
    if mask is not None:  # absent channels get exactly nothing
        assert torch.count_nonzero(A.detach() * ~mask[:, None, :]) == 0


def _check_generated_sizes(data, backend, sizes, dtypes):
    """Drawn sizes (B, K, C, T in the ranges `sizes`) on `backend` against the reference, y and A and the
    gradients to logits and x: no mask or one with channels absent (at least one present per item),
    either dtype, now and then logits, x and the mask laid out transposed in memory."""
    device = require_backend(OP, backend)
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    B, K, C, T = (data.draw(st.integers(*bounds), label=name) for name, bounds in zip("BKCT", sizes))
    logits, x = _inputs(B, K, C, T, device, data.draw(st.sampled_from(dtypes), label="dtype"))
    transposed = data.draw(st.booleans(), label="transposed")
    if transposed:
        logits, x = (t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (logits, x))
    mask = None
    if data.draw(st.booleans(), label="masked"):
        row = st.tuples(st.lists(st.booleans(), min_size=C, max_size=C), st.integers(0, C - 1))
        rows = data.draw(st.lists(row, min_size=B, max_size=B), label="mask rows, a present channel each")
        mask = torch.tensor([[p or c == i for c, p in enumerate(r)] for r, i in rows], dtype=torch.bool).reshape(B, C)
        mask = (mask.T.contiguous().T if transposed else mask).to(device)
    (y, A), _ = _compare(backend, logits, x, mask)
    if mask is not None:  # absent channels get exactly nothing
        assert torch.count_nonzero(A.detach() * ~mask[:, None, :]) == 0


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_generated_sizes_match_reference(data):
    # Empty B, K or T as well (C >= 1: every item needs a present channel).
    _check_generated_sizes(data, "cpu", sizes=((0, 4), (0, 12), (1, 20), (0, 40)),
                           dtypes=(torch.float32, torch.float64))


@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_generated_sizes_match_reference_on_triton(data):
    # Three examples in the interpreter: none of them spent on empty sizes (test_empty has those).
    _check_generated_sizes(data, "triton", sizes=((1, 2), (1, 6), (1, 9), (1, 20)), dtypes=(torch.float32,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes(backend, dtype):
    device = require_backend(OP, backend, dtype)
    if backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter has no bf16 products (tested on a GPU)")
    logits, x = _inputs(3, 9, 13, 40, device, dtype)
    (y, A), _ = _compare(backend, logits, x, _mask(3, 13, "random", device))
    assert y.dtype == A.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_of_one_output_alone(backend):
    """Only y, or only A, takes a gradient (the other's is None in the backward)."""
    device = require_backend(OP, backend)
    logits, x = _inputs(2, 6, 11, 21, device)
    mask = _mask(2, 11, "random", device)
    for pick in (0, 1):
        compare_with_reference(lambda lg, xs: reorder_channels(lg, xs, mask)[pick], (logits, x), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    device = require_backend(OP, backend)
    logits, x = _inputs(3, 10, 12, 25, device)
    logits_t = logits.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    x_t = x.detach().transpose(0, 2).contiguous().transpose(0, 2).requires_grad_()
    mask = torch.rand(12, 3, device=device).T > 0.3
    mask[:, 0] = True
    assert not (logits_t.is_contiguous() or x_t.is_contiguous() or mask.is_contiguous())
    _compare(backend, logits_t, x_t, mask)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,K,C,T", [(0, 4, 5, 8), (2, 4, 5, 0), (2, 0, 5, 8)])
def test_empty(backend, B, K, C, T):
    device = require_backend(OP, backend)
    logits, x = _inputs(B, K, C, T, device)
    mask = _mask(B, C, "random", device)
    with pyaudiok.use_backend(backend):
        y, A = reorder_channels(logits, x, mask)
    assert y.shape == (B, K, T) and A.shape == (B, K, C)
    if T == 0 and B * K:  # A is still defined: each row sums to 1 over the present channels
        want = reorder_channels_reference(logits.detach(), x.detach(), mask)[1]
        torch.testing.assert_close(A.detach(), want)
    (y.sum() + A.sum()).backward()
    assert logits.grad.shape == logits.shape and x.grad.shape == x.shape
    if K == 0:  # no rows: nothing flows to x
        assert torch.count_nonzero(x.grad) == 0


def test_reference_is_the_module_formula():
    """The reference is ChannelReorder's former softmax path; rows sum to 1; y is A x."""
    logits, x = _inputs(3, 4, 6, 10, "cpu", torch.float64)
    mask = _mask(3, 6, "random", "cpu")
    y, A = reorder_channels_reference(logits, x, mask)
    expected = torch.where(mask[:, None], logits.exp(), 0.0)
    torch.testing.assert_close(A, expected / expected.sum(-1, keepdim=True))
    torch.testing.assert_close(y, torch.einsum("bkc,bct->bkt", expected / expected.sum(-1, keepdim=True), x))


def test_triton_refuses_too_many_channels_by_name():
    impl = OP.impls["triton"]
    wide = torch.zeros(1, 4, TRITON_MAX_CHANNELS + 1)
    assert "K and C must be <=" in impl.constraint(wide, torch.zeros(1, TRITON_MAX_CHANNELS + 1, 3), None)
    assert impl.constraint(torch.zeros(1, TRITON_MAX_CHANNELS, 4), torch.zeros(1, 4, 3), None) is None


def _raw_ops(backend):
    if backend == "triton":
        from pyaudiok.ops.reorder_channels import _triton_backward, _triton_forward
        return _triton_forward(), _triton_backward()
    return torch.ops.pyaudiok.reorder_channels_cpu, torch.ops.pyaudiok.reorder_channels_cpu_backward


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_raw_ops_pass_opcheck(backend, with_mask):
    device = require_backend(OP, backend)
    forward, backward = _raw_ops(backend)
    tests = forward_opcheck_tests(backend, device)
    logits, x = _inputs(2, 5, 7, 20, device)
    mask = _mask(2, 7, "random", device) if with_mask else None
    opcheck(forward, (logits, x, mask), test_utils=tests)
    y, A = forward(logits.detach(), x.detach(), mask)
    dy, dA = torch.randn_like(y), torch.randn_like(A)
    saved = (logits.detach(), mask) if backend == "triton" else (A,)
    for upstream in (dA, None):
        opcheck(backward, (dy, upstream, x.detach(), *saved), test_utils=("test_schema", "test_faketensor"))


def test_compiles_without_graph_breaks():
    logits, x = _inputs(2, 5, 7, 20, "cpu")
    mask = _mask(2, 7, "random", "cpu")
    torch._dynamo.reset()
    with pyaudiok.use_backend("cpu"):
        compiled = torch.compile(lambda lg, xs: reorder_channels(lg, xs, mask), fullgraph=True, backend="aot_eager")
        y, A = compiled(logits, x)
    want = reorder_channels_reference(logits, x, mask)
    torch.testing.assert_close(y, want[0])
    torch.testing.assert_close(A, want[1])
    (y.sum() + A.square().sum()).backward()
    assert logits.grad is not None and x.grad is not None


B_, K_, C_, T_ = 2, 3, 4, 5


def _good():
    return torch.randn(B_, K_, C_), torch.randn(B_, C_, T_), torch.ones(B_, C_, dtype=torch.bool)


@pytest.mark.parametrize("change,exc,words", [
    (lambda l, x, m: (l[0], x, m), ValueError, "logits must have shape [B, K, C]"),
    (lambda l, x, m: (l, x[0], m), ValueError, "x must have shape [B, C, T]; got [4, 5]"),
    (lambda l, x, m: (l, x[:, :3], m), ValueError, "x must have shape [B, C, T] = [2, 4, T] to match logits"),
    (lambda l, x, m: (l, x[:1], m), ValueError, "x must have shape [B, C, T] = [2, 4, T] to match logits"),
    (lambda l, x, m: (l, x, m[:, :3]), ValueError, "mask must have shape [B, C] = [2, 4]"),
    (lambda l, x, m: (l, x, m[:1]), ValueError, "mask must have shape [B, C] = [2, 4]"),
    (lambda l, x, m: (l, x, m[0]), ValueError, "mask must have shape [B, C] = [2, 4]"),
    (lambda l, x, m: (l, x, m.float()), TypeError, "mask must have dtype bool; got float32"),
    (lambda l, x, m: (l.long(), x, m), TypeError, "logits must have dtype"),
    (lambda l, x, m: (l, x.int(), m), TypeError, "x must have dtype"),
    (lambda l, x, m: (l, x.double(), m), TypeError, "x must have the dtype of logits (float32); got float64"),
    (lambda l, x, m: (l, x.to("meta"), m), ValueError, "x must be on the device of logits"),
    (lambda l, x, m: (l, x, m.to("meta")), ValueError, "mask must be on the device of logits"),
    (lambda l, x, m: (l, x, m.index_fill(1, torch.tensor([0, 1, 2, 3]), False)), ValueError,
     "mask must mark at least one channel present (True) in every item; got none in item(s) [0, 1]"),
    (lambda l, x, m: (l[:, :, :0], x[:, :0], None), ValueError, "logits must have C >= 1 input channels"),
    (lambda l, x, m: (l.tolist(), x, m), TypeError, "logits must be a torch.Tensor"),
    (lambda l, x, m: (l, x, [[True] * 4] * 2), TypeError, "mask must be a torch.Tensor"),
])
def test_bad_input_raises_named_error(change, exc, words):
    with pytest.raises(exc) as info:
        reorder_channels(*change(*_good()))
    assert words in str(info.value)


def test_one_row_without_a_present_channel_is_named():
    logits, x, mask = _good()
    mask[1] = False
    with pytest.raises(ValueError, match=r"got none in item\(s\) \[1\]"):
        reorder_channels(logits, x, mask)


@pytest.mark.parametrize("dtype,backend", [(torch.float32, "reference"), (torch.bfloat16, "reference"),
                                           (torch.float16, "cpu")])
def test_automatic_choice_on_the_cpu_follows_the_measurements(dtype, backend):
    logits, x = torch.zeros(2, 3, 4, dtype=dtype), torch.zeros(2, 4, 5, dtype=dtype)
    assert OP.select(torch.device("cpu"), dtype, (logits, x, None)).backend == backend
