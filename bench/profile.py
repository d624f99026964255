"""Where one benchmark case's time goes, for a short GPU lease: torch.profiler over a few calls of
each selected candidate, the operators with the most self time (device time on a GPU, else CPU),
how many kernels a call launches, and how many times a call waits for the device (CUDA's sync
debug mode counts the host-device synchronisations). A candidate that takes milliseconds for a
few megabytes of data shows here whether launches, synchronisations or one slow kernel cost it.

    python -m pyaudiok.bench.profile --only fourier_crop --case 2d --index 3 --candidate auto \\
        [--device cuda] [--calls 5] [--rows 20] [--quick]

`--case` picks the cases whose name contains it, `--index` one of those (in the bench's order);
`--candidate` (repeatable) keeps the candidates whose name contains it (default: all that run).
`--sort cpu` lists the operators by host time instead; `--python` adds the Python functions with
the most own time (cProfile): where a call bound by the host spends it.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import warnings

import torch

from . import registry
from .harness import Candidate, Case, prepare_timing, synchronize, time_median


def select_case(device: torch.device, module: str, name: str, index: int, quick: bool) -> Case:
    if module not in registry.MODULES:
        raise SystemExit(f"--only {module!r}: no such benchmark; available: {', '.join(registry.MODULES)}")
    matches = [c for c in registry.MODULES[module].cases(device, quick) if name in c.name]
    if not matches:
        raise SystemExit(f"no case of {module} has {name!r} in its name")
    if not 0 <= index < len(matches):
        raise SystemExit(f"--index {index}: {len(matches)} case(s) match {name!r}")
    return matches[index]


def select_candidates(case: Case, names: list[str] | None) -> list[Candidate]:
    """The case's runnable candidates whose name contains one of `names` (all of them without)."""
    return [c for c in case.candidates if c.run is not None and c.skip is None
            and (not names or any(s in c.name for s in names))]


def count_syncs(fn, device: torch.device) -> int | None:
    """Host-device synchronisations of one call (None off CUDA)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            synchronize(device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def python_hotspots(fn, device: torch.device, calls: int, rows: int) -> str:
    """The Python functions (and the C functions they call) with the most own time over `calls` calls."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    synchronize(device)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(rows)
    return out.getvalue().strip()


def profile_candidate(cand: Candidate, device: torch.device, calls: int, rows: int, sort_by: str = "device",
                      python: bool = False) -> str:
    # The bench's own timing (its warm-up call and timed calls also warm the caches and compilers).
    prepare_timing(device)
    per_call_ms = time_median(cand.run, device, min_time=0.2)[0] * 1e3
    syncs = count_syncs(cand.run, device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            cand.run()
        synchronize(device)
    events = prof.key_averages()
    on_device = device.type == "cuda"
    launches = sum(e.count for e in events if on_device and e.device_type == torch.autograd.DeviceType.CUDA)
    sort = "self_device_time_total" if on_device and sort_by == "device" else "self_cpu_time_total"
    head = f"-- {cand.name}: {per_call_ms:.3f} ms per call (the bench's median, unprofiled)"
    if on_device:
        head += f"; {launches / calls:.0f} kernels and {syncs} host-device synchronisations per call"
    report = head + "\n" + events.table(sort_by=sort, row_limit=rows, max_name_column_width=60)
    if python:
        report += f"\n-- {cand.name}: Python functions by own time over {calls} calls\n"
        report += python_hotspots(cand.run, device, calls, rows)
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pyaudiok.bench.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", required=True, choices=sorted(registry.MODULES), help="benchmark module")
    ap.add_argument("--case", default="", help="substring of the case name")
    ap.add_argument("--index", type=int, default=0, help="which of the matching cases (default 0)")
    ap.add_argument("--candidate", action="append", help="substring of a candidate name (repeatable)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--calls", type=int, default=5, help="profiled calls per candidate")
    ap.add_argument("--rows", type=int, default=20, help="operators listed per candidate")
    ap.add_argument("--quick", action="store_true", help="the bench's small sizes")
    ap.add_argument("--sort", choices=("device", "cpu"), default="device",
                    help="order the operators by device time (default on a GPU) or by host time")
    ap.add_argument("--python", action="store_true", help="also the Python functions with the most own time")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    case = select_case(device, args.only, args.case, args.index, args.quick)
    print(f"{case.name} {case.params} on {args.device}")
    chosen = select_candidates(case, args.candidate)
    if not chosen:
        raise SystemExit("no runnable candidate matches: " + ", ".join(c.name for c in case.candidates))
    for cand in chosen:
        try:
            print(profile_candidate(cand, device, args.calls, args.rows, args.sort, args.python))
        except Exception as exc:  # noqa: BLE001 - a failing candidate is reported, the rest still run
            print(f"-- {cand.name}: failed: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
