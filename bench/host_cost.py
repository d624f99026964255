"""Host time per call of the Triton backends: what a small call on a GPU is bound by.

Each op runs on its Triton backend at a tiny size, where the device work is negligible, forward and
backward. A call's host time is measured as `--calls` calls queued with no sync, then one sync,
divided by the number of calls. Two ways of calling are alternated round by round in one process:

- "direct": what pyaudiok does. A Triton op that no tracer watches calls its launcher directly, inside
  an autograd.Function of the op's own autograd rule when it takes a gradient, and the launcher
  launches its kernels as they are (`pyaudiok.ops._library.DirectOp`, `kernels.gpu.launchable`).
- "grad registered": calls taking a gradient through the registered custom op's autograd, the rest
  direct (what a training step paid before the direct autograd path).
- "registered": every call forced through the registered custom op and `torch.library.wrap_triton`.
  This is what every call paid before direct calls.

The launch mechanisms on a trivial kernel are timed too: a direct launch, a `wrap_triton` launch,
and a `triton_op` call.

    python -m pyaudiok.bench.host_cost [--device cuda] [--calls 300] [--rounds 5] [--only fourier_crop]

On a CPU, Triton runs in its interpreter with the kernel bodies stubbed out. Nothing is computed and
the outputs are garbage, so what is measured is the Python host cost alone. A case that fails (its
host code reading garbage outputs) is reported as skipped, with the error.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from typing import Callable
from unittest import mock

import torch

from .harness import backward_step, environment, synchronize


def _cases(device: torch.device) -> dict[str, Callable[[], None]]:
    """name -> one tiny fwd+bwd call of the op on its Triton backend (public API)."""
    from pyaudiok import ops

    def leaf(*shape):
        return torch.randn(*shape, device=device, requires_grad=True)

    x2, x1, strides = leaf(1, 1, 32, 32), leaf(1, 1, 64), torch.tensor([2.0], device=device, requires_grad=True)
    q, k, v = leaf(1, 2, 16, 32), leaf(1, 2, 64, 32), leaf(1, 2, 64, 32)
    cost, scores = leaf(2, 8, 8), leaf(4, 16)
    anchors, positives, weight = leaf(16, 32), leaf(16, 32), leaf(32, 32)
    energy = (torch.rand(2, 8, 64, device=device) + 0.1).requires_grad_()
    pcen_params = [torch.full((8,), value, device=device, requires_grad=True) for value in (0.96, 2.0, 0.5, 0.04)]
    vad_logits, activity = leaf(2, 3, 100), torch.rand(2, 3, 100, device=device) > 0.5
    order = torch.arange(3, device=device).expand(2, 3)
    speaker_vectors, speaker_table = leaf(64, 32), leaf(16, 32)
    alpha = torch.tensor(2.0, device=device, requires_grad=True)
    reorder_logits, eeg = leaf(2, 4, 6), leaf(2, 6, 32)
    present = (torch.arange(6, device=device) < 5).expand(2, 6)
    return {
        "fourier_crop 2-D 32x32, matmul": backward_step(lambda: ops.fourier_crop(x2, strides, method="matmul"),
                                                     [x2, strides]),
        "fourier_crop 2-D 32x32, fft": backward_step(lambda: ops.fourier_crop(x2, strides, method="fft"),
                                                     [x2, strides]),
        "fourier_crop 1-D 64, fft": backward_step(lambda: ops.fourier_crop(x1, strides), [x1, strides]),
        "latent_cross_attention": backward_step(lambda: ops.latent_cross_attention(q, k, v), [q, k, v]),
        "sinkhorn (10 iterations)": backward_step(lambda: ops.sinkhorn(cost, eps=0.5, n_iters=10), [cost]),
        "soft_rank": backward_step(lambda: ops.soft_rank(scores), [scores]),
        "bilinear_contrastive_loss": backward_step(lambda: ops.bilinear_contrastive_loss(anchors, positives, weight),
                                                [anchors, positives, weight]),
        "pcen": backward_step(lambda: ops.pcen(energy, *pcen_params), [energy, *pcen_params]),
        "collar_vad_loss": backward_step(lambda: ops.collar_vad_loss(vad_logits, activity, order, collar_frames=2.0),
                                      [vad_logits]),
        "distance_logsumexp": backward_step(lambda: ops.distance_logsumexp(speaker_vectors, speaker_table, alpha=alpha),
                                         [speaker_vectors, speaker_table, alpha]),
        "reorder_channels": backward_step(lambda: ops.reorder_channels(reorder_logits, eeg, present)[0],
                                       [reorder_logits, eeg]),
    }


def _trivial_launches(device: torch.device) -> dict[str, Callable[[], None]]:
    """A kernel that does nothing, launched three ways."""
    import triton
    import triton.language as tl
    from torch.library import wrap_triton

    @triton.jit
    def nothing(x_ptr, n, BLOCK: tl.constexpr):
        pass

    x = torch.zeros(16, device=device)

    def launcher(t: torch.Tensor) -> torch.Tensor:
        wrap_triton(nothing)[(1,)](t, t.numel(), BLOCK=16)
        return t.new_empty(0)

    name = "pyaudiok_bench::host_cost_nothing"
    if not hasattr(torch.ops.pyaudiok_bench, "host_cost_nothing"):
        torch.library.triton_op(name, mutates_args=())(launcher)
    op = torch.ops.pyaudiok_bench.host_cost_nothing
    return {"trivial kernel: direct launch": lambda: nothing[(1,)](x, x.numel(), BLOCK=16),
            "trivial kernel: wrap_triton launch": lambda: wrap_triton(nothing)[(1,)](x, x.numel(), BLOCK=16),
            "trivial kernel: triton_op call": lambda: op(x)}


def host_time(fn: Callable[[], None], device: torch.device, calls: int) -> float:
    """Seconds of host time per call: `calls` calls queued with no sync, then one sync."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


@contextlib.contextmanager
def registered_calls():
    """Every Triton op call through its registered custom op, every launch through wrap_triton."""
    from pyaudiok.ops import _library
    with mock.patch.object(_library, "tracing", lambda: True):
        yield


@contextlib.contextmanager
def registered_autograd():
    """Calls taking a gradient through the registered custom op (its torch.library autograd)."""
    from pyaudiok.ops import _library
    with mock.patch.object(_library.DirectOp, "_eager_autograd", lambda self: None):
        yield


@contextlib.contextmanager
def stubbed_interpreter():
    """Triton's interpreter with every kernel body skipped (the CPU's host-cost stand-in)."""
    from triton.runtime.interpreter import InterpretedFunction
    with mock.patch.object(InterpretedFunction, "run", lambda self, *args, **kwargs: None):
        yield


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", action="append", help="cases whose name contains this (repeatable)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("on a CPU, run with TRITON_INTERPRET=1 (Triton's interpreter, kernel bodies stubbed out)")
    from pyaudiok import dispatch
    env = environment(device)
    print(f"host time per call on {env.get('device_name', device)}, torch {torch.__version__}, "
          f"commit {env.get('commit', '?')}; {args.calls} calls queued per timing, median of {args.rounds} rounds"
          + ("; CPU: Triton interpreter with kernel bodies stubbed out (Python host cost alone)"
             if device.type == "cpu" else ""))
    stub = stubbed_interpreter() if device.type == "cpu" else contextlib.nullcontext()
    with stub, dispatch.use_backend("triton"):
        cases = {**_trivial_launches(device), **_cases(device)}
        for name, fn in cases.items():
            if args.only and not any(s in name for s in args.only):
                continue
            ways = {"direct": contextlib.nullcontext, "grad registered": registered_autograd,
                    "registered": registered_calls}
            if name.startswith("trivial"):
                ways = {"": contextlib.nullcontext}
            times: dict[str, list[float]] = {way: [] for way in ways}
            try:
                for way, context in ways.items():  # warm-up: compiles, caches, plans
                    with context():
                        host_time(fn, device, 3)
                for _ in range(args.rounds):
                    for way, context in ways.items():
                        with context():
                            times[way].append(host_time(fn, device, args.calls))
            except Exception as error:  # noqa: BLE001 — report and go on with the next case
                print(f"{name:45s} skipped: {type(error).__name__}: {str(error).splitlines()[0][:80]}")
                continue
            med = {way: statistics.median(t) * 1e6 for way, t in times.items()}
            if "" in med:
                print(f"{name:45s} {med['']:9.1f} us")
            else:
                print(f"{name:45s} direct {med['direct']:9.1f} us   grad registered {med['grad registered']:9.1f} us   "
                      f"registered {med['registered']:9.1f} us   "
                      f"saved {med['registered'] - med['direct']:8.1f} us ({med['registered'] / med['direct']:.2f}x)")


if __name__ == "__main__":
    main()
