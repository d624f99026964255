"""`pyaudiok train dive`: DIVE (DESIGN §8) on generated conversations.

    pyaudiok train dive --steps 2000 --out runs/dive      # --device auto|cpu|cuda

Data (pyaudiok.data.speakers, no download): `duration`-second conversations of 2–3 speakers
taking turns with pauses and overlaps, new ones every step, from `train_speakers` training
identities; evaluation on `eval_conversations` fixed conversations of *held-out* speakers.

Evaluation runs inference (score-based selection with exclusion), thresholds the activities at 0.5
and reports the segment-level DER (pyaudiok.metrics.diarization_error_rate, collar `eval_collar`
seconds total width, pyannote's convention: ±eval_collar/2 around each reference boundary).
Written to `out`: `log.csv`, `results.json`, `checkpoint.pt`.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pyaudiok.data.audio_synth import MIN_SAMPLE_RATE
from pyaudiok.data.speakers import Conversations
from pyaudiok.metrics import diarization_error_rate
from pyaudiok.metrics.diarization import segments_to_frames
from pyaudiok.models.dive import DIVE, DIVEConfig

from .runtime import (check_at_least, check_options, checked_config, compile_model, fit_steps,
                      model_from_run_checkpoint, pick_device, seed_everything, usage_checked, write_run)
from .speaker_runs import resolved_source, speaker_banks, speaker_source, speaker_trainer_main

__all__ = ["TrainConfig", "train", "evaluate", "batch", "main", "load_model", "diarize_main"]


@dataclass
class TrainConfig:
    steps: int = 2000
    batch: int = 4
    duration: float = 4.0
    sample_rate: int = 8_000
    max_speakers: int = 3
    train_speakers: int = 16
    eval_speakers: int = 6
    eval_conversations: int = 16
    channels: int = 64
    embed_dim: int = 32
    layers: int = 6
    collar: float = 0.25           # training: seconds per side excluded from the loss
    eval_collar: float = 0.5       # evaluation: total width (pyannote)
    lr: float = 1e-3
    source: str = "auto"
    seed: int = 0
    log_every: int = 50
    precision: str = "fp32"        # "bf16": training steps under bf16 autocast (runtime.precision_scope)
    compile: bool = False          # the model's forward (and loss) under torch.compile (runtime.compile_model)
    device: str = "auto"           # "auto" (CUDA when available), "cpu" or "cuda"
    out_dir: str | None = None


def check_config(cfg: TrainConfig) -> None:
    """ConfigError for an option out of its range, or one the data, the metric or the model cannot
    take (the model's own settings included)."""
    check_options(cfg, positive=("batch", "duration", "sample_rate", "train_speakers", "eval_speakers",
                                 "eval_conversations", "lr", "log_every"),
                  non_negative=("steps", "collar", "eval_collar"), finite=("duration", "collar", "eval_collar"))
    check_at_least(cfg, ("sample_rate",), MIN_SAMPLE_RATE, "the speech generator's lowest rate")
    if cfg.max_speakers >= 1:  # below, DIVEConfig names the range
        most = max(_speaker_counts(cfg.max_speakers))
        check_at_least(cfg, ("train_speakers", "eval_speakers"), most,
                       f"a conversation takes up to {most} distinct speakers with --max-speakers {cfg.max_speakers}")
    # What the conversations check themselves (a duration of no samples, ...), on synthetic speakers:
    # cheap to build, and the same rules.
    checked_config(lambda: Conversations(speaker_banks(cfg, "synthetic")[0], _speaker_counts(cfg.max_speakers),
                                         cfg.duration))
    checked_config(lambda: DIVEConfig(sample_rate=cfg.sample_rate, channels=cfg.channels, embed_dim=cfg.embed_dim,
                                      layers=cfg.layers, max_speakers=cfg.max_speakers, collar=cfg.collar))
    speaker_source(cfg.source, cfg.sample_rate, cfg.train_speakers, cfg.eval_speakers)  # last: it may run a synthesiser


def _speaker_counts(max_speakers: int) -> tuple[int, ...]:
    """How many speakers the generated conversations hold (2 or 3, as the model can tell apart)."""
    return tuple(n for n in (2, 3) if n <= max_speakers) or (1,)


def batch(conversations: Conversations, indices, max_speakers: int, frame_rate: int):
    """Waveforms [B, S], reference activity [B, max_speakers, T] (speakers in order of first turn), segments."""
    waves, refs, segs = [], [], []
    for i in indices:
        wav, segments = conversations.item(i)
        T = wav.shape[0] * frame_rate // conversations.bank.sample_rate
        names = list(dict.fromkeys(s.speaker for s in segments))
        ref = torch.zeros(max_speakers, T, dtype=torch.bool)
        ref[:len(names)] = segments_to_frames(segments, names, frame_rate, T)[:max_speakers]
        waves.append(wav), refs.append(ref), segs.append(segments)
    return torch.stack(waves), torch.stack(refs), segs


@torch.no_grad()
def evaluate(model: DIVE, conversations: Conversations, count: int, collar: float) -> dict:
    """Segment-level DER summed over `count` held-out conversations (errors / total reference speech),
    the model run on its own device."""
    device = next(model.parameters()).device
    model.eval()
    parts = {"missed": 0.0, "false_alarm": 0.0, "confusion": 0.0, "total": 0.0}
    for first in range(0, count, 4):
        x, _, refs = batch(conversations, range(first, min(count, first + 4)), model.config.max_speakers,
                           model.config.frame_rate)
        for reference, hypothesis in zip(refs, model.diarize(x.to(device))):
            r = diarization_error_rate(reference, hypothesis, collar=collar)
            for k in parts:
                parts[k] += getattr(r, k)
    model.train()
    errors = parts["missed"] + parts["false_alarm"] + parts["confusion"]
    return {"der": errors / max(parts["total"], 1e-9), **parts}


def train(cfg: TrainConfig, log=print) -> dict:
    check_config(cfg)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    train_bank, eval_bank = speaker_banks(cfg, resolved_source(cfg, log))
    counts = _speaker_counts(cfg.max_speakers)
    data = Conversations(train_bank, counts, cfg.duration, seed=cfg.seed)
    held_out = Conversations(eval_bank, counts, cfg.duration, seed=cfg.seed)
    model = DIVE(DIVEConfig(sample_rate=cfg.sample_rate, channels=cfg.channels, embed_dim=cfg.embed_dim,
                            layers=cfg.layers, max_speakers=cfg.max_speakers, collar=cfg.collar)).to(device)
    compile_model(model, cfg.compile)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    before = evaluate(model, held_out, cfg.eval_conversations, cfg.eval_collar)
    log(f"dive: {train_bank.kind} speakers ({len(train_bank)} train, {len(eval_bank)} held out), "
        f"{sum(p.numel() for p in model.parameters())} parameters on {device}; "
        f"held-out DER before training {before['der']:.3f}")

    def step_loss(step):
        # Generated on the CPU (its RNGs decide the data), then moved to the model's device.
        x, ref, _ = batch(data, range(step * cfg.batch, (step + 1) * cfg.batch), cfg.max_speakers,
                          model.config.frame_rate)
        return model.loss(x.to(device), ref.to(device))

    rows, seconds = fit_steps(
        model, opt, cfg.steps, step_loss, log_every=cfg.log_every, log=log, precision=cfg.precision,
        describe=lambda row: f"  step {row['step']:5d}  loss {row['loss']:.3f}  vad {row['vad']:.3f}  "
                             f"score {row['score']:.3f}")
    after = evaluate(model, held_out, cfg.eval_conversations, cfg.eval_collar)
    log(f"held-out ({cfg.eval_conversations} conversations of unseen speakers, collar {cfg.eval_collar} s total): "
        f"DER {after['der']:.3f} (missed {after['missed']:.1f} s, false alarm {after['false_alarm']:.1f} s, "
        f"confusion {after['confusion']:.1f} s of {after['total']:.1f} s)")
    result = {"config": asdict(cfg), "speakers": train_bank.kind, "before": before, "after": after,
              "log": rows, "seconds": round(seconds, 1)}
    if cfg.out_dir:
        write_run(cfg.out_dir, rows, result, model, asdict(model.config), system="dive")
    return result


HELP = {"batch": "conversations per step", "duration": "length of each conversation (seconds)",
        "max_speakers": "speakers the model can track (conversations hold 2 or 3, at most this)",
        "train_speakers": "training speaker identities", "eval_speakers": "held-out speaker identities for evaluation",
        "eval_conversations": "fixed held-out conversations evaluated before and after training",
        "layers": "dilated convolution blocks (dilations 1, 2, 4, ...)",
        "collar": "training: seconds per side of each boundary left out of the loss",
        "eval_collar": "evaluation: total collar width (seconds, pyannote's convention)"}


def main(argv=None) -> int:
    return speaker_trainer_main(TrainConfig, train, argv, prog="pyaudiok train dive", description=__doc__,
                                helps=HELP, check=check_config)


def load_model(checkpoint: str | Path) -> DIVE:
    """The model of a `pyaudiok train dive` checkpoint (file or output directory), in eval mode, on
    the CPU (whatever device it was trained on)."""
    return model_from_run_checkpoint(checkpoint, "dive", DIVEConfig, DIVE)[0]


def diarize_main(argv=None) -> int:
    """`pyaudiok diarize IN.wav --checkpoint CKPT > OUT.rttm`."""
    import sys
    import tempfile

    from pyaudiok.codec.audio import load_audio
    from pyaudiok.metrics import write_rttm
    p = argparse.ArgumentParser(prog="pyaudiok diarize", description="who spoke when, as RTTM on stdout")
    p.add_argument("input")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt, or the training output directory")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="a speaker is active where its activity probability exceeds this, in [0, 1] (default 0.5)")
    args = usage_checked(p, lambda a: check_options(a, probabilities=("threshold",)), p.parse_args(argv))
    model = load_model(args.checkpoint)
    wav, _ = load_audio(args.input, model.config.sample_rate)
    segments = model.diarize(wav, args.threshold)[0]
    with tempfile.TemporaryDirectory() as tmp:  # write_rttm writes files: format there, print here
        write_rttm(Path(tmp) / "out.rttm", segments, file_id=Path(args.input).stem)
        sys.stdout.write((Path(tmp) / "out.rttm").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
