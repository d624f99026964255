"""The comparison harness itself: the conditioning fallback admits a result only as far off as the
reference in the same dtype, and still fails a result that is wrong."""
from __future__ import annotations

import pytest
import torch

from .harness import TOLERANCE, assert_close


def cancelling_sum(dtype):
    """Σ of terms ~1e4 that nearly cancel: a float32 evaluation misses the fixed tolerance by
    orders of magnitude."""
    gen = torch.Generator().manual_seed(0)
    terms = torch.randn(4096, generator=gen, dtype=torch.float64) * 1e4
    terms = torch.cat([terms, -terms * (1 - 1e-6)])
    return terms[torch.randperm(len(terms), generator=gen)].to(dtype).sum(0, keepdim=True)


def test_conditioning_fallback_admits_an_error_the_reference_shares():
    ref = cancelling_sum(torch.float64)
    fp32 = cancelling_sum(torch.float32)
    assert (fp32.double() - ref).norm() / ref.norm() > 100 * TOLERANCE[torch.float32]
    twice_as_far = ref + 2 * (fp32.double() - ref)
    with pytest.raises(AssertionError, match="relative error"):
        assert_close("sum", twice_as_far, ref, torch.float32)
    assert_close("sum", twice_as_far, ref, torch.float32, same_dtype_ref=lambda: fp32)
    five_times_as_far = ref + 5 * (fp32.double() - ref)
    with pytest.raises(AssertionError, match="reference's own"):
        assert_close("sum", five_times_as_far, ref, torch.float32, same_dtype_ref=lambda: fp32)


def test_conditioning_fallback_still_fails_a_wrong_result():
    ref = torch.randn(100, dtype=torch.float64)
    wrong = (ref * (1 + 1e-3)).float()
    with pytest.raises(AssertionError, match="reference's own"):
        assert_close("x", wrong, ref, torch.float32, same_dtype_ref=lambda: ref.float())
    with pytest.raises(AssertionError, match="relative error"):
        assert_close("x", wrong, ref, torch.float32, same_dtype_ref=lambda: None)
