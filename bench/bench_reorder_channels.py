"""Benchmark of CHARM's fused reordering (DESIGN §7), forward + backward to the logits and the
signals: the reference (masked_fill, softmax, bmm: what a user writes, so also the peer), every
backend, auto dispatch, and the reference under torch.compile. Sizes: CHARM's trainer default
(batch 64, 16 channels × 256 samples, K 16, a quarter of the channels missing) and a larger EEG
case (batch 256, 64 channels, K 64, 10 s at 256 Hz)."""
from __future__ import annotations

import torch

from pyaudiok.ops.reorder_channels import OP, reorder_channels

from .harness import Case, backward_step, op_candidates, relative_error

SIZES = [(64, 16, 16, 256), (256, 64, 64, 2560)]  # (B, K, C, T)
QUICK = [(64, 16, 16, 256)]


def _inputs(B, K, C, T, device):
    gen = torch.Generator().manual_seed(B * C + T)
    logits = torch.randn(B, K, C, generator=gen).to(device).requires_grad_()
    x = torch.randn(B, C, T, generator=gen).to(device).requires_grad_()
    mask = torch.rand(B, C, generator=gen) > 0.25
    mask[:, 0] = True
    weight = torch.randn(B, K, T, generator=gen).to(device)  # the upstream gradient of y
    return logits, x, mask.to(device), weight


def case(device: torch.device, B: int, K: int, C: int, T: int) -> Case:
    logits, x, mask, weight = _inputs(B, K, C, T, device)
    check = relative_error("y")
    step = backward_step(lambda: reorder_channels(logits, x, mask)[0] * weight, [logits, x])
    cands = op_candidates(OP, device, logits.dtype, (logits, x, mask), step, check)
    return Case("reorder_channels.fwd+bwd", {"B": B, "K": K, "C": C, "T": T}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [case(device, *size) for size in (QUICK if quick else SIZES)]
