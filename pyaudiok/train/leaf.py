"""`pyaudiok train leaf`: LeafClassifier (DESIGN §4) on an embedded audio classification task, with
the fixed log-mel frontend as the baseline.

    pyaudiok train leaf --epochs 4 --out runs/leaf                 # both frontends
    pyaudiok train leaf --frontends leaf --train-size 2048
    pyaudiok train leaf --device cpu                               # --device auto|cpu|cuda

Data (generated, no download): 0.5 s clips at 16 kHz in 12 classes — chord, melody, chirp,
coloured noise, noise burst, speech-like formant sounds, music-like mixtures (pyaudiok.data.audio_synth),
pure tone, single harmonic note, tremolo tone, warble (FM) tone, click train — each with a random
gain (−20…−1 dBFS), a noise floor and a random circular shift. Per run: accuracy on a held-out set
after every epoch, a checkpoint per epoch (pyaudiok.train.checkpoint), and `results.json`.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pyaudiok.data import audio_synth
from pyaudiok.models.leaf import LeafClassifier

from .checkpoint import capture_rng_state, save_checkpoint
from .runtime import (DEVICES, add_compile_option, add_precision_option, check_options, classification_accuracy,
                      compile_model, fresh_output_dir, pick_device, precision_scope, seed_everything, usage_checked,
                      write_json)

__all__ = ["TrainConfig", "CLASSES", "audio_task", "train", "main"]

SAMPLE_RATE, CLIP = 16_000, 8_000
FRONTENDS = ("leaf", "mel")


def _tone(rng, n, sr):
    return np.sin(2 * math.pi * rng.uniform(100, 6000) * np.arange(n) / sr + rng.uniform(0, 2 * math.pi))


def _note(rng, n, sr):
    env = audio_synth.adsr(n, sr, rng.uniform(0.005, 0.05), 0.1, rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.2))
    return audio_synth.harmonic_note(rng, n, sr, rng.uniform(80, 1000)) * env


def _tremolo(rng, n, sr):
    t = np.arange(n) / sr
    return _tone(rng, n, sr) * (1 + 0.9 * np.sin(2 * math.pi * rng.uniform(4, 16) * t))


def _warble(rng, n, sr):
    t = np.arange(n) / sr
    f0, depth, rate = rng.uniform(300, 4000), rng.uniform(0.05, 0.2), rng.uniform(3, 12)
    return np.sin(2 * math.pi * np.cumsum(f0 * (1 + depth * np.sin(2 * math.pi * rate * t))) / sr)


def _clicks(rng, n, sr):
    out = np.zeros(n)
    out[rng.integers(0, 50)::int(sr / rng.uniform(5, 60))] = 1.0
    return out


CLASSES = (audio_synth.chord, audio_synth.melody, audio_synth.chirp, audio_synth.coloured_noise,
           audio_synth.noise_burst, audio_synth.speech_like, audio_synth.music_like, _tone, _note, _tremolo,
           _warble, _clicks)


def audio_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n clips [n, CLIP] (float32) and their labels, with random gain, noise floor and shift."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    clips = []
    for c in labels:
        wav = CLASSES[int(c)](rng, CLIP, SAMPLE_RATE)
        wav = wav / (np.abs(wav).max() + 1e-9) * 10 ** (rng.uniform(-20, -1) / 20)
        wav = wav + rng.normal(0, 10 ** (rng.uniform(-60, -40) / 20) * np.abs(wav).max(), CLIP)
        clips.append(np.roll(wav, rng.integers(0, CLIP)))
    return torch.tensor(np.stack(clips), dtype=torch.float32), torch.tensor(labels)


@dataclass
class TrainConfig:
    frontend: str = "leaf"
    epochs: int = 4
    batch: int = 32
    lr: float = 1e-3
    train_size: int = 1024
    test_size: int = 256
    channels: tuple = (16, 32, 64, 64, 128, 128)  # the paper's 64…512 with --channels full
    seed: int = 0
    device: str = "auto"    # "auto" (CUDA when available), "cpu" or "cuda"
    precision: str = "fp32"  # "bf16": training steps under bf16 autocast (runtime.precision_scope)
    compile: bool = False    # the model's forward (and loss) under torch.compile (runtime.compile_model)
    out_dir: str | None = None
    progress: bool = True


def check_config(cfg: TrainConfig) -> None:
    """ConfigError for an option out of its range."""
    check_options(cfg, positive=("epochs", "batch", "lr", "train_size", "test_size"))


def train(cfg: TrainConfig, data=None, log=print) -> dict:
    """Train one LeafClassifier; returns {accuracy per epoch, final accuracy, seconds, ...}."""
    from tqdm.auto import tqdm

    check_config(cfg)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    # Clips and model are made on the CPU (the same on every device), then moved.
    train_x, train_y, test_x, test_y = (t.to(device) for t in (data if data is not None else (
        *audio_task(cfg.train_size, cfg.seed), *audio_task(cfg.test_size, cfg.seed + 1_000_003))))
    model = LeafClassifier(len(CLASSES), frontend=cfg.frontend, channels=tuple(cfg.channels)).to(device)
    compile_model(model, cfg.compile)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    per_epoch, start = [], time.perf_counter()
    steps = max(1, len(train_x) // cfg.batch)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train_x), generator=gen).to(device)  # drawn by the CPU generator
        bar = tqdm(range(steps), desc=f"{cfg.frontend} epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                   leave=False)
        for step in bar:
            idx = order[step * cfg.batch:(step + 1) * cfg.batch]
            with precision_scope(device, cfg.precision):
                loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cfg.progress:  # loss.item() waits for the device: only for a bar that is shown
                bar.set_postfix(loss=f"{loss.item():.3f}")
        acc = classification_accuracy(model, test_x, test_y, batch=128)
        per_epoch.append(acc)
        if log:
            log(f"  [{cfg.frontend}] epoch {epoch + 1}: loss {loss.item():.3f}  test accuracy {acc:.3f}")
        if cfg.out_dir:
            save_checkpoint(Path(cfg.out_dir) / "checkpoints" / f"{cfg.frontend}_epoch{epoch + 1}.pt",
                            {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                             "config": asdict(cfg), "rng": capture_rng_state(), "system": "leaf"})
    return {"config": asdict(cfg), "accuracy_per_epoch": per_epoch, "accuracy": per_epoch[-1] if per_epoch else None,
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pyaudiok train leaf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frontends", default="leaf,mel", help="comma-separated: leaf, mel (default both)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch", type=int, default=TrainConfig.batch)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--train-size", type=int, default=TrainConfig.train_size)
    p.add_argument("--test-size", type=int, default=TrainConfig.test_size)
    p.add_argument("--channels", choices=("small", "full"), default="small",
                   help="'small' (16…128) or 'full' (64-128-256-256-512-512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=DEVICES, default=TrainConfig.device, help="auto: CUDA when available")
    add_precision_option(p, TrainConfig.precision)
    add_compile_option(p)
    p.add_argument("--out", default=None, help="directory for checkpoints and results.json")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    frontends = [f.strip() for f in args.frontends.split(",") if f.strip()]
    unknown = [f for f in frontends if f not in FRONTENDS]
    if unknown or not frontends:
        p.error(f"--frontends: unknown or no frontend(s) {unknown}; choose from {', '.join(FRONTENDS)}")
    usage_checked(p, check_config, TrainConfig(epochs=args.epochs, batch=args.batch, lr=args.lr,
                                               train_size=args.train_size, test_size=args.test_size))
    fresh_output_dir(args.out)
    channels = (64, 128, 256, 256, 512, 512) if args.channels == "full" else TrainConfig.channels
    data = (*audio_task(args.train_size, args.seed), *audio_task(args.test_size, args.seed + 1_000_003))
    results = {}
    for frontend in frontends:
        cfg = TrainConfig(frontend=frontend, epochs=args.epochs, batch=args.batch, lr=args.lr,
                          train_size=args.train_size, test_size=args.test_size, channels=channels, seed=args.seed,
                          device=args.device, precision=args.precision, compile=args.compile, out_dir=args.out,
                          progress=not args.no_progress)
        results[frontend] = train(cfg, data)
    for name, r in results.items():
        print(f"{name:5s} accuracy {r['accuracy']:.3f}  per epoch {[round(a, 3) for a in r['accuracy_per_epoch']]}  "
              f"({r['seconds']} s)")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out) / "results.json", results)
    return 0
