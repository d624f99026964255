"""One benchmark case's candidates timed in alternation: round after round, each candidate once,
then the median and the minimum per candidate. Whole training steps swing ±15 % between single
runs on a busy or throttling machine; `pyaudiok bench` times candidates one after another, so a
slow spell lands on one of them. Here every candidate sees the same spells.

    python -m pyaudiok.bench.interleave --only models --case wavesplit [--index 0] \\
        [--candidate NAME]... [--rounds 10] [--warmup 3] [--device cuda] [--quick]

`--case`, `--index` and `--candidate` select as in bench/profile.py. Candidates that compile do so
in the warm-up rounds. On the CPU a round times one call by the wall clock; on a GPU it times a
burst of queued calls by device events, as `pyaudiok bench` does (harness.time_median), unless
harness.GPU_TIMING is "isolated"."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import harness
from .harness import prepare_timing, synchronize, time_median
from .profile import select_candidates, select_case


def interleaved(runs: dict[str, callable], device: torch.device, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each run, `rounds` rounds of one call each after `warmup` untimed rounds.
    A run that fails in the warm-up is reported and left out (as `pyaudiok bench` reports a peer)."""
    prepare_timing(device)
    for _ in range(warmup):
        for name, run in list(runs.items()):
            try:
                run()
            except Exception as e:
                print(f"  {name:<48} failed: {type(e).__name__}: {e}"[:160])
                del runs[name]
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(_one_round(run, device))
    return times


def within(context: callable, run: callable) -> callable:
    """run() inside a fresh `context()` at each call: one candidate of an A/B whose sides differ by a
    patch (bench/ab_layout.py, bench/ab_eager_autograd.py)."""
    def patched():
        with context():
            return run()
    return patched


def _one_round(run: callable, device: torch.device) -> float:
    """Seconds per call in one round: one call by the wall clock (the CPU, or a GPU's isolated timing),
    else the median of a short burst of queued calls (a GPU's device time, as the bench measures it)."""
    if device.type == "cuda" and harness.GPU_TIMING == "queued":
        return time_median(run, device, 0.0)[0]
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyaudiok.bench.interleave", description=__doc__.split("\n")[0])
    p.add_argument("--only", required=True, help="benchmark module (as in pyaudiok bench --only)")
    p.add_argument("--case", required=True, help="part of the case's name")
    p.add_argument("--index", type=int, default=0, help="which of the matching cases (default 0)")
    p.add_argument("--candidate", action="append", help="part of a candidate's name (repeatable; default all)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="the bench's quick sizes")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:  # the median of no rounds is undefined
        p.error(f"--rounds must be >= 1 and --warmup >= 0; got {args.rounds} and {args.warmup}")
    device = torch.device(args.device)
    case = select_case(device, args.only, args.case, args.index, args.quick)
    runs = {c.name: c.run for c in select_candidates(case, args.candidate)}
    print(f"{case.name} {case.params}: {args.rounds} rounds of {len(runs)} candidates, {args.warmup} warm-up rounds")
    for name, seconds in interleaved(runs, device, args.rounds, args.warmup).items():
        print(f"  {name:<48} median {statistics.median(seconds) * 1e3:9.2f} ms   min {min(seconds) * 1e3:9.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
