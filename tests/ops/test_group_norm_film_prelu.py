"""group_norm_film_prelu: every backend against the float64 reference (values and the gradients of x,
weight, bias, prelu_weight, scale and shift), odd sizes, each optional term present or absent, other
layouts and dtypes, the PReLU kink, large-mean inputs, NaN, empty sizes, autocast, opcheck, bad inputs."""
from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import assume
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import group_norm_film_prelu
from pyaudiok.ops.group_norm_film_prelu import OP, _triton_backward, _triton_forward, group_norm_film_prelu_reference

from ..harness import (TOLERANCE, assert_close, compare_with_reference, device_for, forward_opcheck_tests,
                       generated_case_tests, opcheck, rel_error, require_backend, run_with_grads)

BACKENDS = ("cpu", "triton")
FILM = ("both", "scale", "shift", "none")


def inputs(B, C, T, *, P=1, affine=True, film="both", device="cpu", dtype=torch.float32, grad=True, x_mean=0.5):
    """x, prelu_weight, weight, bias, scale, shift (None where absent): x ~ N(x_mean, 4), slopes in [0, 0.5),
    FiLM scales around 1."""
    def make(t):
        return None if t is None else t.to(device, dtype).requires_grad_(grad)
    x = x_mean + 2 * torch.randn(B, C, T, dtype=torch.float64)
    prelu = 0.5 * torch.rand(P, dtype=torch.float64)
    weight, bias = (torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64)) if affine else (None,) * 2
    scale = 1 + 0.5 * torch.randn(B, C, dtype=torch.float64) if film in ("both", "scale") else None
    shift = torch.randn(B, C, dtype=torch.float64) if film in ("both", "shift") else None
    return [make(t) for t in (x, prelu, weight, bias, scale, shift)]


def op_of(num_groups, eps=1e-5):
    """The public op as a function of (x, prelu_weight, weight, bias, scale, shift), for the harness."""
    def run(x, prelu, weight, bias, scale, shift):
        return group_norm_film_prelu(x, num_groups, prelu, weight=weight, bias=bias, scale=scale, shift=shift, eps=eps)
    return run


def compare(backend, args, num_groups, scale=1.0):
    """compare_with_reference over the inputs present (None ones stay None)."""
    present = [i for i, t in enumerate(args) if t is not None]

    def fn(*tensors):
        full = list(args)
        for i, t in zip(present, tensors):
            full[i] = t
        return op_of(num_groups)(*full)
    return compare_with_reference(fn, [args[i] for i in present], backend, scale=scale)


# (B, C, T, G, P): odd channel counts and lengths, one group and several, one slope and one per channel.
SHAPES = [(2, 6, 33, 2, 6), (3, 5, 7, 1, 1), (2, 3, 1, 3, 3), (1, 4, 33, 2, 1), (2, 5, 1, 5, 5), (2, 6, 7, 6, 1),
          (1, 3, 40, 1, 3)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,C,T,G,P", SHAPES)
@pytest.mark.parametrize("film", FILM)
def test_forward_and_gradients_match_reference(backend, B, C, T, G, P, film):
    device = require_backend(OP, backend)
    compare(backend, inputs(B, C, T, P=P, affine=(B + T) % 2 == 0 or film == "none", film=film, device=device), G)


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_of_one_value_give_x_no_gradient(backend):
    """G = C, T = 1: x̂ = 0 whatever x, so x's gradient is exactly 0 (∂x̂ and its mean are rounded alike)."""
    device = require_backend(OP, backend)
    args = inputs(3, 5, 1, P=5, device=device)
    with pyaudiok.use_backend(backend):
        y = op_of(5)(*args)
    assert (torch.autograd.grad(y, args[0], torch.randn_like(y))[0] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("affine", [True, False])
def test_with_and_without_affine(backend, affine):
    device = require_backend(OP, backend)
    compare(backend, inputs(2, 6, 17, P=6, affine=affine, device=device), 3)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.parametrize("given", ("weight", "bias"))
def test_one_affine_term_alone(backend, given):
    # F.group_norm's own backward fails on a bias without a weight: the reference must not.
    device = require_backend(OP, backend)
    dtype = torch.float32 if backend == "triton" else torch.float64  # Triton has no float64 kernels
    x = torch.randn(3, 6, 9, dtype=dtype, device=device, requires_grad=True)
    term = torch.randn(6, dtype=dtype, device=device, requires_grad=True)
    prelu = torch.full((1,), 0.2, dtype=dtype, device=device)
    with pyaudiok.use_backend(backend):
        y = group_norm_film_prelu(x, 3, prelu, **{given: term})
    grads = torch.autograd.grad(y, (x, term), g := torch.randn_like(y))
    weight = term if given == "weight" else torch.ones_like(term)
    bias = term if given == "bias" else None
    expected = torch.nn.functional.prelu(torch.nn.functional.group_norm(x, 3, weight, bias), prelu)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(y, expected, **tol)
    for got, want in zip(grads, torch.autograd.grad(expected, (x, term), g)):
        torch.testing.assert_close(got, want, **tol)


def test_compiles_with_a_dynamic_batch_in_one_graph():
    # The shape checks must not format symbolic sizes (a graph break, or an error with fullgraph).
    fn = torch.compile(lambda x, prelu, scale: group_norm_film_prelu(x, 2, prelu, scale=scale),
                       backend="aot_eager", fullgraph=True, dynamic=True)
    for B in (3, 5):
        x, prelu, scale = torch.randn(B, 4, 9), torch.full((4,), 0.2), torch.randn(B, 4)
        torch.testing.assert_close(fn(x, prelu, scale), group_norm_film_prelu_reference(x, 2, prelu, scale=scale))


def test_cpu_long_rows_and_many_channels():
    """Rows longer than the kernel's blocks of 512 values, and groups of many rows."""
    require_backend(OP, "cpu")
    compare("cpu", inputs(3, 64, 1001, P=64), 4)
    compare("cpu", inputs(2, 8, 3000, film="scale"), 1)


@pytest.mark.parametrize("B,C,T,G", [(1, 2, 2100, 1), (2, 6, 1100, 2), (1, 300, 3, 1)])
def test_triton_long_rows_and_wide_groups(B, C, T, G):
    """Rows of several tiles (the last partial) and groups of more channels than one chunk of their merge."""
    device = require_backend(OP, "triton")
    compare("triton", inputs(B, C, T, P=C, device=device), G)


class _GridRecorder:
    """`launchable(kernel)` that notes each launch's grid."""

    def __init__(self, launch, grids: list):
        self.launch, self.grids = launch, grids

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.launch[grid]


@pytest.fixture
def triton_grids(monkeypatch):
    """(the Triton kernels' module, the list each of its launches appends its grid to)."""
    require_backend(OP, "triton")
    kernels = importlib.import_module("pyaudiok.kernels.group_norm_film_prelu")
    grids, launchable = [], kernels.launchable
    monkeypatch.setattr(kernels, "launchable", lambda kernel, **options: _GridRecorder(launchable(kernel, **options),
                                                                                       grids))
    return kernels, grids


def test_triton_launches_a_program_per_channel_row(triton_grids):
    """At Wavesplit's sizes (C = 64, T = 1 001, one group) each of the four launches of a forward and
    backward runs a program per (item, channel) row, not one per (item, group) (B·G = 2 programs here)."""
    _, grids = triton_grids
    x, prelu, *_ = inputs(2, 64, 1001, device=device_for("triton"))
    with pyaudiok.use_backend("triton"):
        group_norm_film_prelu(x, 1, prelu).sum().backward()
    assert grids == [(2 * 64,)] * 4


def test_triton_wide_groups_take_at_most_64_programs_each(triton_grids):
    """A group of 1 024 short rows: every program of the second launches reads the group's per-row values,
    so rows are packed until a group has at most 64 programs (a program per 4 rows would re-read them 256
    times); the results still match the reference."""
    kernels, grids = triton_grids
    compare("triton", inputs(1, 1024, 40, device=device_for("triton")), 1)
    assert grids and all(grid == (kernels.MAX_PROGRAMS_PER_GROUP,) for grid in grids)


def test_cpu_float64_matches_reference():
    require_backend(OP, "cpu", torch.float64)
    compare("cpu", inputs(2, 6, 37, P=6, dtype=torch.float64), 2)


@pytest.mark.parametrize("backend", ("cpu", pytest.param("triton", marks=pytest.mark.gpu)))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(backend, dtype):
    """Half inputs: the CPU upcasts to float32, Triton reads them and computes in float32; y and every
    gradient in its input's dtype."""
    device = require_backend(OP, backend, dtype)
    out, _ = compare(backend, inputs(2, 6, 50, P=6, device=device, dtype=dtype), 2)
    assert out[0].dtype == dtype


def test_fp16_on_triton_tiny():
    device = require_backend(OP, "triton", torch.float16)
    compare("triton", inputs(2, 4, 9, P=4, device=device, dtype=torch.float16), 2)


# Layouts of x the op gets: stored another way, viewed back as [B, C, T].
VIEWS = {"time-major": lambda x: x.transpose(1, 2).contiguous().transpose(1, 2),
         "every other frame": lambda x: x.repeat_interleave(2, dim=-1)[..., ::2],
         "channels-last batch": lambda x: x.permute(2, 0, 1).contiguous().permute(1, 2, 0)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("view", sorted(VIEWS))
def test_non_contiguous_x(backend, view):
    device = require_backend(OP, backend)
    x, *rest = inputs(2, 6, 19, P=6, device=device, grad=False)
    x = VIEWS[view](x).requires_grad_(True)
    assert not x.is_contiguous()
    compare(backend, [x] + [t.requires_grad_(True) for t in rest], 2)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_exactly_at_the_kink(backend):
    """weight = bias = 0 makes v = shift exactly; shifts of exactly 0 put v on the kink, where the
    gradient takes the slope's side (∂shift = a·g, ∂a = v·g = 0, ∂scale = 0), as torch's prelu."""
    device = require_backend(OP, backend) if backend != "reference" else torch.device("cpu")
    x, prelu, _, _, scale, shift = inputs(2, 4, 9, P=4, device=device, grad=False)
    weight, bias = torch.zeros(4, device=device), torch.zeros(4, device=device)
    shift[0] = 0.0
    shift[1, :2] = 0.0
    args = [t.requires_grad_(True) for t in (x, prelu, weight, bias, scale, shift)]
    if backend != "reference":
        compare(backend, args, 2)
    with pyaudiok.use_backend(backend):
        y = op_of(2)(*args)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, args, g)
    on_kink = (shift == 0)[..., None].expand_as(y)
    assert (y[on_kink] == 0).all()
    slope = prelu.detach()[None, :].expand(2, 4)
    want_shift = torch.where(shift.detach() > 0, 1.0, slope) * g.sum(-1)
    assert torch.allclose(grads[5], want_shift, rtol=1e-5, atol=1e-5)
    assert (grads[4] == 0).all()  # u = 0: no gradient to scale


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_near_the_kink(backend):
    """A tiny weight and no bias: v of both signs within 1e-4 of 0, values and gradients as the reference's."""
    device = require_backend(OP, backend)
    x, prelu, weight, _, scale, _ = inputs(2, 6, 33, P=6, device=device, grad=False)
    compare(backend, [x.requires_grad_(), prelu.requires_grad_(), (1e-4 * weight).requires_grad_(), None,
                      scale.requires_grad_(), None], 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_mean", [1e3, 1e4])
def test_large_mean_keeps_float32_precision(backend, x_mean):
    """x = mean + noise: the variance as E[x²] − E[x]² in float32 would be off by ~mean²·2⁻²⁴, and x − mean
    with the mean rounded to float32 by ~mean·2⁻²⁴; both stay within float32's fixed tolerance of the
    float64 reference here, values and gradients (no allowance for the float32 reference's own error)."""
    device = require_backend(OP, backend)
    args = inputs(2, 4, 300, P=4, device=device, x_mean=x_mean)
    args[0] = (x_mean + (args[0].detach() - x_mean) / 2).requires_grad_()  # noise of std 1 around x_mean
    ref_args = [t.detach().double().requires_grad_() for t in args]
    ref_out, ref_grads = run_with_grads(op_of(2), ref_args, "reference", grad_seed=3)
    out, grads = run_with_grads(op_of(2), args, backend, grad_seed=3)
    for name, got, want in [("y", out[0], ref_out[0])] + [(f"grad {i}", g, r)
                                                          for i, (g, r) in enumerate(zip(grads, ref_grads))]:
        err = rel_error(got, want)
        assert err <= 5 * TOLERANCE[torch.float32], f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy on NaN
def test_nan_spreads_over_its_group_only(backend):
    """A NaN in x makes its (item, group) NaN, as the reference's statistics do; the other groups are
    untouched."""
    device = require_backend(OP, backend) if backend != "reference" else torch.device("cpu")
    x, prelu, weight, bias, scale, shift = inputs(2, 6, 11, P=6, device=device, grad=False)
    x[1, 4, 3] = float("nan")
    with pyaudiok.use_backend(backend):
        got = op_of(3)(x, prelu, weight, bias, scale, shift)
    want = group_norm_film_prelu_reference(x.double(), 3, prelu.double(), weight.double(), bias.double(),
                                           scale.double(), shift.double())
    assert torch.equal(got.isnan(), want.isnan())
    assert got[1, 4:].isnan().all() and not got[0].isnan().any() and not got[1, :4].isnan().any()
    finite = ~want.isnan()
    assert_close("y", got[finite], want[finite], torch.float32)


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_empty_batch(backend):
    """B = 0: an empty y; x's gradient empty, the parameters' zero. (T = 0 is refused: the reference's
    gradients over a group of no values are NaN.)"""
    device = require_backend(OP, backend) if backend != "reference" else torch.device("cpu")
    args = inputs(0, 4, 7, P=4, device=device)
    with pyaudiok.use_backend(backend):
        y = op_of(2)(*args)
    assert y.shape == (0, 4, 7)
    grads = torch.autograd.grad(y.sum(), args)
    assert grads[0].shape == (0, 4, 7)
    for t, g in zip(args[1:], grads[1:]):
        assert g.shape == t.shape and (g == 0).all()


def check_generated_case(data, backend, max_batch, max_per_group, max_groups, max_frames):
    """A drawn case against the reference: sizes from 1 up, any number of groups, each optional term
    present or absent, one slope or one per channel, float32 or float64, x maybe in another layout."""
    device = require_backend(OP, backend)
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    G, per_group = data.draw(st.integers(1, max_groups), label="G"), data.draw(st.integers(1, max_per_group))
    B, T = data.draw(st.integers(1, max_batch), label="B"), data.draw(st.integers(1, max_frames), label="T")
    C = G * per_group
    # Groups of one or two values (SHAPES has them) leave x's gradient 0 up to rounding (x̂ = 0, or ±d/√(d² + eps)):
    # nothing a relative error can measure in float64.
    assume(per_group * T > 2)
    dtypes = [d for d in (torch.float32, torch.float64) if OP.impls[backend].why_not(device, d) is None]
    args = inputs(B, C, T, P=data.draw(st.sampled_from([1, C]), label="P"), affine=data.draw(st.booleans()),
                  film=data.draw(st.sampled_from(FILM), label="film"), device=device,
                  dtype=data.draw(st.sampled_from(dtypes), label="dtype"), grad=False)
    view = data.draw(st.sampled_from([None] + sorted(VIEWS)), label="view")
    if view is not None:
        args[0] = VIEWS[view](args[0])
    compare(backend, [None if t is None else t.requires_grad_(True) for t in args], G)


test_generated_shapes, test_generated_tiny_shapes_on_triton = generated_case_tests(
    check_generated_case, BACKENDS, full=dict(max_batch=4, max_per_group=12, max_groups=4, max_frames=200),
    tiny=dict(max_batch=2, max_per_group=3, max_groups=2, max_frames=20))


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_autocast_computes_in_float32(backend):
    """Under autocast a bf16 x (a convolution's output) with float32 GroupNorm parameters and a bf16 FiLM
    (a linear layer's output) runs in float32 and returns float32, as F.group_norm does under CUDA's
    autocast; the gradients come back in each input's dtype."""
    device = require_backend(OP, backend) if backend != "reference" else torch.device("cpu")
    x, prelu, weight, bias, scale, shift = inputs(2, 6, 21, P=6, device=device, grad=False)
    x, scale = x.bfloat16().requires_grad_(), scale.bfloat16().requires_grad_()
    for t in (prelu, weight, bias, shift):
        t.requires_grad_()
    with torch.autocast(device.type, torch.bfloat16), pyaudiok.use_backend(backend):
        y = op_of(3)(x, prelu, weight, bias, scale, shift)
    assert y.dtype == torch.float32
    grads = torch.autograd.grad(y.square().sum(), (x, prelu, scale))
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.bfloat16]
    want = group_norm_film_prelu_reference(x.double(), 3, prelu.double(), weight.double(), bias.double(),
                                           scale.double(), shift.double())
    assert_close("y", y, want, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_ops_pass_opcheck(backend):
    device = require_backend(OP, backend)
    x = torch.randn(2, 6, 13, device=device)
    gain, offset = torch.randn(2, 6, device=device), torch.randn(2, 6, device=device)
    prelu = torch.rand(6, device=device)
    forward = torch.ops.pyaudiok.group_norm_film_prelu_forward if backend == "cpu" else _triton_forward()
    backward = torch.ops.pyaudiok.group_norm_film_prelu_backward if backend == "cpu" else _triton_backward()
    args = [t.clone().requires_grad_(True) for t in (x, gain, offset, prelu)]
    opcheck(forward, (*args, 3, 1e-5), test_utils=forward_opcheck_tests(backend, device))
    stats = forward(x, gain, offset, prelu, 3, 1e-5)[1]
    opcheck(backward, (torch.randn_like(x), x, gain, offset, prelu, stats, 3), test_utils=("test_schema",
                                                                                            "test_faketensor"))


def test_bad_inputs():
    x, prelu, weight, bias, scale, shift = inputs(2, 6, 10, P=6, grad=False)
    cases = [
        (ValueError, r"x must have shape \[B, C, T\]", lambda: group_norm_film_prelu(x[0], 2, prelu)),
        (TypeError, "x must have dtype", lambda: group_norm_film_prelu(x.long(), 2, prelu)),
        (ValueError, r"x must have shape \[B, C, T\] with C >= 1 channels and T >= 1 steps; got \[2, 6, 0\]",
         lambda: group_norm_film_prelu(x[..., :0], 2, prelu)),
        (ValueError, r"with C >= 1 channels", lambda: group_norm_film_prelu(x[:, :0], 1, prelu[:1])),
        (ValueError, "num_groups = 4 must divide x's channel count C = 6", lambda: group_norm_film_prelu(x, 4, prelu)),
        (ValueError, r"num_groups must be >= 1", lambda: group_norm_film_prelu(x, 0, prelu)),
        (TypeError, "num_groups must be an int", lambda: group_norm_film_prelu(x, 2.0, prelu)),
        (TypeError, "prelu_weight must be a torch.Tensor", lambda: group_norm_film_prelu(x, 2, None)),
        (ValueError, r"prelu_weight must have shape \[1\] or \[C\] = \[6\]",
         lambda: group_norm_film_prelu(x, 2, prelu[:2])),
        (ValueError, r"prelu_weight must have shape \[1\] or \[C\] = \[6\]",
         lambda: group_norm_film_prelu(x, 2, prelu[None])),
        (ValueError, r"weight must have shape \[C\] = \[6\]; got \[5\]",
         lambda: group_norm_film_prelu(x, 2, prelu, weight=weight[:5])),
        (ValueError, r"bias must have shape \[C\] = \[6\]",
         lambda: group_norm_film_prelu(x, 2, prelu, bias=bias[None])),
        (ValueError, r"scale must have shape \[B, C\] = \[2, 6\]; got \[6\]",
         lambda: group_norm_film_prelu(x, 2, prelu, scale=scale[0])),
        (ValueError, r"shift must have shape \[B, C\] = \[2, 6\]; got \[1, 6\]",
         lambda: group_norm_film_prelu(x, 2, prelu, shift=shift[:1])),
        (TypeError, r"scale must have the dtype of x \(float32\); got float64",
         lambda: group_norm_film_prelu(x, 2, prelu, scale=scale.double())),
        (TypeError, r"prelu_weight must have the dtype of x \(float32\); got bfloat16",
         lambda: group_norm_film_prelu(x, 2, prelu.bfloat16())),
        (ValueError, "weight must be on the device of x",
         lambda: group_norm_film_prelu(x, 2, prelu, weight=weight.to("meta"))),
        (ValueError, "x must be a CPU or CUDA tensor", lambda: group_norm_film_prelu(x.to("meta"), 2, prelu)),
    ]
    for eps in (0.0, -1e-5, float("inf"), float("nan")):
        cases.append((ValueError, "eps must be a finite number > 0", lambda eps=eps: group_norm_film_prelu(
            x, 2, prelu, eps=eps)))
    cases.append((TypeError, "eps must be a positive float", lambda: group_norm_film_prelu(x, 2, prelu, eps="1e-5")))
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
