"""The benchmark harness shared by every op: a case is a set of candidates (the reference, every
backend, the peers users would pick instead, and optionally a speed floor) timed side by side in
one run, on the same inputs. Among the peers of the op-level cases is the plain PyTorch version
under torch.compile (`compiled`), the alternative to a hand-written kernel; full runs only.

Timing: warm-up, then the median of repeats: `torch.utils.benchmark` on the CPU, CUDA events on a
GPU (calls queued back to back by default: device time per call, see GPU_TIMING); on the CPU
with glibc reusing freed heap as a long-running process does (`prepare_timing`).
Peak memory: the CUDA allocator's peak on a GPU; on the CPU the process's resident high-water mark
(Linux /proc, reset before each candidate) above what was resident before the call, measured with
every larger allocation mapped and returned on its own so the mark follows the call's tensors.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

KINDS = ("reference", "backend", "peer", "floor")


@dataclasses.dataclass
class Candidate:
    name: str                 # e.g. "cpu", "reference", "vector-quantize-pytorch ResidualVQ"
    kind: str                 # one of KINDS
    run: Callable[[], Any] | None
    skip: str | None = None   # why it cannot run here (reported, not an error)
    # Compares this candidate's output with the reference output: a short note, e.g. "codes identical".
    check: Callable[[Any, Any], str] | None = None
    compiles: bool = False    # its first call runs torch.compile (seconds to a minute): full runs only


@dataclasses.dataclass
class Case:
    name: str                 # e.g. "rvq.forward"
    params: dict
    candidates: list[Candidate]


@dataclasses.dataclass
class Result:
    case: str
    candidate: str
    kind: str
    params: dict
    median_s: float | None = None
    repeats: int = 0
    peak_bytes: int | None = None
    note: str = ""
    skip: str | None = None
    speedup_vs_reference: float | None = None
    speedup_vs_best_peer: float | None = None
    times_floor: float | None = None


def with_backend(backend: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """fn, run with `backend` forced (pyaudiok.use_backend)."""
    import pyaudiok

    def run():
        with pyaudiok.use_backend(backend):
            return fn()
    return run


def with_tf32(run: Callable[[], Any]) -> Callable[[], Any]:
    """run with torch.backends.cuda.matmul.allow_tf32 set (restored after): what a user who lets
    torch's float32 matmuls use TF32 gets (cuDNN's convolutions use it by default)."""
    def tf32_run():
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return run()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    return tf32_run


def with_settings(run: Callable[[], Any], settings: dict[str, Any]) -> Callable[[], Any]:
    """run() with module settings changed meanwhile (a candidate route), restored after. Keys name
    a module attribute under pyaudiok: "ops.fourier_crop.PRODUCTS", "kernels.latent_attention.DQ_MODE"."""
    targets = []
    for key, value in settings.items():
        module, name = key.rsplit(".", 1)
        targets.append((importlib.import_module(f"pyaudiok.{module}"), name, value))

    def call():
        saved = [(module, name, getattr(module, name)) for module, name, _ in targets]
        for module, name, value in targets:
            setattr(module, name, value)
        try:
            return run()
        finally:
            for module, name, value in saved:
                setattr(module, name, value)
    return call


def first_compile_alone(run: Callable[[], Any]) -> Callable[[], Any]:
    """run, with torch.compile's caches cleared before its first call: each compiled candidate
    compiles as in a program of its own, not within the recompile limit of code objects (model
    blocks, the dispatcher) that earlier candidates compiled for other shapes."""
    fresh = True

    def call():
        nonlocal fresh
        if fresh:
            torch._dynamo.reset()
            fresh = False
        return run()
    return call


def compiled(name: str, fn: Callable[[], Any], backend: str | None = "reference", check=None) -> Candidate:
    """The peer a user gets by compiling the plain PyTorch version instead of calling a fused op:
    fn under torch.compile (inductor, shapes static as in a training loop), pyaudiok's ops in it on
    `backend`. Compiling happens in the harness' first, untimed call."""
    run = torch.compile(fn, dynamic=False)
    run = with_backend(backend, run) if backend else run
    return Candidate(name, "peer", first_compile_alone(run), check=check, compiles=True)


def relative_error(what: str = "") -> Callable[[Any, Any], str]:
    """A candidate check: the project's error measure ‖out − ref‖/‖ref‖ (in float64), noted as
    "rel err 1.2e-07" (after `what`, e.g. "plan")."""
    def check(output, reference) -> str:
        if output is None or reference is None:
            return ""
        out, ref = output.detach().double(), reference.detach().double()
        return f"{what + ' ' if what else ''}rel err {((out - ref).norm() / ref.norm()).item():.1e}"
    return check


def backend_candidates(op, device: torch.device, dtype: torch.dtype, args: tuple,
                       make_run: Callable[[str], Callable[[], Any]], check=None) -> list[Candidate]:
    """One candidate per fused backend of a registered op (`pyaudiok.dispatch.Op`), skipped with
    the registry's reason where it cannot run; `make_run(backend)` builds the timed closure."""
    out = []
    for backend in ("cpu", "triton", "cuda"):
        impl = op.impls.get(backend)
        reason = "not implemented" if impl is None else impl.why_not(device, dtype, args)
        if reason is None and backend == "triton" and device.type == "cpu":
            reason = "the Triton interpreter is for tests, not timing"
        out.append(Candidate(backend, "backend", None if reason else make_run(backend), skip=reason, check=check))
    return out


def backward_step(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """A timed forward + backward: fn()'s output summed and backpropagated, the leaves' gradients
    cleared after (none accumulate across calls); returns the output, detached, for the checks."""
    def step():
        out = fn()
        out.sum().backward()
        for leaf in leaves:
            leaf.grad = None
        return out.detach()
    return step


def op_candidates(op, device: torch.device, dtype: torch.dtype, args: tuple, step: Callable[[], Any], check=None,
                  compile_reference: bool = True) -> list[Candidate]:
    """A fused op's usual candidates, all timing `step` (calls of the public op) on the backend each
    names: the reference, every fused backend (`backend_candidates`; args as the registry's
    constraints see them), the automatic choice, and the reference under torch.compile (the peer a
    user gets by compiling the plain version) unless compile_reference is False."""
    cands = [Candidate("reference", "reference", with_backend("reference", step))]
    cands += backend_candidates(op, device, dtype, args, lambda b: with_backend(b, step), check)
    cands.append(Candidate("auto (dispatch)", "backend", step, check=check))
    if compile_reference:
        cands.append(compiled("reference, torch.compile", step, check=check))
    return cands


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def threads(count: int):
    """torch (and the C++ kernels' parallel loops) on `count` threads meanwhile."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# How a GPU candidate is timed: "queued" (default), calls queued back to back with an event pair
# around each and a synchronisation only every few calls, so the host runs ahead as in a training
# loop and each interval is the call's device time (or, when the host cannot keep ahead, the
# host-bound rate: its gaps fall inside the intervals), as triton.testing.do_bench times; or
# "isolated", a synchronisation after every call, so each interval also holds the host's time to
# launch the call's first kernels onto an idle GPU (a single call's latency; the harness's only mode
# before 2026-11-28, which charged a Python-launched op's ~0.3 ms of host time to every call).
GPU_TIMINGS = ("queued", "isolated")
GPU_TIMING = "queued"


def time_median(fn: Callable[[], Any], device: torch.device, min_time: float) -> tuple[float, int]:
    """(median seconds per call, number of timed calls) after a warm-up call."""
    if device.type == "cuda":
        return _event_median(fn, lambda: torch.cuda.Event(enable_timing=True), lambda: synchronize(device),
                             min_time, GPU_TIMING)
    fn()
    from torch.utils import benchmark
    measurement = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()
                                  ).blocked_autorange(min_run_time=min_time)
    return measurement.median, len(measurement.times) * measurement.number_per_run


def _event_median(fn: Callable[[], Any], new_event: Callable[[], Any], sync: Callable[[], None], min_time: float,
                  mode: str, max_calls: int = 10_000,
                  clock: Callable[[], float] = time.perf_counter) -> tuple[float, int]:
    """(median seconds per call, timed calls) from device events around each call (see GPU_TIMING).

    The loop's budget is `clock` time; at least 3 intervals (a median), `max_calls` calls at most.
    Queued calls go in bursts with a synchronisation after each, sized from the calls' time so far
    (the warm-up's at first, which may hold a compile) so that a burst takes about a tenth of the
    budget: 4 to 50 calls. A burst's first call starts on an idle GPU, so its interval is dropped as
    the isolated mode's would hold host time; one burst of 4 gives a slow call its 3 intervals."""
    if mode not in GPU_TIMINGS:
        raise ValueError(f"GPU timing must be one of {GPU_TIMINGS}; got {mode!r}")
    started = clock()
    fn()
    sync()
    per_call = clock() - started
    kept: list[float] = []
    deadline = clock() + min_time
    calls = 0
    while (clock() < deadline or len(kept) < 3) and calls < max_calls:
        burst = 1 if mode == "isolated" else _burst(min_time, per_call, max_calls - calls, len(kept) < 3)
        events = []
        for _ in range(burst):
            start, end = new_event(), new_event()
            start.record()
            fn()
            end.record()
            events.append((start, end))
        sync()
        calls += burst
        timed = events if burst == 1 else events[1:]
        kept += [start.elapsed_time(end) / 1e3 for start, end in timed]
        per_call = statistics.median(kept)
    return statistics.median(kept), len(kept)


def _burst(min_time: float, per_call: float, calls_left: int, first: bool) -> int:
    """Queued calls in the next burst: about a tenth of the budget, 4 to 50 calls, no more than the calls
    left (but 4 for a first burst, whose 3 intervals a median needs; 2 later, one to drop)."""
    wanted = max(4, min(50, int(min_time / (10 * max(per_call, 1e-9)))))
    return max(4 if first else 2, min(wanted, calls_left))


def _read_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


_LIBC = None
_LIBC_LOADED = False
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def _libc():
    global _LIBC, _LIBC_LOADED
    if not _LIBC_LOADED:
        _LIBC_LOADED = True
        try:
            import ctypes
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.mallopt  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = None
    return _LIBC


def _malloc_mode(for_peak_memory: bool) -> None:
    """glibc's allocator, set for what is measured next.

    Peak memory: every allocation above 64 KiB gets its own mapping, returned on free, so the
    resident high-water mark follows the tensors a call allocates instead of reusing freed heap.
    Timing: allocations up to 32 MiB come from the heap and stay there when freed, as glibc's
    dynamic threshold makes them in a long-running process after the first call; otherwise every
    timed call would pay page faults for its scratch buffers that no user's loop pays."""
    libc = _libc()
    if libc is None:
        return
    if for_peak_memory:
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    else:
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Bytes allocated at the peak of one call, above what was in use before it."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _malloc_mode(for_peak_memory=True)
    try:
        if _libc() is not None:
            _libc().malloc_trim(0)  # give freed heap back, so what the call allocates must be faulted in anew
        try:  # writing 5 resets the resident-set high-water mark (VmHWM) of this process
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return None
        before = _read_status_kib("VmRSS")
        fn()
        peak = _read_status_kib("VmHWM")
    finally:
        _malloc_mode(for_peak_memory=False)
    return None if before is None or peak is None else max(peak - before, 0) * 1024


def prepare_timing(device: torch.device) -> None:
    """The conditions every timing here runs under (run_case, bench/interleave.py, bench/profile.py):
    on the CPU, glibc reusing freed heap as a long-running process does (_malloc_mode)."""
    if device.type == "cpu":
        _malloc_mode(for_peak_memory=False)


def run_case(case: Case, device: torch.device, min_time: float) -> list[Result]:
    results: list[Result] = []
    reference_output = None
    prepare_timing(device)
    for cand in case.candidates:
        res = Result(case.name, cand.name, cand.kind, case.params, skip=cand.skip)
        results.append(res)
        if cand.skip is not None or cand.run is None:
            continue
        try:
            output = cand.run()
            synchronize(device)
            if cand.kind == "reference":
                reference_output = output
            elif cand.check is not None and reference_output is not None:
                res.note = cand.check(output, reference_output)
            del output
            res.median_s, res.repeats = time_median(cand.run, device, min_time)
            res.peak_bytes = peak_memory(cand.run, device)
            if "audio_seconds" in case.params:  # audio models: real-time factor, < 1 is faster
                res.note = f"{res.note}  RTF {res.median_s / case.params['audio_seconds']:.3f}".strip()
        except Exception as e:  # a peer's failure is a result to report, not a crash of the run
            res.skip = f"failed: {type(e).__name__}: {e}"[:200]
    _add_ratios(results)
    return results


def _add_ratios(results: list[Result]) -> None:
    def best(kind):
        times = [r.median_s for r in results if r.kind == kind and r.median_s]
        return min(times) if times else None
    ref, peer, floor = best("reference"), best("peer"), best("floor")
    for r in results:
        if not r.median_s:
            continue
        if ref:
            r.speedup_vs_reference = ref / r.median_s
        if peer:
            r.speedup_vs_best_peer = peer / r.median_s
        if floor and r.kind != "floor":
            r.times_floor = r.median_s / floor


def _commit() -> str:
    """The commit being measured: PYAUDIOK_COMMIT when set (a copy of the tree whose git metadata is
    missing or stale, e.g. on a lent GPU machine), else git's HEAD."""
    if os.environ.get("PYAUDIOK_COMMIT"):
        return os.environ["PYAUDIOK_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name() -> str:
    """The CPU's model name and the vector instruction set torch's kernels use on it (figures from
    AVX2 and AVX-512 machines differ, for our kernels and for the peers)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def environment(device: torch.device) -> dict:
    commit = _commit()
    from pyaudiok import backends, __version__
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": device.type, "device_name": name, "threads": torch.get_num_threads(),
        "pyaudiok": __version__, "torch": torch.__version__, "triton": backends.triton_version(),
        "python": platform.python_version(), "commit": commit,
        **({"gpu_timing": GPU_TIMING} if device.type == "cuda" else {}),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _fmt(value, fmt, suffix=""):
    if value is None:
        return format("-", f">{len(format(1.0, fmt)) + len(suffix)}")
    return format(value, fmt) + suffix


def format_row(r: Result) -> str:
    """One candidate's line of the table."""
    if r.skip:
        return f"{r.case:<18} {r.candidate:<40} {'skipped':>10}  {r.skip}"
    peak = None if r.peak_bytes is None else r.peak_bytes / 2**20
    return (f"{r.case:<18} {r.candidate:<40} {_fmt(r.median_s * 1e3, '10.2f')} "
            f"{_fmt(r.speedup_vs_reference, '6.2f', 'x')} {_fmt(r.speedup_vs_best_peer, '7.2f', 'x')} "
            f"{_fmt(r.times_floor, '7.2f', 'x')} {_fmt(peak, '8.1f')}  {r.note}")


def format_table(results: list[Result]) -> str:
    header = (f"{'case':<18} {'candidate':<40} {'median ms':>10} {'vs ref':>7} {'vs peer':>8} "
              f"{'x floor':>8} {'peak MB':>8}  note")
    lines = [header, "-" * len(header)]
    last_case = None
    for r in results:
        if last_case is not None and r.case != last_case:
            lines.append("")
        last_case = r.case
        lines.append(format_row(r))
    lines.append("")
    lines += peer_summary(results)
    lines.append("vs ref / vs peer: speed-up over the reference / the fastest peer (>1 is faster); "
                 "x floor: time over the speed floor's time.")
    return "\n".join(lines)


def peer_summary(results: list[Result]) -> list[str]:
    """One line per case and backend: its speed-up over each peer, measured in this run. Cases of
    one name at several sizes are told apart by their parameters."""
    def key(r: Result) -> tuple[str, str]:
        return r.case, json.dumps(r.params, sort_keys=True, default=str)
    names = [r.case for r in dict((key(r), r) for r in results).values()]
    lines = []
    for case_key in dict.fromkeys(key(r) for r in results):
        rows = [r for r in results if key(r) == case_key and r.median_s]
        label = case_key[0]
        if names.count(label) > 1 and rows:
            label += " (" + " ".join(f"{k}={v}" for k, v in rows[0].params.items()) + ")"
        peers = [r for r in rows if r.kind == "peer"]
        for r in rows:
            if r.kind == "backend" and peers:
                ratios = ", ".join(f"{p.median_s / r.median_s:.2f}x {p.candidate}" for p in peers)
                lines.append(f"{label}: {r.candidate} is {ratios}")
    return lines + ([""] if lines else [])


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """`write(file)`, then the file replaces `path` (its directory created if missing): a failure or a crash
    midway leaves the previous file whole, never a truncated one. OSError (disk full, permission, ...) passes."""
    from pyaudiok.codec.bitstream import atomic_writer

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        write(f)


def write_json(path: str | os.PathLike, env: dict, results: list[Result]) -> None:
    rows = [{**env, **dataclasses.asdict(r)} for r in results]
    text = json.dumps(rows, indent=1) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))


def write_plot(path: str | os.PathLike, env: dict, results: list[Result]) -> None:
    """Bar chart per case of each candidate's speed-up over the reference (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r.case for r in results))
    fig, axes = plt.subplots(len(cases), 1, figsize=(9, 2.2 + 0.45 * len(results)), squeeze=False)
    colors = {"reference": "grey", "backend": "tab:blue", "peer": "tab:orange", "floor": "tab:green"}
    for ax, case in zip(axes[:, 0], cases):
        rows = [r for r in results if r.case == case and r.speedup_vs_reference]
        ax.barh([r.candidate for r in rows], [r.speedup_vs_reference for r in rows],
                color=[colors[r.kind] for r in rows])
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(f"{case}  {rows[0].params if rows else ''}", fontsize=9)
        ax.set_xlabel("speed-up over the reference (log)")
        ax.invert_yaxis()
    fig.suptitle(f"pyaudiok {env['commit']} on {env['device_name']} ({env['date']})", fontsize=10)
    fig.tight_layout()
    try:  # the format from the file name's extension, as savefig(path) would take it (png without one)
        write_atomically(path, lambda f: fig.savefig(f, dpi=110, format=Path(path).suffix[1:] or None))
    finally:
        plt.close(fig)
