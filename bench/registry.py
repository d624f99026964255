"""Every benchmark module, by name (`pyaudiok bench --only NAME`)."""
from __future__ import annotations

import torch

from . import bench_rvq, bench_soundstream
from . import bench_soft_rank
from . import bench_sinkhorn

MODULES = {"rvq": bench_rvq, "soundstream": bench_soundstream}
MODULES["soft_rank"] = bench_soft_rank
MODULES["sinkhorn"] = bench_sinkhorn


def collect(device: torch.device, quick: bool, only: list[str] | None = None):
    names = only or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; available: {', '.join(MODULES)}")
    for name in names:
        yield from MODULES[name].cases(device, quick)
