"""Tile sweep of the Triton latent-attention kernels (DESIGN §1), for a short GPU lease.

The kernels' tiles (`pyaudiok.kernels.latent_attention._tiles`: queries × keys per program, warps,
pipeline stages, for the forward, the dK/dV and the dQ kernel) were chosen from sm_90 compile
reports, not from timings. This times them at the benchmark's size, one kernel at a time: the
forward over its candidate tiles, then the backward with the best forward varying the dK/dV tile,
then the dQ tile; next to the current tiles and PyTorch SDPA (`causal_lower_right`). Tiles that do
not compile or run out of shared memory are reported and skipped. It prints the best tiles as the
`_Tile(...)` triple to put in `_GPU_TILES`.

    python -m pyaudiok.bench.tile_sweep [--d 64] [--dtype bf16] [--n 1024] [--m 65536] [--budget 150] [--dq atomic]
        [--forward-loop overlapped]

`--n 1 --m 8192` sweeps the sampling step's forward (query tiles of 16 to 64 rows).

On a CPU it runs in Triton's interpreter (TRITON_INTERPRET=1) at toy sizes: a check of the tool,
not a measurement.
"""
from __future__ import annotations

import argparse
import itertools
import time
from contextlib import contextmanager
from typing import NamedTuple

import torch

HEADS = 8
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Row(NamedTuple):
    kernel: str             # "forward", "dK/dV" or "dQ"
    tile: object            # the kernel module's _Tile
    seconds: float | None   # median time of the timed call (forward, or forward-free backward)
    note: str = ""


def candidate_tiles(kernel: str, dtype: torch.dtype, tile_type, n: int = 1024) -> list:
    """The grid swept for one kernel; for a few queries (n <= 32: a sampling step), query tiles down
    to tl.dot's 16 rows."""
    if kernel == "forward" and n <= 32:
        rows, cols = (16, 32, 64), (32, 64, 128)
    elif kernel == "dK/dV":  # block_n keys per program hold the accumulators; block_m queries stream past
        rows, cols = (16, 32, 64), (32, 64, 128)
    elif dtype == torch.float32:  # 3xTF32: twice the operand registers, so half the tile
        rows, cols = (32, 64), (32, 64, 128)
    else:
        rows, cols = (64, 128), (64, 128)
    return [tile_type(m, n, w, s) for m, n, w, s in itertools.product(rows, cols, (4, 8), (2, 3, 4))]


@contextmanager
def tiles_fixed(module, tiles):
    """Every launch of the kernel module uses `tiles` (forward, dK/dV, dQ) meanwhile."""
    original = module._tiles
    module._tiles = lambda D, dtype, device: tiles
    try:
        yield
    finally:
        module._tiles = original


def sweep(n: int, m: int, d: int, dtype: torch.dtype, device: torch.device, budget_s: float = 150.0,
          min_time: float = 0.1, grids: dict | None = None,
          dq_mode: str = "separate", forward_loop: str = "sequential") -> tuple[list[Row], tuple, dict[str, float]]:
    """Rows of every tile tried, the best (forward, dK/dV, dQ) tiles, and the baselines' seconds
    ({"current forward", "current backward", "SDPA forward", "SDPA backward"}, and the current tiles
    timed again at the end). `grids` overrides candidate_tiles per kernel (tests); `budget_s` bounds
    each kernel's sweep; every timing is the benchmark harness's median (`harness.time_median`: CUDA
    events, after a warm-up call). `dq_mode` "atomic" times the backward that adds dQ in the dK/dV
    kernel (`kernels.latent_attention.DQ_MODE`): it has no dQ kernel to sweep. `forward_loop`
    "overlapped" times the forward's overlapped loop (`FORWARD_LOOP`)."""
    from pyaudiok.kernels import latent_attention as kernels

    # a bad setting fails here, before any timing
    with kernels.settings_set(DQ_MODE=dq_mode, FORWARD_LOOP=forward_loop):
        return _sweep(kernels, n, m, d, dtype, device, budget_s, min_time, grids)


def _sweep(kernels, n, m, d, dtype, device, budget_s, min_time, grids):

    from .harness import time_median

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, s, d, generator=gen).to(device, dtype) for s in (n, m, m))
    grad = torch.randn(q.shape, generator=gen).to(device, dtype)
    scale = d ** -0.5
    timer = lambda fn, seconds: time_median(fn, device, seconds)[0]  # noqa: E731
    current = kernels._tiles(d, dtype, device)
    forward = lambda: kernels.launch_forward(q, k, v, None, scale, None)  # noqa: E731
    out, lse = forward()
    backward = lambda: kernels.launch_backward(grad, q, k, v, out, lse, None, scale, None)  # noqa: E731

    baselines = {"current forward": timer(forward, min_time), "current backward": timer(backward, min_time)}
    if device.type == "cuda":
        import torch.nn.functional as F
        from torch.nn.attention.bias import causal_lower_right
        mask = causal_lower_right(n, m)
        qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        baselines["SDPA forward"] = timer(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), min_time)
        sdpa_out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask)
        baselines["SDPA backward"] = timer(lambda: torch.autograd.grad(sdpa_out, (qg, kg, vg), grad,
                                                                       retain_graph=True), min_time)

    rows: list[Row] = []
    best = list(current)
    for slot, (kernel, call) in enumerate((("forward", forward), ("dK/dV", backward), ("dQ", backward))):
        if kernel == "dQ" and kernels.dq_mode() == "atomic":
            continue  # dQ comes from the dK/dV kernel
        best_s = baselines["current forward" if slot == 0 else "current backward"]
        started = time.perf_counter()
        for tile in (grids or {}).get(kernel) or candidate_tiles(kernel, dtype, type(current[0]), n):
            if time.perf_counter() - started > budget_s:
                rows.append(Row(kernel, tile, None, "not tried: budget spent"))
                continue
            tiles = tuple(tile if i == slot else best[i] for i in range(3))
            try:
                with tiles_fixed(kernels, tiles):
                    seconds = timer(call, min_time)
            except Exception as exc:  # out of resources, no compile for this shape: skip the tile
                rows.append(Row(kernel, tile, None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"))
                continue
            rows.append(Row(kernel, tile, seconds))
            if seconds < best_s:
                best_s, best[slot] = seconds, tile
    # The current tiles once more, last: the spread between the two timings of the same kernels is
    # the noise against which the sweep's differences are read.
    baselines["current forward, again"] = timer(forward, min_time)
    baselines["current backward, again"] = timer(backward, min_time)
    return rows, tuple(best), baselines


def report(rows: list[Row], best: tuple, baselines: dict[str, float]) -> str:
    lines = [f"{'kernel':8} {'block_m':>7} {'block_n':>7} {'warps':>5} {'stages':>6} {'ms':>9}  note"]
    for row in rows:
        t = row.tile
        ms = f"{row.seconds * 1e3:9.3f}" if row.seconds is not None else f"{'-':>9}"
        lines.append(f"{row.kernel:8} {t.block_m:7d} {t.block_n:7d} {t.warps:5d} {t.stages:6d} {ms}  {row.note}")
    lines.append("")
    lines += [f"{name}: {seconds * 1e3:.3f} ms" for name, seconds in baselines.items()]
    lines.append("best (forward, dK/dV, dQ): " + ", ".join(repr(t) for t in best))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyaudiok.bench.tile_sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=64, help="head dim (default 64)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--n", type=int, default=1024, help="queries (default 1024)")
    parser.add_argument("--m", type=int, default=65536, help="keys (default 65536)")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds per kernel's sweep (default 150)")
    parser.add_argument("--min-time", type=float, default=0.1, help="timed seconds per tile (default 0.1)")
    parser.add_argument("--dq", choices=("separate", "atomic"), default="separate",
                        help="the backward's dQ scheme (kernels.latent_attention.DQ_MODE; default separate)")
    parser.add_argument("--forward-loop", choices=("sequential", "overlapped"), default="sequential",
                        help="the forward's loop order (kernels.latent_attention.FORWARD_LOOP; default sequential)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: the sweep times GPU kernels (it runs in Triton's interpreter only as a check)")
        return 2
    rows, best, baselines = sweep(args.n, args.m, args.d, DTYPES[args.dtype], torch.device("cuda"), args.budget,
                                  args.min_time, dq_mode=args.dq, forward_loop=args.forward_loop)
    print(f"latent attention tiles, N {args.n}, M {args.m}, d {args.d}, {args.dtype}, dQ {args.dq}, "
          f"forward loop {args.forward_loop}, "
          f"{torch.cuda.get_device_name()}")
    print(report(rows, best, baselines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
