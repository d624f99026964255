"""What every trainer shares besides checkpoints: torchrun processes and devices, CPU threads,
seeding, per-rank RNG states, running loss averages and CSV logs."""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyaudiok.codec.bitstream import atomic_writer

from .checkpoint import (CheckpointError, capture_rng_state, checkpoint_path, expect_checkpoint, latest_checkpoint,
                         load_checkpoint, prune_checkpoints, save_checkpoint)

__all__ = ["Runtime", "ConfigError", "check_options", "check_at_least", "usage_checked", "checked_config",
           "resume_checkpoint", "fresh_output_dir", "writable_output_dir", "config_changes",
           "write_json", "DEVICES", "PRECISIONS", "SHARED_CHOICES", "precision_scope", "add_precision_option",
           "compile_model", "add_compile_option", "COMPILE_HELP",
           "pick_device", "start_runtime", "stop_runtime", "training_runtime", "auto_threads", "seed_everything",
           "unwrap", "gather_rng_states", "Averager", "classification_accuracy", "write_csv"]


class ConfigError(ValueError):
    """A run refused before it starts: an option out of its range, or an output directory that
    does not fit --resume. The command line prints it as a one-line error."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(cfg: Any, *, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                  probabilities: tuple[str, ...] = (), finite: tuple[str, ...] = ()) -> None:
    """ConfigError naming the first of cfg's numeric fields outside its range: `positive` > 0,
    `non_negative` >= 0, `probabilities` in [0, 1] (NaN is in none of them); `finite` ones (also
    listed in another range, or not) must moreover be finite."""
    for names, inside, what in ((positive, lambda v: v > 0, "> 0"), (non_negative, lambda v: v >= 0, ">= 0"),
                                (probabilities, lambda v: 0 <= v <= 1, "in [0, 1]"),
                                (finite, math.isfinite, "finite")):
        for name in names:
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not inside(value):
                raise ConfigError(f"{_flag(name)} must be {what}; got {value!r}")


def check_at_least(cfg: Any, names: tuple[str, ...], low: int, why: str) -> None:
    """ConfigError naming the first of cfg's fields below `low`; `why` says what needs that many."""
    for name in names:
        if getattr(cfg, name) < low:
            raise ConfigError(f"{_flag(name)} must be >= {low} ({why}); got {getattr(cfg, name)!r}")


def usage_checked(parser, check: Callable[[Any], Any], config: Any) -> Any:
    """`config` once check(config) passes; its ValueError (ConfigError) is the parser's usage error
    (the message, exit status 2)."""
    try:
        check(config)
    except ValueError as e:
        parser.error(str(e))
    return config


def checked_config(make: Callable[[], Any]) -> Any:
    """make() (a model's config from a trainer's options), its ValueError or TypeError (an unknown
    or out-of-range setting) raised as a ConfigError."""
    try:
        return make()
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


def resume_checkpoint(directory: str | os.PathLike, resume: bool) -> Path | None:
    """The checkpoint a resumable run with checkpoints in `directory` starts from: with `resume`
    the newest one, or none with a notice on stderr (a restart script that always passes --resume,
    a torchrun job's first start, must still start; the notice shows a mistyped --out); without,
    none, and a ConfigError when the directory already holds checkpoints (a fresh run would mix its
    own with them, and pruning would delete its own as the older ones)."""
    newest = latest_checkpoint(directory)
    if resume and newest is None:
        print(f"--resume: no checkpoint in {directory} yet: starting a fresh run", file=sys.stderr)
    if not resume and newest is not None:
        raise ConfigError(f"{directory} already holds the checkpoints of a run (newest: {newest.name}): "
                          f"pass --resume to continue it, or choose another --out")
    return newest


# What a run of the trainers without --resume leaves in its output directory.
RUN_OUTPUTS = ("results.json", "log.csv", "checkpoint.pt")


def fresh_output_dir(directory: str | os.PathLike | None) -> None:
    """A ConfigError when `directory` already holds a run's outputs (RUN_OUTPUTS, checkpoints/*.pt):
    a new run would overwrite some of them and leave the others (an earlier run's later epochs)
    beside its own, so that the directory would describe neither run."""
    if directory is None:
        return
    path = Path(directory)
    found = [name for name in RUN_OUTPUTS if (path / name).exists()]
    found += [f"checkpoints/{p.name}" for p in sorted((path / "checkpoints").glob("*.pt"))[:1]]
    if found:
        raise ConfigError(f"{directory} already holds the outputs of a run ({', '.join(found)}): "
                          f"choose another --out, or remove them first")
    writable_output_dir(directory)


def writable_output_dir(directory: str | os.PathLike | None, option: str = "--out") -> None:
    """Create `directory` (and its parents) and try writing in it, so that an output path that is a
    file, or one that cannot be created or written, is a ConfigError before any work instead of an
    OSError when the results are written."""
    if directory is None:
        return
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {directory} is not a directory (a file of that name exists)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"{option} {directory} cannot be created or written: {e.strerror or e}") from None


def config_changes(trained: dict[str, Any], given: dict[str, Any]) -> str:
    """The settings in which two configs (as dicts) differ: "name: trained -> given, ..."."""
    return ", ".join(f"{k}: {trained.get(k)!r} -> {given.get(k)!r}" for k in dict.fromkeys([*trained, *given])
                     if trained.get(k) != given.get(k))


@dataclass(frozen=True)
class Runtime:
    """This process's place in a (possibly single-process) run."""
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
# The options every trainer has, and the values their command lines accept.
SHARED_CHOICES = {"device": DEVICES, "precision": PRECISIONS}


def precision_scope(device: torch.device, precision: str):
    """The region a training step's forward and losses run in: "fp32" as they are, "bf16" under
    bf16 autocast on the run's device (matmuls and convolutions in bf16; the parameters, their
    gradients and the optimiser stay float32, and the fused ops take the bf16 activations with
    float32 accumulation). Validation runs outside it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def add_precision_option(parser, default: str) -> None:
    """`--precision` on a trainer's hand-written argument parser (config_from_argv adds it itself)."""
    parser.add_argument("--precision", choices=PRECISIONS, default=default,
                        help="bf16: training steps under bf16 autocast (parameters and validation stay float32)")


COMPILE_HELP = "run the model's forward and loss under torch.compile (the first steps compile)"
COMPILED_METHODS = ("forward", "loss")


def compile_model(model: nn.Module, enabled: bool) -> nn.Module:
    """With `enabled`, this model's forward (and its loss, where it has one) run under torch.compile
    from now on: compiled on the instance itself, so its parameters, state dict, checkpoints and
    DDP wrapping are those of the plain model. Returns the model."""
    if enabled:
        for name in COMPILED_METHODS:
            if hasattr(type(model), name):
                setattr(model, name, torch.compile(getattr(model, name)))
    return model


def add_compile_option(parser) -> None:
    """`--compile` on a trainer's hand-written argument parser (config_from_argv adds bool fields itself)."""
    parser.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def pick_device(device: str = "auto", index: int = 0) -> torch.device:
    """The device a trainer runs on: "auto" (CUDA when available), "cpu" or "cuda" (CUDA device
    `index`, made the current one)."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES}; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA device")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    where = torch.device("cuda", index)
    torch.cuda.set_device(where)
    return where


def start_runtime(device: str = "auto") -> Runtime:
    """Read torchrun's environment; join the process group when there is more than one process.
    device: "auto" (CUDA when available), "cpu" or "cuda"."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    where = pick_device(device, local_rank)
    use_cuda = where.type == "cuda"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Runtime(rank, world, local_rank, local_world, where)


def stop_runtime(runtime: Runtime, *, finished: bool) -> None:
    """Leave the process group. After a finished run every rank first waits for the others, so none
    closes its gloo connections while a peer still has a collective in flight on them (the peer would
    abort on the closed socket); after a failure there is no waiting, since a peer may be gone."""
    if not runtime.distributed or not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def training_runtime(device: str, threads: int | None) -> Iterator[Runtime]:
    """A trainer's runtime for the body of a `with`: started (process group under torchrun, this
    process's thread count, `threads` or auto_threads), and stopped at the end, with the waiting of a
    finished run only when the body returned normally."""
    runtime = start_runtime(device)
    torch.set_num_threads(threads or auto_threads(runtime.local_world_size))
    finished = False
    try:
        yield runtime
        finished = True
    finally:
        stop_runtime(runtime, finished=finished)


def auto_threads(local_world_size: int) -> int:
    """This process's share of the cores, reduced to those the 1-minute load average leaves idle:
    on a busy machine, oversubscribed threads wait on each other and run many times slower."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // local_world_size)
    idle = cores - os.getloadavg()[0] if hasattr(os, "getloadavg") else cores
    return max(1, min(share, int(idle / local_world_size)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def gather_rng_states(runtime: Runtime) -> list[dict[str, Any]]:
    """Every rank's RNG state (collective under DDP: all ranks call it)."""
    state = capture_rng_state()
    if not runtime.distributed:
        return [state]
    states: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(states, state)
    return states


def save_resumable(runtime: Runtime, directory: Path, at: int, keep: int, history: dict[str, Any],
                   averager: "Averager", state: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
    """The checkpoint of a resumable run at step `at` (collective under DDP: all ranks call it): the
    averager's pending interval goes into `history`, every rank's RNG state is gathered, and the
    main rank writes state(rng states) and keeps only the newest `keep` checkpoints."""
    history["pending"] = {"sums": dict(averager.sums), "count": averager.count}
    rng = gather_rng_states(runtime)
    if runtime.is_main:
        save_checkpoint(checkpoint_path(directory, at), state(rng))
        prune_checkpoints(directory, keep)


def progress_bar(runtime: Runtime, total: int, initial: int, enabled: bool, desc: str):
    """The step progress bar of a resumable run (shown on the main rank only)."""
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not (enabled and runtime.is_main), desc=desc, unit="step",
                dynamic_ncols=True)


def same_on_every_rank(runtime: Runtime, result: Any) -> Any:
    """The main rank's `result` on every rank (a broadcast under DDP)."""
    if not runtime.distributed:
        return result
    shared = [result]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


class Averager:
    """Running sums of the logged losses over one logging interval (resumable: sums and count)."""

    def __init__(self, sums: dict[str, float] | None = None, count: int = 0) -> None:
        self.sums, self.count = dict(sums or {}), count

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def peek(self) -> dict[str, float]:
        return {key: value / max(self.count, 1) for key, value in self.sums.items()}

    def pop(self) -> dict[str, float]:
        means = self.peek()
        self.sums, self.count = {}, 0
        return means


def fit_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int,
              step_loss: Callable[[int], tuple[torch.Tensor, dict[str, float]]], *, log_every: int,
              describe: Callable[[dict[str, float]], str], log: Callable[[str], Any] = print,
              clip: float = 5.0, precision: str = "fp32") -> tuple[list[dict[str, float]], float]:
    """The plain loop of the single-file trainers: per step, the loss and its logged parts (floats or
    scalar tensors) from step_loss(step) (run in `precision`: precision_scope), one optimiser step
    with the gradient norm clipped at `clip`; every log_every steps (and at the last) a row of the
    interval's means, logged as describe(row). The values are read to the host only for a row: on a
    GPU, one wait per interval instead of one per step. Returns (rows, seconds)."""
    rows, avg, pending, start = [], Averager(), [], time.perf_counter()
    device = next(model.parameters()).device
    for step in range(steps):
        with precision_scope(device, precision):
            loss, parts = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        pending.append({"loss": loss.detach(), **parts})
        if (step + 1) % log_every == 0 or step == steps - 1:
            for values in pending:
                avg.add({k: float(v) for k, v in values.items()})
            pending = []
            row = {"step": step + 1, **avg.pop()}
            rows.append(row)
            log(describe(row))
    return rows, time.perf_counter() - start


@torch.no_grad()
def classification_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Share of x whose argmax class is y: eval mode, batches moved to the model's device and counted
    there (one host read at the end, no sync per batch); the model's mode is restored."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = sum((model(x[i:i + batch].to(device)).argmax(1) == y[i:i + batch].to(device)).sum()
                  for i in range(0, len(x), batch))
    model.train(was_training)
    return int(correct) / max(len(x), 1)


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON to `path`, atomically."""
    import json

    with atomic_writer(path) as f:
        f.write((json.dumps(value, indent=1) + "\n").encode())


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """Rows (dicts; columns in order of first appearance) to a CSV file, atomically."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_writer(path) as f:
        f.write(text.getvalue().encode())


# ----------------------------------------------------------------------------------------------
# Single-file runs (a results.json, a log.csv and one checkpoint.pt in an output directory).

def write_run(out_dir: str | os.PathLike, rows: list[dict[str, float]], result: dict, model: nn.Module,
              model_config: dict, system: str | None = None) -> None:
    """Write a finished run: log.csv (rows), results.json (result) and checkpoint.pt (the model's
    weights, its config, the result, and which trainer wrote it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "log.csv", rows)
    write_json(out / "results.json", result)
    state = {"model": model.state_dict(), "model_config": model_config, "result": result}
    save_checkpoint(out / "checkpoint.pt", state if system is None else {"system": system, **state})


def read_run_checkpoint(checkpoint: str | os.PathLike, system: str | None = None) -> dict[str, Any]:
    """The state written by `write_run` (a checkpoint.pt file, or the run's output directory);
    with `system`, a CheckpointError unless the file is that trainer's."""
    path = Path(checkpoint)
    path = path / "checkpoint.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = load_checkpoint(path)
    return state if system is None else expect_checkpoint(state, path, system, ("model", "model_config", "result"))


def model_from_run_checkpoint(checkpoint: str | os.PathLike, system: str, config_cls, model_cls):
    """(the model of a `pyaudiok train <system>` checkpoint in eval mode on the CPU, whatever device it
    was trained on; the checkpoint's state); a CheckpointError if it is another system's."""
    state = read_run_checkpoint(checkpoint, system)  # tensors mapped to the CPU
    try:
        config = config_cls(**state["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {checkpoint} is not a {system} checkpoint: its model_config: {e}") from e
    model = model_cls(config)
    model.load_state_dict(state["model"])
    return model.eval(), state


def config_from_argv(config_cls, argv, *, prog: str, description: str | None,
                     choices: dict[str, tuple[str, ...]] | None = None, check: Callable[[Any], Any] | None = None,
                     helps: dict[str, str] | None = None):
    """A dataclass config from command-line options generated from its fields (`--field-name`,
    typed by the default; `choices` restricts some, `device` and `precision` always; `--out` sets
    `out_dir`; `helps` describes some, and every --help line shows the default); a ValueError of
    check(config) is the parser's error (usage, exit status 2)."""
    import argparse
    from dataclasses import asdict

    helps = {"precision": "bf16: training steps under bf16 autocast (parameters and validation stay float32)",
             "compile": COMPILE_HELP, "device": "auto: CUDA when available", **(helps or {})}

    choices = {**SHARED_CHOICES, **(choices or {})}
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(config_cls()).items():
        if name == "out_dir":
            continue
        flag = f"--{name.replace('_', '-')}"
        text = f"{helps[name]} (default: %(default)s)" if name in helps else "default: %(default)s"
        if name in choices:
            parser.add_argument(flag, choices=choices[name], default=value, help=text)
        elif isinstance(value, bool):  # type=bool would read "False" as True; the action shows its default
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=helps.get(name))
        else:
            parser.add_argument(flag, type=type(value), default=value, help=text)
    parser.add_argument("--out", dest="out_dir", default=None,
                        help="directory for log.csv, results.json and checkpoint.pt")
    config = config_cls(**vars(parser.parse_args(argv)))
    return config if check is None else usage_checked(parser, check, config)
