"""A/B of a training step of the models whose conv stacks run channels-last (pyaudiok.nn.layout)
against the same weights in the default layout, alternated in one process at bench_models' sizes:
python -m pyaudiok.bench.ab_layout [--case cola|permutation.pav] [--rounds N]."""
from __future__ import annotations

import argparse
import copy
import statistics
from contextlib import nullcontext
from unittest import mock

import torch

from .bench_models import SETUPS, _train_step
from .interleave import interleaved, within

MODULES = {"cola": "pyaudiok.models.cola.model", "permutation.pav": "pyaudiok.models.permutation.model"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=sorted(MODULES), action="append")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cpu")
    for case in args.case or sorted(MODULES):
        model, loss_fn, after_step = SETUPS[case](device, torch.Generator().manual_seed(0), False)
        default = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        # the default layout: contiguous kernels, and the inputs left as they come
        as_they_come = lambda: mock.patch(f"{MODULES[case]}.channels_last", lambda x: x.contiguous())  # noqa: E731
        runs = {"channels-last": within(nullcontext, _train_step(copy.deepcopy(model), loss_fn, after_step)),
                "default layout": within(as_they_come, _train_step(default, loss_fn, after_step))}
        seconds = interleaved(runs, device, args.rounds, 1)
        times = {name: [t * 1e3 for t in per_call] for name, per_call in seconds.items()}
        median = {name: statistics.median(t) for name, t in times.items()}
        print(f"{case}: " + ", ".join(f"{name} median {median[name]:.0f} ms (min {min(times[name]):.0f})"
                                      for name in runs)
              + f"; default / channels-last {median['default layout'] / median['channels-last']:.2f}x")


if __name__ == "__main__":
    main()
