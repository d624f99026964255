"""`pyaudiok train permutation`: the permutation pretext task (DESIGN §5) on generated NSynth-like
notes, then linear probes on the frozen patch encoder.

    pyaudiok train permutation --steps 600 --out runs/permutation

Notes (pyaudiok.data.notes, no download): pitch (one of `n_pitches` semitones) × instrument family
(9 families, each a range of timbres and envelopes) with random onset, level, detuning and
background noise; 0.53 s at 16 kHz, as log-mel [64, 64]. The pretext model learns to put the
shuffled patches of a 4 (frequency) × 2 (time) grid back in order (PAV soft-rank or Sinkhorn
ranking loss). Then, for the trained encoder and for a randomly initialised copy (the baseline), a
logistic-regression probe on the frozen embeddings (the patch embeddings, concatenated) is trained
for pitch and for family and scored on held-out notes. Written to `out`: `log.csv` (step, pretext
loss, order accuracy), `results.json` (both encoders' probe accuracies), `checkpoint.pt`.
`--device auto|cpu|cuda` (auto: CUDA when available) runs the encoders; notes are drawn on the CPU.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from ..data import notes
from ..models.permutation import PermutationPretext
from ..models.permutation.model import POOLINGS, RANKERS
from ..nn.mel import mel_filterbank
from .runtime import (DEVICES, check_options, compile_model, config_from_argv, fit_steps, fresh_output_dir, pick_device,
                      seed_everything, write_run)

__all__ = ["TrainConfig", "train", "main", "synth_notes", "log_mel", "linear_probe"]

SAMPLE_RATE, N_FFT, HOP, N_MELS, FRAMES = 16000, 512, 125, 64, 64
FAMILIES = len(notes.FAMILIES)


@dataclass
class TrainConfig:
    steps: int = 600
    batch: int = 32
    lr: float = 2e-3
    ranker: str = "pav"
    eps: float = 0.1
    time_patches: int = 2
    freq_patches: int = 4
    dim: int = 128
    n_pitches: int = 12
    probe_features: str = "concat"
    probe_train: int = 1024
    probe_test: int = 1024
    probe_steps: int = 300
    seed: int = 0
    log_every: int = 50
    precision: str = "fp32"        # "bf16": training steps under bf16 autocast (runtime.precision_scope)
    compile: bool = False          # the model's forward (and loss) under torch.compile (runtime.compile_model)
    device: str = "auto"            # "auto": CUDA when available
    out_dir: str | None = None


def check_config(cfg: TrainConfig) -> None:
    """ConfigError for an option out of its range."""
    check_options(cfg, positive=("batch", "lr", "eps", "time_patches", "freq_patches", "dim", "n_pitches",
                                 "probe_train", "probe_test", "log_every"), non_negative=("steps", "probe_steps"))


def synth_notes(n: int, n_pitches: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(audio[n, samples], pitch[n], family[n]): NSynth-like notes long enough for FRAMES frames."""
    return notes.synth_notes(n, n_pitches, gen, samples=FRAMES * HOP + N_FFT, sample_rate=SAMPLE_RATE)


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    """audio[n, samples] -> log-mel [n, N_MELS, FRAMES], on audio's device."""
    window = torch.hann_window(N_FFT, device=audio.device)
    spec = torch.stft(audio, N_FFT, HOP, window=window, return_complex=True).abs().square()
    mel = mel_filterbank(N_FFT, N_MELS, SAMPLE_RATE, device=audio.device) @ spec[..., :FRAMES]
    return torch.log(mel + 1e-5)


@torch.no_grad()
def _embed(model: PermutationPretext, x: torch.Tensor, pooling: str) -> torch.Tensor:
    """The frozen embeddings of x (on the model's device), on the CPU, where the probes train."""
    model.eval()
    return torch.cat([model.embed(x[i:i + 256], pooling) for i in range(0, len(x), 256)]).cpu()


def linear_probe(train_x, train_y, test_x, test_y, classes: int, steps: int) -> float:
    """Accuracy of a logistic-regression probe (standardised features, full-batch Adam)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe = torch.nn.Linear(train_x.shape[1], classes)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(probe(train_x), train_y).backward()
        opt.step()
    with torch.no_grad():
        return (probe(test_x).argmax(-1) == test_y).float().mean().item()


def probe_encoders(encoders: dict[str, PermutationPretext], cfg: TrainConfig, gen: torch.Generator,
                   device: torch.device | str = "cpu") -> dict:
    """Pitch and family probe accuracies of each frozen encoder (on `device`), on one set of
    held-out notes."""
    (tr_a, tr_p, tr_f), (te_a, te_p, te_f) = (synth_notes(n, cfg.n_pitches, gen)
                                              for n in (cfg.probe_train, cfg.probe_test))
    tr_x, te_x = log_mel(tr_a.to(device)), log_mel(te_a.to(device))
    results = {}
    for name, encoder in encoders.items():
        ftr, fte = _embed(encoder, tr_x, cfg.probe_features), _embed(encoder, te_x, cfg.probe_features)
        results[name] = {
            "pitch_accuracy": linear_probe(ftr, tr_p, fte, te_p, cfg.n_pitches, cfg.probe_steps),
            "instrument_accuracy": linear_probe(ftr, tr_f, fte, te_f, FAMILIES, cfg.probe_steps),
        }
    return results


def train(cfg: TrainConfig, log=print) -> dict:
    check_config(cfg)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # CPU: the data and the patch shuffles, on any device
    model_config = dict(n_mels=N_MELS, frames=FRAMES, time_patches=cfg.time_patches, freq_patches=cfg.freq_patches,
                        dim=cfg.dim, ranker=cfg.ranker, eps=cfg.eps)
    model = PermutationPretext(**model_config).to(device)
    baseline = copy.deepcopy(model)  # the randomly initialised encoder (on the same device)
    compile_model(model, cfg.compile)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    log(f"permutation pretext: {model.n_patches} patches ({cfg.freq_patches} frequency × {cfg.time_patches} time), "
        f"{cfg.n_pitches} pitches × {FAMILIES} families, {sum(p.numel() for p in model.parameters())} parameters")

    def step_loss(step):
        model.train()
        audio, _, _ = synth_notes(cfg.batch, cfg.n_pitches, gen)
        out = model(log_mel(audio.to(device)), generator=gen)
        return out.loss, {"order_accuracy": out.accuracy.detach()}

    rows, seconds = fit_steps(
        model, opt, cfg.steps, step_loss, log_every=cfg.log_every, log=log, precision=cfg.precision,
        describe=lambda row: f"  step {row['step']:5d}  loss {row['loss']:.3f}  "
                             f"order accuracy {row['order_accuracy']:.3f}")
    probes = probe_encoders({"pretext": model, "random_init": baseline}, cfg, gen, device)
    for name, r in probes.items():
        log(f"{name:>12} encoder: pitch probe {r['pitch_accuracy']:.3f}, "
            f"instrument probe {r['instrument_accuracy']:.3f}")
    result = {"config": asdict(cfg), "final_pretext_loss": rows[-1]["loss"] if rows else None, **probes,
              "log": rows, "seconds": round(seconds, 1)}
    if cfg.out_dir:
        write_run(cfg.out_dir, rows, result, model, model_config, system="permutation")
    return result


def main(argv=None) -> int:
    cfg = config_from_argv(TrainConfig, argv, prog="pyaudiok train permutation", description=__doc__,
                           choices={"ranker": RANKERS, "probe_features": POOLINGS, "device": DEVICES},
                           check=check_config)
    fresh_output_dir(cfg.out_dir)
    train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
