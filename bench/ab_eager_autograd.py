"""A/B of model training steps with the fused ops' eager autograd path (pyaudiok.ops._library.DirectOp
runs the kernel inside an autograd.Function made of the op's rule) against the registered custom op's
autograd (the path before it), alternated in one process at bench_models' sizes, automatic backends:
python -m pyaudiok.bench.ab_eager_autograd [--case NAME]... [--rounds N] [--device cpu|cuda].
The difference is host time per op call, so it shows where a step is bound by its host (small models
on a GPU); a step bound by its arithmetic (these models on the CPU) shows none."""
from __future__ import annotations

import argparse
import statistics
from contextlib import nullcontext
from unittest import mock

import torch

from pyaudiok.ops import _library

from .bench_models import SETUPS, _train_step
from .interleave import interleaved, within

WAYS = ("eager Function", "registered op")


def _way(name: str):
    """The context a step of `name` runs in: the registered op forced by turning the Function path off."""
    if name == "registered op":
        return mock.patch.object(_library.DirectOp, "_eager_autograd", lambda self: None)
    return nullcontext()


def compare(case: str, device: torch.device, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per step of each way, alternated (bench/interleave.py) after one round to warm up."""
    model, loss_fn, after_step = SETUPS[case](device, torch.Generator().manual_seed(0), False)
    step = _train_step(model, loss_fn, after_step)
    runs = {name: within(lambda name=name: _way(name), step) for name in WAYS}
    return {name: [t * 1e3 for t in seconds] for name, seconds in interleaved(runs, device, rounds, 1).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=sorted(SETUPS), action="append")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    for case in args.case or ["wavesplit", "dive", "cola", "permutation.sinkhorn"]:
        times = compare(case, device, args.rounds)
        median = {name: statistics.median(t) for name, t in times.items()}
        print(f"{case}: " + ", ".join(f"{name} median {median[name]:.1f} ms (min {min(times[name]):.1f})"
                                      for name in WAYS)
              + f"; eager Function {median['registered op'] / median['eager Function']:.3f}x", flush=True)


if __name__ == "__main__":
    main()
