"""Multi-speaker speech generated offline, for separation and diarization (DESIGN.md §8, §9).

Speakers. A speaker identity is an integer; its voice is a pure function of (seed, identity):

- **synthetic harmonic speakers** (always available): a harmonic source at the speaker's own
  pitch (85–260 Hz, spread log-uniformly over the identities, with the speaker's intonation range
  and vibrato) shaped by vowel formants scaled by the speaker's vocal-tract length factor
  (0.82–1.2), under the speaker's spectral tilt, breathiness, speaking rate and a fixed per-speaker
  harmonic "timbre" ripple. Two identities differ in several of these at once, so they are
  distinguishable by ear and by a model.
- **synthesiser voices** (when `espeak-ng` and/or `flite` are on PATH): every (engine, voice,
  pitch variant) is one identity; utterances are sentences spoken by it, synthesised once into a
  cache directory (atomic writes, safe across processes) and trimmed of leading/trailing silence.

Identities are split: `train` and `valid` use disjoint speakers (held-out speakers for evaluation).

Sets built from them (every item a pure function of (seed, split, index)):

- `SeparationMixtures`: 2–3-speaker mixtures with their sources [N, T] and speaker identities.
  With `dynamic=True` (dynamic remixing, the training default) each index draws fresh speakers,
  utterances, offsets and gains from the utterance pool, so no two epochs see the same mixture;
  with `dynamic=False` a fixed set of `num_mixtures` mixtures is repeated.
- `Conversations`: recordings where speakers take turns, with pauses and overlaps (a negative
  gap), as (waveform, reference segments); `write_rttm` from pyaudiok.metrics writes them out.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pyaudiok.metrics.diarization import Segment

from .audio_synth import (
    MIN_SAMPLE_RATE,
    SENTENCES,
    _syllable_envelope,
    _syllables,
    coloured_noise,
    default_cache_dir,
)
from .tts import cached_synthesis

__all__ = ["Voice", "synthetic_voice", "harmonic_utterance", "SpeakerBank", "TtsVoices", "tts_speaker_counts",
           "SeparationMixtures", "Conversations", "SPLITS"]

SPLITS = {"train": 0, "valid": 1}
# (F1, F2, F3) of a few vowels for an adult male tract (Hz); a speaker's tract factor scales them.
VOWELS = np.array([(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480),
                   (570, 840, 2410), (660, 1720, 2410), (440, 1020, 2240), (490, 1350, 1690)], dtype=np.float64)


def _rng(*keys: int) -> np.random.Generator:
    if min(keys) < 0:  # numpy seed sequences take non-negative integers only
        raise ValueError(f"seeds and indices must be >= 0; got {keys}")
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


# ----------------------------------------------------------------------------------------------
# Synthetic harmonic speakers.

@dataclass(frozen=True)
class Voice:
    f0: float              # mean pitch, Hz
    f0_range: float        # relative intonation swing
    vibrato: float         # relative vibrato depth
    tract: float           # formant scale (shorter tract → higher formants)
    tilt: float            # spectral roll-off exponent of the harmonics
    breath: float          # aspiration noise level
    rate: float            # syllables per second
    timbre: tuple          # fixed per-harmonic gains (dB ripple), the speaker's colour


def synthetic_voice(seed: int, identity: int, num_identities: int = 64) -> Voice:
    """The voice of synthetic speaker `identity` (pitches spread over the identities, the rest drawn)."""
    rng = _rng(seed, 1000, identity)
    # Pitch slots interleaved so that neighbouring identities are far apart in pitch.
    slot = (identity * 0.6180339887) % 1.0
    f0 = 85 * (260 / 85) ** slot * rng.uniform(0.97, 1.03)
    return Voice(f0=float(f0), f0_range=float(rng.uniform(0.04, 0.2)), vibrato=float(rng.uniform(0, 0.02)),
                 tract=float(rng.uniform(0.82, 1.2)), tilt=float(rng.uniform(0.6, 1.6)),
                 breath=float(rng.uniform(0.002, 0.04)), rate=float(rng.uniform(3, 6.5)),
                 timbre=tuple(rng.uniform(-6, 6, 48).round(3)))


def _formant_gain(freqs: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Spectral envelope at freqs[..., K, n] of resonances formants[F, n] (Lorentzian peaks)."""
    out = np.zeros_like(freqs)
    for f, b in zip(formants, bandwidths):
        out += 1 / (1 + ((freqs - f) / b) ** 2) * (f / formants[0]) ** -0.5
    return out


def harmonic_utterance(rng: np.random.Generator, voice: Voice, n: int, sample_rate: int) -> np.ndarray:
    """n samples of continuous speech in `voice` (syllables with moving vowels, intonation, breath),
    peak-normalised, float64."""
    duration = n / sample_rate
    t = np.arange(n) / sample_rate
    edges = _syllables(rng, duration) * (5.0 / voice.rate)
    envelope = _syllable_envelope(rng, t, edges)
    # Pitch contour: declination, slow intonation, vibrato.
    f0 = voice.f0 * (1 - 0.1 * t / max(duration, 1e-9)) \
        * (1 + voice.f0_range * np.sin(2 * math.pi * rng.uniform(0.3, 1.5) * t + rng.uniform(0, 2 * math.pi))) \
        * (1 + voice.vibrato * np.sin(2 * math.pi * rng.uniform(4.5, 6.5) * t))
    phase = 2 * math.pi * np.cumsum(f0) / sample_rate
    # Vowel per syllable, formants interpolated between syllable centres.
    centres = (edges[:-1] + edges[1:]) / 2
    targets = VOWELS[rng.integers(len(VOWELS), size=len(centres))] / voice.tract
    formants = np.stack([np.interp(t, centres, targets[:, i]) for i in range(3)])          # [3, n]
    bandwidths = np.array([80.0, 110.0, 160.0])[:, None] * np.ones((1, n))
    num = int(min(48, 0.45 * sample_rate / (voice.f0 * 0.8)))
    h = np.arange(1, num + 1)[:, None]                                                      # [K, 1]
    freqs = h * f0[None]                                                                    # [K, n]
    gains = _formant_gain(freqs, formants, bandwidths) * h ** -voice.tilt \
        * 10 ** (np.array(voice.timbre[:num])[:, None] / 20) * (freqs < 0.45 * sample_rate)
    voiced = (gains * np.sin(h * phase[None])).sum(0)
    voiced /= np.max(np.abs(voiced)) + 1e-12
    wav = (voiced + voice.breath * coloured_noise(rng, n, sample_rate)) * envelope
    return wav / (np.max(np.abs(wav)) + 1e-12)


# ----------------------------------------------------------------------------------------------
# Synthesiser voices.

ESPEAK_VOICES = ("en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb+f4", "en-gb+m1", "en-us+f2", "en-us+m7")
FLITE_VOICES = ("slt", "kal", "awb", "rms")
PITCH_VARIANTS = (-0.15, 0.0, 0.15)  # relative pitch shift per voice


def _command(engine: str, binary: str, voice: str, pitch: float, text: str, out: str) -> list[str]:
    if engine == "espeak-ng":
        return [binary, "-v", voice, "-p", str(int(50 + 100 * pitch)), "-s", "160", "-w", out, text]
    return [binary, "-voice", voice, "--setf", f"int_f0_target_mean={int(110 * (1 + pitch))}", "-t", text, "-o", out]


class TtsVoices:
    """Identities (engine, voice, pitch variant) of the synthesisers found on PATH; `utterance(i, k)`
    gives identity i's sentence k as a float64 array at `sample_rate` (synthesised once, cached under
    `cache_dir/speakers/`). Empty when no synthesiser is installed or none produces audio."""

    def __init__(self, sample_rate: int, cache_dir: Path | str | None = None,
                 sentences: Sequence[str] = SENTENCES) -> None:
        self.sample_rate, self.sentences = sample_rate, tuple(sentences)
        self.directory = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "speakers"
        self.identities: list[tuple[str, str, str, float]] = []
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        for engine, voices in (("espeak-ng", ESPEAK_VOICES), ("flite", FLITE_VOICES)):
            binary = shutil.which(engine)
            if binary is not None:
                self.identities += [(engine, binary, v, p) for v in voices for p in PITCH_VARIANTS]
        if self.identities and not len(self.utterance(0, 0)):  # a synthesiser that produces nothing: unusable
            self.identities = []

    def __len__(self) -> int:
        return len(self.identities)

    def split_identities(self, split: str) -> list[int]:
        """The identities of `split`: every fourth voice (with all its pitch variants) is held out
        for validation, the rest train."""
        per_voice = len(PITCH_VARIANTS)
        return [i for i in range(len(self)) if ((i // per_voice) % 4 == 3) == (split == "valid")]

    def utterance(self, identity: int, index: int) -> np.ndarray:
        """Sentence `index` (modulo their number) spoken by `identity`; empty if synthesis failed."""
        key = (identity, index % len(self.sentences))
        if key not in self._cache:
            wav = self._speak(identity, self.sentences[key[1]])
            self._cache[key] = wav if wav is not None else np.zeros(0)
        return self._cache[key]

    def _speak(self, identity: int, text: str) -> np.ndarray | None:
        engine, binary, voice, pitch = self.identities[identity]
        path = cached_synthesis(self.directory, f"{engine}|{voice}|{pitch}|{text}",
                                lambda out: _command(engine, binary, voice, pitch, text, out))
        if path is None:
            return None
        from pyaudiok.codec.audio import load_audio
        try:
            wav, _ = load_audio(path, self.sample_rate)
        except ValueError:
            return None
        return _trim(wav[0].double().numpy())


def tts_speaker_counts(sample_rate: int, cache_dir: Path | str | None = None) -> dict[str, int]:
    """How many synthesiser speakers each split (SPLITS) has on this machine: all 0 when neither
    espeak-ng nor flite is installed or they produce no audio."""
    voices = TtsVoices(sample_rate, cache_dir)
    return {split: len(voices.split_identities(split)) for split in SPLITS}


def _trim(wav: np.ndarray, threshold_db: float = -40.0) -> np.ndarray:
    """Cut leading and trailing samples quieter than threshold_db below the peak."""
    loud = np.flatnonzero(np.abs(wav) > np.max(np.abs(wav), initial=0) * 10 ** (threshold_db / 20))
    return wav[loud[0]:loud[-1] + 1] if len(loud) else wav[:0]


# ----------------------------------------------------------------------------------------------
# The speaker bank: identities per split and their utterances.

class SpeakerBank:
    """Speakers of one split and a finite pool of utterances per speaker.

    `source="auto"` uses synthesiser voices when the installed ones give the split num_speakers
    speakers, else synthetic speakers; "synthetic" forces those, "tts" the voices (a ValueError when
    they are too few). Speakers are numbered 0..len−1 within the split; `identity(s)`
    is the global identity (train and valid never share one)."""

    def __init__(self, sample_rate: int = 8_000, split: str = "train", seed: int = 0, num_speakers: int = 16,
                 utterances_per_speaker: int = 8, utterance_seconds: tuple = (1.0, 2.5), source: str = "auto",
                 cache_dir: Path | str | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}; got {split!r}")
        if source not in ("auto", "synthetic", "tts"):
            raise ValueError(f"source must be 'auto', 'synthetic' or 'tts'; got {source!r}")
        if num_speakers < 1 or utterances_per_speaker < 1:
            raise ValueError(f"num_speakers and utterances_per_speaker must be >= 1; got {num_speakers}, "
                             f"{utterances_per_speaker}")
        if not sample_rate >= MIN_SAMPLE_RATE:
            raise ValueError(f"sample_rate must be >= {MIN_SAMPLE_RATE} Hz; got {sample_rate}")
        if not (isinstance(utterance_seconds, (tuple, list)) and len(utterance_seconds) == 2 and
                1 <= utterance_seconds[0] * sample_rate and utterance_seconds[0] <= utterance_seconds[1] < math.inf):
            raise ValueError(f"utterance_seconds must be (low, high) with 1 / sample_rate <= low <= high; got "
                             f"{utterance_seconds!r}")
        self.sample_rate, self.split, self.seed = int(sample_rate), split, int(seed)
        self.utterances_per_speaker, self.utterance_seconds = int(utterances_per_speaker), utterance_seconds
        self.tts = TtsVoices(sample_rate, cache_dir) if source != "synthetic" else None
        if source == "tts" and not self.tts:
            raise ValueError("source='tts' asked, but neither espeak-ng nor flite is on PATH (or they produce no audio)")
        voices = self.tts.split_identities(split) if self.tts else []
        if len(voices) < num_speakers:  # a bank always holds num_speakers speakers
            if source == "tts":
                raise ValueError(f"source='tts': the installed synthesisers give {len(voices)} {split} speakers; "
                                 f"num_speakers is {num_speakers}")
            self.tts = None  # auto: synthetic speakers, any number
        self.kind = "tts" if self.tts else "synthetic"
        if self.kind == "tts":
            self.identities = voices[:num_speakers]
        else:
            self.identities = [2 * s + SPLITS[split] for s in range(num_speakers)]
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.identities)

    def _check_speaker(self, speaker) -> int:
        # A negative index would silently pick a speaker from the end.
        if isinstance(speaker, bool) or not isinstance(speaker, (int, np.integer)):
            raise TypeError(f"speaker must be an int; got {type(speaker).__name__}")
        if not 0 <= speaker < len(self):
            raise ValueError(f"speaker {speaker} is out of range: this bank's speakers are 0..{len(self) - 1}")
        return int(speaker)

    def identity(self, speaker: int) -> int:
        return self.identities[self._check_speaker(speaker)]

    def utterance(self, speaker: int, index: int) -> np.ndarray:
        """Utterance `index` (taken modulo the pool size) of speaker `speaker`, float64, peak 1."""
        speaker = self._check_speaker(speaker)
        index %= self.utterances_per_speaker
        key = (speaker, index)
        if key not in self._cache:
            identity = self.identities[speaker]
            if self.kind == "tts":
                wav = self.tts.utterance(identity, index)
                if not len(wav):
                    raise RuntimeError(f"{self.tts.identities[identity][0]} produced no audio for utterance {index}")
            else:
                rng = _rng(self.seed, 2000, identity, index)
                n = int(rng.uniform(*self.utterance_seconds) * self.sample_rate)
                wav = harmonic_utterance(rng, synthetic_voice(self.seed, identity), n, self.sample_rate)
            self._cache[key] = wav / (np.max(np.abs(wav)) + 1e-12)
        return self._cache[key]


def _counts(name: str, value) -> tuple[int, ...]:
    """An int or a sequence of ints as a tuple; a TypeError for anything else (True is not 1 speaker)."""
    counts = (value,) if isinstance(value, (int, np.integer)) else value
    if not (isinstance(counts, (tuple, list)) and
            all(isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) for n in counts)):
        raise TypeError(f"{name} must be an int or a tuple of ints; got {value!r}")
    return tuple(int(n) for n in counts)


# ----------------------------------------------------------------------------------------------
# Separation mixtures.

class SeparationMixtures:
    """`item(i)` → (mixture[T], sources[N, T], speakers[N]) float32 / int64, with N drawn from
    `num_sources` (an int or a tuple of allowed counts; a batch uses one N: see `batch`).

    Each source is an utterance of a distinct speaker, placed at a random offset (cropped or
    zero-padded to T), at a random level within ±`gain_db` of the others; the mixture is their sum
    scaled to a peak of 0.9. `speakers` are indices into `bank` (training speaker labels)."""

    def __init__(self, bank: SpeakerBank, num_sources: int | tuple = 2, segment_seconds: float = 1.0,
                 dynamic: bool = True, num_mixtures: int = 256, gain_db: float = 5.0, seed: int = 0) -> None:
        counts = _counts("num_sources", num_sources)
        if not counts or min(counts) < 1 or max(counts) > len(bank):
            raise ValueError(f"num_sources must lie in [1, {len(bank)}] (the bank's speakers); got {num_sources!r}")
        self.bank, self.counts, self.dynamic = bank, counts, bool(dynamic)
        if not (math.isfinite(segment_seconds) and round(segment_seconds * bank.sample_rate) >= 1):
            raise ValueError(f"segment_seconds = {segment_seconds} gives no samples")
        self.num_samples = int(round(segment_seconds * bank.sample_rate))
        if not gain_db >= 0:
            raise ValueError(f"gain_db must be >= 0 (levels are drawn from ±gain_db); got {gain_db}")
        if not dynamic and num_mixtures < 1:
            raise ValueError(f"num_mixtures must be >= 1 with dynamic=False; got {num_mixtures}")
        self.num_mixtures, self.gain_db, self.seed = int(num_mixtures), float(gain_db), int(seed)

    def _rng(self, index: int) -> np.random.Generator:
        if not self.dynamic:
            index %= self.num_mixtures
        return _rng(self.seed, 3000 + SPLITS[self.bank.split], int(self.dynamic), index)

    def num_sources(self, index: int) -> int:
        return int(self.counts[self._rng(index).integers(len(self.counts))])

    def item(self, index: int, num_sources: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = self._rng(index)
        n_src = int(self.counts[rng.integers(len(self.counts))]) if num_sources is None else int(num_sources)
        if not 1 <= n_src <= len(self.bank):
            raise ValueError(f"num_sources must lie in [1, {len(self.bank)}] (the bank's speakers); got {n_src}")
        speakers = rng.choice(len(self.bank), n_src, replace=False)
        T = self.num_samples
        sources = np.zeros((n_src, T))
        for j, spk in enumerate(speakers):
            wav = self.bank.utterance(int(spk), int(rng.integers(1 << 30)))
            if len(wav) >= T:
                start = rng.integers(0, len(wav) - T + 1)
                sources[j] = wav[start:start + T]
            else:
                start = rng.integers(0, T - len(wav) + 1)
                sources[j, start:start + len(wav)] = wav
            rms = np.sqrt(np.mean(sources[j] ** 2)) + 1e-8
            sources[j] *= 10 ** (rng.uniform(-self.gain_db, self.gain_db) / 20) / rms * 0.1
        mixture = sources.sum(0)
        scale = 0.9 / (np.max(np.abs(mixture)) + 1e-8)
        return (torch.from_numpy((mixture * scale).astype(np.float32)),
                torch.from_numpy((sources * scale).astype(np.float32)), torch.from_numpy(speakers.astype(np.int64)))

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Items stacked: mixture[B, T], sources[B, N, T], speakers[B, N]; N is the first index's count."""
        n_src = self.num_sources(indices[0]) if len(indices) else self.counts[0]
        if not len(indices):  # empty, with the shapes of a batch
            return (torch.zeros(0, self.num_samples), torch.zeros(0, n_src, self.num_samples),
                    torch.zeros(0, n_src, dtype=torch.int64))
        items = [self.item(i, n_src) for i in indices]
        return tuple(torch.stack(parts) for parts in zip(*items))


# ----------------------------------------------------------------------------------------------
# Conversations.

class Conversations:
    """`item(i)` → (waveform[T] float32, segments list[Segment]) of a `duration`-second recording
    in which `num_speakers` (an int or tuple of allowed counts) speakers of `bank` take turns.

    After each turn the next speaker (a different one) starts after a gap drawn from
    `gap_seconds`; with probability `overlap_prob` the gap is negative instead (the next turn starts
    up to `max_overlap` seconds before the current one ends), giving overlapped speech. Turns are
    whole utterances (at most `max_turn` seconds); a segment is the span of its utterance's
    non-silent samples; segments come sorted. Speakers are named "spk<bank index>"."""

    def __init__(self, bank: SpeakerBank, num_speakers: int | tuple = (2, 3), duration: float = 6.0,
                 gap_seconds: tuple = (0.1, 0.8), overlap_prob: float = 0.3, max_overlap: float = 0.8,
                 max_turn: float = 2.5, seed: int = 0) -> None:
        counts = _counts("num_speakers", num_speakers)
        if not counts or min(counts) < 1 or max(counts) > len(bank):
            raise ValueError(f"num_speakers must lie in [1, {len(bank)}]; got {num_speakers!r}")
        if not 0 <= overlap_prob <= 1:
            raise ValueError(f"overlap_prob must lie in [0, 1]; got {overlap_prob}")
        if not (duration * bank.sample_rate >= 1 and duration < math.inf):
            raise ValueError(f"duration must be positive and finite (seconds); got {duration}")
        if not (isinstance(gap_seconds, (tuple, list)) and len(gap_seconds) == 2
                and 0 <= gap_seconds[0] <= gap_seconds[1] < math.inf):
            raise ValueError(f"gap_seconds must be (low, high) with 0 <= low <= high; got {gap_seconds!r}")
        if not (max_overlap >= 0.1 and max_turn > 0):
            # overlaps are drawn from [0.1, max_overlap] seconds
            raise ValueError(f"max_overlap must be >= 0.1 and max_turn > 0 (seconds); got {max_overlap}, {max_turn}")
        self.bank, self.counts, self.duration = bank, counts, float(duration)
        self.gap_seconds, self.overlap_prob, self.max_overlap = gap_seconds, float(overlap_prob), float(max_overlap)
        self.max_turn, self.seed = float(max_turn), int(seed)

    def item(self, index: int) -> tuple[torch.Tensor, list[Segment]]:
        rng = _rng(self.seed, 4000 + SPLITS[self.bank.split], index)
        sr = self.bank.sample_rate
        T = int(round(self.duration * sr))
        speakers = rng.choice(len(self.bank), int(self.counts[rng.integers(len(self.counts))]), replace=False)
        levels = 10 ** (rng.uniform(-4, 4, len(speakers)) / 20)
        wav, segments = np.zeros(T), []
        free_at = np.zeros(len(speakers))  # a speaker's next turn starts after its previous one ends
        current, cursor = int(rng.integers(len(speakers))), float(rng.uniform(0, 0.5))
        while cursor < self.duration - 0.2:
            cursor = max(cursor, free_at[current] + 0.05)
            if cursor >= self.duration - 0.2:
                break
            utt = self.bank.utterance(int(speakers[current]), int(rng.integers(1 << 30)))
            utt = utt[:int(self.max_turn * sr)]
            start = int(round(cursor * sr))
            piece = utt[:T - start]
            wav[start:start + len(piece)] += piece * levels[current] * 0.3
            loud = np.flatnonzero(np.abs(piece) > 1e-3)
            if len(loud):
                segments.append(Segment(float(start + loud[0]) / sr, float(start + loud[-1] + 1) / sr, f"spk{speakers[current]}"))
            end = (start + len(piece)) / sr
            free_at[current] = end
            if len(speakers) > 1 and rng.random() < self.overlap_prob:
                cursor = max(cursor + 0.1, end - rng.uniform(0.1, self.max_overlap))
            else:
                cursor = end + rng.uniform(*self.gap_seconds)
            if len(speakers) > 1:
                current = int((current + rng.integers(1, len(speakers))) % len(speakers))
        wav = wav + coloured_noise(rng, T, sr) * 10 ** (rng.uniform(-60, -45) / 20)
        return torch.from_numpy(wav.astype(np.float32)), sorted(segments)
