"""Fourier-domain cropping: both implementations on every backend against the reference, the
gradient to the strides against finite differences, sizes, identity, raw-op checks, bad input."""
from __future__ import annotations

import importlib
import math

import pytest
import torch
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import fourier_crop
from pyaudiok.ops.fourier_crop import (FOURIER_CROP, METHODS, _triton_kernels, _triton_mask_crop_backward,
                                       _triton_matrix_backward, choose_method, fourier_crop_output_size,
                                       fourier_crop_reference)

from ..harness import (assert_close, forward_opcheck_tests, generated_case_tests, opcheck, pick, poisoned_outputs,
                       require_backend, run_with_grads, same_dtype_reference)

# The module (the package's attribute of that name is the function).
fourier_crop_module = importlib.import_module("pyaudiok.ops.fourier_crop")

BACKENDS = ("cpu", "triton")
STRIDES = (1.0, 1.5, 2.0, 3.7)
SHAPES = {"1d": (2, 3, 45), "2d": (2, 3, 33, 40)}  # odd and even lengths, rows and columns both cropped
# dL/dS sums B·C·H·W products that largely cancel: its float32 error is relative to those terms,
# so it gets a looser bound than outputs and dx (which stay at the harness tolerance).
STRIDE_GRAD_SCALE = {torch.float64: 1.0, torch.float32: 10.0, torch.float16: 1.0, torch.bfloat16: 1.0}


def compare(x, strides, backend, method, dtype, stride_dtype=None, view=None, learn=True):
    """Outputs, dx and dstrides of `backend`/`method` with x in `dtype` (the strides in
    `stride_dtype`, default `dtype`) against the float64 reference on the same rounded values.
    `view` (a transpose, a slice) is taken of x inside the call, so the op gets it as it is (the
    harness's leaf copies keep only dense layouts); `learn=False`: strides without a gradient."""
    view = view or (lambda t: t)
    x, strides = x.to(dtype), strides.to(stride_dtype or dtype)
    inputs64 = (x.double().requires_grad_(), strides.double().requires_grad_(learn))
    ref, ref_grads = run_with_grads(lambda x, s: fourier_crop(view(x), s), inputs64, "reference", grad_seed=1)
    inputs = (x.requires_grad_(), strides.requires_grad_(learn))
    out, grads = run_with_grads(lambda x, s: fourier_crop(view(x), s, method=method), inputs, backend, grad_seed=1)
    same_dtype = same_dtype_reference(lambda x, s: fourier_crop(view(x), s), inputs)
    assert_close("output", out[0], ref[0], dtype, same_dtype_ref=lambda: pick(same_dtype(), 0, 0))
    assert_close("dx", grads[0], ref_grads[0], dtype, same_dtype_ref=lambda: pick(same_dtype(), 1, 0))
    if learn:
        assert_close("dstrides", grads[1], ref_grads[1], dtype, STRIDE_GRAD_SCALE[dtype],
                     same_dtype_ref=lambda: pick(same_dtype(), 1, 1))
    return out[0]


# The full grid on the C++ backend; the Triton interpreter is slow, so it gets a cross-section
# (every stride in float32, float64 at one stride); on a GPU it runs everything.
FULL_GRID = [(b, m, d, r, s) for b in BACKENDS for m in METHODS for d in (torch.float64, torch.float32)
             for r in ("1d", "2d") for s in STRIDES
             if b == "cpu" or torch.cuda.is_available() or (d == torch.float32 or s == 2.0)]


@pytest.mark.parametrize("backend,method,dtype,rank,stride", FULL_GRID)
def test_matches_reference(backend, method, dtype, rank, stride):
    device = require_backend(FOURIER_CROP, backend, dtype)
    shape = SHAPES[rank] if backend == "cpu" else (1, 2) + SHAPES[rank][2:]
    x = torch.randn(shape, dtype=torch.float64, device=device)
    out = compare(x, torch.tensor([stride], device=device), backend, method, dtype)
    n = SHAPES[rank][-1]
    assert out.shape[-1] == fourier_crop_output_size(n, stride)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_per_axis_strides_and_non_contiguous_input(backend, method):
    device = require_backend(FOURIER_CROP, backend)
    x = torch.randn(3, 2, 26, 31, device=device).transpose(0, 1)  # [2, 3, 26, 31], not contiguous
    assert not x.is_contiguous()
    out = compare(x, torch.tensor([2.7, 1.3], device=device), backend, method, torch.float32)
    assert out.shape == (2, 3, fourier_crop_output_size(26, 2.7, rfft=False), fourier_crop_output_size(31, 1.3))


# Views of x the op gets (taken inside the call): name -> (the stored shape for a view's shape, the view).
VIEWS = {"contiguous": (lambda shape: shape, lambda t: t),
         "batch and channels swapped": (lambda shape: (shape[1], shape[0], *shape[2:]), lambda t: t.transpose(0, 1)),
         "every other sample": (lambda shape: (*shape[:-1], 2 * shape[-1]), lambda t: t[..., ::2])}


def check_generated_case(data, backend, max_batch, max_length, max_side):
    """A drawn case against the reference: 1-D (T up to max_length) or 2-D (sides up to max_side),
    sizes from 2 up, strides from 1 up to N/2 (where n' = max(N/S, 2) reaches its floor: the smallest
    mask), shared or per axis, learnt or fixed, either method, float32 or float64, maybe a view."""
    device = require_backend(FOURIER_CROP, backend)
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    rank = data.draw(st.sampled_from((1, 2)), label="rank")
    sizes = [data.draw(st.integers(2, max_length if rank == 1 else max_side), label="size") for _ in range(rank)]
    # A shared stride goes up to the longer axis's floor: the shorter one then sits on its own.
    shared = rank == 1 or data.draw(st.booleans(), label="shared stride")
    limits = [max(sizes) / 2] if shared else [n / 2 for n in sizes]
    strides = [data.draw(st.floats(1.0, max(limit, 1.0)), label="stride") for limit in limits]
    batch = [data.draw(st.integers(1, max_batch), label="B or C") for _ in range(2)]
    method = data.draw(st.sampled_from(METHODS), label="method")
    dtype = data.draw(st.sampled_from((torch.float32, torch.float64)), label="dtype")
    learn = data.draw(st.booleans(), label="learnt strides")
    stored, view = VIEWS[data.draw(st.sampled_from(sorted(VIEWS)), label="view")]
    x = torch.randn(stored((*batch, *sizes)), dtype=torch.float64, device=device)
    compare(x, torch.tensor(strides, dtype=torch.float64, device=device), backend, method, dtype, view=view,
            learn=learn)


test_generated_shapes, test_generated_tiny_shapes_on_triton = generated_case_tests(
    check_generated_case, BACKENDS, full=dict(max_batch=3, max_length=64, max_side=24),
    tiny=dict(max_batch=2, max_length=24, max_side=12))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rank", ("1d", "2d"))
def test_half_precision_inputs(backend, dtype, method, rank):
    """Half-precision maps (with the float32 strides a DiffStride layer keeps) run the kernels in
    float32, rounded to the maps' dtype: within that dtype's tolerance of the float64 reference,
    and so is the reference itself (torch has no half-precision FFTs on the CPU, cuFFT only at
    powers of two: it computes in float32 too)."""
    device = require_backend(FOURIER_CROP, backend, dtype)
    x = torch.randn(SHAPES[rank], dtype=torch.float64, device=device)
    out = compare(x, torch.tensor([1.5], device=device), backend, method, dtype, stride_dtype=torch.float32)
    assert out.dtype == dtype
    with pyaudiok.use_backend("reference"):
        ref = fourier_crop(x.to(dtype), 1.5)
    assert ref.dtype == dtype
    assert_close("reference in half precision", ref, fourier_crop(x.to(dtype).double(), 1.5), dtype)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("stride_dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_strides_keep_the_maps_dtype(backend, stride_dtype, method):
    """float32 maps with half-precision strides: the result stays float32, equal to the reference's,
    and the strides' gradient comes back in their own dtype."""
    device = require_backend(FOURIER_CROP, backend) if backend != "reference" else torch.device("cpu")
    x = torch.randn(1, 2, 12, 14, device=device, requires_grad=True)
    s = torch.tensor([1.5], dtype=stride_dtype, device=device, requires_grad=True)
    with pyaudiok.use_backend(backend):
        y = fourier_crop(x, s, method=method)
    (dx, ds) = torch.autograd.grad((y * y).sum(), (x, s))
    assert y.dtype == dx.dtype == torch.float32 and ds.dtype == stride_dtype
    with pyaudiok.use_backend("reference"):
        want = fourier_crop(x.detach().double(), s.detach().double())
    assert_close("output", y, want, torch.float32)


@pytest.mark.parametrize("rank,stride", [("1d", 2.0), ("2d", 1.5), ("2d", 3.7)])
def test_fft_path_in_chunks_of_rows(monkeypatch, rank, stride):
    """The CPU FFT path transforms a few rows per call: chunks of 4 rows over B·C = 6 (the last
    chunk short) match the reference, forward and backward."""
    device = require_backend(FOURIER_CROP, "cpu")
    row_bytes = math.prod(SHAPES[rank][2:-1]) * (SHAPES[rank][-1] // 2 + 1) * 2 * 8
    monkeypatch.setattr(fourier_crop_module, "CPU_CHUNK_BYTES", 4 * row_bytes)
    assert fourier_crop_module.chunk_rows(6, row_bytes, device) == 4
    x = torch.randn(SHAPES[rank], dtype=torch.float64, device=device)
    compare(x, torch.tensor([stride], device=device), "cpu", "fft", torch.float64)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape,stride", [((2, 3, 40), 2.0),    # T = 11: bin 11 sits on the ramp's top corner
                                          ((2, 3, 40), 20.0),   # N/S = 2: the threshold's clamp boundary
                                          ((2, 3, 24, 40), 12.0)])  # both, rows and columns
def test_stride_gradient_at_the_corners_of_the_mask(method, shape, stride):
    """The fused paths' closed-form dL/dS takes the reference's autograd convention where a bin or the
    threshold sits exactly on a corner of a clamp (the gradient passes at the bounds)."""
    device = require_backend(FOURIER_CROP, "cpu", torch.float64)
    x = torch.randn(shape, dtype=torch.float64, device=device)
    compare(x, torch.tensor([stride], device=device), "cpu", method, torch.float64)


@pytest.mark.parametrize("shape,method", [((2, 3, 20, 24), "matmul"), ((2, 3, 45), "fft")])
def test_torch_compile_matches_eager(shape, method):
    """Under torch.compile (the host-built masks, the one-node paths and the chunk loop traced) the
    output and both gradients equal eager mode's."""
    require_backend(FOURIER_CROP, "cpu")
    x = torch.randn(shape, requires_grad=True)
    s = torch.tensor([1.7], requires_grad=True)

    def run(fn):
        with pyaudiok.use_backend("cpu"):
            y = fn(x, s)
        g = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum(), (x, s))
        return y.detach(), *g
    eager = run(lambda x, s: fourier_crop(x, s, method=method))
    compiled = run(torch.compile(lambda x, s: fourier_crop(x, s, method=method), fullgraph=False))
    for name, a, b in zip(("output", "dx", "dstrides"), compiled, eager):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(0, 3, 40), (0, 2, 24, 24), (2, 0, 40), (3, 0, 24, 24)])
def test_empty_batch(backend, method, shape):
    device = require_backend(FOURIER_CROP, backend) if backend != "reference" else torch.device("cpu")
    x = torch.randn(shape, device=device, requires_grad=True)
    s = torch.tensor([2.5], device=device, requires_grad=True)
    with pyaudiok.use_backend(backend):
        y = fourier_crop(x, s, method=method)
    y.sum().backward()
    assert y.shape[:2] == shape[:2] and x.grad.shape == shape and s.grad.item() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_broadcast_input_and_zero_dim_stride(backend, method):
    """x broadcast over its channels (stride 0) and the stride as a 0-d tensor: the values and gradients
    of a materialised x and a [1] stride."""
    device = require_backend(FOURIER_CROP, backend)
    base = torch.randn(2, 1, 37, device=device, dtype=torch.float64)

    def run(x_of, stride):
        leaf, s = base.clone().requires_grad_(), stride.clone().requires_grad_()
        with pyaudiok.use_backend(backend):
            y = fourier_crop(x_of(leaf), s, method=method)
        return (y, *torch.autograd.grad((y * torch.linspace(-1, 1, y.shape[-1], device=device)).sum(), (leaf, s)))
    got = run(lambda x: x.expand(2, 3, 37), torch.tensor(2.3, device=device, dtype=torch.float64))
    want = run(lambda x: x.expand(2, 3, 37).contiguous(), torch.tensor([2.3], device=device, dtype=torch.float64))
    for name, a, b in zip(("output", "dx", "dstride"), got, want):
        torch.testing.assert_close(a.reshape(b.shape), b, msg=name)


def loss_at(fn, x, g, strides):
    return (fn(x, strides) * g).sum().item()


@pytest.mark.parametrize("impl,shape,strides", [
    (impl, shape, strides) for impl in ("reference", "cpu/fft", "cpu/matmul", "triton/fft", "triton/matmul")
    for shape, strides in (((2, 2, 40), [1.5]), ((2, 2, 40), [3.7]), ((1, 2, 28, 33), [1.7, 2.9]))
    if not impl.startswith("triton") or strides == [3.7]])
def test_stride_gradient_matches_finite_differences(impl, shape, strides):
    """Central differences in float64 at strides where no size changes within ±h and no bin sits
    on a corner of the mask."""
    backend, _, method = impl.partition("/")
    device = require_backend(FOURIER_CROP, backend, torch.float64) if backend != "reference" else "cpu"
    x = torch.randn(shape, dtype=torch.float64, device=device)

    def fn(x, s):
        with pyaudiok.use_backend(backend):
            return fourier_crop(x, s, method=method or None)
    s = torch.tensor(strides, dtype=torch.float64, device=device, requires_grad=True)
    y = fn(x, s)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad((y * g).sum(), s)
    h = 1e-6
    for i in range(len(strides)):
        e = torch.zeros_like(s.detach())
        e[i] = h
        plus, minus = fn(x, s.detach() + e), fn(x, s.detach() - e)
        assert plus.shape == minus.shape == y.shape
        fd = ((plus * g).sum() - (minus * g).sum()).item() / (2 * h)
        assert abs(fd) > 1e-3  # the stride does move the output here
        assert grad[i].item() == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_reference_gradcheck():
    x = torch.randn(1, 1, 20, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([3.3], dtype=torch.float64, requires_grad=True)  # 20 -> 17: cropped, on the ramp
    torch.autograd.gradcheck(fourier_crop_reference, (x, s))


@pytest.mark.parametrize("n,stride,rfft,expected", [
    (32, 2.0, True, 25),    # T = 16/2 + 1 = 9, K = ceil(4 + 9) - 1 = 12, 2K + 1
    (32, 2.0, False, 23),   # rows: T = 8, K = 11
    (32, 1.5, True, 31),    # T = 11.67, K = 15 < 16 = N/2
    (32, 1.2, True, 32),    # K = 18 >= 16: every bin kept, the size stays N
    (33, 3.7, False, 17),   # T = 4.46, K = 8
    (16000, 2.0, True, 8009),
    (100, 80.0, True, 11),  # N/S below 2: n' = 2, T = 2, K = 5
    (5, 1.0, False, 5),
    (2, 9.0, True, 2),
])
def test_output_size_formula(n, stride, rfft, expected):
    assert fourier_crop_output_size(n, stride, rfft=rfft) == expected
    t = max(n / stride, 2) / 2 + rfft
    k = math.ceil(4 + t) - 1
    assert expected == (n if k >= n // 2 else 2 * k + 1)
    x = torch.randn(1, 1, n) if rfft else torch.randn(1, 1, n, 3)
    y = fourier_crop(x, torch.tensor([stride]))
    assert y.shape[2] == expected


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(2, 3, 31), (2, 3, 32), (1, 2, 9, 16), (1, 2, 20, 11)])
def test_stride_one_is_identity_and_constants_stay_constant(backend, method, shape):
    device = require_backend(FOURIER_CROP, backend) if backend != "reference" else torch.device("cpu")
    x = torch.randn(shape, device=device)
    s = torch.ones(1, device=device, requires_grad=True)  # with a gradient: no shortcut
    with pyaudiok.use_backend(backend):
        y = fourier_crop(x, s, method=method)
        assert_close("identity", y, x.double(), torch.float32)
        c = torch.full(shape, 0.7, device=device)
        yc = fourier_crop(c, torch.tensor([2.5, 3.0][:len(shape) - 2], device=device), method=method)
    torch.testing.assert_close(yc, torch.full_like(yc, 0.7), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(4, 8, 20, 24), (16, 16, 45)])
def test_fixed_strides_keep_no_copy_of_the_input_for_the_backward(shape):
    """With strides that take no gradient (a SpectralPool layer) the matmul path saves neither x nor
    its column product for the backward (only the small matrices and masks), and dx still matches
    the reference."""
    device = require_backend(FOURIER_CROP, "cpu")
    x = torch.randn(shape, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with pyaudiok.use_backend("cpu"):
            y = fourier_crop(x, torch.tensor([2.0], device=device), method="matmul")
    largest = max(t.numel() for t in saved)
    assert largest < x.numel() // 4, f"a saved tensor of {largest} values (x has {x.numel()})"
    compare(x.detach().double(), torch.tensor([2.0], device=device), "cpu", "matmul", torch.float32)
    assert y.shape[:2] == shape[:2]


def test_dispatch_picks_matmul_for_small_maps_and_fft_for_long_signals():
    assert choose_method(torch.empty(1, 1, 32, 32)) == "matmul"
    assert choose_method(torch.empty(1, 1, 16000)) == "fft"


# ---------------------------------------------------------------------------------------------
# The raw ops: opcheck (schema, fake, autograd registration, AOT).



def raw_ops(backend):
    if backend == "triton":
        k = _triton_kernels()
        return k.matrix, k.mask_crop, _triton_matrix_backward(), _triton_mask_crop_backward()
    cpp = pyaudiok.ops._library.cpp_op
    return (cpp("fourier_crop_matrix"), cpp("fourier_mask_crop"), cpp("fourier_crop_matrix_backward"),
            cpp("fourier_mask_crop_backward"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_registered_ops_pass_opcheck(backend):
    device = require_backend(FOURIER_CROP, backend)
    matrix, mask_crop, matrix_backward, mask_crop_backward = raw_ops(backend)
    tests = forward_opcheck_tests(backend, device)
    mask = torch.rand(7, device=device, requires_grad=True)
    opcheck(matrix, (mask, 20, 13), test_utils=tests)
    opcheck(matrix_backward, (torch.randn(13, 20, device=device), mask.detach()), test_utils=tests)
    spectrum = torch.randn(3, 20, 11, 2, device=device, requires_grad=True)
    rows, cols = torch.rand(13, device=device, requires_grad=True), torch.rand(8, device=device, requires_grad=True)
    opcheck(mask_crop, (spectrum, rows, cols), test_utils=tests)
    opcheck(mask_crop_backward, (torch.randn(3, 13, 8, 2, device=device), spectrum.detach(),
                                               rows.detach(), cols.detach()), test_utils=tests)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_crop_backward_writes_zeros_outside_the_crop(backend):
    device = require_backend(FOURIER_CROP, backend)
    _check_mask_crop_backward(raw_ops(backend)[3], device, batch=2)


def test_triton_correlation_sums_the_batch_in_splits(monkeypatch):
    """Long batches are summed by several programs each (partial sums added after): uneven splits."""
    device = require_backend(FOURIER_CROP, "triton")
    monkeypatch.setattr(importlib.import_module("pyaudiok.kernels.fourier_crop"), "CORRELATION_ROWS_PER_SPLIT", 16)
    _check_mask_crop_backward(raw_ops("triton")[3], device, batch=37)


def _check_mask_crop_backward(mask_crop_backward, device, batch):
    spectrum = torch.randn(batch, 12, 7, 2, device=device)
    grad = torch.randn(batch, 9, 5, 2, device=device)
    rows, cols = torch.rand(9, device=device), torch.rand(5, device=device)
    with poisoned_outputs():
        dx, e = mask_crop_backward(grad, spectrum, rows, cols)
    kept = [0, 1, 2, 3, 4, 8, 9, 10, 11]  # rows 0..4 and the negative frequencies -4..-1
    want = torch.zeros_like(spectrum)
    want[:, kept, :5] = grad * rows[:, None, None] * cols[None, :, None]
    torch.testing.assert_close(dx, want)
    torch.testing.assert_close(e, (grad * spectrum[:, kept, :5]).sum((0, 3)))


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument.

@pytest.mark.parametrize("x,strides,exc,words", [
    (torch.randn(2, 3, 40), torch.tensor([0.5]), ValueError, ["strides", ">= 1"]),
    (torch.randn(2, 3, 40), torch.tensor([float("nan")]), ValueError, ["strides", "finite"]),
    (torch.randn(3, 40), torch.tensor([2.0]), ValueError, ["x", "[B, C, T] or [B, C, H, W]"]),
    (torch.randn(1, 2, 3, 4, 5), torch.tensor([2.0]), ValueError, ["x", "[B, C, T] or [B, C, H, W]"]),
    (torch.randn(2, 3, 40), torch.tensor([2.0, 2.0]), ValueError, ["strides", "[1]", "1-D"]),
    (torch.randn(2, 3, 8, 8), torch.tensor([2.0, 2.0, 2.0]), ValueError, ["strides", "[1] or [2]"]),
    (torch.randn(2, 3, 8, 8), torch.ones(2, 1) * 2, ValueError, ["strides", "[1] or [2]"]),
    (torch.randn(2, 3, 1), torch.tensor([1.0]), ValueError, ["x", "smaller than the mask"]),
    (torch.randn(2, 3, 8, 1), torch.tensor([1.0]), ValueError, ["x", "smaller than the mask"]),
    (torch.randn(2, 3, 8).long(), torch.tensor([2.0]), TypeError, ["x", "dtype"]),
    (torch.randn(2, 3, 8), torch.tensor([2]), TypeError, ["strides", "dtype"]),
    (torch.randn(2, 3, 8), [2.0], TypeError, ["strides", "torch.Tensor"]),
    (torch.randn(2, 3, 8), torch.tensor([2.0], device="meta"), ValueError, ["strides", "device"]),
])
def test_bad_input_raises_named_error(x, strides, exc, words):
    with pytest.raises(exc) as info:
        fourier_crop(x, strides)
    for word in words:
        assert word in str(info.value)


def test_bad_method_and_smoothness():
    x, s = torch.randn(1, 1, 16), torch.tensor([2.0])
    with pytest.raises(ValueError, match="method"):
        fourier_crop(x, s, method="dct")
    with pytest.raises(ValueError, match="smoothness"):
        fourier_crop(x, s, smoothness=0.0)
    with pytest.raises(ValueError, match="smoothness"):  # not an OverflowError from the sizes
        fourier_crop(x, s, smoothness=float("inf"))
    for bad in ("4", None, torch.tensor([1.0, 2.0])):
        with pytest.raises(TypeError, match="smoothness"):
            fourier_crop(x, s, smoothness=bad)


def test_a_constant_stride_is_taken_as_given():
    """A Python number is not rounded to float32 (1e300 would read as ∞ and be refused)."""
    x = torch.randn(1, 1, 16)
    assert fourier_crop(x, 1e300).shape == (1, 1, fourier_crop_output_size(16, 1e300))


@pytest.mark.parametrize("args,exc,words", [
    ((-5, 2.0), ValueError, ["size", ">= 2"]),
    ((1, 2.0), ValueError, ["size", ">= 2"]),
    ((10.0, 2.0), TypeError, ["size", "int"]),
    ((10, 0.0), ValueError, ["stride", ">= 1"]),
    ((10, 0.5), ValueError, ["stride", ">= 1"]),
    ((10, float("nan")), ValueError, ["stride", "finite"]),
    ((10, "2"), TypeError, ["stride"]),
    ((10, 2.0, 0.0), ValueError, ["smoothness"]),
    ((10, 2.0, float("inf")), ValueError, ["smoothness"]),
])
def test_output_size_bad_input_raises_named_error(args, exc, words):
    with pytest.raises(exc) as info:
        fourier_crop_output_size(*args)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("rank,strides", [("1d", [2.0]), ("2d", [2.7, 1.3]), ("2d", [1.0])])
def test_triton_products_candidate_matches_reference(monkeypatch, rank, strides):
    """The matmul path with its products as Triton GEMMs (PRODUCTS = "triton", a candidate until timed
    on a GPU): outputs, dx and dstrides against the reference, on a non-contiguous input."""
    device = require_backend(FOURIER_CROP, "triton")
    monkeypatch.setattr(fourier_crop_module, "PRODUCTS", "triton")
    calls = []
    monkeypatch.setattr(fourier_crop_module, "_SeparableProducts", _counting(fourier_crop_module._SeparableProducts,
                                                                             calls))
    shape = (1, 2) + SHAPES[rank][2:]
    x = torch.randn(shape[::-1], dtype=torch.float64, device=device).permute(*range(len(shape) - 1, -1, -1))
    compare(x, torch.tensor(strides, device=device), "triton", "matmul", torch.float32)
    assert calls, "the Triton products path did not run"


@pytest.mark.parametrize("size,stride,dtype", [(242, 2.0, torch.float32), (210, 1.5, torch.float64),
                                              (447, 3.7, torch.float32), (211, 1.0, torch.float32)])
def test_rader_transforms_candidate_matches_reference(monkeypatch, size, stride, dtype):
    """The FFT path with its prime output lengths (131, 149, 211) transformed by Rader's algorithm
    (PRIME_TRANSFORMS = "rader", a candidate until timed on a GPU): outputs, dx and dstrides against
    the reference, with an odd number of rows (the last one pairs with zeros)."""
    device = require_backend(FOURIER_CROP, "triton")
    monkeypatch.setattr(fourier_crop_module, "PRIME_TRANSFORMS", "rader")
    monkeypatch.setattr(fourier_crop_module._prime_fft, "MIN_LENGTH", 100)  # small primes, for the interpreter
    calls = []
    for name in ("rfft", "irfft"):
        monkeypatch.setattr(fourier_crop_module._prime_fft, name, _recorded(getattr(fourier_crop_module._prime_fft,
                                                                                      name), name, calls))
    x = torch.randn(3, 1, size, dtype=torch.float64, device=device)
    out = compare(x, torch.tensor([stride], device=device), "triton", "fft", dtype)
    assert fourier_crop_module._prime_fft.applies(out.shape[-1])
    assert sorted(set(calls)) == ["irfft", "rfft"], "Rader's transforms did not run both ways"


@pytest.mark.gpu
def test_rader_transforms_at_the_bench_size(monkeypatch):
    """The bench's 1-D case (B 32, C 64, T 16 000 at stride 2: 8 009 samples out, 1 024 row pairs)
    with Rader's transforms against torch's, forward and backward, on a GPU."""
    device = require_backend(FOURIER_CROP, "triton")
    x = torch.randn(32, 64, 16_000, device=device)
    grads = {}
    for setting in ("torch", "rader"):
        monkeypatch.setattr(fourier_crop_module, "PRIME_TRANSFORMS", setting)
        leaves = (x.clone().requires_grad_(), torch.tensor([2.0], device=device, requires_grad=True))
        with pyaudiok.use_backend("triton"):
            out = fourier_crop(*leaves, method="fft")
        out.backward(torch.ones_like(out) + torch.linspace(0, 1, out.shape[-1], device=device))
        grads[setting] = (out.detach(), leaves[0].grad, leaves[1].grad)
    assert grads["rader"][0].shape[-1] == 8009
    for name, got, want in zip(("output", "dx", "dstrides"), grads["rader"], grads["torch"]):
        assert_close(name, got, want, torch.float32, STRIDE_GRAD_SCALE[torch.float32] if name == "dstrides" else 1.0)


def test_rader_transforms_leave_other_lengths_to_torch(monkeypatch):
    device = require_backend(FOURIER_CROP, "triton")
    monkeypatch.setattr(fourier_crop_module, "PRIME_TRANSFORMS", "rader")
    calls = []
    monkeypatch.setattr(fourier_crop_module._prime_fft, "irfft", _recorded(fourier_crop_module._prime_fft.irfft,
                                                                           "irfft", calls))
    x = torch.randn(1, 2, 300, device=device)  # 159 = 3·53 samples out
    compare(x, torch.tensor([2.0], device=device), "triton", "fft", torch.float32)
    assert not calls
    monkeypatch.setattr(fourier_crop_module, "PRIME_TRANSFORMS", "bluestein")
    with pytest.raises(ValueError, match="PRIME_TRANSFORMS must be 'torch' or 'rader'; got 'bluestein'"), \
            pyaudiok.use_backend("triton"):
        fourier_crop(x, 2.0, method="fft")


def test_products_setting_is_checked(monkeypatch):
    device = require_backend(FOURIER_CROP, "triton")
    monkeypatch.setattr(fourier_crop_module, "PRODUCTS", "cublas")
    with pytest.raises(ValueError, match="PRODUCTS must be 'torch' or 'triton'; got 'cublas'"), \
            pyaudiok.use_backend("triton"):
        fourier_crop(torch.randn(1, 2, 8, 8, device=device), 2.0, method="matmul")


def _recorded(function, name, calls):
    def call(*args):
        calls.append(name)
        return function(*args)
    return call


def _counting(function_class, calls):
    class Counted(function_class):
        @staticmethod
        def forward(ctx, *args):
            calls.append(1)
            return function_class.forward(ctx, *args)
    return Counted


@pytest.mark.parametrize("a_shape,b_shape,reduce_batch", [
    ((1, 70, 33), (1, 33, 19), False),     # one GEMM, odd sizes
    ((1, 7, 10), (5, 10, 9), False),       # a broadcast matrix over a batch (batch stride 0)
    ((5, 7, 10), (5, 10, 9), True),        # a sum over the batch
    ((1, 3, 1000), (1, 1000, 5), True),    # a long K, split over programs
    ((0, 3, 4), (1, 4, 2), False), ((2, 3, 0), (2, 0, 2), True)])  # empty
def test_triton_strided_products(a_shape, b_shape, reduce_batch):
    device = require_backend(FOURIER_CROP, "triton")
    from pyaudiok.kernels.fourier_crop import strided_products
    a = torch.randn(a_shape[0], a_shape[2], a_shape[1], dtype=torch.float64, device=device).transpose(1, 2)
    b = torch.randn(b_shape, dtype=torch.float64, device=device)
    want = torch.matmul(a, b)  # a batch of one broadcasts, as in strided_products
    want = want.sum(0) if reduce_batch else want
    got = strided_products(a.float(), b.float(), reduce_batch)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert_close("product", got, want, torch.float32)


def test_triton_products_op_passes_opcheck():
    device = require_backend(FOURIER_CROP, "triton")
    products = _triton_kernels().products
    tests = ("test_schema", "test_faketensor")  # no autograd: it runs inside the path's own backward
    a, b = torch.randn(1, 9, 20, device=device), torch.randn(3, 20, 7, device=device)
    for reduce_batch in (False, True):
        opcheck(products, (a, b, reduce_batch), test_utils=tests)
