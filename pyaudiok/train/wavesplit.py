"""`pyaudiok train wavesplit`: Wavesplit (DESIGN §9) on generated multi-speaker mixtures.

    pyaudiok train wavesplit --steps 2000 --num-sources 2 --out runs/wavesplit      # --device auto|cpu|cuda

Data (pyaudiok.data.speakers, no download): training mixtures of `num_sources` speakers drawn from
`train_speakers` training identities with dynamic remixing (every step new speaker combinations,
utterances, offsets and gains); evaluation on a fixed set of `eval_mixtures` mixtures of *held-out*
speakers. `--source tts` takes synthesiser voices (espeak-ng / flite) and is refused before the run
when they are too few for --train-speakers or --eval-speakers; `auto` takes them when they are
enough, else synthetic speakers (always available, any number).

Evaluation runs the inference path (k-means centroids) and reports the SI-SDR improvement: the
permutation-invariant SI-SDR of the estimates minus the SI-SDR of the unprocessed mixture against
each source. Written to `out`: `log.csv` (step, losses), `results.json`, `checkpoint.pt`.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pyaudiok.data.audio_synth import MIN_SAMPLE_RATE
from pyaudiok.data.speakers import SeparationMixtures
from pyaudiok.models.wavesplit import Wavesplit, WavesplitConfig
from pyaudiok.ops import pit_si_sdr, si_sdr_matrix

from .runtime import (check_at_least, check_options, checked_config, compile_model, fit_steps,
                      model_from_run_checkpoint, pick_device, seed_everything, writable_output_dir, write_run)
from .speaker_runs import resolved_source, speaker_banks, speaker_source, speaker_trainer_main

__all__ = ["TrainConfig", "train", "evaluate", "main", "load_model", "separate_main"]


@dataclass
class TrainConfig:
    steps: int = 2000
    batch: int = 8
    num_sources: int = 2
    segment_seconds: float = 1.0
    sample_rate: int = 8_000
    train_speakers: int = 16
    eval_speakers: int = 6
    eval_mixtures: int = 32
    channels: int = 64
    embed_dim: int = 32
    speaker_layers: int = 6
    separation_layers: int = 8
    lr: float = 1e-3
    source: str = "auto"           # speakers: "auto", "synthetic" or "tts"
    seed: int = 0
    log_every: int = 50
    precision: str = "fp32"        # "bf16": training steps under bf16 autocast (runtime.precision_scope)
    compile: bool = False          # the model's forward (and loss) under torch.compile (runtime.compile_model)
    device: str = "auto"           # "auto" (CUDA when available), "cpu" or "cuda"
    out_dir: str | None = None


def check_config(cfg: TrainConfig) -> None:
    """ConfigError for an option out of its range, or one the data or the model cannot take."""
    check_options(cfg, positive=("batch", "num_sources", "segment_seconds", "sample_rate", "train_speakers",
                                 "eval_speakers", "eval_mixtures", "channels", "embed_dim", "speaker_layers",
                                 "separation_layers", "lr", "log_every"), non_negative=("steps",),
                  finite=("segment_seconds",))
    check_at_least(cfg, ("sample_rate",), MIN_SAMPLE_RATE, "the speech generator's lowest rate")
    check_at_least(cfg, ("train_speakers", "eval_speakers"), cfg.num_sources,
                   f"a mixture takes --num-sources {cfg.num_sources} distinct speakers")
    # What the data and the model check themselves (a segment of no samples, ...), on synthetic
    # speakers: cheap to build, and the same rules.
    checked_config(lambda: SeparationMixtures(speaker_banks(cfg, "synthetic")[0], cfg.num_sources,
                                              cfg.segment_seconds))
    checked_config(lambda: WavesplitConfig(num_sources=cfg.num_sources, num_speakers=cfg.train_speakers,
                                           channels=cfg.channels, embed_dim=cfg.embed_dim,
                                           speaker_layers=cfg.speaker_layers,
                                           separation_layers=cfg.separation_layers))
    speaker_source(cfg.source, cfg.sample_rate, cfg.train_speakers, cfg.eval_speakers)  # last: it may run a synthesiser


@torch.no_grad()
def evaluate(model: Wavesplit, mixtures: SeparationMixtures, count: int, batch: int = 8) -> dict:
    """Mean SI-SDR of the estimates (PIT), of the mixture, and their difference, over `count` items,
    the model run on its own device."""
    device = next(model.parameters()).device
    model.eval()
    estimated, unprocessed = [], []
    for first in range(0, count, batch):
        mix, src, _ = (t.to(device) for t in mixtures.batch(range(first, min(count, first + batch))))
        # The same seed for every batch: k-means++ gives an item the same centres in any batch, so
        # the scores do not depend on `batch`. Its generator lives on the points' device.
        out = model(mix, generator=torch.Generator(device).manual_seed(0))
        estimated.append(pit_si_sdr(out.estimates, src).si_sdr)
        mixture = si_sdr_matrix(mix[:, None].expand_as(src).contiguous(), src)
        unprocessed.append(mixture.diagonal(dim1=1, dim2=2).mean(-1))
    model.train()
    est, base = torch.cat(estimated), torch.cat(unprocessed)
    return {"si_sdr": float(est.mean()), "mixture_si_sdr": float(base.mean()), "si_sdri": float((est - base).mean())}


def train(cfg: TrainConfig, log=print) -> dict:
    check_config(cfg)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    train_bank, eval_bank = speaker_banks(cfg, resolved_source(cfg, log))
    data = SeparationMixtures(train_bank, cfg.num_sources, cfg.segment_seconds, dynamic=True, seed=cfg.seed)
    held_out = SeparationMixtures(eval_bank, cfg.num_sources, cfg.segment_seconds, dynamic=False,
                                  num_mixtures=cfg.eval_mixtures, seed=cfg.seed)
    model = Wavesplit(WavesplitConfig(num_sources=cfg.num_sources, num_speakers=len(train_bank), channels=cfg.channels,
                                      embed_dim=cfg.embed_dim, speaker_layers=cfg.speaker_layers,
                                      separation_layers=cfg.separation_layers)).to(device)
    compile_model(model, cfg.compile)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    before = evaluate(model, held_out, cfg.eval_mixtures)
    log(f"wavesplit: {train_bank.kind} speakers ({len(train_bank)} train, {len(eval_bank)} held out), "
        f"{sum(p.numel() for p in model.parameters())} parameters on {device}; held-out SI-SDRi before training "
        f"{before['si_sdri']:.2f} dB")

    def step_loss(step):
        # Remixed on the CPU (its RNGs decide the data), then moved to the model's device.
        mix, src, who = (t.to(device) for t in data.batch(range(step * cfg.batch, (step + 1) * cfg.batch)))
        return model.loss(mix, src, who)

    rows, seconds = fit_steps(
        model, opt, cfg.steps, step_loss, log_every=cfg.log_every, log=log, precision=cfg.precision,
        describe=lambda row: f"  step {row['step']:5d}  loss {row['loss']:.3f}  -SI-SDR {row['separation']:.2f}  "
                             f"speaker {row['speaker']:.3f}")
    after = evaluate(model, held_out, cfg.eval_mixtures)
    log(f"held-out ({cfg.eval_mixtures} mixtures of unseen speakers): SI-SDR {after['si_sdr']:.2f} dB, "
        f"mixture {after['mixture_si_sdr']:.2f} dB, SI-SDRi {after['si_sdri']:.2f} dB")
    result = {"config": asdict(cfg), "speakers": train_bank.kind, "before": before, "after": after,
              "log": rows, "seconds": round(seconds, 1)}
    if cfg.out_dir:
        write_run(cfg.out_dir, rows, result, model, asdict(model.config), system="wavesplit")
    return result


HELP = {"batch": "mixtures per step", "num_sources": "speakers in each mixture",
        "segment_seconds": "length of each mixture (seconds)",
        "train_speakers": "training speaker identities (>= --num-sources)",
        "eval_speakers": "held-out speaker identities for evaluation (>= --num-sources)",
        "eval_mixtures": "fixed held-out mixtures evaluated before and after training",
        "speaker_layers": "dilated blocks of the speaker stack",
        "separation_layers": "dilated blocks of the separation stack"}


def main(argv=None) -> int:
    return speaker_trainer_main(TrainConfig, train, argv, prog="pyaudiok train wavesplit", description=__doc__,
                                helps=HELP, check=check_config)


def load_model(checkpoint: str | Path) -> tuple[Wavesplit, int]:
    """The model of a `pyaudiok train wavesplit` checkpoint (file or output directory), in eval
    mode on the CPU (whatever device it was trained on), and its sample rate."""
    model, state = model_from_run_checkpoint(checkpoint, "wavesplit", WavesplitConfig, Wavesplit)
    return model, int(state["result"]["config"]["sample_rate"])


def separate_main(argv=None) -> int:
    """`pyaudiok separate IN.wav --checkpoint CKPT OUTDIR/`: one WAV per estimated source."""
    from pyaudiok.codec.audio import load_audio, save_audio
    p = argparse.ArgumentParser(prog="pyaudiok separate", description="separate a mixture with a Wavesplit checkpoint")
    p.add_argument("input")
    p.add_argument("outdir")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt, or the training output directory")
    args = p.parse_args(argv)
    model, rate = load_model(args.checkpoint)
    wav, _ = load_audio(args.input, rate)
    if wav.shape[-1] == 0:  # the encoder's convolutions take no empty input
        raise ValueError(f"x must hold at least one frame; {args.input} holds no samples")
    out = Path(args.outdir)
    writable_output_dir(out, "output directory")  # before the work, not after it
    with torch.no_grad():
        estimates = model(wav, generator=torch.Generator().manual_seed(0)).estimates[0]
    for i, source in enumerate(estimates):
        source = source / max(1.0, float(source.abs().max()) / 0.99)  # keep within [-1, 1]
        save_audio(out / f"source_{i}.wav", source, rate)
        print(out / f"source_{i}.wav")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
