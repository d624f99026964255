"""Benchmark of DIVE's collar-aware VAD loss (DESIGN §8), forward + backward to the logits: the
reference (the collar mask from a dilated boundary map, then PyTorch's BCE with logits and a masked
mean: what a user writes, so also the peer), every backend, and the reference under torch.compile.
Sizes: DIVE's training batch (B 4, 3 speakers, 4 s at 100 frames a second, a 0.25 s collar per
side = 25 frames) and a large one (B 64, 4 speakers, 60 s)."""
from __future__ import annotations

import torch

from pyaudiok.ops.collar_vad import OP, collar_vad_loss

from .harness import Case, backward_step, op_candidates, relative_error

SIZES = [(4, 3, 400), (64, 4, 6000)]  # (B, speakers, frames)
QUICK = [(4, 3, 400)]
COLLAR_FRAMES = 25.0


def _inputs(B, S, T, device):
    gen = torch.Generator().manual_seed(B * T)
    # Turns of 0.5-3 s: each speaker switches at random frames.
    switches = torch.rand(B, S, T, generator=gen) < 1 / 150
    reference = (switches.cumsum(-1) % 2).bool()
    logits = torch.randn(B, S, T, generator=gen).to(device).requires_grad_()
    order = torch.stack([torch.randperm(S, generator=gen) for _ in range(B)]).to(device)
    return logits, reference.to(device), order


def case(device: torch.device, B: int, S: int, T: int) -> Case:
    logits, reference, order = _inputs(B, S, T, device)
    check = relative_error("loss")
    step = backward_step(lambda: collar_vad_loss(logits, reference, order, collar_frames=COLLAR_FRAMES), [logits])
    cands = op_candidates(OP, device, logits.dtype, (logits, reference.float(), order, COLLAR_FRAMES), step, check)
    return Case("collar_vad.fwd+bwd", {"B": B, "speakers": S, "frames": T, "collar_frames": COLLAR_FRAMES}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [case(device, B, S, T) for B, S, T in (QUICK if quick else SIZES)]
