"""Every Triton op launched once forward and backward with fp16 and bf16 inputs at toy size, so
that the launch record (tests/triton_launches.py) holds the half-precision specialisations of every
kernel and tests/test_triton_sm90.py compiles them for an H100. Without a GPU the value tests of
half inputs mostly run elsewhere (the interpreter gets bf16 products wrong), so these launches are
the only check here that, e.g., a bf16 tl.dot with an fp32 operand is accepted by the compiler.
The outputs are checked for shape and dtype only: their values are the op tests' business."""
from __future__ import annotations

import warnings
from typing import Callable

import pytest
import torch

import pyaudiok
from pyaudiok import BackendFallbackWarning, ops
from pyaudiok.kernels import latent_attention as latent_kernels

from . import triton_launches
from .harness import device_for


def _leaf(*shape, dtype, device, scale=1.0):
    return (scale * torch.randn(*shape)).to(device, dtype).requires_grad_()


def _latent_attention(dtype, device, dq_mode="separate"):
    q, k, v = (_leaf(1, 2, n, 32, dtype=dtype, device=device) for n in (16, 48, 48))
    with latent_kernels.settings_set(DQ_MODE=dq_mode):
        out = ops.latent_cross_attention(q, k, v, key_lengths=[40])
        out.float().sum().backward()
    return out, q


def _fourier_crop(dtype, device):
    x = _leaf(2, 3, 16, 16, dtype=dtype, device=device)
    return ops.fourier_crop(x, torch.tensor([2.0], device=device, requires_grad=True), method="matmul"), x


def _rvq(dtype, device):
    x, books = _leaf(37, 16, dtype=dtype, device=device), torch.randn(3, 32, 16).to(device, dtype)
    return ops.residual_vq(x, books).quantized, x


def _soft_rank(dtype, device):
    x = _leaf(4, 20, dtype=dtype, device=device)
    return ops.soft_rank(x), x


def _sinkhorn(dtype, device):
    cost = _leaf(2, 8, 9, dtype=dtype, device=device)
    return ops.sinkhorn(cost, eps=0.5, n_iters=5), cost


def _si_sdr(dtype, device):
    est, ref = _leaf(2, 2, 300, dtype=dtype, device=device), torch.randn(2, 3, 300).to(device, dtype)
    return ops.si_sdr_matrix(est, ref), est


def _contrastive(dtype, device):
    a, p, w = (_leaf(*shape, dtype=dtype, device=device, scale=0.3) for shape in ((24, 16), (24, 16), (16, 16)))
    return ops.bilinear_contrastive_loss(a, p, w, symmetric=True), a


def _collar_vad(dtype, device):
    logits = _leaf(2, 3, 50, dtype=dtype, device=device)
    reference = torch.rand(2, 3, 50, device=device) > 0.5
    order = torch.arange(3, device=device).expand(2, 3)
    return ops.collar_vad_loss(logits, reference, order, collar_frames=2.0), logits


def _distance(dtype, device):
    vectors, table = _leaf(40, 24, dtype=dtype, device=device), _leaf(20, 24, dtype=dtype, device=device)
    return ops.distance_logsumexp(vectors, table, alpha=torch.tensor(2.0, device=device)), vectors


def _reorder(dtype, device):
    logits, x = _leaf(2, 5, 7, dtype=dtype, device=device), _leaf(2, 7, 40, dtype=dtype, device=device)
    return ops.reorder_channels(logits, x, torch.arange(7, device=device).expand(2, 7) < 6)[0], x


def _pcen(dtype, device):
    energy = (torch.rand(2, 4, 30) + 0.1).to(device, dtype).requires_grad_()
    params = [torch.full((4,), value, device=device) for value in (0.96, 2.0, 0.5, 0.04)]
    return ops.pcen(energy, *params), energy


def _gabor(dtype, device):
    x = _leaf(1, 900, dtype=dtype, device=device)
    freqs, widths = torch.linspace(0.5, 2.5, 4, device=device), torch.full((4,), 60.0, device=device)
    return ops.gabor_pool(x, freqs, widths, torch.full((4,), 0.4, device=device), window=101, stride=40), x


def _group_norm_film_prelu(dtype, device):
    x = _leaf(2, 6, 33, dtype=dtype, device=device)
    prelu, scale = torch.full((6,), 0.25, device=device, dtype=dtype), (1 + torch.rand(2, 6)).to(device, dtype)
    return ops.group_norm_film_prelu(x, 2, prelu, scale=scale), x


# name -> (launch, the kernels module whose kernels take the half inputs as they are; None where the
# op computes in fp32 and its kernels see fp32 only)
CASES: dict[str, tuple[Callable, str]] = {
    "latent_cross_attention": (_latent_attention, "latent_attention"),
    "latent_cross_attention, atomic dQ": (lambda dtype, device: _latent_attention(dtype, device, "atomic"),
                                          "latent_attention"),
    "fourier_crop": (_fourier_crop, None), "residual_vq": (_rvq, "rvq"),
    "soft_rank": (_soft_rank, None), "sinkhorn": (_sinkhorn, None), "si_sdr_matrix": (_si_sdr, None),
    "bilinear_contrastive_loss": (_contrastive, "bilinear_contrastive"), "collar_vad_loss": (_collar_vad, "collar_vad"),
    "distance_logsumexp": (_distance, "distance_logsumexp"), "reorder_channels": (_reorder, "reorder_channels"),
    "pcen": (_pcen, "pcen"), "gabor_pool": (_gabor, "gabor_pool"),
    "group_norm_film_prelu": (_group_norm_film_prelu, None),
}

_POINTER = {torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def _recorded_with(module: str, dtype: torch.dtype) -> bool:
    """Whether a launch of a kernel of pyaudiok.kernels.<module> with a `dtype` pointer was recorded."""
    return any(spec["module"] == f"pyaudiok.kernels.{module}" and _POINTER[dtype] in spec["signature"].values()
               for spec in triton_launches.SPECS.values())


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=("fp16", "bf16"))
@pytest.mark.parametrize("name", CASES)
def test_half_precision_launch_forward_and_backward(name, dtype):
    pytest.importorskip("triton")
    launch, module = CASES[name]
    device = device_for("triton")
    with warnings.catch_warnings(), pyaudiok.use_backend("triton"):
        warnings.simplefilter("error", BackendFallbackWarning)  # the Triton kernels, not a fallback
        out, leaf = launch(dtype, device)
        if leaf.grad is None:
            out.float().sum().backward()
    assert leaf.grad is not None and leaf.grad.shape == leaf.shape and leaf.grad.dtype == leaf.dtype
    assert out.is_floating_point()
    if module is not None and device.type == "cpu" and triton_launches.installed():
        assert _recorded_with(module, dtype), f"no {dtype} launch of pyaudiok.kernels.{module} was recorded"
