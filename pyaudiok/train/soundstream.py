"""`pyaudiok train soundstream`: train a SoundStream codec on embedded synthetic audio.

    from pyaudiok.train.soundstream import TrainConfig, train
    metrics = train(TrainConfig(steps=600, out_dir="runs/ss"))      # or: train(TrainConfig(..., resume=True))

    torchrun --nproc_per_node 2 -m pyaudiok.train.soundstream --steps 600 --out runs/ss

Each step (DESIGN.md §2): the generator (encoder → ResidualVQ with quantizer dropout → decoder)
reconstructs a batch of clips; once `discriminator_start` is reached, the discriminators take a
hinge step on real vs. reconstructed audio, then the generator a step on
λ_rec·mel + λ_t·waveform L1 + λ_commit·commitment + λ_adv·hinge + λ_feat·feature-matching. Before
that step the generator learns from reconstruction and commitment alone: a GAN warm-up that gets a
small CPU budget to audible reconstructions quickly. (λ_t, EnCodec's time-domain term, is not in
the SoundStream paper: see `TrainConfig.weight_waveform`.)

Written to `out_dir` (by rank 0 only): `train_log.csv` (losses averaged over `log_every` steps),
`valid_log.csv` (mel distance and SI-SNR of the validation clips at a few bitrates), `curves.png`,
`samples/reference_*.wav` and `samples/step_*/ex*_*kbps.wav` (reconstructions), and
`checkpoints/step_*.pt` (atomic; the newest `keep_checkpoints` kept). `resume=True` continues
from the newest checkpoint and takes bit-exactly the steps the uninterrupted run would have:
models, optimizers, quantizer buffers, every rank's RNG states and the log history are restored,
and the data of step s depends only on (seed, s, rank).

Distributed: launched by `torchrun`, each process trains on its own clips; generator and
discriminators are wrapped in `DistributedDataParallel` (gloo on CPU, nccl on CUDA), and the
ResidualVQ all-reduces its own EMA statistics.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence, get_type_hints

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyaudiok.codec.audio import save_audio
from pyaudiok.codec.bitstream import atomic_writer
from pyaudiok.data.audio_synth import SyntheticAudio
from pyaudiok.models.soundstream.discriminators import (DiscriminatorOutput, SoundStreamDiscriminators,
                                                        STFTDiscriminator, WaveformDiscriminator)
from pyaudiok.models.soundstream.losses import (MultiScaleMelLoss, feature_matching_loss, hinge_discriminator_loss,
                                                hinge_generator_loss, si_snr)
from pyaudiok.models.soundstream.model import SoundStream, SoundStreamConfig

from .checkpoint import CheckpointError, expect_checkpoint, load_checkpoint, restore_rng_state
from .runtime import (COMPILE_HELP, SHARED_CHOICES, Averager, ConfigError, Runtime, check_options, checked_config,
                      compile_model, config_changes, precision_scope, progress_bar, resume_checkpoint,
                      same_on_every_rank, save_resumable, seed_everything, training_runtime, unwrap, usage_checked,
                      writable_output_dir, write_csv)

__all__ = ["TrainConfig", "train", "main", "build_models", "dead_code_threshold", "mel_distance", "PRESETS",
           "check_config"]

SYSTEM = "soundstream"

PRESETS = {"tiny": SoundStreamConfig.preset_tiny, "16khz": SoundStreamConfig.preset_16khz,
           "24khz": SoundStreamConfig.preset_24khz}


def _opt(default: Any, help: str) -> Any:
    """A config field with its command-line help (one place documents each option)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a run depends on; the defaults train visibly on a 2-core CPU in ~10 minutes.

    Loss weights λ_adv = 1, λ_feat = 100, λ_rec = 1: SoundStream paper (Zeghidour et al. 2021, §3.4);
    commitment weight 1: DESIGN.md §2. Adam with β = (0.5, 0.9) as in the paper.
    """
    preset: str = _opt("tiny", f"model preset: {', '.join(PRESETS)}")
    model: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "SoundStreamConfig overrides, KEY=VALUE (repeatable), e.g. channels=4"})
    steps: int = _opt(600, "total training steps (all ranks step together)")
    batch_size: int = _opt(4, "clips per step and rank")
    segment_seconds: float = _opt(0.5, "clip length in seconds")
    lr_generator: float = _opt(1e-3, "Adam learning rate of the codec")
    lr_discriminator: float = _opt(1e-4, "Adam learning rate of the discriminators")
    betas: tuple[float, float] = _opt((0.5, 0.9), "Adam betas of both optimisers")
    weight_adversarial: float = _opt(1.0, "λ_adv, hinge generator loss")
    weight_feature: float = _opt(100.0, "λ_feat, feature-matching loss")
    weight_reconstruction: float = _opt(1.0, "λ_rec, multi-scale mel loss")
    weight_commitment: float = _opt(1.0, "commitment loss weight")
    # Not in the SoundStream paper (0 restores it); EnCodec has the same term. The mel loss fixes only
    # magnitudes, so without it the waveform stays at chance SI-SNR (−32 dB after the default 600
    # steps, measured). The mel loss with the paper's √(s/2) weights is ~10³ in size and the L1 term
    # ~0.03: λ_t = 10⁵ (chosen from 10³…3·10⁵ in 300-step runs) reaches −12 dB in the same run while
    # the mel distance falls as before; 3·10⁵ gains ~1 dB of SI-SNR and loses mel distance.
    weight_waveform: float = _opt(1e5, "λ_t, L1 distance of the waveforms (EnCodec's time-domain term; "
                                       "not in the SoundStream paper: 0 for the paper's losses)")
    discriminator_start: int = _opt(400, "first step with discriminators and adversarial losses (GAN warm-up)")
    waveform_channels: int = _opt(4, "first width of the waveform discriminators (MelGAN: 16)")
    waveform_max_channels: int = _opt(64, "widest waveform discriminator layer (MelGAN: 1024)")
    stft_channels: int = _opt(8, "first width of the STFT discriminator (paper: 32)")
    log_every: int = _opt(10, "steps per row of train_log.csv")
    eval_every: int = _opt(100, "steps between validations (also at step 0 and at the end)")
    eval_examples: int = _opt(8, "validation clips")
    eval_quantizers: tuple[int, ...] = _opt((), "numbers of quantizers to validate with (default: 1, Q/2, Q)")
    audio_samples: int = _opt(2, "validation clips written as WAV at each validation")
    checkpoint_every: int = _opt(200, "steps between checkpoints (also one at the end)")
    keep_checkpoints: int = _opt(2, "newest checkpoints kept (0: all)")
    out_dir: str = _opt("runs/soundstream", "output directory")
    seed: int = _opt(0, "seed of the model initialisation, the data and the training randomness")
    threads: int = _opt(0, "torch CPU threads per process (0: the idle cores, shared among local ranks)")
    device: str = _opt("auto", "auto, cpu, cuda")
    precision: str = _opt("fp32", "fp32, or bf16: training steps under bf16 autocast")
    compile: bool = _opt(False, COMPILE_HELP)
    real_speech: bool | None = _opt(None, "mix in espeak-ng speech (default: when the binary is on PATH)")
    resume: bool = _opt(False, "continue from the newest checkpoint in out_dir")
    progress: bool = _opt(True, "show a progress bar")

    def model_config(self) -> SoundStreamConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        known = {f.name for f in fields(SoundStreamConfig)}
        unknown = sorted(set(self.model) - known)
        if unknown:
            raise ValueError(f"unknown model setting(s) {unknown}; SoundStreamConfig has {sorted(known)}")
        return PRESETS[self.preset](**self.model)

    def quantizer_counts(self, num_quantizers: int) -> list[int]:
        return sorted(set(self.eval_quantizers or (1, max(1, num_quantizers // 2), num_quantizers)))


def check_config(config: TrainConfig) -> SoundStreamConfig:
    """The codec's config of `config`; ConfigError for an option out of its range."""
    check_options(config, positive=("batch_size", "segment_seconds", "lr_generator", "lr_discriminator", "log_every",
                                    "eval_every", "eval_examples", "checkpoint_every", "waveform_channels",
                                    "waveform_max_channels", "stft_channels"),
                  non_negative=("steps", "weight_adversarial", "weight_feature", "weight_reconstruction",
                                "weight_commitment", "weight_waveform", "discriminator_start", "audio_samples",
                                "keep_checkpoints", "threads"))
    if len(config.betas) != 2 or not all(0 <= b < 1 for b in config.betas):
        raise ConfigError(f"--betas must be two numbers in [0, 1); got {config.betas}")
    model_config = checked_config(config.model_config)
    outside = [n for n in config.eval_quantizers if not 1 <= n <= model_config.num_quantizers]
    if outside:
        raise ConfigError(f"--eval-quantizers must be in [1, {model_config.num_quantizers}] (the model's "
                          f"quantizers); got {list(config.eval_quantizers)}")
    samples = round(config.segment_seconds * model_config.sample_rate)
    needed = build_discriminators(config).min_length
    if config.discriminator_start < config.steps and samples < needed:
        # Refused here, not at discriminator_start: the clips would reach the discriminators only then.
        raise ConfigError(f"--segment-seconds must give the discriminators at least {needed} samples "
                          f"({needed / model_config.sample_rate:g} s at {model_config.sample_rate} Hz); "
                          f"got {samples}")
    return model_config


# ----------------------------------------------------------------------------------------------
# Models, optimisers, data.

def build_models(config: TrainConfig) -> tuple[SoundStream, SoundStreamDiscriminators]:
    """The codec (quantizer dropout on) and the discriminators, initialised from `config.seed`."""
    torch.manual_seed(config.seed)
    model_config = config.model_config()
    model_config.quantizer_kwargs = {"quantizer_dropout": True,
                                     "dead_code_threshold": dead_code_threshold(config, model_config),
                                     **model_config.quantizer_kwargs}
    return SoundStream(model_config), build_discriminators(config)


def build_discriminators(config: TrainConfig) -> SoundStreamDiscriminators:
    return SoundStreamDiscriminators(
        WaveformDiscriminator(channels=config.waveform_channels, max_channels=config.waveform_max_channels),
        STFTDiscriminator(channels=config.stft_channels))


def dead_code_threshold(config: TrainConfig, model_config: SoundStreamConfig) -> float:
    """DESIGN.md §2's EMA count < 2, capped at a tenth of the mean hits per codeword and step.

    An EMA count converges to a codeword's hits per step, which average N / K for N vectors per
    step. The paper's batches give N ≫ 2K; a CPU batch does not (tiny preset: 4 clips × 25
    frames = 100 vectors for K = 256): with the threshold at 2, every codeword was "dead" and
    replaced by a random residual at every step, so code indices never kept a meaning.
    """
    frames = -(-round(config.segment_seconds * model_config.sample_rate) // model_config.hop_length)
    return min(2.0, 0.1 * config.batch_size * frames / model_config.codebook_size)


def _step_indices(step: int, rank: int, world_size: int, batch_size: int) -> range:
    """Training clips of one step on one rank: disjoint across ranks and steps."""
    first = (step * world_size + rank) * batch_size
    return range(first, first + batch_size)


# ----------------------------------------------------------------------------------------------
# One training step.

@dataclass
class _Trainer:
    """Models (possibly DDP-wrapped), optimisers and losses of one process."""
    config: TrainConfig
    generator: nn.Module
    discriminators: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    mel: MultiScaleMelLoss

    @property
    def codec(self) -> SoundStream:
        return unwrap(self.generator)

    def step(self, wav: torch.Tensor, step: int) -> dict[str, float]:
        """One generator step, preceded by a discriminator step once the GAN is on; the losses."""
        with precision_scope(wav.device, self.config.precision):
            return self._step(wav, step)

    def _step(self, wav: torch.Tensor, step: int) -> dict[str, float]:
        c = self.config
        out = self.generator(wav)
        fake = out.reconstruction
        terms = {"reconstruction": self.mel(fake, wav), "commitment": out.commit_loss}
        if c.weight_waveform:
            terms["waveform"] = (fake - wav).abs().mean()
        weights = {"reconstruction": c.weight_reconstruction, "commitment": c.weight_commitment,
                   "waveform": c.weight_waveform, "adversarial": c.weight_adversarial, "feature": c.weight_feature}
        logged: dict[str, float] = {}
        if step >= c.discriminator_start:
            logged["discriminator"] = self._discriminator_step(wav, fake.detach())
            # The updated discriminators judge the generator, called without the DDP wrapper:
            # their parameters take no gradient from this loss (backward(inputs=...) below).
            real_out, fake_out = _split(unwrap(self.discriminators)(torch.cat([wav, fake])), len(wav))
            terms["adversarial"] = hinge_generator_loss(fake_out.logits)
            terms["feature"] = feature_matching_loss(real_out.features, fake_out.features)
        total = sum(weights[name] * value for name, value in terms.items())
        self.opt_g.zero_grad(set_to_none=True)
        total.backward(inputs=list(self.generator.parameters()))
        self.opt_g.step()
        logged.update({name: float(value.detach()) for name, value in terms.items()}, generator=float(total.detach()))
        return logged

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        real_out, fake_out = _split(self.discriminators(torch.cat([real, fake])), len(real))
        loss = hinge_discriminator_loss(real_out.logits, fake_out.logits)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return float(loss.detach())


def _split(output: DiscriminatorOutput, n: int) -> tuple[DiscriminatorOutput, DiscriminatorOutput]:
    """Discriminator outputs of a batch cat([a, b]) (len(a) = n) -> the outputs of a and of b."""
    def halves(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return t[:n], t[n:]
    logits = [halves(t) for t in output.logits]
    features = [[halves(t) for t in maps] for maps in output.features]
    return (DiscriminatorOutput([a for a, _ in logits], [[a for a, _ in m] for m in features]),
            DiscriminatorOutput([b for _, b in logits], [[b for _, b in m] for m in features]))


# ----------------------------------------------------------------------------------------------
# Validation.

def mel_distance(estimate: torch.Tensor, reference: torch.Tensor, mel: MultiScaleMelLoss,
                 floor: float = 1e-5) -> torch.Tensor:
    """Mean |log10 mel(estimate) − log10 mel(reference)| over mel bins, frames and the loss's
    window sizes (2^6…2^11), one value per clip [N] — lower is better, 0 is a perfect match."""
    per_scale = []
    for window in mel.windows:
        est, ref = mel.mel(estimate, window), mel.mel(reference, window)
        diff = torch.log10(est.clamp_min(floor)) - torch.log10(ref.clamp_min(floor))
        per_scale.append(diff.abs().mean(dim=(1, 2)))
    return torch.stack(per_scale).mean(0)


def _kbps_label(model_config: SoundStreamConfig, n_q: int) -> str:
    return f"{model_config.bitrate(n_q) / 1000:g}kbps"


@torch.no_grad()
def _reconstruct(codec: SoundStream, wav: torch.Tensor, n_q: int) -> torch.Tensor:
    """Encode → decode with n_q quantizers, in eval mode (no dropout, codebooks untouched)."""
    was_training = codec.training
    codec.eval()
    try:
        return codec(wav, n_q=n_q).reconstruction
    finally:
        codec.train(was_training)


def _validate(codec: SoundStream, wav: torch.Tensor, counts: Sequence[int],
              mel: MultiScaleMelLoss) -> tuple[dict[str, float], dict[int, torch.Tensor]]:
    """Metrics {mel_distance@…kbps, si_snr@…kbps} and the reconstructions per number of quantizers."""
    metrics, outputs = {}, {}
    for n_q in counts:
        label = _kbps_label(codec.config, n_q)
        outputs[n_q] = y = _reconstruct(codec, wav, n_q)
        metrics[f"mel_distance@{label}"] = float(mel_distance(y, wav, mel).mean())
        metrics[f"si_snr@{label}"] = float(si_snr(y, wav).mean())
    return metrics, outputs


# ----------------------------------------------------------------------------------------------
# Output files (rank 0).

def _plot_curves(path: Path, train_rows: list[dict[str, float]], valid_rows: list[dict[str, float]]) -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in ("reconstruction", "commitment", "adversarial", "feature", "discriminator"):
        points = [(r["step"], r[name]) for r in train_rows if name in r and r[name] > 0]
        if points:
            axes[0].plot(*zip(*points), label=name)
    axes[0].set(title="training losses", xlabel="step", yscale="log")
    for ax, metric in zip(axes[1:], ("mel_distance", "si_snr")):
        for key in dict.fromkeys(k for r in valid_rows for k in r if k.startswith(metric + "@")):
            ax.plot([r["step"] for r in valid_rows], [r[key] for r in valid_rows], marker="o", label=key.split("@")[1])
        ax.set(title=f"validation {metric.replace('_', ' ')}" + (" (dB)" if metric == "si_snr" else ""), xlabel="step")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_writer(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _write_samples(directory: Path, step: int, outputs: dict[int, torch.Tensor], model_config: SoundStreamConfig,
                   count: int) -> None:
    folder = directory / f"step_{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    for n_q, wav in outputs.items():
        for i in range(min(count, len(wav))):
            # A diverged model must not stop the run here: its metrics already say NaN.
            audio = torch.nan_to_num(wav[i].cpu(), nan=0.0, posinf=1.0, neginf=-1.0)
            save_audio(folder / f"ex{i}_{_kbps_label(model_config, n_q)}.wav", audio, model_config.sample_rate)


def _write_references(directory: Path, wav: torch.Tensor, sample_rate: int, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(min(count, len(wav))):
        save_audio(directory / f"reference_{i}.wav", wav[i].cpu(), sample_rate)


# ----------------------------------------------------------------------------------------------
# Checkpoint state.

def _training_state(trainer: _Trainer, step: int, history: dict[str, Any], rng: list[dict[str, Any]]) -> dict:
    return {
        "system": SYSTEM,
        "step": step,
        "train_config": asdict(trainer.config),
        "model_config": trainer.codec.config.to_dict(),
        "generator": trainer.codec.state_dict(),
        "discriminators": unwrap(trainer.discriminators).state_dict(),
        "opt_g": trainer.opt_g.state_dict(),
        "opt_d": trainer.opt_d.state_dict(),
        "history": history,
        "rng": rng,
    }


def _restore(trainer: _Trainer, state: dict[str, Any], runtime: Runtime) -> None:
    trainer.codec.load_state_dict(state["generator"])
    unwrap(trainer.discriminators).load_state_dict(state["discriminators"])
    trainer.opt_g.load_state_dict(state["opt_g"])
    trainer.opt_d.load_state_dict(state["opt_d"])
    rng = state["rng"]
    if len(rng) == runtime.world_size:
        restore_rng_state(rng[runtime.rank])
    else:  # a different number of processes: continue, reproducibly but not bit-exactly
        seed_everything(trainer.config.seed + 7919 * (state["step"] + runtime.rank))


# ----------------------------------------------------------------------------------------------
# The loop.

def train(config: TrainConfig) -> dict[str, float]:
    """Train (or resume) as `config` says; returns the final validation metrics plus `step`,
    `seconds` (training wall time of this call) and the last logged losses (`train/…`)."""
    check_config(config)
    with training_runtime(config.device, config.threads) as runtime:
        return _train(config, runtime)


def _train(config: TrainConfig, runtime: Runtime) -> dict[str, float]:
    out = Path(config.out_dir)
    writable_output_dir(out)
    resume_from = resume_checkpoint(out / "checkpoints", config.resume)
    generator, discriminators = build_models(config)
    compile_model(generator.to(runtime.device), config.compile)
    compile_model(discriminators.to(runtime.device), config.compile)
    model_config = generator.config
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        # Codebooks are buffers kept identical by the quantizer's own all-reduce: no broadcasts.
        generator = DistributedDataParallel(generator, device_ids, broadcast_buffers=False)
        discriminators = DistributedDataParallel(discriminators, device_ids, broadcast_buffers=False)
    trainer = _Trainer(config, generator, discriminators,
                       torch.optim.Adam(generator.parameters(), config.lr_generator, betas=config.betas),
                       torch.optim.Adam(discriminators.parameters(), config.lr_discriminator, betas=config.betas),
                       MultiScaleMelLoss(model_config.sample_rate))
    data = dict(sample_rate=model_config.sample_rate, segment_seconds=config.segment_seconds, seed=config.seed,
                real_speech=config.real_speech)
    train_data = SyntheticAudio(split="train", **data)
    valid_wav = SyntheticAudio(split="valid", **data).batch(range(config.eval_examples)).to(runtime.device)
    counts = config.quantizer_counts(model_config.num_quantizers)

    history: dict[str, Any] = {"train": [], "valid": [], "pending": {"sums": {}, "count": 0}}
    step = 0
    if resume_from is not None:
        state = expect_checkpoint(load_checkpoint(resume_from, map_location=runtime.device), resume_from, SYSTEM,
                                  ("step", "model_config", "generator", "discriminators", "opt_g", "opt_d", "history",
                                   "rng"))
        try:
            trained = SoundStreamConfig.from_dict(state["model_config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {resume_from} is not a {SYSTEM} checkpoint: "
                                  f"its model_config: {e}") from e
        # The quantizer's settings follow the batch (dead_code_threshold): only the codec must match.
        if replace(trained, quantizer_kwargs=model_config.quantizer_kwargs) != model_config:
            changes = config_changes(asdict(trained), model_config.to_dict())
            raise ConfigError(f"{resume_from} was trained with another codec ({changes}): resume with the run's "
                              f"--preset and --model options")
        _restore(trainer, state, runtime)
        step, history = state["step"], state["history"]
    else:
        seed_everything(config.seed + 104729 * (runtime.rank + 1))  # training randomness, per rank
    averager = Averager(history["pending"]["sums"], history["pending"]["count"])

    def validate(at: int) -> dict[str, float]:
        metrics, outputs = _validate(trainer.codec, valid_wav, counts, trainer.mel)
        history["valid"].append({"step": at, **metrics})
        _write_samples(out / "samples", at, outputs, model_config, config.audio_samples)
        write_csv(out / "valid_log.csv", history["valid"])
        _plot_curves(out / "curves.png", history["train"], history["valid"])
        return metrics

    def checkpoint(at: int) -> None:
        save_resumable(runtime, out / "checkpoints", at, config.keep_checkpoints, history, averager,
                       lambda rng: _training_state(trainer, at, history, rng))

    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_references(out / "samples", valid_wav, model_config.sample_rate, config.audio_samples)
        if step == 0:
            validate(0)

    bar = progress_bar(runtime, config.steps, step, config.progress, "soundstream")
    started, last_checkpoint = time.perf_counter(), step
    while step < config.steps:
        wav = train_data.batch(_step_indices(step, runtime.rank, runtime.world_size, config.batch_size))
        averager.add(trainer.step(wav.to(runtime.device), step))
        step += 1
        bar.update(1)
        if step % config.log_every == 0:
            row = {"step": step, **averager.pop()}
            history["train"].append(row)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k != "step"}, refresh=False)
            if runtime.is_main:
                write_csv(out / "train_log.csv", history["train"])
        elif step == config.steps and runtime.is_main:
            # A last, shorter interval is written out but stays pending in the history: a resumed
            # run completes it, so its rows are those of an uninterrupted run.
            write_csv(out / "train_log.csv", history["train"] + [{"step": step, **averager.peek()}])
        if runtime.is_main and step % config.eval_every == 0 and step != config.steps:
            metrics = validate(step)
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        if step % config.checkpoint_every == 0 and step != config.steps:
            checkpoint(step)
            last_checkpoint = step
    bar.close()
    seconds = time.perf_counter() - started

    result: dict[str, float] = {}
    if runtime.is_main:
        done = history["valid"] and history["valid"][-1]["step"] == step
        result = dict(history["valid"][-1]) if done else {"step": step, **validate(step)}
        last_losses = averager.peek() if averager.count else (history["train"] or [{}])[-1]
        result.update({f"train/{k}": v for k, v in last_losses.items() if k != "step"})
        result["seconds"] = seconds
    if step != last_checkpoint or resume_from is None:  # else: resumed a finished run, nothing new
        checkpoint(step)
    return same_on_every_rank(runtime, result)  # every rank returns the same figures


# ----------------------------------------------------------------------------------------------
# Command line.

def _parse_model_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _optional_bool(text: str) -> bool | None:
    lowered = text.lower()
    if lowered in ("auto", "none"):
        return None
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes, no or auto; got {text!r}")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options generated from `TrainConfig`'s fields (`--out` is `out_dir`); pass a subparser to
    hook them under another command."""
    parser = parser or argparse.ArgumentParser(prog="pyaudiok train soundstream", description=__doc__.split("\n")[0])
    hints = get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--out" if f.name == "out_dir" else "--" + f.name.replace("_", "-")
        default = f.default_factory() if callable(f.default_factory) else f.default
        help_text = f.metadata["help"] + ("" if default in ((), {}) else f" (default: {default})")
        hint, common = hints[f.name], dict(dest=f.name, default=default, help=help_text)
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif hint == (bool | None):
            parser.add_argument(flag, type=_optional_bool, metavar="yes|no|auto", **common)
        elif f.name in SHARED_CHOICES:
            parser.add_argument(flag, choices=SHARED_CHOICES[f.name], **common)
        elif f.name == "model":
            parser.add_argument(flag, type=_parse_model_override, action="append", metavar="KEY=VALUE",
                                **{**common, "default": []})
        elif hint in (tuple[float, float], tuple[int, ...]):
            parser.add_argument(flag, type=hint.__args__[0], nargs=2 if hint == tuple[float, float] else "+", **common)
        else:
            parser.add_argument(flag, type=hint, **common)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    values["model"] = dict(values["model"])
    values["betas"], values["eval_quantizers"] = tuple(values["betas"]), tuple(values["eval_quantizers"])
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    """`pyaudiok train soundstream [options]`; prints the final metrics."""
    parser = build_parser()
    config = usage_checked(parser, check_config, config_from_args(parser.parse_args(argv)))
    metrics = train(config)
    if metrics and int(os.environ.get("RANK", 0)) == 0:
        width = max(map(len, metrics))
        print("\n".join(f"{k:<{width}}  {v:.4g}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
