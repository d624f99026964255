"""Running the frontends built on torch's FFTs (log-mel, spectra) on any batch and float dtype."""
from __future__ import annotations

from typing import Callable

import torch

_HALF = (torch.float16, torch.bfloat16)


def on_fft_friendly_input(transform: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """transform(x) with its batch as the first dim, where torch's FFTs would refuse x: half inputs
    are transformed in float32 and the result cast back (the CPU FFTs have no half kernels, cuFFT
    only at powers of two), and an empty batch runs one zero item that is then dropped (MKL refuses
    empty batches), so the result still has the right shape. `transform` must cast any buffer it
    combines with its input to the input's dtype."""
    dtype = x.dtype
    if dtype in _HALF:
        x = x.float()
    y = transform(x) if x.shape[0] else transform(x.new_zeros(1, *x.shape[1:]))[:0]
    return y.to(dtype)
