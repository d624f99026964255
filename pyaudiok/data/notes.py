"""Synthetic NSynth-like notes: one pitched note per clip, labelled with its pitch and its
instrument family, for the permutation pretext task and its probes (DESIGN §5).

A family is a prior over the parameters of one additive synthesiser, not a fixed timbre: each note
draws its own spectral roll-off, odd/even balance, brightness, inharmonicity, damping of the upper
partials, envelope, vibrato and breath noise from its family's ranges. Nuisances that a useful
representation should ignore vary on every note: onset time, level (−30…0 dB), detuning, partial
phases, and a coloured background noise at 5–35 dB SNR. So a family is a cloud of timbres, not a
point, and neither label can be read off the loudness or one spectral bin.

`synth_notes(n, n_pitches, generator)` -> (audio[n, samples], pitch[n], family[n]); the pitch is a
semitone index above MIDI 45 (A2, 110 Hz), so n_pitches ≤ 48 keeps every f0 below 1.8 kHz.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

__all__ = ["FAMILIES", "synth_notes"]

PARTIALS = 24
BASE_MIDI = 45
MAX_PITCHES = 48
MALLET_RATIOS = (1.0, 2.76, 5.40, 8.93, 13.34, 18.64, 24.82, 31.87)  # free bar modes, normalised


class Family(NamedTuple):
    """Ranges (low, high) each note draws from uniformly; times in seconds."""
    rolloff: tuple[float, float]      # partial h has amplitude h ** -rolloff
    even_gain: tuple[float, float]    # even partials × this (reed-like timbres: ≪ 1)
    cutoff: tuple[float, float]       # brightness: a 4th-order low-pass on the partials, in multiples of f0
    inharmonic: tuple[float, float]   # stiffness B: partial h at h·sqrt(1 + B h²)
    damping: tuple[float, float]      # partial h decays (1 + damping·(h − 1)) times faster than the first
    attack: tuple[float, float]
    decay: tuple[float, float]        # time constant of the fall towards the sustain level
    sustain: tuple[float, float]      # level the note settles at (0: it dies away)
    vibrato: tuple[float, float]      # depth, as a fraction of f0 (rate: VIBRATO_HZ)
    breath: tuple[float, float]       # enveloped noise, relative to the partials' RMS
    mallet: bool = False              # partials at the modes of a free bar instead of harmonics


FAMILIES: dict[str, Family] = {
    "bass": Family((1.2, 1.8), (0.8, 1.0), (6, 12), (0, 1e-4), (0.3, 0.8), (0.002, 0.01), (0.2, 0.6),
                   (0.0, 0.1), (0, 0), (0, 0.01)),
    "brass": Family((0.5, 0.9), (0.8, 1.0), (8, 20), (0, 0), (0, 0.05), (0.03, 0.08), (0.1, 0.3),
                    (0.6, 0.9), (0.001, 0.004), (0, 0.02)),
    "flute": Family((2.0, 3.0), (0.6, 1.0), (4, 8), (0, 0), (0, 0.05), (0.05, 0.12), (0.1, 0.3),
                    (0.7, 1.0), (0.003, 0.008), (0.05, 0.2)),
    "guitar": Family((0.8, 1.3), (0.8, 1.0), (10, 20), (0, 5e-5), (0.1, 0.3), (0.001, 0.005), (0.3, 1.0),
                     (0.0, 0.0), (0, 0), (0, 0.01)),
    "keyboard": Family((1.0, 1.5), (0.8, 1.0), (8, 16), (1e-4, 4e-4), (0.05, 0.2), (0.002, 0.006),
                       (0.4, 1.2), (0.0, 0.05), (0, 0), (0, 0.01)),
    "mallet": Family((0.6, 1.2), (1.0, 1.0), (20, 40), (0, 0), (0.5, 1.5), (0.001, 0.003), (0.1, 0.4),
                     (0.0, 0.0), (0, 0), (0, 0.02), mallet=True),
    "organ": Family((0.3, 0.8), (0.5, 1.0), (6, 14), (0, 0), (0, 0), (0.01, 0.03), (0.05, 0.2),
                    (0.9, 1.0), (0, 0.001), (0, 0.01)),
    "reed": Family((0.6, 1.0), (0.05, 0.25), (10, 20), (0, 0), (0, 0.05), (0.02, 0.06), (0.1, 0.3),
                   (0.7, 0.9), (0.002, 0.006), (0.01, 0.05)),
    "string": Family((0.9, 1.2), (0.8, 1.0), (12, 24), (0, 0), (0, 0.05), (0.08, 0.2), (0.1, 0.4),
                     (0.8, 1.0), (0.004, 0.01), (0.01, 0.04)),
}

GAIN_DB = (-30.0, 0.0)
SNR_DB = (5.0, 35.0)
ONSET_S = (0.0, 0.08)
VIBRATO_HZ = (4.5, 6.5)
DETUNE_CENTS = 15.0
CHUNK = 64


def _uniform(ranges: torch.Tensor, family: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One draw per note from its family's (low, high) range: ranges[F, 2], family[n] -> [n, 1]."""
    low, high = ranges[family, 0], ranges[family, 1]
    return (low + (high - low) * torch.rand(family.shape, generator=gen, dtype=torch.float64))[:, None]


def _between(bounds: tuple[float, float], n: int, gen: torch.Generator) -> torch.Tensor:
    """[n, 1] float64 uniform draws in [low, high)."""
    low, high = bounds
    return low + (high - low) * torch.rand(n, 1, generator=gen, dtype=torch.float64)


def _coloured_noise(n: int, samples: int, gen: torch.Generator) -> torch.Tensor:
    """Unit-RMS noise with a random spectral slope per row: power ∝ f^−α, α in [0, 2] (white to brown)."""
    spectrum = torch.fft.rfft(torch.randn(n, samples, generator=gen, dtype=torch.float64))
    alpha = 2 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    f = torch.arange(spectrum.shape[-1], dtype=torch.float64).clamp_min(1.0)
    noise = torch.fft.irfft(spectrum * f ** (-alpha / 2), n=samples)
    return noise / noise.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


def synth_notes(n: int, n_pitches: int, gen: torch.Generator, *, samples: int, sample_rate: int = 16000
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(audio[n, samples] float32 in [−1, 1], pitch[n], family[n]) with pitch uniform over n_pitches
    semitones above A2 and family uniform over FAMILIES (in its order)."""
    if not (isinstance(n_pitches, numbers.Integral) and 1 <= n_pitches <= MAX_PITCHES):
        raise ValueError(f"n_pitches must be an integer in [1, {MAX_PITCHES}]; got {n_pitches!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1; got {samples}")
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    # The highest note's fundamental (detuned up) must be below the 0.45·sr band limit of the
    # partials, or its clips would hold only the background noise.
    top = 440.0 * 2 ** ((BASE_MIDI + n_pitches - 1 + DETUNE_CENTS / 100 - 69) / 12)
    if not top < 0.45 * sample_rate:
        raise ValueError(f"sample_rate = {sample_rate} is too low for n_pitches = {n_pitches}: the highest "
                         f"fundamental ({top:.0f} Hz) must lie below 0.45 · sample_rate")
    # in chunks: the partials of a chunk are a [chunk, PARTIALS, samples] float64 array
    chunks = [_synth_chunk(min(CHUNK, n - i), n_pitches, gen, samples, sample_rate) for i in range(0, n, CHUNK)]
    if not chunks:
        return torch.empty(0, samples), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return tuple(torch.cat(parts) for parts in zip(*chunks))


def _synth_chunk(n: int, n_pitches: int, gen: torch.Generator, samples: int, sample_rate: int):
    pitch = torch.randint(0, n_pitches, (n,), generator=gen)
    family = torch.randint(0, len(FAMILIES), (n,), generator=gen)
    ranges = torch.tensor([list(f[:-1]) for f in FAMILIES.values()], dtype=torch.float64)  # [F, 10, 2]
    draw = {name: _uniform(ranges[:, i], family, gen) for i, name in enumerate(Family._fields[:-1])}
    mallet = torch.tensor([f.mallet for f in FAMILIES.values()])[family][:, None]

    detune = DETUNE_CENTS * (2 * torch.rand(n, 1, generator=gen, dtype=torch.float64) - 1)
    f0 = 440.0 * 2 ** ((BASE_MIDI + pitch[:, None].double() + detune / 100 - 69) / 12)  # [n, 1]
    h = torch.arange(1, PARTIALS + 1, dtype=torch.float64)[None]  # [1, H]
    modes = torch.tensor(MALLET_RATIOS + (0.0,) * (PARTIALS - len(MALLET_RATIOS)), dtype=torch.float64)[None]
    ratio = torch.where(mallet, modes, h * torch.sqrt(1 + draw["inharmonic"] * h ** 2))
    freq = f0 * ratio  # [n, H]
    amp = ratio.clamp_min(1.0) ** -draw["rolloff"]
    amp = amp * torch.where((h % 2 == 0) & ~mallet, draw["even_gain"], torch.ones_like(amp))
    amp = amp / (1 + (ratio / draw["cutoff"]) ** 4)
    amp = amp * (1 + 0.3 * torch.randn(n, PARTIALS, generator=gen, dtype=torch.float64)).clamp_min(0)
    amp = amp * ((freq < 0.45 * sample_rate) & (ratio > 0))

    onset = _between(ONSET_S, n, gen)
    t = (torch.arange(samples, dtype=torch.float64)[None] / sample_rate - onset).clamp_min(0)  # [n, T]
    rate = _between(VIBRATO_HZ, n, gen)
    # phase of f0 (1 + depth sin 2π rate t), integrated
    warp = t + draw["vibrato"] * (1 - torch.cos(2 * math.pi * rate * t)) / (2 * math.pi * rate)
    phase0 = 2 * math.pi * torch.rand(n, PARTIALS, 1, generator=gen)
    # [n, H, T] in float32, each op in place: a phase error of 2e-3 rad at 0.5 s and 7 kHz is far
    # below the added noise
    partials = torch.mul((2 * math.pi * freq[:, :, None]).float(), warp[:, None].float()).add_(phase0).sin_()
    tau = draw["decay"] / (1 + draw["damping"] * (h - 1))  # [n, H]
    sustain = draw["sustain"]
    decaying = torch.mul(t[:, None].float(), (-1 / tau)[:, :, None].float()).exp_()
    envelope = torch.addcmul((amp * sustain)[:, :, None].float(), (amp * (1 - sustain))[:, :, None].float(), decaying)
    attack = (t / draw["attack"]).clamp(max=1.0) * (t > 0)
    tone = partials.mul_(envelope).sum(1).double() * attack
    rms = tone.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    breath = draw["breath"] * rms * torch.randn(n, samples, generator=gen, dtype=torch.float64)
    note = tone + breath * attack * (sustain + (1 - sustain) * torch.exp(-t / draw["decay"]))  # the first partial's
    note = note / note.abs().amax(-1, keepdim=True).clamp_min(1e-12)

    snr_db = _between(SNR_DB, n, gen)
    note_rms = note.pow(2).mean(-1, keepdim=True).sqrt()
    audio = note + note_rms * 10 ** (-snr_db / 20) * _coloured_noise(n, samples, gen)
    gain_db = _between(GAIN_DB, n, gen)
    audio = audio / audio.abs().amax(-1, keepdim=True).clamp_min(1e-12) * 10 ** (gain_db / 20)
    return audio.float(), pitch, family
