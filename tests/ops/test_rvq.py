"""Residual vector quantization: every backend against the reference."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import residual_vq, rvq_decode
from pyaudiok.ops.rvq import DECODE, FORWARD, rvq_reference

from ..harness import (FUSED_BACKENDS, assert_close, compare_with_reference, forward_opcheck_tests, opcheck,
                       poisoned_outputs, require_backend)
from ..harness import threads as threads_of

SHAPES = [  # (N, D, K, Q): odd sizes, K not a multiple of any block, D not a power of two
    (1, 3, 7, 1),
    (37, 20, 100, 3),
    (130, 16, 64, 4),
    (17, 33, 6, 2),
    (9, 130, 40, 2),  # wide rows: the Triton backend's fp32 FMA route (D > 128)
    (5, 600, 12, 2),
]


def integer_inputs(N, D, K, Q, device, low=-3, high=4):
    """Small integers: every fp32 sum is exact whatever the order, so codes must match the
    reference bit for bit and equal distances are real ties (resolved to the lowest index)."""
    x = torch.randint(low, high, (N, D)).float().to(device)
    codebooks = torch.randint(low, high, (Q, K, D)).float().to(device)
    return x, codebooks


def reference_margin(x, codebooks, n_q):
    """Smallest gap, over rows and stages, between the best and second-best score on the float64
    reference path: codes of a float32 kernel are only defined by the data when it is clear."""
    r, margin = x.double(), float("inf")
    for q in range(n_q):
        C = codebooks[q].double()
        score = C.pow(2).sum(-1) - 2 * r @ C.T
        if C.shape[0] > 1 and r.shape[0]:
            top2 = score.topk(2, dim=-1, largest=False).values
            margin = min(margin, (top2[:, 1] - top2[:, 0]).min().item())
        r = r - C[score.argmin(-1)]
    return margin


def separated_inputs(N, D, K, Q, device, dtype=torch.float32, min_margin=2e-5):
    """Random normal inputs whose nearest codewords are unambiguous at `dtype`'s precision."""
    for _ in range(50):
        x = torch.randn(N, D, dtype=torch.float64)
        codebooks = torch.randn(Q, K, D, dtype=torch.float64) * torch.linspace(1, 0.4, Q)[:, None, None]
        x, codebooks = x.to(dtype), codebooks.to(dtype)  # margins are measured on what the kernel sees
        if reference_margin(x, codebooks, Q) > min_margin * D:
            return x.to(device), codebooks.to(device)
    raise AssertionError("could not draw well-separated inputs")


def planted_inputs(N, D, K, Q, device, dtype=torch.float32, decay=0.3, noise=0.1, min_margin=0.2):
    """x = sum_q C_q[k_q] + noise, with codebook scales decay**q: each stage's nearest codeword is
    the planted one by a gap of about 2 D scale_q**2, far above half-precision input rounding and
    fp32 score error (random normal inputs of this size almost never are that well separated).
    Checked on what the kernel sees: the smallest reference gap must exceed `min_margin` times
    D scale**2 of the last stage."""
    scale = decay ** torch.arange(Q, dtype=torch.float64)
    codebooks = torch.randn(Q, K, D, dtype=torch.float64) * scale[:, None, None]
    planted = torch.randint(0, K, (N, Q))
    x = codebooks[torch.arange(Q), planted].sum(1) + noise * scale[-1] * torch.randn(N, D, dtype=torch.float64)
    x, codebooks = x.to(dtype), codebooks.to(dtype)
    margin = reference_margin(x, codebooks, Q)
    assert margin > min_margin * D * scale[-1].item() ** 2, f"planted inputs not separated: margin {margin}"
    return x.to(device), codebooks.to(device)


def test_planted_inputs_are_separated_at_half_precision():
    """The drawing behind test_half_precision (which needs a GPU) checked where it runs anywhere."""
    for dtype in (torch.float16, torch.bfloat16):
        x, codebooks = planted_inputs(300, 64, 256, 4, "cpu", dtype=dtype)
        assert x.dtype == codebooks.dtype == dtype and x.shape == (300, 64)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("N,D,K,Q", SHAPES)
def test_codes_identical_exact_arithmetic(backend, N, D, K, Q):
    device = require_backend(FORWARD, backend)
    x, codebooks = integer_inputs(N, D, K, Q, device)
    for n_q in range(1, Q + 1):
        ref = rvq_reference(x, codebooks, n_q)
        with poisoned_outputs(), pyaudiok.use_backend(backend):
            out = residual_vq(x, codebooks, n_q)
        assert torch.equal(out.codes.cpu(), ref[1].cpu()), f"n_q={n_q}: codes differ"
        assert torch.equal(out.quantized.cpu(), ref[0].cpu()), f"n_q={n_q}: quantized differs"
        assert torch.equal(out.commit_loss.cpu(), ref[2].cpu()), f"n_q={n_q}: commit loss differs"


@pytest.mark.parametrize("count", [1, 2])
def test_cpu_tile_groups_and_thread_split(count):
    """The cpu kernel runs 16-row tiles through the stages in groups (16 tiles at D <= 128): rows
    spanning several groups, a short last group and a short last tile, on 1 and 2 threads."""
    device = require_backend(FORWARD, "cpu")
    N = 16 * 16 * 2 + 16 * 5 + 7
    x, codebooks = integer_inputs(N, 20, 50, 3, device)
    ref = rvq_reference(x, codebooks, 3)
    with threads_of(count), poisoned_outputs(), pyaudiok.use_backend("cpu"):
        out = residual_vq(x, codebooks, 3)
    assert torch.equal(out.codes, ref[1]) and torch.equal(out.quantized, ref[0])
    assert torch.equal(out.commit_loss, ref[2])


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_ties_resolve_to_lowest_index(backend):
    device = require_backend(FORWARD, backend)
    # Codewords 1, 3 and 4 are all at distance 1 from x; 0 and 2 are farther.
    x = torch.zeros(5, 4, device=device)
    C = torch.tensor([[3., 0, 0, 0], [1, 0, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0]], device=device)
    with pyaudiok.use_backend(backend):
        out = residual_vq(x, C[None])
    assert out.codes.flatten().tolist() == [1] * 5


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("N,D,K,Q", SHAPES)
def test_forward_and_gradients_match_reference(backend, N, D, K, Q):
    device = require_backend(FORWARD, backend)
    x, codebooks = separated_inputs(N, D, K, Q, device)
    x.requires_grad_(True)
    for n_q in sorted({1, Q}):
        compare_with_reference(lambda x, c: residual_vq(x, c, n_q), (x, codebooks), backend, exact=(1,))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("used", ["quantized", "commit_loss"])
def test_one_output_alone_takes_the_reference_gradient(backend, used):
    """Backpropagating through one of the two differentiable outputs only (the other's gradient
    arrives as None, not as zeros)."""
    device = require_backend(FORWARD, backend)
    x, codebooks = separated_inputs(9, 6, 5, 3, device)
    compare_with_reference(lambda x, c: getattr(residual_vq(x, c, 3), used), (x.requires_grad_(True), codebooks),
                           backend)


@pytest.mark.parametrize("backend", ["cpu"] + [pytest.param(b, marks=pytest.mark.gpu) for b in ("triton", "cuda")])
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_precision(backend, dtype):
    """Half inputs: the GPU kernels take them as they are, the CPU kernels compute in float32; the
    codes are the reference's, and so is decoding them."""
    device = require_backend(FORWARD, backend, dtype)
    x, codebooks = planted_inputs(300, 64, 256, 4, device, dtype=dtype)
    x.requires_grad_(True)
    out, _ = compare_with_reference(lambda x, c: residual_vq(x, c), (x, codebooks), backend, exact=(1,))
    assert out[0].dtype == dtype
    codes = out[1]
    decoded, _ = compare_with_reference(lambda c, cb: rvq_decode(c, cb), (codes, codebooks.requires_grad_(True)),
                                        backend)
    assert decoded[0].dtype == dtype


def test_fp16_on_triton_tiny():
    """fp16 through the Triton kernels where they run anywhere (its interpreter; bf16 tl.dot needs a
    GPU): codes, quantized vectors, commit losses and the gradient to x against the reference."""
    device = require_backend(FORWARD, "triton", torch.float16)
    x, codebooks = planted_inputs(20, 8, 12, 2, device, dtype=torch.float16)
    out, _ = compare_with_reference(lambda x, c: residual_vq(x, c), (x.requires_grad_(True), codebooks), "triton",
                                    exact=(1,))
    assert out[0].dtype == torch.float16


def _plant(where: str, value: float):
    """Changes of x[6, D] / codebooks[3, 5, D] that put `value` (NaN or ±inf) in a row of x, in a
    codeword of the first or of a later stage, or in a row of x next to codewords with a 0 where its
    inf is (inf · 0 is NaN: NaN and -inf scores in one row)."""
    def plant(x, codebooks):
        if where in ("x", "x beside zeros"):
            x[2, 1] = value
        if where == "x beside zeros":
            codebooks[0, 3, 1] = codebooks[0, 1, 1] = 0.0
        if where.startswith("codeword"):
            codebooks[int(where[-1]), 2, 1] = value
    return plant


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("D", [6, 130])  # the Triton kernel's TF32 and fp32 FMA routes
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["x", "x beside zeros", "codeword 0", "codeword 1"])
def test_non_finite_values_give_the_references_result(backend, D, value, where):
    """A NaN or inf in x or in a codeword (a diverged EMA codeword): the reference's codes (its argmin
    takes the first NaN score before any number), NaN quantized values exactly where x is NaN or inf,
    the same commit losses and the same non-finite gradient entries. Nothing is rejected: ResidualVQ
    skips such batches without a host sync."""
    device = require_backend(FORWARD, backend)
    gen = torch.Generator().manual_seed(0)
    x, codebooks = torch.randn(6, D, generator=gen), torch.randn(3, 5, D, generator=gen)
    _plant(where, value)(x, codebooks)
    results = []
    for run_on, inputs in (("reference", (x, codebooks)), (backend, (x.to(device), codebooks.to(device)))):
        leaf = inputs[0].clone().requires_grad_(True)
        with pyaudiok.use_backend(run_on):
            out = residual_vq(leaf, inputs[1])
        (out.quantized.sum() + out.commit_loss.sum()).backward()
        results.append([t.detach().cpu() for t in (*out, leaf.grad)])
    (want_q, want_codes, want_loss, want_dx), (got_q, got_codes, got_loss, got_dx) = results
    assert torch.equal(got_codes, want_codes)
    for name, got, want in (("quantized", got_q, want_q), ("commit loss", got_loss, want_loss),
                            ("gradient", got_dx, want_dx)):
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf()), name
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True), name


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_cpu_half_commit_loss_stays_float32(dtype):
    """The commit loss is float32 for half inputs, as the reference returns it: rounded to half it
    would be inf above 65 504 (fp16) and keep 8 bits (bf16)."""
    device = require_backend(FORWARD, "cpu", dtype)
    x = (300 * torch.randn(20, 8)).to(device, dtype).requires_grad_(True)
    codebooks = torch.randn(2, 4, 8).to(device, dtype)
    ref = rvq_reference(x.detach(), codebooks, 2)
    with pyaudiok.use_backend("cpu"):
        out = residual_vq(x, codebooks)
    assert out.commit_loss.dtype == ref[2].dtype == torch.float32 and out.quantized.dtype == dtype
    assert torch.isfinite(out.commit_loss).all()
    assert_close("commit loss", out.commit_loss, ref[2], torch.float32)
    out.commit_loss.sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_decode_of_codes_is_quantized(backend):
    device = require_backend(FORWARD, backend)
    x, codebooks = separated_inputs(50, 12, 40, 3, device)
    with pyaudiok.use_backend(backend):
        out = residual_vq(x, codebooks)
        decoded = rvq_decode(out.codes, codebooks)
    assert torch.equal(decoded, out.quantized)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("N,D,K,Q", SHAPES)
def test_decode_and_codebook_gradients_match_reference(backend, N, D, K, Q):
    device = require_backend(DECODE, backend)
    codebooks = torch.randn(Q, K, D, device=device, requires_grad=True)
    codes = torch.randint(0, K, (N, Q), device=device)
    for n_q in sorted({1, Q}):
        compare_with_reference(lambda c, cb: rvq_decode(c, cb), (codes[:, :n_q], codebooks), backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("code_dtype", (torch.int32, torch.int16, torch.uint8))
def test_decode_of_narrow_and_non_contiguous_codes(backend, code_dtype):
    """Codes in any accepted integer dtype, as a strided view ([B, T, n_q] from a time-major buffer):
    the reference's vectors and codebook gradients."""
    device = require_backend(DECODE, backend)
    codebooks = torch.randn(3, 9, 10, device=device, requires_grad=True)
    codes = torch.randint(0, 9, (5, 2, 3), device=device).to(code_dtype).transpose(0, 1)
    assert not codes.is_contiguous()
    out, _ = compare_with_reference(lambda c, cb: rvq_decode(c, cb), (codes, codebooks), backend)
    assert out[0].shape == (2, 5, 10)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("D", [9, 130])  # the CPU kernel's 8- and 64-column blocks and its scalar tail
def test_weighted_decode_op_and_its_gradients(backend, D):
    """The raw decode op with stage weights is the backward of the forward: check it directly."""
    device = require_backend(DECODE, backend)
    codebooks = torch.randn(3, 20, D, device=device, dtype=torch.float64)
    codes = torch.randint(0, 20, (31, 3), device=device)
    weights = torch.randn(3, device=device, dtype=torch.float64)
    ref = sum(weights[q] * codebooks[q][codes[:, q]] for q in range(3))
    cb32, w32 = codebooks.float().requires_grad_(), weights.float().requires_grad_()
    raw = (pyaudiok.ops.rvq._triton_decode() if backend == "triton"
           else pyaudiok.ops._library.cpp_op("rvq_decode"))
    out = raw(codes, cb32, w32)
    assert_close("weighted decode", out, ref, torch.float32)
    grad = torch.randn_like(out)
    out.backward(grad)
    cb64, w64 = codebooks.clone().requires_grad_(), weights.clone().requires_grad_()
    sum(w64[q] * cb64[q][codes[:, q]] for q in range(3)).backward(grad.double())
    assert_close("d codebooks", cb32.grad, cb64.grad, torch.float32)
    assert_close("d weights", w32.grad, w64.grad, torch.float32)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_leading_dims_and_non_contiguous_inputs(backend):
    device = require_backend(FORWARD, backend)
    x, codebooks = separated_inputs(2 * 7, 10, 30, 2, device)
    # x as [B, T, D] built from a transposed buffer; codebooks a strided view of a larger tensor.
    x_btd = x.reshape(2, 7, 10).transpose(0, 1).contiguous().transpose(0, 1)
    assert not x_btd.is_contiguous()
    wide = torch.zeros(2, 30, 20, device=device)
    wide[:, :, ::2] = codebooks
    cb_view = wide[:, :, ::2]
    assert not cb_view.is_contiguous()
    x_btd.requires_grad_(True)
    out, _ = compare_with_reference(lambda x, c: residual_vq(x, c), (x_btd, cb_view), backend, exact=(1,))
    assert out[0].shape == (2, 7, 10) and out[1].shape == (2, 7, 2) and out[2].shape == (2,)


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 8), (3, 0, 8)])
def test_empty_batch(backend, shape):
    device = require_backend(FORWARD, backend) if backend != "reference" else torch.device("cpu")
    x = torch.randn(shape, device=device, requires_grad=True)
    codebooks = torch.randn(3, 5, 8, device=device)
    with pyaudiok.use_backend(backend):
        out = residual_vq(x, codebooks, 2)
        assert out.quantized.shape == shape and out.codes.shape == (*shape[:-1], 2)
        assert torch.equal(out.commit_loss.cpu(), torch.zeros(2))
        (out.quantized.sum() + out.commit_loss.sum()).backward()
        assert x.grad.shape == shape
        assert rvq_decode(out.codes, codebooks).shape == shape


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 70), D=st.integers(1, 40), K=st.integers(1, 80), Q=st.integers(1, 4), data=st.data())
def test_cpu_codes_identical_for_generated_shapes(N, D, K, Q, data):
    device = require_backend(FORWARD, "cpu")
    n_q = data.draw(st.integers(1, Q))
    x, codebooks = integer_inputs(N, D, K, Q, device)
    ref = rvq_reference(x, codebooks, n_q)
    with pyaudiok.use_backend("cpu"):
        out = residual_vq(x, codebooks, n_q)
    assert torch.equal(out.codes, ref[1]) and torch.equal(out.quantized, ref[0])


def test_reference_gradients_are_the_definition():
    """The reference's own gradient (float64 gradcheck) and the closed form every backend uses:
    d quantized/dx = identity, d commit_q/dx = 2 r_q / (N D)."""
    x, codebooks = separated_inputs(9, 5, 11, 3, "cpu", dtype=torch.float64)
    x.requires_grad_(True)
    torch.autograd.gradcheck(lambda x: rvq_reference(x, codebooks, 3)[2], (x,))
    quantized, codes, commit = rvq_reference(x, codebooks, 3)
    (straight_through,) = torch.autograd.grad(quantized.sum(), x, retain_graph=True)
    assert torch.equal(straight_through, torch.ones_like(x))
    (grad,) = torch.autograd.grad(commit[1], x)
    r = x.detach() - codebooks[0][codes[:, 0]] - codebooks[1][codes[:, 1]]
    torch.testing.assert_close(grad, 2 * r / x.numel())




@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_registered_ops_pass_opcheck(backend):
    device = require_backend(FORWARD, backend)
    x, codebooks = separated_inputs(20, 8, 16, 3, device)
    if backend == "triton":
        forward, decode = pyaudiok.ops.rvq._triton_forward(), pyaudiok.ops.rvq._triton_decode()
    else:
        forward = pyaudiok.ops._library.cpp_op("rvq_forward")
        decode = pyaudiok.ops._library.cpp_op("rvq_decode")
    tests = forward_opcheck_tests(backend, device)
    opcheck(forward, (x.requires_grad_(True), codebooks, 2), test_utils=tests)
    codes = torch.randint(0, 16, (20, 3), device=device)
    opcheck(decode, (codes, codebooks.requires_grad_(True), None), test_utils=tests)
    opcheck(decode, (codes, codebooks, torch.rand(3, device=device, requires_grad=True)),
                          test_utils=tests)


def test_torch_compile_traces_the_cpu_op():
    require_backend(FORWARD, "cpu")
    x, codebooks = separated_inputs(40, 8, 16, 3, "cpu")

    def f(x, c):
        out = residual_vq(x, c)
        return out.quantized * 2, out.codes, out.commit_loss.sum()

    compiled = torch.compile(f, backend="aot_eager")
    with pyaudiok.use_backend("cpu"):
        got, want = compiled(x, codebooks), f(x, codebooks)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument.

def _good():
    return torch.randn(4, 6), torch.randn(3, 5, 6)


@pytest.mark.parametrize("make,exc,words", [
    (lambda x, c: (x.long(), c), TypeError, ["x", "dtype"]),
    (lambda x, c: ([[1.0]], c), TypeError, ["x", "torch.Tensor"]),
    (lambda x, c: (x[0, 0], c), ValueError, ["x", "[..., D]"]),
    (lambda x, c: (x, c[0]), ValueError, ["codebooks", "[Q, K, D]"]),
    (lambda x, c: (x, c[:, :, :5]), ValueError, ["codebooks", "D"]),
    (lambda x, c: (x, c.double()), TypeError, ["codebooks", "dtype"]),
    (lambda x, c: (x, c.to("meta")), ValueError, ["codebooks", "device"]),
    (lambda x, c: (x, c[:, :0]), ValueError, ["codebooks", "K"]),
])
def test_bad_input_raises_named_error(make, exc, words):
    x, c = make(*_good())
    with pytest.raises(exc) as info:
        residual_vq(x, c)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("n_q,exc", [(0, ValueError), (4, ValueError), (-1, ValueError), (2.0, TypeError),
                                     (True, TypeError)])
def test_bad_n_q(n_q, exc):
    with pytest.raises(exc, match="n_q"):
        residual_vq(*_good(), n_q=n_q)


@pytest.mark.parametrize("codes,exc,word", [
    (torch.tensor([[0, 5]]), ValueError, "codes"),        # 5 >= K
    (torch.tensor([[0, -1]]), ValueError, "codes"),
    (torch.tensor([[0, 1, 2, 3]]), ValueError, "n_q"),    # n_q = 4 > Q
    (torch.tensor([[0.0, 1.0]]), TypeError, "codes"),
])
def test_bad_decode_input(codes, exc, word):
    with pytest.raises(exc, match=word):
        rvq_decode(codes, torch.randn(3, 5, 6))
