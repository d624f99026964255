"""What every launcher shares: how a kernel is launched, and facts about the GPU it runs on."""
from __future__ import annotations

import functools

import torch
import triton
from torch.library import wrap_triton

from ..ops import _library


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for a launcher's grid and block counts (host code): triton.cdiv is a
    constexpr_function in Triton 3.9, whose argument unwrapping costs ~2-4 µs of host time a call, and
    a launch computes several."""
    return (a + b - 1) // b


class _ContractedLaunch:
    """`kernel[grid](...)` with FP contraction requested (a * b + c as one FMA) and the given compile
    options: the kernels were written and timed with contraction, Triton's default so far. Triton
    3.10 turns the default off (3.9 warns on every process's first compile that it will)."""
    __slots__ = ("kernel", "options")

    def __init__(self, kernel, options: dict):
        self.kernel = kernel
        self.options = {"enable_fp_fusion": True, **options}

    def __getitem__(self, grid):
        return functools.partial(self.kernel[grid], **self.options)


def launchable(kernel, **options):
    """The kernel to launch as `launchable(kernel, **options)[grid](...)`: `wrap_triton(kernel)` for a
    tracer (`_library.tracing`), which records the launch through it (inductor then compiles the
    kernel with its own options: these are dropped, as wrap_triton takes no `maxnreg`), else the
    kernel itself with FP contraction on and `options` (Triton compile options, e.g. maxnreg). An
    eager launch through wrap_triton costs 82 µs of host time on an H200 machine against 20 µs for a
    direct one (bench/results/2026-11-27_h200_host_cost.txt), so small calls would be bound by it."""
    return wrap_triton(kernel) if _library.tracing() else _ContractedLaunch(kernel, options)


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached per device); 0 for any other device
    (Triton's interpreter on the CPU)."""
    if device.type != "cuda":
        return 0
    return _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision for operands of `dtype`. fp32: TF32 where PyTorch's matmuls may use
    it, else 3xTF32 (fp32-accurate on tensor cores; a plain fp32 "ieee" dot lowers to FMA loops that
    spill). Half-precision operands go to the tensor cores as they are (the value is unused)."""
    if dtype != torch.float32:
        return "tf32"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def dot_block(n: int, high: int | None = None) -> int:
    """A block size covering n along a tl.dot dimension: a power of two, at least 16 (tl.dot's
    minimum), at most `high` if given."""
    block = max(16, triton.next_power_of_2(max(n, 1)))
    return block if high is None else min(high, block)
