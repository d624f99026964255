"""Benchmark of the distance log-sum-exp (Wavesplit's speaker loss over the speaker table, DESIGN §9),
forward + backward to the vectors, the table and α: the reference (every distance, then
torch.logsumexp: what a user writes, so also the peer), every backend, and the reference under
torch.compile. Sizes: the Wavesplit trainer's step (batch 8 × 1 s at 8 kHz, a vector per 8 samples
and source: 16 000 vectors; d 32, 16 speakers), the paper's (4 × 4 s: 32 000 vectors, d 512, the 101
speakers of WSJ0-2mix's training set) and a large table (32 000 vectors, d 256, 1 000 speakers)."""
from __future__ import annotations

import torch

from pyaudiok.ops.distance_logsumexp import OP, distance_logsumexp

from .harness import Case, backward_step, op_candidates, relative_error

SIZES = [(16_000, 16, 32), (32_000, 101, 512), (32_000, 1_000, 256)]  # (vectors, table rows, d)
QUICK = [(16_000, 16, 32)]


def _inputs(R, S, d, device):
    gen = torch.Generator().manual_seed(R + S + d)
    # L2-normalised, as Wavesplit's vectors and table rows are.
    vectors = torch.nn.functional.normalize(torch.randn(R, d, generator=gen), dim=1).to(device).requires_grad_()
    table = torch.nn.functional.normalize(torch.randn(S, d, generator=gen), dim=1).to(device).requires_grad_()
    alpha = torch.tensor(3.0, device=device, requires_grad=True)
    return vectors, table, alpha


def case(device: torch.device, R: int, S: int, d: int) -> Case:
    vectors, table, alpha = _inputs(R, S, d, device)
    check = relative_error("loss")
    step = backward_step(lambda: distance_logsumexp(vectors, table, alpha=alpha), [vectors, table, alpha])
    cands = op_candidates(OP, device, vectors.dtype, (vectors, table, alpha.detach()), step, check)
    return Case("distance_logsumexp.fwd+bwd", {"vectors": R, "table": S, "d": d}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [case(device, R, S, d) for R, S, d in (QUICK if quick else SIZES)]
