"""pcen: every backend against the reference (values and all five gradients), long sequences
against a float64 loop, fp32 state for half inputs, opcheck, bad inputs."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import pcen
from pyaudiok.ops.pcen import PCEN, _triton_forward, pcen_reference

from ..harness import assert_close, compare_with_reference, generated_case_tests, opcheck, require_backend

BACKENDS = ("cpu", "triton")


def inputs(B, F, T, device="cpu", dtype=torch.float32, grad=True):
    """Energies spanning decades (like pooled squared filter outputs) and parameters in the clipped
    ranges around LEAF's initialisation."""
    E = 10 ** (torch.rand(B, F, T, dtype=torch.float64) * 6 - 5)
    alpha = 0.5 + 0.5 * torch.rand(F, dtype=torch.float64)
    delta = 0.5 + 2 * torch.rand(F, dtype=torch.float64)
    r = 1 + 2 * torch.rand(F, dtype=torch.float64)
    s = 0.01 + 0.5 * torch.rand(F, dtype=torch.float64)
    return [t.to(device, dtype).requires_grad_(grad) for t in (E, alpha, delta, r, s)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,F,T", [(2, 3, 50), (1, 40, 1), (3, 5, 131), (0, 4, 10), (1, 17, 150)])
def test_forward_and_gradients_match_reference(backend, B, F, T):
    device = require_backend(PCEN, backend)
    compare_with_reference(pcen, inputs(B, F, T, device), backend, scale=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameters_on_both_sides_of_the_guard_free_range(backend):
    """The CPU kernel skips its exponent check where |α| and 1/r are at most 0.98 (the exponents then
    stay in range whatever E): rows inside and outside that range, and at α = 1, r = 1 (LEAF's clipping
    bounds), all match the reference, values and gradients."""
    device = require_backend(PCEN, backend)
    E, _, d, _, s = inputs(2, 8, 75, device)
    alpha = torch.tensor([0.5, 0.98, 0.981, 1.0, 0.96, 0.5, 1.0, 0.7], device=device).requires_grad_(True)
    r = torch.tensor([2.0, 1.0 / 0.98, 1.02, 1.0, 1.0, 0.9, 3.0, 1.5], device=device).requires_grad_(True)
    compare_with_reference(pcen, (E, alpha, d, r, s), backend, scale=5)


def test_cpu_gradients_over_many_frames():
    """3 000 frames: the CPU backward's ∂s sums its terms in float blocks and the blocks in double,
    and its adjoint runs over hundreds of blocks; all gradients against the float64 loop."""
    require_backend(PCEN, "cpu")
    compare_with_reference(pcen, inputs(1, 9, 3000), "cpu", scale=5)


def test_cpu_raw_ops_keep_no_state():
    """The CPU forward returns an empty smoother state (its backward recomputes it from E and takes
    the forward's y instead), and the raw backward refuses a y that is not E's shape."""
    require_backend(PCEN, "cpu")
    E, a, d, r, s = inputs(2, 3, 20, grad=False)
    params = torch.stack([a, d, r, s])
    y, M = torch.ops.pyaudiok.pcen_forward(E, params, 1e-12)
    assert M.numel() == 0
    with pytest.raises(RuntimeError, match="grad and y must match E's shape and dtype"):
        torch.ops.pyaudiok.pcen_backward(torch.ones_like(E), E, y[..., :-1], params, 1e-12)


def test_cpu_float64_matches_reference():
    require_backend(PCEN, "cpu", torch.float64)
    E, a, d, r, s = inputs(2, 3, 40, dtype=torch.float64)
    compare_with_reference(pcen, (E, a, d, r, s), "cpu")


# Layouts of E the op gets (the view taken inside the call): name -> (E stored, the view giving E back).
VIEWS = {"contiguous": (lambda E: E, lambda t: t),
         "time-major": (lambda E: E.transpose(1, 2).contiguous(), lambda t: t.transpose(1, 2)),
         "every other frame": (lambda E: E.repeat_interleave(2, dim=-1), lambda t: t[..., ::2])}
# Per-channel parameters in the ranges LEAF's SPCEN clips to (α ≤ 1, r ≥ 1, s ∈ [0, 1]; δ is free), short of
# where y or a gradient is a difference that cancels, its float error then not relative to it: where E·P ≪ δ
# (quiet frames: y = z^{1/r} − δ^{1/r} and its gradients) or where a term vanishes.
PARAM_RANGES = {
    "alpha": (0.5, 0.99),  # below 0.5, E·P ≪ δ; at 1 with M = E (T = 1 or s = 1), dE = ε/(ε + E)² cancels
    "delta": (0.01, 2.5),  # about LEAF's initial 2: above, E·P ≪ δ
    "r": (1.5, 10.0),  # towards 1, dδ = Σ g (Z^{1/r−1} − δ^{1/r−1}) / r vanishes
    "smooth": (0.0, 1.0),
}


def check_generated_case(data, backend, max_batch, max_channels, max_frames):
    """A drawn case against the reference (values and the five gradients): B, F and T from 1 up,
    energies spanning decades, each channel's parameters anywhere in PARAM_RANGES (their bounds
    included), float32 or float64, and E maybe in another layout."""
    device = require_backend(PCEN, backend)
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    B, F = data.draw(st.integers(1, max_batch), label="B"), data.draw(st.integers(1, max_channels), label="F")
    T = data.draw(st.integers(1, max_frames), label="T")
    dtypes = [d for d in (torch.float32, torch.float64) if PCEN.impls[backend].why_not(device, d) is None]
    dtype = data.draw(st.sampled_from(dtypes), label="dtype")
    params = [torch.tensor(data.draw(st.lists(st.floats(lo, hi), min_size=F, max_size=F), label=name), dtype=dtype,
                           device=device, requires_grad=True) for name, (lo, hi) in PARAM_RANGES.items()]
    store, view = VIEWS[data.draw(st.sampled_from(sorted(VIEWS)), label="view")]
    E = store(inputs(B, F, T, device, dtype, grad=False)[0]).requires_grad_(True)
    compare_with_reference(lambda E, *p: pcen(view(E), *p), (E, *params), backend,
                           scale=5 if dtype == torch.float32 else 1)


test_generated_shapes, test_generated_tiny_shapes_on_triton = generated_case_tests(
    check_generated_case, BACKENDS, full=dict(max_batch=3, max_channels=12, max_frames=300),
    tiny=dict(max_batch=2, max_channels=3, max_frames=40))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    device = require_backend(PCEN, backend)
    E, a, d, r, s = inputs(2, 6, 64, device, grad=False)
    E_t = E.transpose(1, 2).contiguous().transpose(1, 2)
    with pyaudiok.use_backend(backend):
        got = pcen(E_t[:, ::2], a[::2], d[::2], r[::2], s[::2])
    assert_close("y", got, pcen_reference(E[:, ::2].double(), a[::2].double(), d[::2].double(), r[::2].double(),
                                          s[::2].double()), torch.float32, scale=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_does_not_drift(backend):
    """10⁵ frames in fp32 against the float64 loop: the carried state keeps no growing error."""
    device = require_backend(PCEN, backend)
    # The Triton interpreter takes ~0.4 s a chunk: the full length only on a GPU.
    T = 100_000 if backend == "cpu" or device.type == "cuda" else 1_000
    # 8 channels: one whole group of the CPU kernel's blocked scan.
    E, a, d, r, s = inputs(1, 8, T, device, grad=False)
    s = torch.tensor([0.04, 0.001, 0.3, 0.01, 0.5, 0.002, 0.1, 0.0001], device=device)
    with pyaudiok.use_backend(backend):
        got = pcen(E, a, d, r, s)
    want = pcen_reference(E.double(), a.double(), d.double(), r.double(), s.double())
    tail = slice(T - 500, T)
    assert_close("y (whole)", got, want, torch.float32, scale=5)
    assert_close("y (last 500 frames)", got[..., tail], want[..., tail], torch.float32, scale=5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy on ∞ and NaN
def test_special_values_and_extreme_parameters_match_reference(backend):
    """Zeros, ∞, NaN and negative energies, eps = 0, and exponents past the float range (α = 6 on
    tiny smoothed energies, r = 0.01): the CPU kernel leaves its fast route for these, and every
    backend must give the reference's value, ±∞ or NaN included."""
    device = require_backend(PCEN, backend)
    E, a, d, r, s = inputs(2, 9, 70, device, grad=False)
    E[0, 0, 5], E[0, 1, 40], E[1, 2, 0], E[1, 3, 33] = 0.0, float("inf"), float("nan"), -3.0
    E[1, 4, :] = 0.0
    E[0, 5] = 1e-30
    a[5], r[6], a[7] = 6.0, 0.01, float("nan")  # a NaN parameter (a diverged run) must give NaN
    for eps in (1e-12, 0.0):
        with pyaudiok.use_backend(backend):
            got = pcen(E, a, d, r, s, eps=eps)
        want64 = pcen_reference(E.double(), a.double(), d.double(), r.double(), s.double(), eps=eps)
        want, want_f32 = want64.float(), pcen_reference(E, a, d, r, s, eps=eps)
        assert torch.equal(got.isnan(), want_f32.isnan()), f"eps={eps}: NaN at other places than the reference"
        assert torch.equal(got.isinf(), want_f32.isinf()), f"eps={eps}: ±∞ at other places than the reference"
        assert torch.equal(got[got.isinf()], want_f32[want_f32.isinf()]), f"eps={eps}: ∞ of the wrong sign"
        # Finite values: as close to the float64 reference as 1e-5, or as float32 allows. r = 0.01
        # raises z to the 100th power: a few ulps of z (or of M, through P's exponent α) move y by
        # (1/r)·z^(1/r) times as much, which the subtraction of δ^(1/r) exposes where E·P ≪ δ. The
        # float32 reference's own error there may be small by chance, so the bound has both.
        finite = want_f32.isfinite()
        err, ref_err = (got - want)[finite].abs(), (want_f32 - want)[finite].abs()
        a64, d64, inv_r = a.double()[:, None], d.double()[:, None], 1 / r.double()[:, None]
        z_root = want64 + d64 ** inv_r
        float_limit = (inv_r.abs() * z_root * (1 + a64.abs()) * 2.0 ** -24)[finite]
        bound = 4 * ref_err + 16 * float_limit + 1e-5 * want[finite].abs() + 1e-6
        assert (err <= bound).all(), f"eps={eps}: worst excess {(err / bound).max():.2f}x"


def test_silence_gives_exactly_zero_on_cpu():
    """E = 0 makes z = δ exactly, so y = z^(1/r) − δ^(1/r) must be exactly 0, as in the reference: the
    kernel subtracts δ^(1/r) as computed by the same route as z^(1/r) (with 1/r up to 10, the routes'
    rounding differences would otherwise show in y where E·P ≪ δ)."""
    require_backend(PCEN, "cpu")
    E, a, d, r, s = inputs(2, 9, 70, grad=False)
    E[:, :, :] = 0.0
    r = torch.linspace(0.1, 3.0, 9)
    got = pcen(E, a, d, r, s)
    assert torch.equal(got, torch.zeros_like(got))
    # Near silence, E·P ≪ δ: the error measured against the terms that cancel (δ^(1/r)) is within 4× the
    # float32 reference's.
    E = 10 ** (torch.rand(2, 9, 70) * 4 - 12)
    got = pcen(E, a, d, r, s).double()
    want = pcen_reference(E.double(), a.double(), d.double(), r.double(), s.double())
    want_f32 = pcen_reference(E, a, d, r, s).double()
    scale = d.double()[:, None] ** (1 / r.double()[:, None])
    err, ref_err = ((got - want).abs() / scale).max(), ((want_f32 - want).abs() / scale).max()
    assert err <= 4 * ref_err, (err, ref_err)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("log2_y", [125.5, 127.2, 127.9])
def test_results_near_the_float_maximum_stay_finite(backend, log2_y):
    """A constant E makes z = E (ε + E)^(−α) + δ constant; r is chosen so that z^(1/r) = 2^log2_y,
    up to 1.1e-38 below FLT_MAX = 2^128 (1 − 2^−24)."""
    device = require_backend(PCEN, backend)
    E = torch.full((1, 1, 40), 2.0, device=device)
    alpha, delta, s = (torch.tensor([v], device=device) for v in (0.5, 2.0, 0.1))
    z = 2.0 * (1e-12 + 2.0) ** -0.5 + 2.0
    r = torch.tensor([math.log2(z) / log2_y], device=device)
    with pyaudiok.use_backend(backend):
        got = pcen(E, alpha, delta, r, s)
    want = pcen_reference(E.double(), alpha.double(), delta.double(), r.double(), s.double())
    assert got.isfinite().all()
    assert_close("y", got, want, torch.float32, scale=50)  # z's rounding, raised to the 1/r ≈ 70th power


@pytest.mark.parametrize("backend", ("cpu", pytest.param("triton", marks=pytest.mark.gpu)))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_keep_fp32_state(backend, dtype):
    """Half energies with float32 parameters (a LEAF frontend's under autocast): the state and the
    compression in float32 (Triton's kernel and the CPU kernel upcast), the result in half."""
    device = require_backend(PCEN, backend, dtype)
    E, a, d, r, s = inputs(2, 8, 4000, device, grad=False)
    s = torch.full_like(s, 0.001)  # tiny updates that a half-precision state would lose
    with pyaudiok.use_backend(backend):
        got = pcen(E.to(dtype), a, d, r, s)
    want = pcen_reference(E.to(dtype).double(), a.double(), d.double(), r.double(), s.double())
    assert got.dtype == dtype
    assert_close("y", got, want, dtype, scale=2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("param_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_parameters_in_another_dtype_than_E(backend, param_dtype):
    """float32 energies with parameters in another dtype: y is in E's dtype (not a parameter's),
    each gradient in its input's dtype, the values the reference's."""
    device = require_backend(PCEN, backend)
    E, *p = inputs(2, 5, 30, device)
    p = [t.detach().to(param_dtype).requires_grad_() for t in p]
    with pyaudiok.use_backend(backend):
        got = pcen(E, *p)
    grads = torch.autograd.grad(got.square().sum(), (E, *p))
    assert got.dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.float32] + [param_dtype] * 4
    want = pcen_reference(E.double(), *(t.double() for t in p))
    assert_close("y", got, want, torch.float32, scale=5)


def test_fp16_on_triton_tiny():
    """fp16 energies and parameters through the Triton kernels where they run anywhere (its
    interpreter; bf16 is checked on a GPU): values and all five gradients."""
    device = require_backend(PCEN, "triton", torch.float16)
    compare_with_reference(pcen, inputs(2, 3, 20, device, torch.float16), "triton", scale=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_parameters(backend):
    """Parameter vectors that are strided views (columns of a [F, 4] table): values and gradients."""
    device = require_backend(PCEN, backend)
    E, *p = inputs(2, 5, 30, device, grad=False)
    table = torch.stack(p, dim=1)  # [F, 4]
    views = [table[:, i].requires_grad_(True) for i in range(4)]
    assert not any(v.is_contiguous() for v in views)
    compare_with_reference(pcen, (E.requires_grad_(True), *views), backend, scale=5)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_no_channels(backend):
    """F = 0: an empty result and empty gradients."""
    device = require_backend(PCEN, backend) if backend != "reference" else torch.device("cpu")
    E, *p = inputs(2, 0, 10, device)
    with pyaudiok.use_backend(backend):
        y = pcen(E, *p)
    assert y.shape == (2, 0, 10)
    y.sum().backward()
    assert E.grad.shape == E.shape and all(t.grad.shape == (0,) for t in p)


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_op_passes_opcheck(backend):
    device = require_backend(PCEN, backend)
    E, a, d, r, s = inputs(2, 3, 20, device, grad=False)
    params = torch.stack([a, d, r, s]).requires_grad_(True)
    op = torch.ops.pyaudiok.pcen_forward if backend == "cpu" else _triton_forward()
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    opcheck(op, (E.requires_grad_(True), params, 1e-12), test_utils=tests)


def test_bad_inputs():
    E, a, d, r, s = inputs(2, 3, 10, grad=False)
    with pytest.raises(ValueError, match=r"E must have shape \[B, F, T\]"):
        pcen(E[0], a, d, r, s)
    with pytest.raises(ValueError, match="alpha has size 2 .* expected 3 to match E's channel count F"):
        pcen(E, a[:2], d, r, s)
    with pytest.raises(ValueError, match=r"smooth must have shape \[F\]"):
        pcen(E, a, d, r, s[None])
    with pytest.raises(ValueError, match="T >= 1 frames"):
        pcen(E[..., :0], a, d, r, s)
    with pytest.raises(TypeError, match="E must have dtype"):
        pcen(E.long(), a, d, r, s)
    with pytest.raises(TypeError, match="delta must be a torch.Tensor"):
        pcen(E, a, 2.0, r, s)
    for eps in (-1.0, float("inf"), float("nan"), "1e-12"):  # eps = inf would make every output 0
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            pcen(E, a, d, r, s, eps=eps)
