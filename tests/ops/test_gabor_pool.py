"""gabor_pool: every backend against the reference (values and the gradients to x and the three
parameter vectors), the reference against a direct evaluation of the definition, tiling edge cases,
bad inputs."""
from __future__ import annotations

import math
import types
import warnings

import pytest
import torch
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import gabor_pool
from pyaudiok.ops.gabor_pool import (CPU_SEGMENT, FFT_MIN_WINDOW, FLOOR, GABOR_POOL, _triton_forward, fft_blocks,
                                     fft_length, gabor_filters, gabor_pool_fft, gabor_pool_reference,
                                     gabor_pool_tiled, gaussian_windows, segment_length)

from ..harness import TOLERANCE, compare_with_reference, generated_case_tests, opcheck, rel_error, require_backend

BACKENDS = ("cpu", "triton", "cuda")


def param_ranges(window):
    """The DESIGN's clipped ranges of the centre frequencies, bandwidths and pooling widths, (lo, hi)
    each, for a window: the bandwidths' upper and the pooling widths' lower bound scale with it (a
    window under 4 taps is too short for either: its range is then the one bound left)."""
    width = math.sqrt(2 * math.log(2)) / math.pi
    return (0.0, math.pi), (4 * width, max(4, window) * width), (min(2 / window, 0.5), 0.5)


def params(F, device="cpu", dtype=torch.float32, window=401, grad=True):
    """Parameters spread over the DESIGN's clipped ranges."""
    (_, top), (lo, hi), (p_lo, p_hi) = param_ranges(window)
    eta = torch.rand(F, dtype=torch.float64) * top
    sigma = lo + (hi - lo) * torch.rand(F, dtype=torch.float64) ** 2
    pool = p_lo + (p_hi - p_lo) * torch.rand(F, dtype=torch.float64)
    return [t.to(device, dtype).requires_grad_(grad) for t in (eta, sigma, pool)]


def waveform(B, T, device="cpu", dtype=torch.float32, grad=True):
    return torch.randn(B, T, dtype=torch.float64).to(device, dtype).requires_grad_(grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,T,F,window,stride", [(2, 401, 3, 401, 160), (1, 1003, 5, 401, 160),
                                                  (3, 257, 4, 101, 40), (0, 500, 2, 401, 160),
                                                  (2, 333, 16, 65, 16)])
def test_forward_and_gradients_match_reference(backend, B, T, F, window, stride):
    device = require_backend(GABOR_POOL, backend)
    if backend == "triton" and device.type == "cpu" and (window > 101 or B * T > 700):
        pytest.skip("large cases take ~20 s in the Triton interpreter: covered on a GPU")
    inputs = [waveform(B, T, device), *params(F, device, window=window)]
    fn = lambda x, e, s, p: gabor_pool(x, e, s, p, window=window, stride=stride)  # noqa: E731
    out, _ = compare_with_reference(fn, inputs, backend, scale=10)
    assert out[0].shape == (B, F, -(-T // stride))


# Views of x the op gets (taken inside the call): name -> (the stored shape for [B, T], the view).
VIEWS = {"contiguous": (lambda B, T: (B, T), lambda t: t),
         "transposed": (lambda B, T: (T, B), lambda t: t.T),
         "every other sample": (lambda B, T: (B, 2 * T), lambda t: t[:, ::2])}


def check_generated_case(data, backend, max_batch, max_filters, max_window, max_extra):
    """A drawn case against the reference (values and the four gradients): odd windows from 3 to
    max_window (on the CPU both routes, tiled and FFT), T from the window to max_extra samples
    more, strides from 1 to past the window, parameters anywhere in their ranges (their bounds
    included), x in float32 or float64 and maybe a view."""
    device = require_backend(GABOR_POOL, backend)
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    window = 2 * data.draw(st.integers(1, max_window // 2), label="window // 2") + 1
    T = window + data.draw(st.integers(0, max_extra), label="T - window")
    stride = data.draw(st.integers(1, window + 8), label="stride")
    B, F = data.draw(st.integers(1, max_batch), label="B"), data.draw(st.integers(1, max_filters), label="F")
    dtypes = [d for d in (torch.float32, torch.float64) if GABOR_POOL.impls[backend].why_not(device, d) is None]
    dtype = data.draw(st.sampled_from(dtypes), label="dtype")
    _, sigmas, pools = param_ranges(window)
    # dη → 0 at η = 0 and π (|u|² is even about both), where the FFT route's error in it is not relative to it
    etas = (0.01, math.pi - 0.01)
    vectors = [torch.tensor(data.draw(st.lists(st.floats(lo, hi), min_size=F, max_size=F), label=name),
                            dtype=dtype, device=device, requires_grad=True)
               for name, (lo, hi) in zip(("center_freqs", "bandwidths", "pool_widths"), (etas, sigmas, pools))]
    stored, view = VIEWS[data.draw(st.sampled_from(sorted(VIEWS)), label="view")]
    x = torch.randn(stored(B, T), dtype=torch.float64).to(device, dtype).requires_grad_(True)
    fn = lambda x, e, s, p: gabor_pool(view(x), e, s, p, window=window, stride=stride)  # noqa: E731
    compare_with_reference(fn, [x, *vectors], backend, scale=10)


test_generated_shapes, test_generated_tiny_shapes_on_triton = generated_case_tests(
    check_generated_case, BACKENDS, full=dict(max_batch=3, max_filters=6, max_window=2 * FFT_MIN_WINDOW, max_extra=300),
    tiny=dict(max_batch=2, max_filters=3, max_window=33, max_extra=64))


@pytest.mark.parametrize("frames_per_tile", [1, 2, 7])
def test_tiles_of_any_size_match_reference(frames_per_tile):
    x = waveform(2, 1290, dtype=torch.float64, grad=False)
    eta, sigma, pool = params(6, dtype=torch.float64, window=129, grad=False)
    got = gabor_pool_tiled(x, eta, sigma, pool, 129, 64, frames_per_tile=frames_per_tile)
    want = gabor_pool_reference(x, eta, sigma, pool, 129, 64)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("items", [1, 2])
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("B,T,F,window,stride,block", [(2, 1290, 6, 129, 64, 1), (1, 1003, 5, 401, 160, 2),
                                                       (3, 457, 7, 201, 100, 7), (2, 401, 3, 401, 1, 2),
                                                       (3, 1003, 4, 33, 50, 3), (3, 65, 3, 65, 7, 2),
                                                       (0, 500, 2, 401, 160, 1)])
def test_fft_route_matches_reference_for_any_block(items, dtype, B, T, F, window, stride, block):
    """The FFT route with its hand-written backward, blocks of 1 … F filters and of one item (the CPU's
    layout) or several (the GPU's), strides from 1 to beyond the window, against the reference
    (forward and the four gradients)."""
    check_fft_route(dtype, B, T, F, window, stride, filters_per_block=block, items_per_block=items)


def check_fft_route(dtype, B, T, F, window, stride, **route):
    """gabor_pool_fft with the route's block/segment options against the reference: the output and
    the gradients to x and the three parameter vectors."""
    x = waveform(B, T, dtype=dtype)
    eta, sigma, pool = params(F, dtype=dtype, window=window)
    got = gabor_pool_fft(x, eta, sigma, pool, window, stride, **route)
    want = gabor_pool_reference(x, eta, sigma, pool, window, stride)
    weights = torch.randn(want.shape, dtype=dtype)
    got_grads = torch.autograd.grad((got * weights).sum(), [x, eta, sigma, pool])
    want_grads = torch.autograd.grad((want * weights).sum(), [x, eta, sigma, pool])
    assert got.shape == want.shape
    assert rel_error(got, want) <= TOLERANCE[dtype] * 10
    for name, g, w in zip(("x", "center_freqs", "bandwidths", "pool_widths"), got_grads, want_grads):
        assert rel_error(g, w) <= TOLERANCE[dtype] * 10, name


@pytest.mark.parametrize("items", [1, 2])
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("B,T,F,window,stride,segment", [(2, 1290, 6, 129, 64, 256), (1, 1003, 5, 401, 160, 512),
                                                         (3, 700, 3, 65, 7, 130), (2, 300, 2, 101, 50, 101),
                                                         (1, 2000, 3, 33, 160, 2000)])
def test_fft_route_in_overlap_save_segments(items, dtype, B, T, F, window, stride, segment):
    """The FFT route on segments shorter than the signal (the CPU's layout for long signals): hops of
    128 to 1 samples, a last segment past the signal's end, a segment as long as the signal."""
    check_fft_route(dtype, B, T, F, window, stride, filters_per_block=2, items_per_block=items, segment=segment)


def test_segment_lengths():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert segment_length(64_000, 401, cpu) == CPU_SEGMENT                   # LEAF's 4 s: cache-sized segments
    assert segment_length(64_000, 401, cuda) == fft_length(64_000 + 400)    # GPUs: one transform per signal
    assert segment_length(1000, 401, cpu) == fft_length(1400)               # short signals: one segment
    assert segment_length(10 ** 6, 4001, cpu) == fft_length(4 * 4001)       # long windows: segments of >= 4 W
    with pytest.raises(ValueError, match="segment must be >= the window"):
        gabor_pool_fft(waveform(1, 500), *params(2, window=129), 129, 64, segment=100)


@pytest.mark.parametrize("wrt", ["x", "params"])
def test_fft_route_gradients_to_a_subset_and_non_contiguous_input(wrt):
    """Gradients to x only or to the parameters only (the backward skips the other transforms), from
    a strided view of x, in blocks of several items."""
    base = waveform(4, 1800, dtype=torch.float64, grad=False)
    x = base[::2, ::2].requires_grad_(wrt == "x")
    eta, sigma, pool = params(5, dtype=torch.float64, window=129, grad=wrt == "params")
    inputs = [x] if wrt == "x" else [eta, sigma, pool]
    weights = torch.randn(2, 5, -(-900 // 40), dtype=torch.float64)
    got = torch.autograd.grad((gabor_pool_fft(x, eta, sigma, pool, 129, 40, 2, 2) * weights).sum(), inputs)
    want = torch.autograd.grad((gabor_pool_reference(x, eta, sigma, pool, 129, 40) * weights).sum(), inputs)
    for g, w in zip(got, want):
        assert rel_error(g, w) <= TOLERANCE[torch.float64] * 10


def test_fft_blocks_fit_their_budget():
    n = fft_length(64_000 + 200)
    assert fft_blocks(32, 40, n, torch.device("cpu")) == (1, 8)            # cache-sized, one item
    items, filters = fft_blocks(32, 40, n, torch.device("cuda"))
    assert items == 32 and 1 <= filters < 40 and items * filters * n <= 1 << 23  # 64 MB of complex64
    assert fft_blocks(1 << 10, 40, 1 << 20, torch.device("cuda")) == (8, 1)  # long signals: fewer items
    assert fft_blocks(0, 3, 1000, torch.device("cuda"))[0] >= 1


def test_cuda_tensors_take_the_fft_route_first():
    """The automatic choice for CUDA tensors is the cuFFT route, as the first choice (no fallback
    warning); the Triton kernel comes next and has no constraint of its own (checked through the
    registry, so it needs no GPU)."""
    cuda_x = types.SimpleNamespace(device=torch.device("cuda"))
    args = (cuda_x, None, None, None, 401, 160)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyaudiok.BackendFallbackWarning)
        assert GABOR_POOL.select(torch.device("cuda"), torch.float32, args).backend == "cuda"
    assert GABOR_POOL.order("cuda") == ("cuda", "triton", "reference")
    assert GABOR_POOL.order("cpu")[0] == "cpu"
    assert GABOR_POOL.impls["triton"].constraint is None


def test_fft_length_is_smooth_and_minimal():
    def smooth(n):
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1
    for n in (1, 7, 401, 1202, 64200, 100003):
        got = fft_length(n)
        assert got >= n and smooth(got) and not any(smooth(m) for m in range(n, got))


def test_cpu_backend_takes_the_fft_route_for_long_windows(monkeypatch):
    import importlib
    module = importlib.import_module("pyaudiok.ops.gabor_pool")
    taken = []
    monkeypatch.setattr(module, "gabor_pool_fft", lambda *a: taken.append("fft") or gabor_pool_reference(*a))
    monkeypatch.setattr(module, "gabor_pool_tiled", lambda *a: taken.append("tiled") or gabor_pool_reference(*a))
    x = waveform(1, 500, grad=False)
    for window in (FFT_MIN_WINDOW - 2, FFT_MIN_WINDOW, 401):
        with pyaudiok.use_backend("cpu"):
            gabor_pool(x, *params(2, window=window, grad=False), window=window, stride=50)
    assert taken == ["tiled", "fft", "fft"]


def test_reference_matches_the_definition():
    """A direct double sum of the DESIGN's formula (frame k centred on sample stride·k)."""
    window, stride, T = 31, 8, 70
    h = window // 2
    x = torch.randn(1, T, dtype=torch.float64)
    eta, sigma, pool = (torch.tensor(v, dtype=torch.float64) for v in ([0.3, 2.5], [2.0, 6.0], [0.2, 0.45]))
    got = gabor_pool_reference(x, eta, sigma, pool, window, stride)
    t = torch.arange(-h, h + 1, dtype=torch.float64)
    xp = torch.nn.functional.pad(x[0], (h, h))
    for f in range(2):
        phi = torch.exp(1j * eta[f] * t) * torch.exp(-t**2 / (2 * sigma[f] ** 2)) / (math.sqrt(2 * math.pi) * sigma[f])
        u = torch.stack([(phi * xp[n:n + window]).sum() for n in range(T)])
        w = torch.exp(-0.5 * ((torch.arange(window) - h) / (pool[f] * h)) ** 2)
        for k in range(got.shape[-1]):
            acc = sum(w[j] * abs(u[stride * k + j - h]) ** 2 for j in range(window) if 0 <= stride * k + j - h < T)
            assert got[0, f, k].item() == pytest.approx(max(acc.item(), FLOOR), rel=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    device = require_backend(GABOR_POOL, backend)
    x = waveform(4, 300, device, grad=False)
    eta, sigma, pool = params(4, device, window=33, grad=False)
    view = x[::2, ::2]
    with pyaudiok.use_backend(backend):
        got = gabor_pool(view, eta, sigma, pool, window=33, stride=16)
    want = gabor_pool_reference(view.double(), eta.double(), sigma.double(), pool.double(), 33, 16)
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("x_dtype,param_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32),
                                                 (torch.float16, torch.float32)])
@pytest.mark.parametrize("window", [33, 129])
def test_parameters_in_another_dtype_than_x(backend, x_dtype, param_dtype, window):
    """x and the parameter vectors in different dtypes (float32 parameters with a half-precision x under
    autocast, or a float64 x): every backend runs, in float64 where either is, and returns x's dtype
    with each gradient in its input's dtype."""
    device = require_backend(GABOR_POOL, backend, x_dtype) if backend != "reference" else torch.device("cpu")
    if backend == "triton" and device.type == "cpu" and window > 33:
        pytest.skip("long windows take ~20 s in the Triton interpreter: covered on a GPU")
    x = waveform(2, 300, device, x_dtype)
    p = params(3, device, param_dtype, window=window)
    with pyaudiok.use_backend(backend):
        got = gabor_pool(x, *p, window=window, stride=16)
    grads = torch.autograd.grad(got.float().sum(), (x, *p))
    assert got.dtype == x_dtype
    assert [g.dtype for g in grads] == [x_dtype] + [param_dtype] * 3
    want = gabor_pool_reference(x.double(), *(t.double() for t in p), window, 16)
    assert rel_error(got, want) <= TOLERANCE[x_dtype] * 10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [33, 129])  # the cpu backend's tiled and FFT routes
def test_non_finite_samples_make_only_the_frames_that_see_them_non_finite(backend, window):
    """A NaN in one item and an inf in another (a third is finite): the frames whose windows reach the
    sample are NaN or inf as the reference's are, the other frames and items keep their values, and
    so do the gradients (NaN or inf exactly where the reference's are)."""
    device = require_backend(GABOR_POOL, backend)
    if backend == "triton" and device.type == "cpu" and window > 33:
        pytest.skip("long windows take ~20 s in the Triton interpreter: covered on a GPU")
    torch.manual_seed(0)
    dtype = torch.float32 if backend == "triton" else torch.float64
    x = waveform(3, 700, dtype=dtype, grad=False)
    x[0, 300], x[2, 40] = float("nan"), float("inf")
    p = params(2, dtype=dtype, window=window, grad=False)
    results = []
    for run_on, dev in (("reference", "cpu"), (backend, device)):
        # Fresh leaves for each run: on the CPU, .to() would return the same tensors, and the second
        # run's gradients would add into (and so overwrite) the first's.
        leaves = [t.detach().to(dev, copy=True).requires_grad_(True) for t in (x, *p)]
        with pyaudiok.use_backend(run_on):
            y = gabor_pool(*leaves, window=window, stride=50)
        y.backward(torch.ones_like(y))
        results.append([t.detach().cpu() for t in (y, *(leaf.grad for leaf in leaves))])
    for name, got, want in zip(("y", "x", "center_freqs", "bandwidths", "pool_widths"), *reversed(results)):
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf()), name
        finite = torch.isfinite(want)
        assert rel_error(got[finite], want[finite]) <= TOLERANCE[dtype] * 10, name
    y = results[1][0]
    assert 0 < y[0].isnan().any(0).sum() < y.shape[-1] and torch.isfinite(y[1]).all()


@pytest.mark.parametrize("window", [33, 129])  # the tiled and FFT routes
def test_bfloat16_input_on_cpu(window):
    """A bfloat16 waveform with float32 parameters on the cpu backend: values and gradients."""
    require_backend(GABOR_POOL, "cpu", torch.bfloat16)
    x = waveform(2, 300, dtype=torch.bfloat16)
    p = params(3, window=window)
    fn = lambda x, e, s, p: gabor_pool(x, e, s, p, window=window, stride=16)  # noqa: E731
    out, _ = compare_with_reference(fn, [x, *p], "cpu", scale=10)
    assert out[0].dtype == torch.bfloat16


def test_fp16_on_triton_tiny():
    """fp16 waveform and parameters through the Triton kernel where it runs anywhere (its
    interpreter; bf16 is checked on a GPU): values and the four gradients."""
    device = require_backend(GABOR_POOL, "triton", torch.float16)
    fn = lambda x, e, s, p: gabor_pool(x, e, s, p, window=17, stride=8)  # noqa: E731
    compare_with_reference(fn, [waveform(2, 60, device, torch.float16), *params(3, device, torch.float16, window=17)],
                           "triton", scale=10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [33, 129])
def test_non_contiguous_parameters(backend, window):
    """Parameter vectors that are strided views (columns of an [F, 3] table): values and gradients."""
    device = require_backend(GABOR_POOL, backend)
    if backend == "triton" and device.type == "cpu" and window > 33:
        pytest.skip("long windows take ~20 s in the Triton interpreter: covered on a GPU")
    table = torch.stack(params(3, device, window=window, grad=False), dim=1)  # [F, 3]
    views = [table[:, i].requires_grad_(True) for i in range(3)]
    assert not any(v.is_contiguous() for v in views)
    fn = lambda x, e, s, p: gabor_pool(x, e, s, p, window=window, stride=16)  # noqa: E731
    compare_with_reference(fn, [waveform(2, 300, device), *views], backend, scale=10)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("window", [9, 129])
def test_no_filters_give_an_empty_result(backend, window):
    device = require_backend(GABOR_POOL, backend) if backend != "reference" else torch.device("cpu")
    x = waveform(2, 300, device)
    p = params(0, device, window=window)
    with pyaudiok.use_backend(backend):
        y = gabor_pool(x, *p, window=window, stride=16)
    assert y.shape == (2, 0, 19) and y.dtype == x.dtype
    y.sum().backward()
    assert torch.count_nonzero(x.grad) == 0 and p[0].grad.shape == (0,)


def test_bad_inputs():
    x = torch.randn(2, 800)
    eta, sigma, pool = params(3, grad=False)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T\]"):
        gabor_pool(x[0], eta, sigma, pool)
    with pytest.raises(ValueError, match="T >= window = 401"):
        gabor_pool(x[:, :400], eta, sigma, pool)
    with pytest.raises(ValueError, match="bandwidths has size 2 .* expected 3 to match center_freqs' length F"):
        gabor_pool(x, eta, sigma[:2], pool)
    with pytest.raises(ValueError, match="pool_widths must be positive"):
        gabor_pool(x, eta, sigma, -pool)
    with pytest.raises(ValueError, match="bandwidths must be positive"):
        gabor_pool(x, eta, torch.zeros_like(sigma), pool)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="bandwidths must be positive and finite"):
            gabor_pool(x, eta, torch.full_like(sigma, bad), pool)
        with pytest.raises(ValueError, match="pool_widths must be positive and finite"):
            gabor_pool(x, eta, sigma, torch.full_like(pool, bad))
    with pytest.raises(ValueError, match="window must be odd"):
        gabor_pool(x, eta, sigma, pool, window=400)
    with pytest.raises(ValueError, match=r"window must be in \[3,"):  # no pooling width at h = 0 (NaN)
        gabor_pool(x, eta, sigma, pool, window=1)
    with pytest.raises(TypeError, match="center_freqs must have dtype"):
        gabor_pool(x, eta.long(), sigma, pool)
    with pytest.raises(TypeError, match="stride must be an int"):
        gabor_pool(x, eta, sigma, pool, stride=1.5)


def test_triton_raw_op_passes_opcheck():
    device = require_backend(GABOR_POOL, "triton")
    window = 33
    filters = gabor_filters(*params(3, device, window=window, grad=False)[:2], window)
    re = filters[0::2, 0].T.contiguous().requires_grad_(True)
    im = filters[1::2, 0].T.contiguous().requires_grad_(True)
    windows = gaussian_windows(torch.full((3,), 0.4, device=device), window)[:, 0].T.contiguous()
    x = waveform(2, 100, device)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    opcheck(_triton_forward(), (x, re, im, windows.requires_grad_(True), 16, FLOOR), test_utils=tests)
