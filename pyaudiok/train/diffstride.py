"""`pyaudiok train diffstride`: ResNet-18 with learnable strides (DESIGN §3) on embedded data,
against its baselines.

    pyaudiok train diffstride --task image --steps 100 --out runs/ds        # all four runs
    pyaudiok train diffstride --task audio --runs diffstride,poor_init
    pyaudiok train diffstride --device cpu                                  # --device auto|cpu|cuda

Runs (the same data, seed, model width and steps for each):
  conv        strided 3×3 convolutions at the nominal strides (1, 1, 2, 2, 2)
  spectral    fixed spectral pooling at the nominal strides
  diffstride  DiffStride, strides initialised at the nominal strides
  poor_init   DiffStride from a poor initialisation (1, 1, 3, 2, 3), to show the strides move

Data (generated, no download): `image` — 32×32 RGB shapes and textures in 10 classes (disk,
square, triangle, cross, ring, horizontal / vertical / diagonal stripes, checkerboard, blobs) at
random positions, sizes, colours and frequencies, with noise; `audio` — 0.5 s clips at 16 kHz of
7 synthetic sound classes (pyaudiok.data.audio_synth: chord, melody, chirp, coloured noise, noise
burst, speech-like, music-like) as 40-band log-mel frames for the 1-D model.

Loss: cross-entropy + λ · diffstride_penalty(model); strides are clamped to ≥ 1 after every step
and have their own learning rate. Written to `out`: `results.json` (accuracy, learned strides,
feature-map size before the head, penalty, seconds, per run) and one checkpoint per run.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pyaudiok.data import audio_synth
from pyaudiok.models.diffstride import resnet18_diffstride
from pyaudiok.nn.mel import mel_filterbank
from pyaudiok.nn.diffstride import clamp_strides_, diffstride_penalty, learned_strides

from .checkpoint import save_checkpoint
from .runtime import (DEVICES, add_compile_option, add_precision_option, check_options, classification_accuracy,
                      compile_model, fresh_output_dir, pick_device, precision_scope, usage_checked, write_json)

__all__ = ["TrainConfig", "train", "compare", "main", "image_set", "audio_set", "RUNS"]

NOMINAL = (1.0, 1.0, 2.0, 2.0, 2.0)
POOR = (1.0, 1.0, 3.0, 2.0, 3.0)
RUNS = {"conv": ("conv", NOMINAL), "spectral": ("spectral", NOMINAL), "diffstride": ("diffstride", NOMINAL),
        "poor_init": ("diffstride", POOR)}


@dataclass
class TrainConfig:
    task: str = "image"            # "image" or "audio"
    pooling: str = "diffstride"    # "diffstride", "spectral" or "conv"
    strides: tuple = NOMINAL
    steps: int = 100
    batch: int = 32
    width: int = 8
    lr: float = 2e-3
    stride_lr: float = 2e-2
    penalty: float = 0.05          # λ of the complexity regulariser
    train_size: int = 1024
    test_size: int = 256
    seed: int = 0
    device: str = "auto"           # "auto" (CUDA when available), "cpu" or "cuda"
    precision: str = "fp32"        # "bf16": training steps under bf16 autocast (runtime.precision_scope)
    compile: bool = False          # the model's forward (and loss) under torch.compile (runtime.compile_model)
    out_dir: str | None = None


# ----------------------------------------------------------------------------------------------
# Embedded data.

def _shape_image(rng: np.random.Generator, label: int, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(10, size - 10, 2)
    r = rng.uniform(5, 10)
    dy, dx = yy - cy, xx - cx
    theta = rng.uniform(0, np.pi)
    freq = rng.uniform(0.15, 0.35)  # cycles per pixel for the textures
    if label == 0:
        mask = dy ** 2 + dx ** 2 <= r ** 2
    elif label == 1:
        mask = (abs(dy) <= r * 0.8) & (abs(dx) <= r * 0.8)
    elif label == 2:
        mask = (dy <= r * 0.7) & (dy >= -r) & (abs(dx) <= (dy + r) * 0.6)
    elif label == 3:
        mask = ((abs(dy) <= r) & (abs(dx) <= r / 4)) | ((abs(dx) <= r) & (abs(dy) <= r / 4))
    elif label == 4:
        d = np.sqrt(dy ** 2 + dx ** 2)
        mask = (d <= r) & (d >= r * 0.6)
    elif label == 5:
        mask = np.sin(2 * np.pi * freq * yy + theta) > 0
    elif label == 6:
        mask = np.sin(2 * np.pi * freq * xx + theta) > 0
    elif label == 7:
        mask = np.sin(2 * np.pi * freq * (xx + yy) / np.sqrt(2) + theta) > 0
    elif label == 8:
        mask = (np.sin(2 * np.pi * freq * xx) > 0) ^ (np.sin(2 * np.pi * freq * yy) > 0)
    else:
        centres = rng.uniform(0, size, (4, 2))
        field = sum(np.exp(-((yy - a) ** 2 + (xx - b) ** 2) / (2 * rng.uniform(2, 4) ** 2)) for a, b in centres)
        mask = field > 0.5
    fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    image = np.where(mask[None], fg[:, None, None], bg[:, None, None])
    return image + rng.normal(0, 0.1, image.shape)


def image_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = np.stack([_shape_image(rng, int(c)) for c in labels])
    return torch.tensor(images, dtype=torch.float32), torch.tensor(labels)


AUDIO_CLASSES = (audio_synth.chord, audio_synth.melody, audio_synth.chirp, audio_synth.coloured_noise,
                 audio_synth.noise_burst, audio_synth.speech_like, audio_synth.music_like)
SAMPLE_RATE, CLIP, N_FFT, HOP, N_MELS = 16000, 8000, 512, 128, 40


def audio_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel frames [n, 40, 63] of 0.5 s clips and their class (which generator made them)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(AUDIO_CLASSES), n)
    clips = []
    for c in labels:
        wav = AUDIO_CLASSES[int(c)](rng, CLIP, SAMPLE_RATE)
        wav = wav / (np.abs(wav).max() + 1e-9) * 10 ** (rng.uniform(-20, -1) / 20)
        clips.append(wav + rng.normal(0, 1e-3, CLIP))
    wav = torch.tensor(np.stack(clips), dtype=torch.float32)
    spec = torch.stft(wav, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True).abs() ** 2
    mel = mel_filterbank(N_FFT, N_MELS, SAMPLE_RATE) @ spec
    logmel = torch.log(mel + 1e-6)
    logmel = (logmel - logmel.mean((1, 2), keepdim=True)) / (logmel.std((1, 2), keepdim=True) + 1e-5)
    return logmel, torch.tensor(labels)


# ----------------------------------------------------------------------------------------------
# Training.

def check_config(cfg: TrainConfig) -> None:
    """ConfigError for an option out of its range."""
    check_options(cfg, positive=("steps", "batch", "width", "lr", "stride_lr", "train_size", "test_size"),
                  non_negative=("penalty",))


def _data(cfg: TrainConfig):
    make = image_set if cfg.task == "image" else audio_set
    train_x, train_y = make(cfg.train_size, cfg.seed)
    test_x, test_y = make(cfg.test_size, cfg.seed + 1_000_003)
    return train_x, train_y, test_x, test_y


def _model(cfg: TrainConfig, in_channels: int, classes: int) -> nn.Module:
    dims = 2 if cfg.task == "image" else 1
    return resnet18_diffstride(classes, tuple(cfg.strides), in_channels=in_channels, dims=dims,
                               pooling=cfg.pooling, width=cfg.width)


def _feature_size(model: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """The map size the head sees, from one example in eval mode (in train mode the pass would move
    the BatchNorm running statistics of the model about to be saved)."""
    seen = []
    hook = model.head.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[2:])))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(x[:1])
    model.train(was_training)
    hook.remove()
    return seen[0]


def train(cfg: TrainConfig, data=None, log=print) -> dict:
    """Train one model; returns {accuracy, strides (initial and learned), feature_size, ...}."""
    check_config(cfg)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    # Data and model are made on the CPU (the same on every device), then moved.
    train_x, train_y, test_x, test_y = (t.to(device) for t in (data if data is not None else _data(cfg)))
    classes = int(max(train_y.max(), test_y.max())) + 1
    model = compile_model(_model(cfg, train_x.shape[1], classes).to(device), cfg.compile)
    strides = [p for n, p in model.named_parameters() if n.endswith("strides")]
    others = [p for n, p in model.named_parameters() if not n.endswith("strides")]
    groups = [{"params": others, "lr": cfg.lr}] + ([{"params": strides, "lr": cfg.stride_lr}] if strides else [])
    opt = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, [cfg.lr] + ([cfg.stride_lr] if strides else []),
                                                   total_steps=cfg.steps, pct_start=0.15)
    initial = learned_strides(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(train_x), (cfg.batch,), generator=gen).to(device)  # drawn by the CPU generator
        with precision_scope(device, cfg.precision):
            loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
            penalty = diffstride_penalty(model)
        (loss + cfg.penalty * penalty).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        schedule.step()
        clamp_strides_(model)
        if log and (step % max(cfg.steps // 5, 1) == 0 or step == cfg.steps - 1):
            log(f"  [{cfg.pooling} {tuple(cfg.strides)}] step {step:4d}  loss {loss.item():.3f}  "
                f"penalty {penalty.item():.3f}  strides {learned_strides(model)}")
    seconds = time.perf_counter() - start
    result = {"config": asdict(cfg), "accuracy": classification_accuracy(model, test_x, test_y),
              "train_accuracy": classification_accuracy(model, train_x[:cfg.test_size],
                                                        train_y[:cfg.test_size]),
              "initial_strides": initial, "learned_strides": learned_strides(model),
              "feature_size": _feature_size(model, test_x), "penalty": float(diffstride_penalty(model).detach()),
              "seconds": round(seconds, 1), "steps_per_second": round(cfg.steps / seconds, 2)}
    if cfg.out_dir:
        name = f"{cfg.task}_{cfg.pooling}_{'-'.join(f'{s:g}' for s in cfg.strides)}.pt"
        save_checkpoint(Path(cfg.out_dir) / "checkpoints" / name, {"system": "diffstride", "model": model.state_dict(),
                                                                                "result": result})
    return result


def compare(cfg: TrainConfig, runs=tuple(RUNS), log=print) -> dict:
    """The same data and budget for each run; returns {run name: result}."""
    check_config(cfg)
    data = _data(cfg)
    results = {}
    for name in runs:
        pooling, strides = RUNS[name]
        results[name] = train(replace(cfg, pooling=pooling, strides=strides), data, log)
    if cfg.out_dir:
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", results)
    return results


def format_results(results: dict) -> str:
    lines = [f"{'run':<11} {'test acc':>8} {'train acc':>9} {'features':>9} {'s':>6}  strides initial -> learned"]
    for name, r in results.items():
        strides = "-" if not r["learned_strides"] else \
            f"{[s[0] for s in r['initial_strides']]} -> {[round(s[0], 2) for s in r['learned_strides']]}"
        lines.append(f"{name:<11} {r['accuracy']:8.3f} {r['train_accuracy']:9.3f} "
                     f"{'x'.join(map(str, r['feature_size'])):>9} {r['seconds']:6.0f}  {strides}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pyaudiok train diffstride", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    p.add_argument("--task", choices=("image", "audio"), default=defaults.task)
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    for name in ("steps", "batch", "width", "train_size", "test_size", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("lr", "stride_lr", "penalty"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    p.add_argument("--device", choices=DEVICES, default=defaults.device, help="auto: CUDA when available")
    add_precision_option(p, defaults.precision)
    add_compile_option(p)
    p.add_argument("--out", default=None, help="directory for results.json and checkpoints")
    args = p.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        p.error(f"unknown run(s) {unknown}; choose from {list(RUNS)}")
    cfg = TrainConfig(task=args.task, steps=args.steps, batch=args.batch, width=args.width, lr=args.lr,
                      stride_lr=args.stride_lr, penalty=args.penalty, train_size=args.train_size,
                      test_size=args.test_size, seed=args.seed, device=args.device, precision=args.precision,
                      compile=args.compile, out_dir=args.out)
    usage_checked(p, check_config, cfg)
    fresh_output_dir(cfg.out_dir)
    results = compare(cfg, runs)
    print(format_results(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
