"""Benchmark of batched log-domain Sinkhorn (DESIGN §5): B = 64 cost matrices of 128 × 128,
ε = 0.05, exactly 100 iterations (no early stop), forward and forward + backward (unrolled),
against the reference, every backend and the peers: a plain PyTorch log-domain loop and POT's
`ot.bregman.sinkhorn_log` (one problem at a time, 100 iterations, no stopping check)."""
from __future__ import annotations

import torch

from pyaudiok.ops.sinkhorn import SINKHORN, sinkhorn

from .harness import Candidate, Case, backend_candidates, with_backend
from .peers import load

EPS, ITERS = 0.05, 100
SHAPES = {"cpu": (64, 128, 128), "cuda": (256, 512, 512)}
QUICK_SHAPES = {"cpu": (16, 64, 64), "cuda": (64, 256, 256)}


def _inputs(device, B, n, m):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(B, n, 2, generator=gen), torch.rand(B, m, 2, generator=gen)
    return torch.cdist(x, y).square().to(device)


def torch_loop(cost, eps=EPS, iters=ITERS):
    """The plain PyTorch loop a user would write (uniform marginals)."""
    B, n, m = cost.shape
    log_a, log_b = -torch.log(cost.new_tensor(n)), -torch.log(cost.new_tensor(m))
    f, g = cost.new_zeros(B, n), cost.new_zeros(B, m)
    for _ in range(iters):
        f = eps * log_a - eps * torch.logsumexp((g[:, None, :] - cost) / eps, dim=2)
        g = eps * log_b - eps * torch.logsumexp((f[:, :, None] - cost) / eps, dim=1)
    return torch.exp((f[:, :, None] + g[:, None, :] - cost) / eps)


def _pot(cost):
    ot, reason = load("ot", "POT")
    if ot is None:
        return None, reason
    B, n, m = cost.shape
    a, b = cost.new_full((n,), 1 / n), cost.new_full((m,), 1 / m)

    def run():
        return torch.stack([ot.bregman.sinkhorn_log(a, b, cost[i], EPS, numItermax=ITERS, stopThr=0.0)
                            for i in range(B)])
    return run, None


def _check(output, reference):
    err = ((output - reference).norm() / reference.norm()).item()
    return f"plan rel err {err:.1e}"


def forward_case(device, B, n, m) -> Case:
    cost = _inputs(device, B, n, m)
    ours = lambda: sinkhorn(cost, eps=EPS, n_iters=ITERS, tol=None)  # noqa: E731
    cands = [Candidate("reference", "reference", with_backend("reference", ours))]
    cands += backend_candidates(SINKHORN, device, cost.dtype, (cost,), lambda b: with_backend(b, ours), _check)
    cands.append(Candidate("PyTorch log-domain loop", "peer", lambda: torch_loop(cost), check=_check))
    pot, reason = _pot(cost)
    cands.append(Candidate("POT ot.bregman.sinkhorn_log", "peer", pot, skip=reason, check=_check))
    return Case("sinkhorn.forward", {"B": B, "n": n, "m": m, "iters": ITERS, "eps": EPS}, cands)


def backward_case(device, B, n, m) -> Case:
    cost = _inputs(device, B, n, m).requires_grad_(True)
    weight = torch.randn(cost.shape, generator=torch.Generator().manual_seed(1)).to(device)

    def step(fn):
        def run():
            (grad,) = torch.autograd.grad((fn() * weight).sum(), cost)
            return grad
        return run
    ours = step(lambda: sinkhorn(cost, eps=EPS, n_iters=ITERS, tol=None))
    cands = [Candidate("reference", "reference", with_backend("reference", ours))]
    cands += backend_candidates(SINKHORN, device, cost.dtype, (cost,), lambda b: with_backend(b, ours), _check)
    cands.append(Candidate("PyTorch log-domain loop (autograd)", "peer", step(lambda: torch_loop(cost)),
                           check=_check))
    return Case("sinkhorn.fwd+bwd", {"B": B, "n": n, "m": m, "iters": ITERS, "eps": EPS}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    shape = (QUICK_SHAPES if quick else SHAPES)[device.type]
    return [forward_case(device, *shape), backward_case(device, *shape)]
