"""A/B of a training step of the models whose conv stacks run channels-last (pyaudiok.nn.layout)
against the same weights in the default layout, alternated in one process at bench_models' sizes:
python -m pyaudiok.bench.ab_layout [--case cola|permutation.pav] [--rounds N]."""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from unittest import mock

import torch

from .bench_models import SETUPS, _train_step

MODULES = {"cola": "pyaudiok.models.cola.model", "permutation.pav": "pyaudiok.models.permutation.model"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=sorted(MODULES), action="append")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for case in args.case or sorted(MODULES):
        model, loss_fn, after_step = SETUPS[case](torch.device("cpu"), torch.Generator().manual_seed(0), False)
        default = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        steps = {"channels-last": (_train_step(copy.deepcopy(model), loss_fn, after_step), None),
                 # the default layout: contiguous kernels, and the inputs left as they come
                 "default layout": (_train_step(default, loss_fn, after_step), lambda x: x.contiguous())}
        times = {name: [] for name in steps}
        for round_ in range(args.rounds + 1):  # the first round warms up
            for name, (step, layout) in steps.items():
                patch = mock.patch(f"{MODULES[case]}.channels_last", layout) if layout else mock.MagicMock()
                with patch:
                    start = time.perf_counter()
                    step(), step()
                    if round_:
                        times[name].append((time.perf_counter() - start) / 2 * 1e3)
        median = {name: statistics.median(t) for name, t in times.items()}
        print(f"{case}: " + ", ".join(f"{name} median {median[name]:.0f} ms (min {min(times[name]):.0f})"
                                      for name in steps)
              + f"; default / channels-last {median['default layout'] / median['channels-last']:.2f}x")


if __name__ == "__main__":
    main()
