"""`pyaudiok train llp`: learning from label proportions (DESIGN §10) on scikit-learn's digits,
accuracy against bag size.

    pyaudiok train llp --out runs/llp                  # --resume skips the runs already finished
    pyaudiok train llp --device cuda --out runs/llp    # --device auto|cpu|cuda

The training images are cut once into random bags of each size in `bag_sizes` (the last bag of a
size holds the remainder); a learner sees only each bag's class proportions. For every bag size
and method a small MLP is trained from the same initialisation for `epochs` passes over the bags
(`batch` instances a step, whole bags):

* `proportion`: the mean-of-probabilities proportion loss (pyaudiok.ops.proportion_loss);
* `ot`: cross-entropy to the OT pseudo-labels of every bag (pyaudiok.ops.ot_pseudo_labels, soft
  k·Q; `ot_hard`: argmax of the plan), recomputed from the current predictions every step;

and `supervised` (instance labels, same model and steps) gives the ceiling. Test accuracy on the
held-out images is reported per run. Written to `out`: `results.json` (the accuracy table),
`log.csv` (per-epoch loss and test accuracy of every run) and `checkpoints/<run>.pt` (each
finished run's model, config and result: what `--resume` reads back).
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pyaudiok.data.label_proportions import Split, load_digits, make_bags
from pyaudiok.nn import OTPseudoLabelLoss, ProportionLoss

from .checkpoint import load_checkpoint, save_checkpoint
from .runtime import (DEVICES, auto_threads, check_options, classification_accuracy, compile_model, fresh_output_dir,
                      pick_device, precision_scope, seed_everything, writable_output_dir, write_csv)

__all__ = ["TrainConfig", "METHODS", "make_model", "train_one", "run", "main"]

METHODS = ("proportion", "ot", "ot_hard")


@dataclass
class TrainConfig:
    bag_sizes: str = "8,32,128,256"
    methods: str = "proportion,ot"
    supervised: bool = True        # also train on the instance labels (the ceiling)
    epochs: int = 150
    batch: int = 256               # instances a step (whole bags; at least one bag)
    lr: float = 2e-3
    hidden: int = 128
    ot_eps: float = 1.0
    ot_iters: int = 100
    test_fraction: float = 0.2
    seed: int = 0
    threads: int = 0               # 0: this process's share of the idle cores
    device: str = "auto"           # "auto" (CUDA when available), "cpu" or "cuda"
    precision: str = "fp32"        # "bf16": training steps under bf16 autocast (runtime.precision_scope)
    compile: bool = False          # the model's forward (and loss) under torch.compile (runtime.compile_model)
    resume: bool = False
    progress: bool = True
    out_dir: str | None = None

    def bag_size_list(self) -> list[int]:
        sizes = [int(s) for s in str(self.bag_sizes).split(",") if s.strip()]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"bag_sizes must be a comma-separated list of sizes >= 1; got {self.bag_sizes!r}")
        return sizes

    def check(self) -> None:
        """ConfigError for an option out of its range (bag sizes and methods included)."""
        check_options(self, positive=("lr", "hidden", "ot_eps", "ot_iters"),
                      non_negative=("epochs", "batch", "threads"))
        self.bag_size_list(), self.method_list()

    def method_list(self) -> list[str]:
        methods = [m.strip() for m in str(self.methods).split(",") if m.strip()]
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        return methods


def make_model(inputs: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def _loss_fn(method: str, cfg: TrainConfig):
    if method == "proportion":
        return ProportionLoss()
    return OTPseudoLabelLoss(eps=cfg.ot_eps, n_iters=cfg.ot_iters, tol=None, hard=method == "ot_hard")


@torch.no_grad()
def _minibatches(sizes: torch.Tensor, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    """The bags in a random order, grouped into steps of about `batch` instances (whole bags)."""
    groups, current, filled = [], [], 0
    for bag in torch.randperm(len(sizes), generator=gen).tolist():
        current.append(bag)
        filled += int(sizes[bag])
        if filled >= batch:
            groups.append(torch.tensor(current))
            current, filled = [], 0
    if current:
        groups.append(torch.tensor(current))
    return groups


def train_one(cfg: TrainConfig, data: Split, method: str, bag_size: int, init: dict,
              on_epoch=None, device: torch.device | None = None) -> tuple[dict, list, nn.Module]:
    """Train one run ("supervised" ignores bag_size's proportions and uses the labels) on `device`
    (None: pick_device(cfg.device)); returns (result, per-epoch log rows, model)."""
    device = pick_device(cfg.device) if device is None else device
    model = make_model(data.x_train.shape[1], cfg.hidden, data.n_classes)
    model.load_state_dict(init)
    compile_model(model.to(device), cfg.compile)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    bags = make_bags(data.y_train, bag_size, data.n_classes, seed=cfg.seed)
    # Instances sorted by bag: a step's instances are then a few contiguous slices. The bag
    # bookkeeping and the step order stay on the CPU (its generator); what the model sees is moved.
    order = torch.argsort(bags.bag_index, stable=True)
    start = torch.cumsum(bags.sizes, 0) - bags.sizes
    x, y, bag_of = data.x_train[order].to(device), data.y_train[order].to(device), bags.bag_index[order]
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    loss_fn = None if method == "supervised" else _loss_fn(method, cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    rows, begin = [], time.perf_counter()
    for epoch in range(cfg.epochs):
        total, steps = 0.0, 0
        for group in _minibatches(bags.sizes, cfg.batch, gen):
            idx = torch.cat([torch.arange(int(start[b]), int(start[b] + bags.sizes[b])) for b in group.tolist()])
            on_device = idx.to(device)
            with precision_scope(device, cfg.precision):
                logits = model(x[on_device])
                if loss_fn is None:
                    loss = F.cross_entropy(logits, y[on_device])
                else:
                    # Renumber the step's bags 0..len(group)-1 so proportions hold only this step's bags.
                    local = torch.empty(len(bags.sizes), dtype=torch.int64)
                    local[group] = torch.arange(len(group))
                    loss = loss_fn(logits, local[bag_of[idx]].to(device), bags.proportions[group].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        rows.append({"run": _name(method, bag_size), "epoch": epoch + 1, "loss": total / max(steps, 1),
                     "test_accuracy": classification_accuracy(model, x_test, y_test)})
        if on_epoch is not None:
            on_epoch()
    test_accuracy = rows[-1]["test_accuracy"] if rows else classification_accuracy(model, x_test, y_test)
    result = {"method": method, "bag_size": bag_size if method != "supervised" else 1, "n_bags": len(bags.sizes),
              "test_accuracy": round(test_accuracy, 4),
              "train_accuracy": round(classification_accuracy(model, x, y), 4),  # the training set in bag order
              "seconds": round(time.perf_counter() - begin, 1)}
    return result, rows, model


def _name(method: str, bag_size: int) -> str:
    return "supervised" if method == "supervised" else f"{method}_bag{bag_size}"


def run(cfg: TrainConfig, log=print) -> dict:
    """Every run of the sweep (skipping, with --resume, those with a checkpoint of the same config)."""
    from tqdm.auto import tqdm

    cfg.check()
    sizes, methods = cfg.bag_size_list(), cfg.method_list()
    device = pick_device(cfg.device)
    torch.set_num_threads(cfg.threads or auto_threads(1))
    seed_everything(cfg.seed)
    data = load_digits(cfg.test_fraction, cfg.seed)
    init = make_model(data.x_train.shape[1], cfg.hidden, data.n_classes).state_dict()  # one initialisation for all
    plan = ([("supervised", 1)] if cfg.supervised else []) + [(m, k) for k in sizes for m in methods]
    out = Path(cfg.out_dir) if cfg.out_dir else None
    # The device changes where a run is trained, not which run it is: a finished run counts on any device.
    same_config = {k: v for k, v in asdict(cfg).items()
                   if k not in ("resume", "progress", "threads", "device", "out_dir")}
    n = len(data.y_train)
    bar = tqdm(total=sum(cfg.epochs for _ in plan), disable=not cfg.progress, unit="epoch",
               dynamic_ncols=True)
    results, rows = [], []
    for method, bag_size in plan:
        name = _name(method, bag_size)
        path = out / "checkpoints" / f"{name}.pt" if out else None
        if cfg.resume and path is not None and path.exists():
            state = load_checkpoint(path)
            if state["config"] == same_config:
                results.append(state["result"])
                rows += state["log"]
                bar.update(cfg.epochs)
                continue
        bar.set_description(name)
        result, run_rows, model = train_one(cfg, data, method, bag_size, init, on_epoch=lambda: bar.update(1),
                                            device=device)
        results.append(result)
        rows += run_rows
        if path is not None:
            save_checkpoint(path, {"system": "llp", "model": model.state_dict(), "config": same_config,
                                   "result": result, "log": run_rows})
    bar.close()
    summary = {"config": asdict(cfg), "n_train": n, "n_test": len(data.y_test), "runs": results,
               "table": table(results)}
    if out is not None:
        import json
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "log.csv", rows)
        (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    if log:
        log(summary["table"])
    return summary


def table(results: list[dict]) -> str:
    """Test accuracy: one row per bag size, one column per method (the supervised ceiling apart)."""
    methods = list(dict.fromkeys(r["method"] for r in results if r["method"] != "supervised"))
    sizes = list(dict.fromkeys(r["bag_size"] for r in results if r["method"] != "supervised"))
    acc = {(r["method"], r["bag_size"]): r["test_accuracy"] for r in results}
    lines = [f"{'bag size':>8} " + " ".join(f"{m:>12}" for m in methods)]
    for k in sizes:
        lines.append(f"{k:>8} " + " ".join(f"{acc[(m, k)]:>12.3f}" if (m, k) in acc else f"{'-':>12}"
                                           for m in methods))
    ceiling = [r["test_accuracy"] for r in results if r["method"] == "supervised"]
    if ceiling:
        lines.append(f"supervised ceiling (instance labels): {ceiling[0]:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from .runtime import config_from_argv

    cfg = config_from_argv(TrainConfig, argv, prog="pyaudiok train llp", description=__doc__,
                           choices={"device": DEVICES})
    try:
        cfg.check()
        if not cfg.resume:  # --resume takes the finished runs there
            fresh_output_dir(cfg.out_dir)
        writable_output_dir(cfg.out_dir)
        run(cfg)
    except (ValueError, ImportError) as e:
        print(f"pyaudiok train llp: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
