"""`pyaudiok train cola`: COLA self-supervised pre-training (DESIGN §6) on embedded unlabeled audio,
then a linear probe on an embedded labeled task, against the same probe on a randomly
initialised encoder.

    pyaudiok train cola --steps 300 --out runs/cola

Pre-training data (generated, no download): clips of pyaudiok.data.audio_synth.SyntheticAudio
(speech-like and music-like), or with `--pretrain-data mixed` clips of all seven probe classes
drawn apart from the probe's clips, their labels unused. Each step draws a batch of clips,
L2-normalises each, and takes two random crops of `crop_seconds` (they may overlap): the anchor and
the positive (+ Gaussian noise, σ = 0.001). Loss: the fused bilinear contrastive loss over the batch.

Probe: 7 synthetic sound classes (the generators chord, melody, chirp, coloured noise, noise burst,
speech-like, music-like), clips of `probe_chunks` non-overlapping crops; a logistic-regression
layer on the frozen max-pooled encoder features of each chunk, the logits averaged over the chunks
of a test clip. Written to `out`: `results.json` and the pre-trained checkpoint.
`--device auto|cpu|cuda` (auto: CUDA when available) runs the encoders; clips are drawn on the CPU.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pyaudiok.data import audio_synth
from pyaudiok.models.cola import COLA, COLAConfig
from pyaudiok.models.cola.model import ENCODERS, FRONTENDS

from .checkpoint import save_checkpoint
from .runtime import (DEVICES, ConfigError, add_compile_option, add_precision_option, check_options, checked_config,
                      compile_model, fresh_output_dir, pick_device, precision_scope, usage_checked, write_json)

__all__ = ["TrainConfig", "pretrain", "calibrate_batchnorm", "probe", "labeled_set", "main"]

PROBE_CLASSES = (audio_synth.chord, audio_synth.melody, audio_synth.chirp, audio_synth.coloured_noise,
                 audio_synth.noise_burst, audio_synth.speech_like, audio_synth.music_like)
SAMPLE_RATE = 16_000
PRETRAIN_DATA = ("speech-music", "mixed")


@dataclass
class TrainConfig:
    steps: int = 300
    batch: int = 32
    lr: float = 1e-3
    crop_seconds: float = 1.0      # DESIGN §6: 1 s crops
    clip_seconds: float = 1.5      # pre-training clips the crops are taken from
    pool: int = 1024               # distinct unlabeled clips, generated once
    pretrain_data: str = "speech-music"  # or "mixed": see pretraining_pool
    frontend: str = "logmel"
    encoder: str = "conv"
    widths: tuple = (16, 32, 64, 128)
    embedding_dim: int = 512
    symmetric: bool = False
    probe_train: int = 700
    probe_test: int = 700
    probe_chunks: int = 2
    probe_steps: int = 300
    seed: int = 0
    device: str = "auto"           # "auto": CUDA when available
    precision: str = "fp32"        # "bf16": training steps under bf16 autocast (runtime.precision_scope)
    compile: bool = False          # the model's forward (and loss) under torch.compile (runtime.compile_model)
    out_dir: str | None = None


def check_config(cfg: TrainConfig) -> COLAConfig:
    """The model's config of `cfg`; ConfigError for an option out of its range."""
    check_options(cfg, positive=("steps", "batch", "lr", "crop_seconds", "clip_seconds", "pool", "embedding_dim",
                                 "probe_train", "probe_test", "probe_chunks"), non_negative=("probe_steps",))
    if cfg.clip_seconds < cfg.crop_seconds:
        raise ConfigError("--clip-seconds must be at least --crop-seconds")
    return checked_config(lambda: COLAConfig(frontend=cfg.frontend, encoder=cfg.encoder, widths=tuple(cfg.widths),
                                             embedding_dim=cfg.embedding_dim, symmetric=cfg.symmetric))


def _crop(wav: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """One random crop of n samples per row of wav [B, T]."""
    starts = torch.randint(0, wav.shape[1] - n + 1, (wav.shape[0],), generator=gen)
    index = starts[:, None] + torch.arange(n)
    return wav.gather(1, index)


def pretraining_pool(cfg: TrainConfig) -> torch.Tensor:
    """The unlabeled clips [pool, samples]: "speech-music" draws SyntheticAudio's speech-like and
    music-like clips; "mixed" draws clips of all the probe's sound classes, from a seed of their own
    (no clip is a probe clip) and with their labels thrown away, as self-supervised pre-training
    on audio of the kind the downstream task holds."""
    if cfg.pretrain_data == "mixed":
        return labeled_set(cfg.pool, 1, cfg.clip_seconds, cfg.seed + 2)[0][:, 0]
    data = audio_synth.SyntheticAudio(SAMPLE_RATE, cfg.clip_seconds, seed=cfg.seed, real_speech=False)
    return data.batch(range(cfg.pool))[:, 0]


def _normalised_pool(cfg: TrainConfig) -> torch.Tensor:
    clips = pretraining_pool(cfg)
    return clips / clips.norm(dim=1, keepdim=True).clamp(min=1e-12)  # L2-normalised clips


def pretrain(cfg: TrainConfig, model: COLA, log=print, clips: torch.Tensor | None = None) -> list[float]:
    """COLA pre-training of `model` in place (on the device its parameters are on) on `clips` (default:
    the normalised pretraining_pool); returns the per-step losses."""
    device = model.similarity.device
    clips = _normalised_pool(cfg) if clips is None else clips
    n = int(round(cfg.crop_seconds * SAMPLE_RATE))
    # Adam moves every entry of W by ~lr per step, which moves a logit gᵀWg' by up to ~lr·d² (d =
    # embedding_dim, |g_i| ≲ 1): W gets lr / d so the logits move by O(lr·d), like the other layers'.
    others = [p for name, p in model.named_parameters() if name != "similarity"]
    opt = torch.optim.Adam([{"params": others, "lr": cfg.lr},
                            {"params": [model.similarity], "lr": cfg.lr / cfg.embedding_dim}])
    gen = torch.Generator().manual_seed(cfg.seed)  # CPU: crops and noise are drawn there, on any device
    losses = []
    model.train()
    for step in range(cfg.steps):
        wav = clips[torch.randint(0, len(clips), (cfg.batch,), generator=gen)]
        anchors = _crop(wav, n, gen)
        positives = _crop(wav, n, gen) + 0.001 * torch.randn(wav.shape[0], n, generator=gen)
        with precision_scope(device, cfg.precision):
            loss = model(anchors.to(device), positives.to(device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())  # read to the host only when logged: no wait per step on a GPU
        if log and (step % max(cfg.steps // 10, 1) == 0 or step == cfg.steps - 1):
            log(f"  step {step:4d}  contrastive loss {torch.stack(losses[-20:]).mean():.3f}  "
                f"(chance {np.log(cfg.batch):.3f})")
    return torch.stack(losses).tolist() if losses else []


@torch.no_grad()
def calibrate_batchnorm(model: COLA, cfg: TrainConfig, clips: torch.Tensor, batches: int = 8) -> None:
    """BatchNorm statistics for an encoder that is never trained (the random baseline): reset, then
    averaged over `batches` batches of pre-training crops in train mode, without gradients; the
    weights stay as initialised. At initialisation the statistics are mean 0, variance 1, and in
    eval mode a deep encoder's features can collapse (EfficientNet-B0 on LEAF: ~1e-13, the probe at
    chance), so the baseline would measure the missing statistics, not the random features."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    n = int(round(cfg.crop_seconds * SAMPLE_RATE))
    device = model.similarity.device
    model.train()
    for _ in range(batches if norms else 0):
        wav = clips[torch.randint(0, len(clips), (cfg.batch,), generator=gen)]
        model.embed(_crop(wav, n, gen).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def labeled_set(n: int, chunks: int, seconds: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n clips [n, chunks, samples] of the probe classes (peak-normalised, random gain, faint noise)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(PROBE_CLASSES), n)
    T = int(round(seconds * SAMPLE_RATE))
    clips = []
    for c in labels:
        wav = PROBE_CLASSES[int(c)](rng, T * chunks, SAMPLE_RATE)
        wav = wav / (np.abs(wav).max() + 1e-9) * 10 ** (rng.uniform(-20, -1) / 20)
        clips.append(wav + rng.normal(0, 1e-4, wav.shape))
    wav = torch.tensor(np.stack(clips), dtype=torch.float32).view(n, chunks, T)
    return wav / wav.norm(dim=2, keepdim=True).clamp(min=1e-12), torch.tensor(labels)


@torch.no_grad()
def _features(model: COLA, wav: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Frozen encoder features of every chunk: [n, chunks, F], computed on the model's device and
    returned on the CPU, where the probe trains."""
    model.eval()
    device = model.similarity.device
    flat = wav.reshape(-1, wav.shape[-1])
    feats = torch.cat([model.embed(flat[i:i + batch].to(device)).cpu() for i in range(0, len(flat), batch)])
    return feats.view(wav.shape[0], wav.shape[1], -1)


def probe(model: COLA, train_set, test_set, steps: int = 300, seed: int = 0) -> dict:
    """Linear classifier on the frozen features (per chunk); test logits averaged over chunks."""
    (xtr, ytr), (xte, yte) = train_set, test_set
    ftr, fte = _features(model, xtr), _features(model, xte)
    mean, std = ftr.mean((0, 1)), ftr.std((0, 1)).clamp(min=1e-6)
    ftr, fte = (ftr - mean) / std, (fte - mean) / std
    torch.manual_seed(seed)
    classes = int(max(ytr.max(), yte.max())) + 1
    linear = nn.Linear(ftr.shape[-1], classes)
    opt = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-4)
    targets = ytr[:, None].expand(-1, ftr.shape[1]).reshape(-1)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(linear(ftr.reshape(-1, ftr.shape[-1])), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        train_acc = (linear(ftr).mean(1).argmax(1) == ytr).float().mean().item()
        test_acc = (linear(fte).mean(1).argmax(1) == yte).float().mean().item()
    return {"probe_train_accuracy": round(train_acc, 4), "probe_test_accuracy": round(test_acc, 4)}


def run(cfg: TrainConfig, log=print) -> dict:
    """Pre-train COLA, then probe it and a randomly initialised copy of the same architecture."""
    mcfg = check_config(cfg)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = COLA(mcfg).to(device)
    random_encoder = COLA(mcfg).to(device)
    random_encoder.load_state_dict(model.state_dict())  # the same initialisation, never trained
    compile_model(model, cfg.compile)
    train_set = labeled_set(cfg.probe_train, cfg.probe_chunks, cfg.crop_seconds, cfg.seed + 1)
    test_set = labeled_set(cfg.probe_test, cfg.probe_chunks, cfg.crop_seconds, cfg.seed + 1_000_003)
    clips = _normalised_pool(cfg)
    start = time.perf_counter()
    losses = pretrain(cfg, model, log, clips)
    seconds = time.perf_counter() - start
    calibrate_batchnorm(random_encoder, cfg, clips)
    result = {"config": asdict(cfg), "pretrain_seconds": round(seconds, 1),
              "first_loss": round(float(np.mean(losses[:10])), 4), "last_loss": round(float(np.mean(losses[-10:])), 4),
              "cola": probe(model, train_set, test_set, cfg.probe_steps, cfg.seed),
              "random_encoder": probe(random_encoder, train_set, test_set, cfg.probe_steps, cfg.seed)}
    if cfg.out_dir:
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.cpu() for k, v in model.state_dict().items()}  # loads on a machine without CUDA
        save_checkpoint(out / "cola.pt", {"system": "cola", "model": weights, "config": asdict(mcfg), "result": result})
        write_json(out / "results.json", result)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pyaudiok train cola", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    for name in ("steps", "batch", "pool", "embedding_dim", "probe_train", "probe_test", "probe_chunks",
                 "probe_steps", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "crop_seconds", "clip_seconds"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--widths", default=",".join(map(str, d.widths)), help="conv encoder stage widths")
    p.add_argument("--symmetric", action="store_true", help="symmetric (both directions) contrastive loss")
    p.add_argument("--pretrain-data", choices=PRETRAIN_DATA, default=d.pretrain_data,
                   help="unlabeled clips: speech- and music-like, or all the probe's sound classes (labels unused)")
    p.add_argument("--frontend", choices=FRONTENDS, default=d.frontend, help="log-mel or LEAF")
    p.add_argument("--encoder", choices=ENCODERS, default=d.encoder, help="the conv stages or EfficientNet-B0")
    p.add_argument("--device", choices=DEVICES, default=d.device, help="auto: CUDA when available")
    add_precision_option(p, d.precision)
    add_compile_option(p)
    p.add_argument("--out", default=None, help="directory for results.json and the checkpoint")
    args = p.parse_args(argv)
    kwargs = {k: getattr(args, k) for k in ("steps", "batch", "pool", "embedding_dim", "probe_train", "probe_test",
                                            "probe_chunks", "probe_steps", "seed", "lr", "crop_seconds",
                                            "clip_seconds", "symmetric", "frontend", "encoder", "pretrain_data",
                                            "device", "precision", "compile")}
    try:
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError:
        p.error(f"--widths must be comma-separated integers; got {args.widths!r}")
    cfg = usage_checked(p, check_config, TrainConfig(widths=widths, out_dir=args.out, **kwargs))
    fresh_output_dir(cfg.out_dir)
    result = run(cfg)
    print(f"linear probe test accuracy: COLA {result['cola']['probe_test_accuracy']:.3f}  "
          f"random encoder {result['random_encoder']['probe_test_accuracy']:.3f}  "
          f"(contrastive loss {result['first_loss']:.3f} -> {result['last_loss']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
