"""Benchmark of the OT pseudo-labels of learning from label proportions (DESIGN §10): 1024 bags of
64 instances × 10 classes, cost −log P, ε = 1, exactly 100 Sinkhorn iterations (no early stop),
the whole `ot_pseudo_labels` call (packing, Sinkhorn, soft labels k·Q) on the reference and every
Sinkhorn backend, against the peers given the packed costs: POT's batched solver
(`ot.solve_batch`, entropic, log domain, tol 0; on a POT without it `ot.bregman.sinkhorn_log`
bag by bag) and a plain PyTorch log-domain loop over the bags."""
from __future__ import annotations

import torch

from pyaudiok.ops import ot_pseudo_labels
from pyaudiok.ops.sinkhorn import SINKHORN

from .harness import Candidate, Case, backend_candidates, relative_error, with_backend
from .peers import load

EPS, ITERS, K = 1.0, 100, 10
SHAPES = {"cpu": (1024, 64), "cuda": (1024, 64)}   # bags, bag size
QUICK_SHAPES = {"cpu": (64, 64), "cuda": (256, 64)}


def _inputs(device, n_bags, k):
    gen = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(2 * torch.randn(n_bags * k, K, generator=gen), 1)
    bag_index = torch.arange(n_bags * k) // k
    props = torch.rand(n_bags, K, generator=gen) + 0.05
    return log_probs.to(device), bag_index.to(device), (props / props.sum(1, keepdim=True)).to(device)


def torch_loop(cost, props, eps=EPS, iters=ITERS):
    """What a user would write without a batched op: a log-domain Sinkhorn per bag; soft labels k·Q."""
    out = []
    for c, p in zip(cost, props):
        k = c.shape[0]
        f, g = c.new_zeros(k), c.new_zeros(K)
        log_a, log_b = -torch.log(c.new_tensor(float(k))), p.log()
        for _ in range(iters):
            f = eps * log_a - eps * torch.logsumexp((g[None, :] - c) / eps, dim=1)
            g = eps * log_b - eps * torch.logsumexp((f[:, None] - c) / eps, dim=0)
        out.append(k * torch.exp((f[:, None] + g[None, :] - c) / eps))
    return torch.cat(out)


def _pot(cost, props):
    """The best batched POT call installed, with the same ε and iteration count (no stopping check)."""
    ot, reason = load("ot", "POT")
    if ot is None:
        return None, None, reason
    n_bags, k, _ = cost.shape
    a = cost.new_full((n_bags, k), 1 / k)
    if hasattr(ot, "solve_batch"):
        def run():
            res = ot.solve_batch(M=cost, reg=EPS, a=a, b=props, max_iter=ITERS, tol=0.0, method="log_sinkhorn",
                                 reg_type="entropy", grad="detach")
            return k * res.plan.reshape(-1, K)
        return run, "POT ot.solve_batch (log_sinkhorn)", None

    def run():
        return torch.cat([k * ot.bregman.sinkhorn_log(a[i], props[i], cost[i], EPS, numItermax=ITERS, stopThr=0.0)
                          for i in range(n_bags)])
    return run, "POT ot.bregman.sinkhorn_log (per bag)", None


_check = relative_error("labels")


def pseudo_label_case(device, n_bags, k) -> Case:
    log_probs, bag_index, props = _inputs(device, n_bags, k)
    cost = -log_probs.reshape(n_bags, k, K)  # bags are contiguous here: the packed batch is a view
    ours = lambda: ot_pseudo_labels(log_probs, bag_index, props, eps=EPS, n_iters=ITERS, tol=None)  # noqa: E731
    cands = [Candidate("reference", "reference", with_backend("reference", ours))]
    cands += backend_candidates(SINKHORN, device, cost.dtype, (cost,), lambda b: with_backend(b, ours), _check)
    cands.append(Candidate("PyTorch log-domain loop per bag", "peer", lambda: torch_loop(cost, props), check=_check))
    pot, name, reason = _pot(cost, props)
    cands.append(Candidate(name or "POT", "peer", pot, skip=reason, check=_check))
    return Case("llp.ot_pseudo_labels", {"bags": n_bags, "bag_size": k, "classes": K, "iters": ITERS, "eps": EPS},
                cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [pseudo_label_case(device, *(QUICK_SHAPES if quick else SHAPES)[device.type])]
