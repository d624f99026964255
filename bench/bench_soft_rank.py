"""Benchmark of soft rank (PAV projection onto the permutahedron, DESIGN §5), forward + backward,
against the reference, every backend and the peer `torchsort` (C++ on CPU, CUDA on GPU), at the
shapes the issue names: CPU (B=256, n=100) and (B=4096, n=20); GPU n = 2000 and 8192."""
from __future__ import annotations

import torch

from pyaudiok.ops.soft_rank import RANK, soft_rank

from .harness import Candidate, Case, backend_candidates, relative_error, with_backend
from .peers import load

SHAPES = {"cpu": [(256, 100), (4096, 20)], "cuda": [(1024, 2000), (256, 8192)]}
QUICK_SHAPES = {"cpu": [(64, 100), (512, 20)], "cuda": [(256, 2000)]}
STRENGTH = 0.1


_check = relative_error()


def _fwd_bwd(fn, x):
    def run():
        out = fn(x)
        (grad,) = torch.autograd.grad(out, x, torch.ones_like(out) * torch.linspace(-1, 1, out.shape[-1],
                                                                                  device=out.device))
        return torch.cat([out.detach(), grad], -1)
    return run


def case(device, B, n) -> Case:
    x = torch.randn(B, n, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
    ours = _fwd_bwd(lambda t: soft_rank(t, regularization_strength=STRENGTH), x)
    cands = [Candidate("reference", "reference", with_backend("reference", ours))]
    cands += backend_candidates(RANK, device, x.dtype, (x, "l2", STRENGTH, False),
                                lambda b: with_backend(b, ours), _check)
    torchsort, reason = load("torchsort", "torchsort")
    peer = None if torchsort is None else _fwd_bwd(
        lambda t: torchsort.soft_rank(t, regularization_strength=STRENGTH), x)
    cands.append(Candidate("torchsort soft_rank", "peer", peer, skip=reason, check=_check))
    return Case(f"soft_rank B{B} n{n}", {"B": B, "n": n, "eps": STRENGTH, "pass": "fwd+bwd"}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [case(device, B, n) for B, n in (QUICK_SHAPES if quick else SHAPES)[device.type]]
