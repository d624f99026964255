"""Soft rank / soft sort (PAV): every backend against the reference, the paper's example, the
limits, ties, sizes, half inputs, bad inputs, opcheck."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import soft_rank, soft_sort
from pyaudiok.ops.soft_rank import RANK, SORT, _triton_forward, pav_blocks, soft_rank_reference, soft_sort_reference

from ..harness import (FUSED_BACKENDS, assert_close, compare_with_reference, forward_opcheck_tests, opcheck,
                       poisoned_outputs, require_backend, run_with_grads)

OPS = {"rank": (soft_rank, RANK), "sort": (soft_sort, SORT)}
VARIANTS = [(reg, desc) for reg in ("l2", "kl") for desc in (False, True)]


def _run(fn, x, backend, **kw):
    with pyaudiok.use_backend(backend):
        return fn(x, **kw)


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_documented_example(backend):
    device = require_backend(RANK, backend) if backend != "reference" else torch.device("cpu")
    x = torch.tensor([5.0, 1.0, 2.0], device=device)
    out = _run(soft_rank, x, backend, regularization_strength=2.0)
    torch.testing.assert_close(out.cpu(), torch.tensor([3.0, 1.25, 1.75]))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("which", OPS)
@pytest.mark.parametrize("reg,descending", VARIANTS)
@pytest.mark.parametrize("shape,strength", [((5, 9), 0.3), ((3, 33), 1.0), ((1, 130), 3.0)])
def test_forward_and_gradient_match_reference(backend, which, reg, descending, shape, strength):
    fn, op = OPS[which]
    device = require_backend(op, backend)
    if backend == "triton" and device.type == "cpu" and shape[1] > 10:
        pytest.skip("the interpreter runs PAV's scalar loop in Python: one small shape is enough")
    x = torch.randn(shape, device=device).mul(2).requires_grad_(True)
    compare_with_reference(lambda t: fn(t, regularization=reg, regularization_strength=strength,
                                        descending=descending), (x,), backend, scale=5)


@pytest.mark.parametrize("which", OPS)
@pytest.mark.parametrize("reg,descending", VARIANTS)
def test_reference_gradcheck(which, reg, descending):
    ref = soft_rank_reference if which == "rank" else soft_sort_reference
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: ref(t, reg, 0.7, descending), (x,))


def test_pav_blocks_pool_violators():
    # v must be non-increasing: 1, 3 violate (pooled to 2, 2), then 2, 2, 5 → one block.
    assert pav_blocks([4.0, 1.0, 3.0, 0.0]) == [0, 1, 3]
    assert pav_blocks([1.0, 3.0, 5.0]) == [0]
    assert pav_blocks([3.0, 2.0, 1.0]) == [0, 1, 2]
    # KL: two +inf weights pool into a block of LSE +inf (value −inf), which the next point then joins.
    assert pav_blocks([3.0, 2.0, 1.0], [float("inf"), float("inf"), 0.0]) == [0]


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
@pytest.mark.parametrize("reg", ("l2", "kl"))
def test_limits(backend, reg):
    device = require_backend(RANK, backend) if backend != "reference" else torch.device("cpu")
    # Values at least 0.4 apart are ranked and sorted hard at ε = 1e-2 (a smaller ε only adds fp32
    # cancellation: the outputs are differences of terms of size 1/ε).
    x = torch.randperm(12, device=device).float()[None] * 0.5 + torch.rand(4, 12, device=device) * 0.1
    hard = x.argsort(-1).argsort(-1).float() + 1
    close = dict(atol=1e-3, rtol=0)
    torch.testing.assert_close(_run(soft_rank, x, backend, regularization=reg, regularization_strength=1e-2),
                               hard, **close)
    torch.testing.assert_close(_run(soft_rank, x, backend, regularization=reg, regularization_strength=1e-2,
                                    descending=True), 13 - hard, **close)
    torch.testing.assert_close(_run(soft_sort, x, backend, regularization=reg, regularization_strength=1e-2),
                               x.sort(-1).values, **close)
    large = _run(soft_rank, x, backend, regularization=reg, regularization_strength=1e6)
    torch.testing.assert_close(large, torch.full_like(x, 6.5), **close)
    if reg == "l2":
        torch.testing.assert_close(_run(soft_sort, x, backend, regularization_strength=1e6),
                                   x.mean(-1, keepdim=True).expand_as(x), **close)


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_ties_get_equal_ranks_and_n_equals_one(backend):
    device = require_backend(RANK, backend) if backend != "reference" else torch.device("cpu")
    x = torch.tensor([[2.0, 0.5, 2.0, -1.0, 0.5]], device=device, requires_grad=True)
    out = _run(soft_rank, x, backend, regularization_strength=1e-3)
    torch.testing.assert_close(out.detach(), torch.tensor([[4.5, 2.5, 4.5, 1.0, 2.5]], device=device))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    one = torch.tensor([[3.0]], device=device, requires_grad=True)
    assert _run(soft_rank, one, backend).item() == 1.0
    assert _run(soft_sort, one, backend).item() == 3.0


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_long_rows_and_leading_dims(backend):
    device = require_backend(RANK, backend)
    n = 5000 if device.type == "cuda" or backend == "cpu" else 300
    x = torch.randn(2, 1, n, device=device)
    ref = soft_rank_reference(x.reshape(-1, n).double(), "l2", 0.01).reshape(x.shape)
    with poisoned_outputs():
        out = _run(soft_rank, x, backend, regularization_strength=0.01)
    assert out.shape == x.shape
    assert_close("soft_rank n=%d" % n, out, ref, torch.float32, scale=5)


@pytest.mark.parametrize("backend", ("cpu",) + ("triton", "cuda"))
def test_half_inputs_long_rows_are_finite(backend):
    device = require_backend(RANK, backend, torch.float16)
    if backend == "triton" and device.type == "cpu":
        pytest.skip("n = 4096 is too slow for the interpreter")
    # 4096 distinct half values (consecutive bit patterns around 1.0), shuffled.
    distinct = torch.arange(0x3C00 - 2048, 0x3C00 + 2048, dtype=torch.int16).view(torch.float16)
    x = torch.stack([distinct[torch.randperm(4096)] for _ in range(2)]).to(device).requires_grad_(True)
    for fn in (soft_rank, soft_sort):
        out = _run(fn, x, backend, regularization_strength=0.1)
        assert out.dtype == torch.float16 and torch.isfinite(out).all()
        out.float().square().mean().backward()
        assert torch.isfinite(x.grad).all()
    ranks = _run(soft_rank, x, backend, regularization_strength=1e-6)  # hard ranks, rounded to half
    hard = (x.detach().float().argsort(-1).argsort(-1) + 1).half()
    assert torch.equal(ranks, hard)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("which", OPS)
@pytest.mark.parametrize("layout", ("transposed", "every_other_column"))
def test_non_contiguous(backend, which, layout):
    fn, op = OPS[which]
    device = require_backend(op, backend)
    if layout == "transposed":
        x = torch.randn(9, 6, device=device).T  # [6, 9] view, last-dim stride 6
    else:
        x = torch.randn(4, 14, device=device)[:, ::2]  # [4, 7] view, last-dim stride 2
    assert not x.is_contiguous()
    compare_with_reference(lambda t: fn(t, regularization_strength=0.5), (x.requires_grad_(True),), backend, scale=5)


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
@pytest.mark.parametrize("which", OPS)
@pytest.mark.parametrize("shape", ((0, 5), (3, 0), (2, 0, 4)))
def test_empty(backend, which, shape):
    fn, op = OPS[which]
    device = require_backend(op, backend) if backend != "reference" else torch.device("cpu")
    empty = torch.zeros(shape, device=device, requires_grad=True)
    out = _run(fn, empty, backend)
    out.sum().backward()
    assert out.shape == shape and empty.grad.shape == shape


NAN_ROWS = [[0.3, float("nan"), -1.0, 2.0, 0.5], [1.0, 2.0, float("nan"), float("nan"), -3.0],
            [float("nan")] * 5]
INF = float("inf")
# ±inf keys: a soft sort with KL pools the whole row into one block whose log-sum-exp is infinite.
INF_ROWS = [[0.3, -INF, -1.0, 2.0, 0.5], [0.3, INF, -1.1, 2.0, 0.6], [INF, 1.0, -INF, 0.25, -0.6],
            [-INF, -INF, 1.5, INF, 0.1]]


def _non_finite_rows_vs_reference(rows, backend, which, reg, descending):
    """The fused op's outputs and gradients on `rows` are the float64 reference's, NaN where its are NaN."""
    fn, op = OPS[which]
    device = require_backend(op, backend)
    x = torch.tensor(rows, device=device, requires_grad=True)
    call = lambda t: fn(t, regularization=reg, regularization_strength=0.7, descending=descending)  # noqa: E731
    (out,), (grad,) = run_with_grads(call, (x,), backend, grad_seed=1)
    (ref,), (ref_grad,) = run_with_grads(call, (x.double(),), "reference", grad_seed=1)
    close = dict(atol=1e-4, rtol=1e-4, equal_nan=True, check_dtype=False, check_device=False)
    torch.testing.assert_close(out, ref, **close)
    torch.testing.assert_close(grad, ref_grad, **close)
    return out, grad


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("which", OPS)
@pytest.mark.parametrize("reg,descending", VARIANTS)
def test_nan_entries_match_reference(backend, which, reg, descending):
    # PAV never pools a NaN block: a NaN entry is NaN in the output, the rest of its row stays finite.
    out, _ = _non_finite_rows_vs_reference(NAN_ROWS, backend, which, reg, descending)
    assert torch.isnan(out).sum(-1).tolist() == [1, 2, 5]


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("which", OPS)
@pytest.mark.parametrize("reg,descending", VARIANTS)
def test_inf_entries_match_reference(backend, which, reg, descending):
    # A sort with KL whose row pools into one block of infinite log-sum-exp: its outputs are all ±inf and the
    # gradient is NaN only at the keys that are +inf (the block softmax there is exp(inf − inf)), 0 elsewhere.
    _, grad = _non_finite_rows_vs_reference(INF_ROWS, backend, which, reg, descending)
    assert not torch.isnan(grad).all(-1).any(), "a row's finite entries keep a gradient"


@pytest.mark.parametrize("backend", ("cpu", "triton"))
@pytest.mark.parametrize("which", OPS)
@pytest.mark.parametrize("reg", ("l2", "kl"))
def test_half_gradients_match_reference(backend, which, reg):
    fn, op = OPS[which]
    device = require_backend(op, backend, torch.float16)
    x = torch.randn(3, 7, device=device).mul(2).half().requires_grad_(True)
    compare_with_reference(lambda t: fn(t, regularization=reg, regularization_strength=0.5), (x,), backend, scale=5)


@settings(max_examples=20, deadline=None)
@given(R=st.integers(1, 6), n=st.integers(1, 60), strength=st.floats(0.05, 5.0),
       reg=st.sampled_from(("l2", "kl")), rank=st.booleans(), descending=st.booleans())
def test_cpu_matches_reference_for_generated_shapes(R, n, strength, reg, rank, descending):
    require_backend(RANK, "cpu")
    fn = soft_rank if rank else soft_sort
    x = torch.randn(R, n, requires_grad=True)
    compare_with_reference(lambda t: fn(t, regularization=reg, regularization_strength=strength,
                                        descending=descending), (x,), "cpu", scale=5)


def test_matches_torchsort_when_installed():
    torchsort = pytest.importorskip("torchsort")
    x = torch.randn(4, 30, dtype=torch.float64)
    for reg in ("l2", "kl"):
        torch.testing.assert_close(soft_rank(x.float(), regularization=reg, regularization_strength=0.5),
                                   torchsort.soft_rank(x.float(), regularization=reg, regularization_strength=0.5))
        torch.testing.assert_close(soft_sort(x.float(), regularization=reg, regularization_strength=0.5),
                                   torchsort.soft_sort(x.float(), regularization=reg, regularization_strength=0.5))




@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("kl,rank", [(False, True), (True, False)])
def test_registered_ops_pass_opcheck(backend, kl, rank):
    device = require_backend(RANK, backend)
    forward = _triton_forward() if backend == "triton" else pyaudiok.ops._library.cpp_op("soft_sort_rank")
    tests = forward_opcheck_tests(backend, device)
    x = torch.randn(3, 7, device=device, requires_grad=True)
    opcheck(forward, (x, 0.5, kl, rank, False), test_utils=tests)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument.

@pytest.mark.parametrize("kwargs,exc,words", [
    ({"regularization_strength": 0.0}, ValueError, ["regularization_strength", "> 0"]),
    ({"regularization_strength": -1.0}, ValueError, ["regularization_strength"]),
    ({"regularization_strength": "1"}, TypeError, ["regularization_strength"]),
    ({"regularization": "l1"}, ValueError, ["regularization", "l2"]),
    ({"descending": 1}, TypeError, ["descending", "bool"]),
    ({"descending": np.bool_(True)}, TypeError, ["descending", "bool", "numpy"]),
])
def test_bad_arguments(kwargs, exc, words):
    for fn in (soft_rank, soft_sort):
        with pytest.raises(exc) as info:
            fn(torch.randn(2, 3), **kwargs)
        assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("x,exc,words", [
    (torch.arange(6).reshape(2, 3), TypeError, ["x", "dtype"]),
    ([1.0, 2.0], TypeError, ["x", "torch.Tensor"]),
    (torch.tensor(1.0), ValueError, ["x", "[..., n]"]),
])
def test_bad_tensors(x, exc, words):
    with pytest.raises(exc) as info:
        soft_rank(x)
    assert all(w in str(info.value) for w in words), str(info.value)
