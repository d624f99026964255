"""Benchmark of batched log-domain Sinkhorn (DESIGN §5): B = 64 cost matrices of 128 × 128,
ε = 0.05, exactly 100 iterations (no early stop), forward and forward + backward (unrolled),
against the reference, every backend and the peers: a plain PyTorch log-domain loop (in the forward
also under torch.compile) and POT's `ot.bregman.sinkhorn_log` (one problem at a time, 100 iterations,
no stopping check).

On a GPU then also B = 256 of 512 × 512 (a cost far above L2, beside the floor of reading it once per
iteration). "triton" is the Triton backend as dispatched; "triton single-launch" and "triton
split-row" force each route of its forward (kernels/sinkhorn.py), which the dispatched one repeats."""
from __future__ import annotations

import torch

from pyaudiok.ops.sinkhorn import SINKHORN, sinkhorn

from .harness import Candidate, Case, backend_candidates, compiled, relative_error, with_backend
from .peers import load

EPS, ITERS = 0.05, 100
# The size first everywhere; POT runs at the first size only (its one-problem-at-a-time
# loop at the large GPU size would take a short lease's whole module time limit).
SHAPES = {"cpu": [(64, 128, 128)], "cuda": [(64, 128, 128), (256, 512, 512)]}
QUICK_SHAPES = {"cpu": [(16, 64, 64)], "cuda": [(64, 256, 256), (64, 128, 128)]}


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


_check = relative_error("plan")


def _ours(device, cost, ours) -> list[Candidate]:
    """Every backend, and the Triton forward forced onto each of its routes."""
    cands = backend_candidates(SINKHORN, device, cost.dtype, (cost,), lambda b: with_backend(b, ours), _check)
    triton = next(c for c in cands if c.name == "triton")
    at = cands.index(triton) + 1
    return cands[:at] + [_forced(triton, route) for route in ("single", "split")] + cands[at:]


def _forced(triton: Candidate, route: str) -> Candidate:
    name = {"single": "triton single-launch", "split": "triton split-row"}[route]
    if triton.skip is not None:
        return Candidate(name, "backend", None, skip=triton.skip)
    from pyaudiok.kernels.sinkhorn import forced_route

    def run():
        with forced_route(route):
            return triton.run()
    return Candidate(name, "backend", run, check=_check)


# Costs above this exceed a GPU's L2 cache (50 MiB on an H100): each iteration streams them from memory.
_STREAMED_BYTES = 64 << 20


def _stream_floor(cost) -> list[Candidate]:
    """For a cost too large for the caches: ITERS reductions over it, one read of the cost per
    iteration and nothing else, the memory traffic floor of any Sinkhorn that reads it once an
    iteration (the split-row route does). Smaller costs stay cached, where no such floor applies."""
    if cost.numel() * cost.element_size() <= _STREAMED_BYTES:
        return []
    out = cost.new_empty(cost.shape[:-1])

    def run():
        for _ in range(ITERS):
            torch.sum(cost, dim=-1, out=out)
    return [Candidate("floor: one read of the cost per iteration", "floor", run)]


def _name(kind, B, n, m, first):
    return f"sinkhorn.{kind}" if first else f"sinkhorn.{kind}.B{B}n{n}"


def forward_case(device, B, n, m, first=True) -> Case:
    cost = _inputs(device, B, n, m)
    ours = lambda: sinkhorn(cost, eps=EPS, n_iters=ITERS, tol=None)  # noqa: E731
    cands = [Candidate("reference", "reference", with_backend("reference", ours))]
    cands += _ours(device, cost, ours)
    cands.append(Candidate("PyTorch log-domain loop", "peer", lambda: torch_loop(cost), check=_check))
    cands.append(compiled("PyTorch log-domain loop, torch.compile", lambda: torch_loop(cost), backend=None,
                          check=_check))
    pot, reason = _pot(cost) if first else (None, "one problem at a time (4.2 s a call at B 256, n 512 on an "
                                                   "H200): timed at the first size only")
    cands.append(Candidate("POT ot.bregman.sinkhorn_log", "peer", pot, skip=reason, check=_check))
    cands += _stream_floor(cost)
    return Case(_name("forward", B, n, m, first), {"B": B, "n": n, "m": m, "iters": ITERS, "eps": EPS}, cands)


def backward_case(device, B, n, m, first=True) -> Case:
    cost = _inputs(device, B, n, m).requires_grad_(True)
    weight = torch.randn(cost.shape, generator=torch.Generator().manual_seed(1)).to(device)

    def step(fn):
        def run():
            (grad,) = torch.autograd.grad((fn() * weight).sum(), cost)
            return grad
        return run
    ours = step(lambda: sinkhorn(cost, eps=EPS, n_iters=ITERS, tol=None))
    cands = [Candidate("reference", "reference", with_backend("reference", ours))]
    cands += _ours(device, cost, ours)
    cands.append(Candidate("PyTorch log-domain loop (autograd)", "peer", step(lambda: torch_loop(cost)),
                           check=_check))
    return Case(_name("fwd+bwd", B, n, m, first), {"B": B, "n": n, "m": m, "iters": ITERS, "eps": EPS}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    shapes = (QUICK_SHAPES if quick else SHAPES)[device.type]
    return [case(device, *shape, first=i == 0) for i, shape in enumerate(shapes)
            for case in (forward_case, backward_case)]
