"""pcen: every backend against the reference (values and all five gradients), long sequences
against a float64 loop, fp32 state for half inputs, opcheck, bad inputs."""
from __future__ import annotations

import pytest
import torch

import pyaudiok
from pyaudiok.ops import pcen
from pyaudiok.ops.pcen import PCEN, _triton_forward, pcen_reference

from ..harness import assert_close, compare_with_reference, require_backend

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


def test_cpu_float64_matches_reference():
    require_backend(PCEN, "cpu", torch.float64)
    E, a, d, r, s = inputs(2, 3, 40, dtype=torch.float64)
    compare_with_reference(pcen, (E, a, d, r, s), "cpu")


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
    E, a, d, r, s = inputs(1, 2, T, device, grad=False)
    s = torch.tensor([0.04, 0.001], device=device)
    with pyaudiok.use_backend(backend):
        got = pcen(E, a, d, r, s)
    want = pcen_reference(E.double(), a.double(), d.double(), r.double(), s.double())
    tail = slice(T - 500, T)
    assert_close("y (whole)", got, want, torch.float32, scale=5)
    assert_close("y (last 500 frames)", got[..., tail], want[..., tail], torch.float32, scale=5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_keep_fp32_state(dtype):
    E, a, d, r, s = inputs(2, 8, 4000, "cuda", grad=False)
    s = torch.full_like(s, 0.001)  # tiny updates that a half-precision state would lose
    with pyaudiok.use_backend("triton"):
        got = pcen(E.to(dtype), a, d, r, s)
    want = pcen_reference(E.to(dtype).double(), a.double(), d.double(), r.double(), s.double())
    assert got.dtype == dtype
    assert_close("y", got, want, dtype, scale=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_op_passes_opcheck(backend):
    device = require_backend(PCEN, backend)
    E, a, d, r, s = inputs(2, 3, 20, device, grad=False)
    params = torch.stack([a, d, r, s]).requires_grad_(True)
    op = torch.ops.pyaudiok.pcen_forward if backend == "cpu" else _triton_forward()
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(op, (E.requires_grad_(True), params, 1e-12), test_utils=tests)


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
    with pytest.raises(ValueError, match="eps must be a float >= 0"):
        pcen(E, a, d, r, s, eps=-1.0)
