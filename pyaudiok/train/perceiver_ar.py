"""`pyaudiok train perceiver-ar`: train Perceiver AR on bytes of the Python standard library.

    pyaudiok train perceiver-ar --steps 200 --out runs/par          # --resume continues
    torchrun --nproc_per_node 2 -m pyaudiok.train.perceiver_ar --out runs/par
    pyaudiok generate perceiver-ar --checkpoint runs/par --prompt "def " --steps 200

Each step reads `batch_size` windows of context + 1 bytes per process; the loss is the
cross-entropy of the N latent positions (+ z-loss if set). Adam with linear warm-up, gradient
clipping at 1.0 (DESIGN §1). Validation reports bits per byte on fixed windows of the held-out
split, next to the corpus's unigram entropy (what a model without context achieves).

Written to `out_dir` (rank 0): `train_log.csv`, `valid_log.csv`, `checkpoints/step_*.pt` (atomic;
`resume` restores model, optimiser, RNG states and logs, and the data of step s depends only on
(seed, s, rank), so a resumed run takes bit-exactly the steps of an uninterrupted one).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from pyaudiok.data.text_corpus import ByteCorpus, bits
from pyaudiok.models.perceiver_ar import PerceiverAR, PerceiverARConfig, generate

from .checkpoint import CheckpointError, expect_checkpoint, load_checkpoint, resolve_checkpoint, restore_rng_state
from .runtime import (COMPILE_HELP, DEVICES, SHARED_CHOICES, Averager, ConfigError, Runtime, check_options,
                      checked_config, compile_model, config_changes, pick_device, precision_scope, progress_bar,
                      resume_checkpoint, same_on_every_rank, save_resumable, seed_everything, training_runtime, unwrap,
                      usage_checked, writable_output_dir, write_csv)

__all__ = ["TrainConfig", "train", "main", "generate_main", "load_model", "make_optimizer", "check_config"]

SYSTEM = "perceiver-ar"


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """The defaults learn visibly on a 2-core CPU in ~10 minutes (bits/byte well under the unigram
    entropy): a narrow model, since the CPU, not the context length, is the limit."""
    context: int = _opt(8192, "inputs per example (M)")
    latents: int = _opt(256, "latent positions with a loss (N)")
    width: int = _opt(128, "model width")
    heads: int = _opt(2, "attention heads")
    layers: int = _opt(3, "latent self-attention blocks")
    cross_dropout: float = _opt(0.5, "fraction of the prefix dropped per row in training")
    z_loss: float = _opt(0.0, "weight of the log²Z term (1e-4 to enable)")
    steps: int = _opt(3000, "training steps")
    batch_size: int = _opt(4, "windows per step and process")
    lr: float = _opt(2e-3, "Adam learning rate after warm-up")
    warmup: int = _opt(20, "linear warm-up steps")
    grad_clip: float = _opt(1.0, "gradient norm clip")
    eval_every: int = _opt(50, "steps between validations (also at 0 and the end)")
    eval_windows: int = _opt(8, "validation windows")
    log_every: int = _opt(10, "steps per row of train_log.csv")
    checkpoint_every: int = _opt(100, "steps between checkpoints (also one at the end)")
    keep_checkpoints: int = _opt(2, "newest checkpoints kept (0: all)")
    corpus_bytes: int = _opt(8_000_000, "bytes of the standard library read")
    out_dir: str = _opt("runs/perceiver_ar", "output directory")
    seed: int = _opt(0, "seed of initialisation, data and dropout")
    threads: int = _opt(0, "torch CPU threads per process (0: the idle cores)")
    device: str = _opt("auto", "auto, cpu, cuda")
    precision: str = _opt("fp32", "fp32, or bf16: training steps under bf16 autocast")
    compile: bool = _opt(False, COMPILE_HELP)
    resume: bool = _opt(False, "continue from the newest checkpoint in out_dir")
    progress: bool = _opt(True, "show a progress bar")

    def model_config(self) -> PerceiverARConfig:
        return PerceiverARConfig(vocab_size=256, max_context=self.context, latents=self.latents, width=self.width,
                                 heads=self.heads, layers=self.layers, cross_dropout=self.cross_dropout,
                                 z_loss=self.z_loss)


def check_config(config: TrainConfig) -> PerceiverARConfig:
    """The model's config of `config`; ConfigError for an option out of its range."""
    check_options(config, positive=("batch_size", "lr", "grad_clip", "eval_every", "eval_windows", "log_every",
                                    "checkpoint_every", "corpus_bytes"),
                  non_negative=("steps", "warmup", "keep_checkpoints", "threads"))
    return checked_config(config.model_config)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam (DESIGN §1), its fused single-kernel update: the per-tensor updates of a small model
    otherwise cost as much as a layer on a busy CPU."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def _lr_at(config: TrainConfig, step: int) -> float:
    return config.lr * min(1.0, (step + 1) / max(config.warmup, 1))


@torch.no_grad()
def validate(model: PerceiverAR, windows: torch.Tensor, batch_size: int) -> float:
    """Bits per byte of the latent positions of the validation windows (no dropout)."""
    was_training = model.training
    model.eval()
    try:
        nll = [model.loss(windows[i:i + batch_size])[1]["nll"] for i in range(0, len(windows), batch_size)]
    finally:
        model.train(was_training)
    return bits(float(torch.stack(nll).mean()))


def train(config: TrainConfig) -> dict[str, float]:
    """Train (or resume); returns the final {step, valid_bits_per_byte, unigram_bits_per_byte,
    train_bits_per_byte, seconds}."""
    check_config(config)
    with training_runtime(config.device, config.threads) as runtime:
        return _train(config, runtime)


def _train(config: TrainConfig, runtime: Runtime) -> dict[str, float]:
    out = Path(config.out_dir)
    writable_output_dir(out)
    resume_from = resume_checkpoint(out / "checkpoints", config.resume)
    torch.manual_seed(config.seed)
    model = compile_model(PerceiverAR(config.model_config()).to(runtime.device), config.compile)
    opt = make_optimizer(model, config.lr)
    wrapped = DistributedDataParallel(model) if runtime.distributed else model
    corpus = ByteCorpus.stdlib(config.corpus_bytes)
    unigram = corpus.unigram_entropy("valid")
    valid = corpus.valid_windows(config.context + 1, config.eval_windows).to(runtime.device)

    history: dict[str, Any] = {"train": [], "valid": [], "pending": {"sums": {}, "count": 0}}
    step = 0
    if resume_from is not None:
        state = expect_checkpoint(load_checkpoint(resume_from, map_location=runtime.device), resume_from, SYSTEM,
                                  ("step", "model_config", "model", "opt", "history", "rng"))
        if _model_config(state, resume_from) != model.config:
            raise ConfigError(f"{resume_from} was trained with another model (" + config_changes(
                state["model_config"], model.config.to_dict()) + "): resume with the run's model options")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, history = state["step"], state["history"]
        if len(state["rng"]) == runtime.world_size:
            restore_rng_state(state["rng"][runtime.rank])
        else:  # a different number of processes: reproducible, not bit-exact
            seed_everything(config.seed + 7919 * (step + runtime.rank))
    else:
        seed_everything(config.seed + 104729 * (runtime.rank + 1))
    averager = Averager(history["pending"]["sums"], history["pending"]["count"])

    def run_validation(at: int) -> float:
        value = validate(model, valid, config.batch_size)
        history["valid"].append({"step": at, "valid_bits_per_byte": value, "unigram_bits_per_byte": unigram})
        write_csv(out / "valid_log.csv", history["valid"])
        return value

    def checkpoint(at: int) -> None:
        save_resumable(runtime, out / "checkpoints", at, config.keep_checkpoints, history, averager, lambda rng: {
            "system": SYSTEM, "step": at, "train_config": asdict(config), "model_config": model.config.to_dict(),
            "model": model.state_dict(), "opt": opt.state_dict(), "history": history, "rng": rng})

    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if step == 0:
            run_validation(0)

    bar = progress_bar(runtime, config.steps, step, config.progress, "perceiver-ar")
    started, last_checkpoint = time.perf_counter(), step
    while step < config.steps:
        batch = corpus.batch(config.context + 1, config.batch_size, config.seed, step, runtime.rank)
        for group in opt.param_groups:
            group["lr"] = _lr_at(config, step)
        with precision_scope(runtime.device, config.precision):
            loss, parts = _loss(wrapped, batch.to(runtime.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        averager.add({"bits_per_byte": bits(float(parts["nll"])), "z": float(parts["z"])})
        step += 1
        bar.update(1)
        if step % config.log_every == 0:
            row = {"step": step, **averager.pop()}
            history["train"].append(row)
            bar.set_postfix(bpb=f"{row['bits_per_byte']:.3f}", refresh=False)
            if runtime.is_main:
                write_csv(out / "train_log.csv", history["train"])
        if runtime.is_main and step % config.eval_every == 0 and step != config.steps:
            bar.write(f"step {step}: valid {run_validation(step):.3f} bits/byte (unigram {unigram:.3f})")
        if step % config.checkpoint_every == 0 and step != config.steps:
            checkpoint(step)
            last_checkpoint = step
    bar.close()
    seconds = time.perf_counter() - started
    result: dict[str, float] = {}
    if runtime.is_main:
        done = history["valid"] and history["valid"][-1]["step"] == step
        value = history["valid"][-1]["valid_bits_per_byte"] if done else run_validation(step)
        last = averager.peek() if averager.count else (history["train"] or [{}])[-1]
        result = {"step": step, "valid_bits_per_byte": value, "unigram_bits_per_byte": unigram,
                  "train_bits_per_byte": last.get("bits_per_byte", float("nan")), "seconds": seconds}
    if step != last_checkpoint or resume_from is None:
        checkpoint(step)
    return same_on_every_rank(runtime, result)


def _loss(wrapped, sequence: torch.Tensor):
    """The model's loss, through DDP's forward when wrapped (so gradients are all-reduced)."""
    model = unwrap(wrapped)
    tokens = sequence[:, :-1]
    n = min(model.config.latents, tokens.shape[1])
    logits, _ = wrapped(tokens, n)
    return model.loss_from_logits(logits, sequence[:, -n:])


# ----------------------------------------------------------------------------------------------
# Command line.

def _model_config(state: dict[str, Any], path) -> PerceiverARConfig:
    try:
        return PerceiverARConfig(**state["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a {SYSTEM} checkpoint: its model_config: {e}") from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyaudiok train perceiver-ar", description=__doc__.split("\n")[0])
    for f in fields(TrainConfig):
        flag = "--out" if f.name == "out_dir" else "--" + f.name.replace("_", "-")
        common = dict(dest=f.name, default=f.default, help=f"{f.metadata['help']} (default: {f.default})")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif f.name in SHARED_CHOICES:
            parser.add_argument(flag, choices=SHARED_CHOICES[f.name], **common)
        else:
            parser.add_argument(flag, type=type(f.default), **common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    usage_checked(parser, check_config, config)
    metrics = train(config)
    if metrics and int(os.environ.get("RANK", 0)) == 0:
        width = max(map(len, metrics))
        print("\n".join(f"{k:<{width}}  {v:.4g}" for k, v in metrics.items()))
    return 0


def load_model(checkpoint: str | os.PathLike, device: str = "cpu") -> PerceiverAR:
    """A trained model from a checkpoint file or a training output directory (its newest one)."""
    path = resolve_checkpoint(checkpoint)
    state = expect_checkpoint(load_checkpoint(path, map_location=device), path, SYSTEM, ("model_config", "model"))
    model = PerceiverAR(_model_config(state, path))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def check_sampling_options(args) -> None:
    """ConfigError for a `generate` option out of its range, named by its flag."""
    check_options(args, non_negative=("steps", "temperature"), finite=("temperature",),
                  positive=("top_k",) if args.top_k is not None else (),
                  probabilities=("top_p",) if args.top_p is not None else ())


def generate_main(argv: list[str] | None = None) -> int:
    """`pyaudiok generate perceiver-ar --checkpoint PATH [--prompt TEXT] ...`: prints the text."""
    p = argparse.ArgumentParser(prog="pyaudiok generate perceiver-ar")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or training output directory")
    p.add_argument("--prompt", default="import ", help="text to continue (default: 'import ')")
    p.add_argument("--steps", type=int, default=200, help="bytes to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute every step (same output, slower)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where to sample (default cpu; auto: CUDA when available)")
    graphs = p.add_mutually_exclusive_group()
    graphs.add_argument("--cuda-graphs", dest="cuda_graphs", action="store_true", default=None,
                        help="replay every window's cached step as a CUDA graph (same output, without the "
                             "per-kernel launch cost; needs a CUDA device). Default: on a CUDA device, for "
                             "windows with a few cached steps or more")
    graphs.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                        help="run every cached step eagerly")
    args = usage_checked(p, check_sampling_options, p.parse_args(argv))
    try:
        device = pick_device(args.device)
        if args.cuda_graphs and (device.type != "cuda" or args.no_cache):
            raise ValueError("--cuda-graphs needs a CUDA device (--device cuda or auto) and the cache")
        model = load_model(args.checkpoint, device)
    except (FileNotFoundError, ValueError) as e:
        print(f"pyaudiok generate perceiver-ar: {e}", file=sys.stderr)
        return 2
    prompt = torch.tensor([list(args.prompt.encode())[-model.config.max_context:] or [10]], device=device)
    out = generate(model, prompt, args.steps, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   generator=torch.Generator().manual_seed(args.seed), use_cache=not args.no_cache,
                   cuda_graphs=args.cuda_graphs)
    sys.stdout.write(bytes(out[0].tolist()).decode("utf-8", errors="replace") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
