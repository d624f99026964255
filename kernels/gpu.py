"""Facts about the GPU a launch runs on, shared by the launchers."""
from __future__ import annotations

import functools

import torch


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached per device); 0 for any other device
    (Triton's interpreter on the CPU)."""
    if device.type != "cuda":
        return 0
    return _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
