"""pytest-benchmark view of the same cases `pyaudiok bench` runs:

    pytest bench --benchmark-only                 # quick sizes
    PYAUDIOK_BENCH_FULL=1 pytest bench --benchmark-only

One benchmark per case × candidate; candidates that cannot run here are skipped with the reason."""
import os

import pytest
import torch

from .registry import collect

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUICK = os.environ.get("PYAUDIOK_BENCH_FULL", "0") in ("", "0")
CANDIDATES = [(case, cand) for case in collect(DEVICE, QUICK) for cand in case.candidates]


@pytest.mark.parametrize("case,candidate", CANDIDATES, ids=[f"{c.name}-{k.name}" for c, k in CANDIDATES])
def test_benchmark(benchmark, case, candidate):
    if candidate.skip is not None:
        pytest.skip(candidate.skip)
    if candidate.kind == "peer":  # as in `pyaudiok bench`: a peer that fails is reported, not an error of ours
        try:
            candidate.run()
        except Exception as e:
            pytest.skip(f"failed: {type(e).__name__}: {e}"[:200])
    benchmark.group = case.name
    benchmark.extra_info.update(case.params)

    def run():
        candidate.run()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
    benchmark(run)
