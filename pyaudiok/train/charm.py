"""`pyaudiok train charm`: CHARM (DESIGN §7) against the same EEG classifier without it, on
embedded synthetic EEG.

    pyaudiok train charm --out runs/charm                 # --resume continues from the newest checkpoint

Data (pyaudiok.data.eeg_synth, generated, no download): 2 s trials at 128 Hz over 16 electrodes of
the 10–20 montage, `n_classes` classes that differ only in where a 9–13 Hz rhythm sits on the
scalp, over background rhythms, blinks, muscle bursts and sensor noise. Every step draws a fresh
batch (a function of (seed, step) alone, so a resumed run takes exactly the steps of an
uninterrupted one); each example's channels are shuffled with probability `p_shuffle` and 25 %
of them dropped (zeroed, masked) with probability `p_drop`. Both models see the same batches and
the same classification loss; CHARM's loss adds `reorder_weight` × `reordering_loss` (−log of A's
weight on the right input electrode, for the present ones): the shuffles are made here, so their
permutations are known, and this makes A an actual reordering (`--reorder-weight 0` trains CHARM
through the classifier alone; its A then mixes channels without putting them in order).

Evaluation on `test_trials` held-out trials, the same for both models: (a) canonical order, (b)
channels shuffled, (c) 25 % of the channels missing (canonical order), (d) missing and shuffled.
For CHARM also the share of canonical slots whose largest weight in A lands on the right input
electrode (under (b)).

Written to `out`: `train_log.csv`, `results.json`, `checkpoints/step_*.pt` (both models, both
optimisers, the log and the RNG states).
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from pyaudiok.data.eeg_synth import SyntheticEEG, drop_channels, shuffle_channels
from pyaudiok.models.charm import CharmClassifier, CharmConfig
from pyaudiok.nn.channel_reorder import reordering_loss

from .checkpoint import (CheckpointError, capture_rng_state, checkpoint_path, expect_checkpoint, load_checkpoint,
                         prune_checkpoints, resolve_checkpoint, restore_rng_state, save_checkpoint)
from .runtime import (Averager, ConfigError, auto_threads, check_options, checked_config, compile_model, config_changes,
                      config_from_argv, precision_scope, resume_checkpoint, seed_everything, start_runtime, write_csv,
                      write_json, writable_output_dir)

__all__ = ["TrainConfig", "train", "evaluate", "conditions", "main", "load_model", "MODELS", "CONDITIONS"]

MODELS = ("charm", "baseline")
CONDITIONS = ("canonical", "shuffled", "missing_25", "missing_25_shuffled")
MISSING = 0.25
SYSTEM = "charm"


@dataclass
class TrainConfig:
    steps: int = 500
    batch: int = 64
    lr: float = 3e-3
    n_classes: int = 4
    p_shuffle: float = 0.5          # per example, in training
    p_drop: float = 0.5             # per example: 25 % of the channels missing
    reorder_weight: float = 1.0     # CHARM: weight of reordering_loss on the known training shuffles
    d: int = 32
    normalization: str = "softmax"
    filters: int = 32
    test_trials: int = 1024
    montage_seed: int = 0
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    threads: int = 0                # torch CPU threads (0: the idle cores)
    device: str = "auto"
    precision: str = "fp32"         # "bf16": training steps under bf16 autocast (runtime.precision_scope)
    compile: bool = False           # the model's forward (and loss) under torch.compile (runtime.compile_model)
    resume: bool = False
    progress: bool = True
    out_dir: str = "runs/charm"

    def model_config(self, reorder: bool) -> CharmConfig:
        return CharmConfig(n_channels=16, n_classes=self.n_classes, reorder=reorder, d=self.d,
                           normalization=self.normalization, filters=self.filters)


def check_config(cfg: TrainConfig) -> None:
    """ConfigError for an option out of its range."""
    check_options(cfg, positive=("batch", "lr", "test_trials", "log_every", "checkpoint_every"),
                  non_negative=("steps", "reorder_weight", "keep_checkpoints", "threads"),
                  probabilities=("p_shuffle", "p_drop"))
    checked_config(lambda: SyntheticEEG(cfg.n_classes, montage_seed=cfg.montage_seed))
    checked_config(lambda: cfg.model_config(True))


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def training_batch(data: SyntheticEEG, cfg: TrainConfig, step: int):
    """(x, mask, labels, perm) of training step `step`: fresh trials, shuffled and masked per
    example (perm[b, j]: the electrode at input position j)."""
    gen = _step_generator(cfg.seed, step)
    x, y = data.trials(cfg.batch, seed=int(torch.randint(0, 2**62, (1,), generator=gen)))
    x, mask = drop_channels(x, MISSING, gen, p=cfg.p_drop)
    x, mask, perm = shuffle_channels(x, mask, gen, p=cfg.p_shuffle)
    return x, mask, y, perm


def conditions(x: torch.Tensor, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The evaluation conditions of x[N, C, T]: name -> (x, mask, perm) (perm[b, j]: the
    electrode at input position j)."""
    gen = torch.Generator().manual_seed(seed)
    full = torch.ones(x.shape[:2], dtype=torch.bool)
    identity = torch.arange(x.shape[1]).expand(x.shape[:2])
    shuffled, _, perm = shuffle_channels(x, full, gen)
    missing, mask = drop_channels(x, MISSING, gen)
    both, both_mask, both_perm = shuffle_channels(missing, mask, gen)
    return {"canonical": (x, full, identity), "shuffled": (shuffled, full, perm),
            "missing_25": (missing, mask, identity), "missing_25_shuffled": (both, both_mask, both_perm)}


@torch.no_grad()
def evaluate(model: CharmClassifier, tests: dict, labels: torch.Tensor, batch: int = 256) -> dict[str, float]:
    """Accuracy per condition; for a model with CHARM also `slot_accuracy` (module doc)."""
    was_training = model.training
    model.eval()
    result = {}
    try:
        for name, (x, mask, perm) in tests.items():
            correct, slots = 0, 0
            for i in range(0, len(x), batch):
                logits, A = model(x[i:i + batch], mask[i:i + batch], return_reordering=True)
                correct += int((logits.argmax(1) == labels[i:i + batch]).sum())
                if A is not None and name == "shuffled":  # where the electrode of slot k sits in the input
                    where = torch.argsort(perm[i:i + batch], dim=1)
                    slots += int((A.argmax(-1) == where).sum())
            result[name] = correct / max(len(x), 1)
            if slots:
                result["slot_accuracy"] = slots / (len(x) * x.shape[1])
    finally:
        model.train(was_training)
    return result


def train(cfg: TrainConfig, log=print) -> dict[str, Any]:
    """Train CHARM and the baseline side by side (or resume); returns the results (module doc)."""
    check_config(cfg)
    runtime = start_runtime(cfg.device)
    if runtime.distributed:
        raise ConfigError("pyaudiok train charm runs in a single process")
    torch.set_num_threads(cfg.threads or auto_threads(1))
    out = Path(cfg.out_dir)
    writable_output_dir(out)
    resume_from = resume_checkpoint(out / "checkpoints", cfg.resume)
    seed_everything(cfg.seed)
    data = SyntheticEEG(cfg.n_classes, montage_seed=cfg.montage_seed)
    models = {name: compile_model(CharmClassifier(cfg.model_config(reorder=name == "charm")).to(runtime.device),
                                  cfg.compile) for name in MODELS}
    opts = {name: torch.optim.Adam(m.parameters(), lr=cfg.lr) for name, m in models.items()}
    test_x, test_y = data.trials(cfg.test_trials, seed=cfg.seed + 1_000_003)
    tests = {k: tuple(t.to(runtime.device) for t in v) for k, v in conditions(test_x, cfg.seed + 7).items()}
    test_y = test_y.to(runtime.device)

    step, history = 0, {"train": [], "pending": {"sums": {}, "count": 0}}
    if resume_from is not None:
        state = expect_checkpoint(load_checkpoint(resume_from, map_location=runtime.device), resume_from, SYSTEM,
                                  ("step", "model_configs", "models", "opts", "history", "rng"))
        for name, model in models.items():
            trained = state["model_configs"].get(name, {})
            if trained != asdict(model.config):
                raise ConfigError(f"{resume_from} was trained with another {name} model ("
                                  f"{config_changes(trained, asdict(model.config))}): resume with the run's options")
        for name in MODELS:
            models[name].load_state_dict(state["models"][name])
            opts[name].load_state_dict(state["opts"][name])
        step, history = state["step"], state["history"]
        restore_rng_state(state["rng"])
        log(f"charm: resumed from {resume_from} (step {step})")
    averager = Averager(history["pending"]["sums"], history["pending"]["count"])

    def checkpoint(at: int) -> None:
        history["pending"] = {"sums": dict(averager.sums), "count": averager.count}
        save_checkpoint(checkpoint_path(out / "checkpoints", at), {
            "system": SYSTEM, "step": at, "train_config": asdict(cfg),
            "model_configs": {n: asdict(m.config) for n, m in models.items()},
            "models": {n: m.state_dict() for n, m in models.items()},
            "opts": {n: o.state_dict() for n, o in opts.items()}, "history": history, "rng": capture_rng_state()})
        prune_checkpoints(out / "checkpoints", cfg.keep_checkpoints)

    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, desc="charm", unit="step",
               dynamic_ncols=True)
    started, last_checkpoint = time.perf_counter(), step
    while step < cfg.steps:
        x, mask, y, perm = (t.to(runtime.device) for t in training_batch(data, cfg, step))
        where = torch.argsort(perm, dim=1)  # the input position of each canonical electrode
        values = {}
        for name, model in models.items():
            with precision_scope(runtime.device, cfg.precision):
                logits, A = model(x, mask, return_reordering=True)
                loss = F.cross_entropy(logits, y)
                if A is not None and cfg.reorder_weight > 0:
                    loss = loss + cfg.reorder_weight * reordering_loss(A, where, mask.gather(1, where))
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opts[name].step()
            values[f"{name}_loss"] = float(loss.detach())
            values[f"{name}_accuracy"] = float((logits.argmax(1) == y).float().mean())
        averager.add(values)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0:
            row = {"step": step, **averager.pop()}
            history["train"].append(row)
            write_csv(out / "train_log.csv", history["train"])
            bar.set_postfix(charm=f"{row['charm_loss']:.3f}", baseline=f"{row['baseline_loss']:.3f}", refresh=False)
        if step % cfg.checkpoint_every == 0 and step != cfg.steps:
            checkpoint(step)
            last_checkpoint = step
    bar.close()
    seconds = time.perf_counter() - started
    if averager.count:  # a last, shorter interval: written out, but it stays pending for a resume
        write_csv(out / "train_log.csv", history["train"] + [{"step": step, **averager.peek()}])
    if step != last_checkpoint or resume_from is None:
        checkpoint(step)
    result = {"config": asdict(cfg), "step": step, "train_seconds": round(seconds, 1),
              **{name: evaluate(model, tests, test_y) for name, model in models.items()}}
    write_json(out / "results.json", result)
    log(format_table(result))
    return result


def format_table(result: dict[str, Any]) -> str:
    """The accuracy table of a run's results."""
    head = f"{'test accuracy':<14}" + "".join(f"{c:>21}" for c in CONDITIONS)
    lines = [head] + [f"{name:<14}" + "".join(f"{result[name][c]:>21.3f}" for c in CONDITIONS) for name in MODELS]
    if "slot_accuracy" in result["charm"]:
        lines.append(f"CHARM slots whose largest weight is on the right electrode (shuffled): "
                     f"{result['charm']['slot_accuracy']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_argv(TrainConfig, argv, prog="pyaudiok train charm", description=__doc__,
                           choices={"normalization": ("softmax", "sinkhorn"), "device": ("auto", "cpu", "cuda")},
                           check=check_config)
    if cfg.out_dir is None:
        cfg.out_dir = TrainConfig.out_dir
    train(cfg)
    return 0


def load_model(checkpoint: str | Path, which: str = "charm", device: str = "cpu") -> CharmClassifier:
    """One of the two models (`which`: "charm" or "baseline") of a `pyaudiok train charm`
    checkpoint (file or output directory), in eval mode."""
    if which not in MODELS:
        raise ValueError(f"which must be one of {MODELS}; got {which!r}")
    path = resolve_checkpoint(checkpoint)
    state = expect_checkpoint(load_checkpoint(path, map_location=device), path, SYSTEM, ("model_configs", "models"))
    try:
        config = CharmConfig(**state["model_configs"][which])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a {SYSTEM} checkpoint: its {which} config: {e}") from e
    model = CharmClassifier(config)
    model.load_state_dict(state["models"][which])
    return model.to(device).eval()


if __name__ == "__main__":
    sys.exit(main())
