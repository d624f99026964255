"""What the speaker-based trainers (DIVE, Wavesplit) share: which speakers they take, decided before
the run, their speaker banks, their common options' help and their command line.

`--source tts` takes synthesiser voices (espeak-ng / flite) and is refused when they are too few for
--train-speakers or --eval-speakers: the run would otherwise fail, or silently take fewer speakers,
once its data is built. `auto` takes them when they are enough, else synthetic speakers (always
available, any number); "synthetic" forces those.
"""
from __future__ import annotations

from typing import Callable

from pyaudiok.data import speakers

from .runtime import DEVICES, ConfigError, config_from_argv, fresh_output_dir

__all__ = ["SOURCES", "COMMON_HELP", "speaker_source", "resolved_source", "speaker_banks", "speaker_trainer_main"]

SOURCES = ("auto", "synthetic", "tts")
# Help of the options both trainers have (each adds its own).
COMMON_HELP = {
    "steps": "training steps", "sample_rate": "audio rate (Hz, >= 1000)", "channels": "model width",
    "embed_dim": "speaker embedding size", "lr": "Adam learning rate",
    "source": "speakers: synthesiser voices (tts; refused when fewer than --train-speakers/--eval-speakers), "
              "synthetic harmonic ones, or tts when there are enough (auto)",
    "seed": "seed of the data and the initialisation", "log_every": "steps per logged row"}


def _tts_shortfall(found: dict[str, int], train_speakers: int, eval_speakers: int) -> str | None:
    """Why `found` synthesiser voices per split cannot give the run its speakers, or None when they can."""
    for option, split, role, need in (("train-speakers", "train", "training", train_speakers),
                                      ("eval-speakers", "valid", "held-out", eval_speakers)):
        if found[split] < need:
            return (f"the installed synthesisers (espeak-ng, flite) give {found[split]} {role} voices; "
                    f"--{option} needs {need}")
    return None


def speaker_source(source: str, sample_rate: int, train_speakers: int, eval_speakers: int) -> tuple[str, str | None]:
    """The speakers the run uses ("tts" or "synthetic") and, when `auto` falls back to synthetic ones
    although some voices are installed, why. ConfigError for `tts` with too few voices."""
    if source not in SOURCES:
        raise ConfigError(f"--source must be one of {', '.join(SOURCES)}; got {source!r}")
    if source == "synthetic":
        return "synthetic", None
    found = speakers.tts_speaker_counts(sample_rate)
    shortfall = _tts_shortfall(found, train_speakers, eval_speakers)
    if shortfall is None:
        return "tts", None
    if source == "tts":
        raise ConfigError(f"--source tts: {shortfall} (lower it, or pass --source synthetic)")
    return "synthetic", shortfall if any(found.values()) else None


def resolved_source(cfg, log: Callable[[str], None]) -> str:
    """`speaker_source` of a trainer's config (fields source, sample_rate, train_speakers,
    eval_speakers), logging why `auto` fell back to synthetic speakers."""
    source, fallback_reason = speaker_source(cfg.source, cfg.sample_rate, cfg.train_speakers, cfg.eval_speakers)
    if fallback_reason:
        log(f"--source auto: {fallback_reason}; using synthetic speakers")
    return source


def speaker_banks(cfg, source: str) -> tuple[speakers.SpeakerBank, speakers.SpeakerBank]:
    """The training and held-out speaker banks of a trainer's config (`source`: "synthetic" or "tts",
    resolved already)."""
    common = dict(sample_rate=cfg.sample_rate, seed=cfg.seed, source=source)
    return (speakers.SpeakerBank(split="train", num_speakers=cfg.train_speakers, **common),
            speakers.SpeakerBank(split="valid", num_speakers=cfg.eval_speakers, **common))


def speaker_trainer_main(config_type, train: Callable, argv, *, prog: str, description: str, helps: dict,
                         check: Callable) -> int:
    """`pyaudiok train dive|wavesplit`: parse (usage errors exit 2), check, start a fresh output
    directory, train."""
    cfg = config_from_argv(config_type, argv, prog=prog, description=description,
                           choices={"source": SOURCES, "device": DEVICES}, check=check, helps={**COMMON_HELP, **helps})
    fresh_output_dir(cfg.out_dir)
    train(cfg)
    return 0
