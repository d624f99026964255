"""Benchmark of the diarization error rate (DESIGN §8): one hour of conversation (4 reference and
5 hypothesis speakers, ~2 400 segments) scored by `pyaudiok.metrics.diarization_error_rate`
against `pyannote.metrics`' DiarizationErrorRate, collar 0.5 s (total width, both tools), overlap
kept. The note says whether both give the same figures."""
from __future__ import annotations

import random
import warnings

import torch

from pyaudiok.metrics import diarization_error_rate

from .harness import Candidate, Case
from .peers import load


def _turns(rng: random.Random, speakers: list[str], length: float, count: int) -> list[tuple[float, float, str]]:
    out = []
    for spk in speakers:
        times = sorted(round(rng.uniform(0, length), 3) for _ in range(2 * count))
        out += [(times[i], times[i + 1], spk) for i in range(0, len(times), 2) if times[i + 1] > times[i]]
    return out


def der_case(device: torch.device, quick: bool) -> Case:
    seconds = 600.0 if quick else 3600.0
    per_speaker = int(seconds / 12)
    rng = random.Random(0)
    ref = _turns(rng, ["A", "B", "C", "D"], seconds, per_speaker)
    hyp = _turns(rng, ["1", "2", "3", "4", "5"], seconds, per_speaker)
    collar = 0.5

    def ours():
        r = diarization_error_rate(ref, hyp, collar=collar)
        return r.der, r.missed, r.false_alarm, r.confusion

    module, reason = load("pyannote.metrics.diarization", "pyannote.metrics")
    run_peer = None
    if module is not None:
        from pyannote.core import Annotation, Segment

        def annotation(segments):
            a = Annotation()
            for i, (s, e, spk) in enumerate(segments):
                a[Segment(s, e), i] = spk
            return a
        ref_a, hyp_a = annotation(ref), annotation(hyp)

        def run_peer():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "uem was approximated": the same default as ours
                d = module.DiarizationErrorRate(collar=collar)(ref_a, hyp_a, detailed=True)
            return d["diarization error rate"], d["missed detection"], d["false alarm"], d["confusion"]

    def check(output, reference):
        same = all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(output, reference))
        return "identical DER" if same else f"DER {output[0]:.6f} vs {reference[0]:.6f}"

    cands = [Candidate("pyaudiok diarization_error_rate", "reference", ours),
             Candidate("pyannote.metrics DiarizationErrorRate", "peer", run_peer, skip=reason, check=check)]
    return Case("metrics.der", {"seconds": seconds, "segments": len(ref) + len(hyp), "collar": collar}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [der_case(device, quick)] if device.type == "cpu" else []
