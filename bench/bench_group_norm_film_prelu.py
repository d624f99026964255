"""Benchmark of GroupNorm → FiLM → PReLU (the middle of Wavesplit's and DIVE's residual blocks),
forward + backward to x and every parameter: the reference (F.group_norm, the FiLM product and sum,
F.prelu), every backend, the automatic choice, the reference under torch.compile, and what a model
holds instead (nn.GroupNorm and nn.PReLU modules around the FiLM line). The incoming gradient is a
dense tensor, as a 1×1 convolution's backward hands it over.
Sizes: Wavesplit's separation stack (batch 8 × 1 s at 8 kHz, hop 8: 1 001 frames, 64 channels, FiLM,
one PReLU slope) and DIVE's (batch 4 × 4 s at 100 frames a second: 400 frames, 64 channels, no FiLM;
its VAD decoder runs the block on B·N = 12 rows of 3 speakers)."""
from __future__ import annotations

import torch
from torch import nn

from pyaudiok.ops.group_norm_film_prelu import OP, group_norm_film_prelu

from .harness import Candidate, Case, op_candidates, relative_error

SIZES = [(8, 64, 1001, True), (4, 64, 400, False), (12, 64, 400, False)]  # (B, C, T, FiLM)
QUICK = [(8, 64, 1001, True)]
GPU_ONLY = [(16, 256, 8000, True)]  # 33 M values: where a GPU may favour one pass over the reference's several


def _inputs(B, C, T, film, device):
    gen = torch.Generator().manual_seed(B * C * T)
    x = torch.randn(B, C, T, generator=gen).to(device).requires_grad_()
    weight = (1 + 0.1 * torch.randn(C, generator=gen)).to(device).requires_grad_()
    bias = (0.1 * torch.randn(C, generator=gen)).to(device).requires_grad_()
    prelu = torch.full((1,), 0.25, device=device, requires_grad=True)
    film_terms = [(k + 0.1 * torch.randn(B, C, generator=gen)).to(device).requires_grad_() for k in (1, 0)]
    grad = torch.randn(B, C, T, generator=gen).to(device)
    return x, weight, bias, prelu, film_terms if film else [None, None], grad


def _step(fn, leaves, grad):
    """fn() backpropagated from `grad`, the leaves' gradients cleared after; returns the output."""
    def step():
        out = fn()
        out.backward(grad)
        for leaf in leaves:
            leaf.grad = None
        return out.detach()
    return step


def _modules_candidate(x, weight, bias, prelu, scale, shift, grad, check) -> Candidate:
    """nn.GroupNorm(1, C) and nn.PReLU() holding the same parameters, FiLM written out between them."""
    C = x.shape[1]
    norm, act = nn.GroupNorm(1, C).to(x.device), nn.PReLU().to(x.device)
    norm.weight, norm.bias, act.weight = (nn.Parameter(t.detach().clone()) for t in (weight, bias, prelu))

    def block():
        u = norm(x)
        if scale is not None:
            u = scale[..., None] * u + shift[..., None]
        return act(u)
    leaves = [x, norm.weight, norm.bias, act.weight] + [t for t in (scale, shift) if t is not None]
    return Candidate("nn.GroupNorm + nn.PReLU", "peer", _step(block, leaves, grad), check=check)


def case(device: torch.device, B: int, C: int, T: int, film: bool) -> Case:
    x, weight, bias, prelu, (scale, shift), grad = _inputs(B, C, T, film, device)
    leaves = [t for t in (x, weight, bias, prelu, scale, shift) if t is not None]
    check = relative_error("y")
    step = _step(lambda: group_norm_film_prelu(x, 1, prelu, weight=weight, bias=bias, scale=scale, shift=shift),
                 leaves, grad)
    args = (x, 1, prelu, weight, bias, scale, shift, 1e-5)
    cands = op_candidates(OP, device, x.dtype, args, step, check)
    cands.append(_modules_candidate(x, weight, bias, prelu, scale, shift, grad, check))
    return Case("group_norm_film_prelu.fwd+bwd", {"B": B, "C": C, "T": T, "groups": 1, "film": film}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    sizes = QUICK if quick else SIZES + (GPU_ONLY if device.type == "cuda" else [])
    return [case(device, *size) for size in sizes]
