"""Benchmark of batched k-means (DESIGN §9: Wavesplit clusters its per-step speaker vectors):
B = 32 items of P = 2 000 points in d = 128, k = 3 clusters, 20 Lloyd iterations from the same
initial centroids; the reference, every backend, and a per-item scikit-learn `KMeans` loop
(init = the same centroids, n_init = 1, tol = 0: like ours it stops only once no assignment
changes, so both run the same iterations)."""
from __future__ import annotations

import numpy as np
import torch

import pyaudiok
from pyaudiok.ops.kmeans import LLOYD, kmeans

from .harness import Candidate, Case, backend_candidates
from .peers import load

K, ITERS = 3, 20


def kmeans_case(device: torch.device, quick: bool) -> Case:
    B, P, d = (8, 1000, 128) if quick else (32, 2000, 128)
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(B, K, d, generator=gen) * 2
    x = centres.gather(1, torch.randint(0, K, (B, P, 1), generator=gen).expand(B, P, d)) + torch.randn(B, P, d,
                                                                                                   generator=gen)
    x = x.to(device)
    init = x[:, :K].clone()

    def ours(backend):
        def run():
            with pyaudiok.use_backend(backend):
                return kmeans(x, K, n_iters=ITERS, init=init).assignments
        return run

    def check(output, reference):
        same = (output.cpu() == reference.cpu()).float().mean().item()
        return "assignments identical" if same == 1 else f"assignments {100 * same:.2f}% identical"

    cands = [Candidate("reference", "reference", ours("reference"))]
    cands += backend_candidates(LLOYD, device, x.dtype, (x, init, ITERS), ours, check)
    cluster, reason = load("sklearn.cluster", "scikit-learn")
    x_np, init_np = x.cpu().numpy(), init.cpu().numpy()

    def run_sklearn():
        labels = [cluster.KMeans(K, init=init_np[b], n_init=1, max_iter=ITERS + 1, tol=0, algorithm="lloyd")
                  .fit(x_np[b]).labels_ for b in range(B)]
        return torch.as_tensor(np.stack(labels))
    cands.append(Candidate("scikit-learn KMeans (per item)", "peer", run_sklearn if cluster else None, skip=reason,
                           check=check))
    return Case("kmeans", {"B": B, "P": P, "d": d, "k": K, "iters": ITERS}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [kmeans_case(device, quick)]
