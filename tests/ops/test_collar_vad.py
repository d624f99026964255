"""DIVE's collar-aware VAD loss: every backend against the reference, forward and backward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import collar_vad_loss
from pyaudiok.ops.collar_vad import OP, collar_mask, collar_vad_loss_reference

from ..harness import assert_close, compare_with_reference, forward_opcheck_tests, opcheck, require_backend

BACKENDS = ("cpu", "triton")


def _inputs(B, N, S, T, device="cpu", dtype=torch.float32, turns=6):
    """Logits, a reference with a few turns per speaker, and an order using every row once (−1 past S)."""
    logits = torch.randn(B, N, T, dtype=torch.float64).to(device, dtype).requires_grad_()
    reference = torch.zeros(B, S, T, dtype=torch.bool)
    for b in range(B):
        for s in range(S):
            edges = torch.randint(0, T + 1, (2 * turns,)).sort().values
            for a, e in edges.view(-1, 2).tolist():
                reference[b, s, a:e] = True
    order = torch.stack([torch.cat([torch.randperm(S), torch.full((max(N - S, 0),), -1)])[:N] for _ in range(B)])
    return logits, reference.to(device), order.to(device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,N,S,T,collar", [(2, 3, 3, 50, 2.5), (3, 4, 2, 37, 1.0), (1, 2, 3, 9, 0.0),
                                            (4, 3, 3, 400, 25.0), (2, 1, 1, 13, 30.0), (2, 3, 4, 64, 0.5)])
def test_forward_and_gradient_match_reference(backend, B, N, S, T, collar):
    device = require_backend(OP, backend)
    logits, reference, order = _inputs(B, N, S, T, device)
    compare_with_reference(lambda x: collar_vad_loss(x, reference, order, collar_frames=collar), (logits,), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_soft_targets_and_unselected_rows(backend):
    device = require_backend(OP, backend, torch.float64)
    logits = torch.randn(3, 4, 31, dtype=torch.float64, device=device, requires_grad=True)
    reference = torch.rand(3, 2, 31, dtype=torch.float64, device=device).round()  # float 0/1 activity
    # a row reused, an item empty
    order = torch.tensor([[1, -1, 0, -1], [-1, -1, -1, -1], [0, 0, 1, -1]], device=device)
    compare_with_reference(lambda x: collar_vad_loss(x, reference, order, collar_frames=1.5), (logits,), backend)


def test_reference_is_the_masked_mean_of_pytorchs_bce():
    logits, reference, order = _inputs(2, 3, 3, 40)
    keep = collar_mask(reference, 3.0)[:, None] & (order >= 0)[..., None]
    target = reference.float().gather(1, order.clamp_min(0)[..., None].expand(-1, -1, 40))
    expected = F.binary_cross_entropy_with_logits(logits[keep], target[keep])
    assert_close("loss", collar_vad_loss_reference(logits, reference, order, 3.0), expected, torch.float32)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_only_kept_frames_count(backend):
    """Changing a logit inside the collar of a boundary, or of an unselected row, changes nothing."""
    device = require_backend(OP, backend)
    reference = torch.zeros(1, 2, 20, dtype=torch.bool, device=device)
    reference[0, 0, 5:12] = True                    # boundaries at edges 5 and 12
    order = torch.tensor([[0, -1]], device=device)
    logits = torch.randn(1, 2, 20, device=device)
    with torch.no_grad(), pyaudiok.use_backend(backend):
        base = collar_vad_loss(logits, reference, order, collar_frames=2.0)
        inside, outside, other = logits.clone(), logits.clone(), logits.clone()
        inside[0, 0, 4] += 5.0    # centre 4.5: 0.5 from edge 5
        outside[0, 0, 8] += 5.0   # centre 8.5: 3.5 from both edges
        other[0, 1, 8] += 5.0     # the unselected row
        assert collar_vad_loss(inside, reference, order, collar_frames=2.0) == base
        assert collar_vad_loss(other, reference, order, collar_frames=2.0) == base
        assert collar_vad_loss(outside, reference, order, collar_frames=2.0) != base


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_kept_gives_zero_loss_and_gradient(backend):
    device = require_backend(OP, backend)
    logits = torch.randn(2, 2, 10, device=device, requires_grad=True)
    reference = torch.ones(2, 1, 10, dtype=torch.bool, device=device)  # edges 0 and 10; collar 20 covers all
    with pyaudiok.use_backend(backend):
        loss = collar_vad_loss(logits, reference, torch.zeros(2, 2, dtype=torch.long, device=device),
                               collar_frames=20.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 2, 10), (2, 0, 2, 10), (2, 3, 2, 0), (2, 2, 0, 10)])
def test_empty(backend, shape):
    """Nothing to score, on the reference too: with S = 0 every row is left out, with T = 0 no frame has a collar."""
    device = require_backend(OP, backend)
    B, N, S, T = shape
    logits = torch.randn(B, N, T, device=device, requires_grad=True)
    order = torch.full((B, N), -1, dtype=torch.long, device=device)
    with pyaudiok.use_backend(backend):
        loss = collar_vad_loss(logits, torch.zeros(B, S, T, device=device), order, collar_frames=1.0)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == logits.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_half_inputs(backend):
    device = require_backend(OP, backend)
    logits, reference, order = _inputs(3, 4, 3, 60, device)
    strided = logits.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    compare_with_reference(lambda x: collar_vad_loss(x, reference.int(), order.int(), collar_frames=3.0),
                           (strided,), backend)
    half = logits.detach().bfloat16().requires_grad_()
    with pyaudiok.use_backend(backend):
        loss = collar_vad_loss(half, reference, order, collar_frames=3.0)
    loss.backward()
    want = collar_vad_loss_reference(half.detach().double(), reference, order, 3.0)
    assert loss.dtype == torch.bfloat16 and half.grad.dtype == torch.bfloat16
    assert_close("bf16 loss", loss, want, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_gradients_match_reference(backend, dtype):
    device = require_backend(OP, backend, dtype)
    logits, reference, order = _inputs(2, 3, 2, 24, device)
    half = logits.detach().to(dtype).requires_grad_()
    compare_with_reference(lambda x: collar_vad_loss(x, reference, order, collar_frames=1.5), (half,), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_targets_match_reference(backend):
    """Activity between 0 and 1 (soft targets): BCE against it, any change of value a boundary."""
    device = require_backend(OP, backend)
    logits, reference, order = _inputs(2, 3, 2, 30, device)
    soft = reference.float() * 0.8 + 0.1
    soft[:, :, 10:14] = 0.5
    compare_with_reference(lambda x: collar_vad_loss(x, soft, order, collar_frames=1.0), (logits,), backend)


def _one_nan_frame(reference):
    reference = reference.float()
    reference[0, 0, 4] = float("nan")
    return reference


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("make_activity", [
    _one_nan_frame,
    lambda r: torch.full(r.shape, float("nan"), device=r.device),
    lambda r: r.float() * 2.0,
    lambda r: r.double() - 0.5,
    lambda r: r.float().masked_fill(r, float("inf")),
    lambda r: r.int() * 3,
], ids=["one_nan_frame", "all_nan", "float_2", "negative", "inf", "int_3"])
def test_activity_outside_zero_one_raises(backend, make_activity):
    """NaN or out-of-range activity is refused on every backend alike (the fused ones would otherwise
    take NaN as a boundary and drop it)."""
    device = require_backend(OP, backend)
    logits, reference, order = _inputs(2, 3, 2, 9, device)
    with pyaudiok.use_backend(backend), pytest.raises(ValueError, match=r"reference must hold activity in \[0, 1\]"):
        collar_vad_loss(logits, make_activity(reference), order, collar_frames=1.0)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("collar", [1e12, 2.0**63, 1e300])
def test_collar_wider_than_the_items(backend, collar):
    """Any collar of T + 1 frames or more leaves out every frame of an item with a boundary: as
    the collar of T + 1 itself, without padding by the collar's width or overflowing an integer."""
    device = require_backend(OP, backend)
    logits, reference, order = _inputs(2, 3, 2, 20, device)
    reference[1] = False  # no boundary in item 1: all of its frames count
    with pyaudiok.use_backend(backend):
        loss = collar_vad_loss(logits, reference, order, collar_frames=collar)
        want = collar_vad_loss(logits, reference, order, collar_frames=21.0)
    assert torch.equal(collar_mask(reference, collar), collar_mask(reference, 21.0))
    assert loss.item() == want.item() and loss.item() > 0


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_targets_take_no_gradient(backend):
    """Float targets that require a gradient get none on any backend (the loss is differentiable
    with respect to the logits only)."""
    device = require_backend(OP, backend)
    logits, reference, order = _inputs(2, 3, 2, 20, device)
    targets = reference.float().requires_grad_()
    with pyaudiok.use_backend(backend):
        loss = collar_vad_loss(logits, targets, order, collar_frames=1.0)
    assert torch.autograd.grad(loss, [logits, targets], allow_unused=True)[1] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_ops_pass_opcheck(backend):
    device = require_backend(OP, backend)
    if backend == "triton":
        from pyaudiok.ops.collar_vad import _triton_backward, _triton_forward
        forward, backward = _triton_forward(), _triton_backward()
    else:
        forward, backward = torch.ops.pyaudiok.collar_vad_forward, torch.ops.pyaudiok.collar_vad_backward
    tests = forward_opcheck_tests(backend, device)
    logits, reference, order = _inputs(2, 3, 3, 30, device)
    opcheck(forward, (logits, reference.float(), order, 2.0), test_utils=tests)
    loss, keep, count = forward(logits.detach(), reference.float(), order, 2.0)
    opcheck(backward, (torch.ones((), device=device), logits.detach(), reference.float(), order, keep, count),
            test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("make,kwargs,exc,words", [
    (lambda: (torch.randn(2, 3), torch.zeros(2, 1, 3), torch.zeros(2, 3, dtype=torch.long)), {}, ValueError,
     "logits must have shape [B, N, T]"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 1, 4), torch.zeros(2, 3, dtype=torch.long)), {}, ValueError,
     "reference must have shape [B, S, T] = [2, S, 5]"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 1, 5), torch.zeros(2, 2, dtype=torch.long)), {}, ValueError,
     "order must have shape [B, N] = [2, 3]"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 1, 5), torch.zeros(2, 3)), {}, TypeError,
     "order must have dtype int64, int32, int16, int8; got float32"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 1, 5, dtype=torch.complex64), torch.zeros(2, 3, dtype=torch.long)),
     {}, TypeError, "reference must have dtype bool"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 2, 5), torch.full((2, 3), 2)), {}, ValueError,
     "order must hold reference rows in [-1, 1]"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 2, 5), torch.full((2, 3), -2)), {}, ValueError,
     "order must hold reference rows in [-1, 1]"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 2, 5), torch.zeros(2, 3, dtype=torch.long)),
     {"collar_frames": -1.0}, ValueError, "collar_frames must be a finite number >= 0"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 2, 5), torch.zeros(2, 3, dtype=torch.long)),
     {"collar_frames": float("nan")}, ValueError, "collar_frames must be a finite number >= 0"),
    (lambda: (torch.randint(0, 2, (2, 3, 5)), torch.zeros(2, 2, 5), torch.zeros(2, 3, dtype=torch.long)), {},
     TypeError, "logits must have dtype"),
    (lambda: ([[0.0]], torch.zeros(2, 2, 5), torch.zeros(2, 3, dtype=torch.long)), {}, TypeError,
     "logits must be a torch.Tensor"),
])
def test_bad_input_raises_named_error(make, kwargs, exc, words):
    logits, reference, order = make()
    with pytest.raises(exc) as info:
        collar_vad_loss(logits, reference, order, **{"collar_frames": 1.0, **kwargs})
    assert words in str(info.value)


# ----------------------------------------------------------------------------------------------
# Generated cases: (backend, the dtypes it runs). Triton in its interpreter (no GPU) runs the tiny ones
# of the last test only.

GENERATED_BACKENDS = [pytest.param("cpu", (torch.float32, torch.float64), id="cpu"),
                      pytest.param("triton", (torch.float32,), id="triton", marks=pytest.mark.gpu)]


def _check_generated(backend, data, min_size, max_rows, max_length, dtypes):
    """One drawn case against the reference, loss and gradient: empty dims, rows reused or left out
    (−1), turns at the item's edges, collars from 0 to wider than the item, activity and order in
    their dtypes, logits and activity time-major or a strided view."""
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    B = data.draw(st.integers(1, 3), label="B")
    N, S = (data.draw(st.integers(min_size, max_rows), label=name) for name in "NS")
    T = data.draw(st.integers(min_size, max_length), label="T")
    dtype = data.draw(st.sampled_from(dtypes), label="dtype")
    # half-frame collars put frame centres exactly a collar from an edge; up to T + 2: wider than the item
    collar = data.draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.5]), st.floats(0.0, T + 2.0)), label="collar")
    layout = data.draw(st.sampled_from(["contiguous", "time-major", "strided"]), label="layout")
    device = require_backend(OP, backend, dtype)
    step = 2 if layout == "strided" else 1  # every other frame of items twice as long
    turns = data.draw(st.integers(0, 4), label="turns")
    logits, reference, order = _inputs(B, N, S, step * T, device, dtype, turns)
    if S and T and data.draw(st.booleans(), label="edge turns"):
        reference[:, 0, 0] = reference[:, -1, -step] = True  # -step: the last frame the strided view keeps
    if data.draw(st.booleans(), label="any order"):  # rows reused, several left out
        order = torch.randint(-1, S, (B, N), device=device)
    activity_dtypes = [torch.bool, torch.uint8, torch.int32, dtype]
    reference = reference.to(data.draw(st.sampled_from(activity_dtypes), label="activity"))
    order = order.to(data.draw(st.sampled_from([torch.int64, torch.int32, torch.int16, torch.int8]), label="order"))
    if layout == "time-major":
        logits = logits.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        reference = reference.transpose(1, 2).contiguous().transpose(1, 2)
    compare_with_reference(
        lambda x: collar_vad_loss(x[..., ::step], reference[..., ::step], order, collar_frames=collar), (logits,),
        backend)


@pytest.mark.parametrize("backend,dtypes", GENERATED_BACKENDS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_generated_cases(backend, dtypes, data):
    _check_generated(backend, data, 0, max_rows=5, max_length=70, dtypes=dtypes)


@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_generated_triton_tiny(data):
    _check_generated("triton", data, 1, max_rows=3, max_length=24, dtypes=(torch.float32,))
