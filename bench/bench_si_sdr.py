"""Benchmark of permutation-invariant SI-SDR (DESIGN §9): B = 8 items of T = 32 000 samples
(4 s at 8 kHz), N = 2…6 sources; the reference, every backend, and torchmetrics'
`permutation_invariant_training` with SI-SDR in its faster "speaker-wise" mode."""
from __future__ import annotations

import torch

import pyaudiok
from pyaudiok.ops.si_sdr import MATRIX, pit_si_sdr

from .harness import Candidate, Case, backend_candidates, compiled
from .peers import load

B, T = 8, 32_000


def pit_case(device: torch.device, sources: int) -> Case:
    gen = torch.Generator().manual_seed(sources)
    refs = torch.randn(B, sources, T, generator=gen)
    ests = refs[:, torch.randperm(sources, generator=gen)] + 0.5 * torch.randn(B, sources, T, generator=gen)
    refs, ests = refs.to(device), ests.to(device)

    def ours(backend):
        def run():
            with pyaudiok.use_backend(backend):
                return pit_si_sdr(ests, refs).si_sdr
        return run

    def check(output, reference):
        err = (output.double() - reference.double()).abs().max().item()
        return "same SI-SDR" if err < 1e-3 else f"max diff {err:.2e} dB"

    cands = [Candidate("reference", "reference", ours("reference"))]
    cands += backend_candidates(MATRIX, device, ests.dtype, (ests, refs, True, 1e-8), ours, check)
    cands.append(compiled("reference, torch.compile", lambda: pit_si_sdr(ests, refs).si_sdr, check=check))
    audio, reason = load("torchmetrics.functional.audio", "torchmetrics")

    def run_torchmetrics():
        best, _ = audio.permutation_invariant_training(ests, refs, audio.scale_invariant_signal_distortion_ratio,
                                                       mode="speaker-wise", eval_func="max")
        return best
    cands.append(Candidate("torchmetrics PIT (speaker-wise)", "peer", run_torchmetrics if audio else None,
                           skip=reason, check=check))
    return Case(f"pit_si_sdr.N{sources}", {"B": B, "N": sources, "T": T}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [pit_case(device, n) for n in ((2, 4) if quick else (2, 3, 4, 6))]
