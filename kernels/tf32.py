"""fp32 values as a TF32 high part plus an fp32 remainder, for tensor-core products at about fp32
accuracy: a·b ≈ a_hi·b_hi + a_hi·b_lo + a_lo·b_hi in TF32 (the dropped a_lo·b_lo is ~2⁻²² of a·b).

``hi`` is ``v`` rounded to nearest at TF32's 10 mantissa bits (its 13 low bits cleared), so
``v == hi + lo`` exactly and ``|lo| <= 2⁻¹¹ |v|``; small integers and fp16/bf16 values have
``lo == 0``. One bit pattern for the kernels (``split``) and the host (``parts``), so operands
split on either side agree.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_ROUND = 0x1000   # half a TF32 ulp in the fp32 bit pattern
_KEEP = -8192     # ~0x1FFF: clears the 13 mantissa bits TF32 drops


@triton.jit
def split(v):
    """(hi, lo) of an fp32 tensor inside a kernel."""
    hi = ((v.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)
    return hi, v - hi


def parts(t: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) of an fp32 tensor on the host: the same bits as `split`."""
    hi = ((t.view(torch.int32) + _ROUND) & _KEEP).view(torch.float32)
    return hi, t - hi
