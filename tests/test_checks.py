"""The shared argument checks' messages (pyaudiok/ops/_checks.py)."""
import pytest
import torch

from pyaudiok import ops
from pyaudiok.ops import _checks


def test_one_of_returns_an_allowed_value_and_lists_the_choices_otherwise():
    assert _checks.one_of("mode", "b", ("a", "b")) == "b"
    with pytest.raises(ValueError, match=r"^mode must be 'a' or 'b'; got 'c'$"):
        _checks.one_of("mode", "c", ("a", "b"))
    with pytest.raises(ValueError, match=r"^source must be 'auto', 'synthetic' or 'tts'; got 3$"):
        _checks.one_of("source", 3, ("auto", "synthetic", "tts"))
    with pytest.raises(ValueError, match=r"^kind must be 'only'; got None$"):
        _checks.one_of("kind", None, ("only",))


def _meta(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype, device="meta")


# Inputs on the meta device (shapes, no data) that the ops read values or host copies from before any
# backend is chosen: each call must fail with a ValueError naming the argument, not deep inside torch.
META_CALLS = {
    "fourier_crop": (lambda: ops.fourier_crop(_meta(1, 2, 16), _meta(1)), "x must be a CPU or CUDA tensor"),
    "distance_logsumexp": (lambda: ops.distance_logsumexp(_meta(3, 4), _meta(2, 4), alpha=1.0),
                           "vectors must be a CPU or CUDA tensor"),
    "latent_cross_attention key_lengths": (
        lambda: ops.latent_cross_attention(torch.randn(1, 1, 2, 16), torch.randn(1, 1, 3, 16), torch.randn(1, 1, 3, 16),
                                           key_lengths=_meta(1, dtype=torch.long)), "key_lengths must lie in"),
    "rvq_decode": (lambda: ops.rvq_decode(_meta(2, 2, dtype=torch.long), _meta(3, 5, 6)), "codes must lie in"),
    "gabor_pool": (lambda: ops.gabor_pool(_meta(1, 40), _meta(2), _meta(2), _meta(2), window=17, stride=5),
                   "bandwidths must be"),
    "collar_vad_loss": (lambda: ops.collar_vad_loss(_meta(2, 3, 5), _meta(2, 1, 5), _meta(2, 3, dtype=torch.long),
                                                    collar_frames=1.0), "order must hold"),
    "proportion_loss": (lambda: ops.proportion_loss(_meta(4, 3), _meta(4, dtype=torch.long), _meta(1, 3)),
                        "bag_index must be"),
}


@pytest.mark.parametrize("name", list(META_CALLS))
def test_meta_inputs_are_refused_naming_the_argument(name):
    call, message = META_CALLS[name]
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "meta" in str(info.value)


def test_values_hold_refuses_meta_tensors_and_checks_real_ones():
    with pytest.raises(ValueError, match=r"^x must be positive; got a meta tensor"):
        _checks.values_hold(_meta(3, dtype=torch.bool), "x must be positive")
    _checks.values_hold(torch.ones(3, dtype=torch.bool), "x must be positive")
    with pytest.raises(ValueError, match=r"^x must be positive; got \[0\]$"):
        _checks.values_hold(torch.zeros(1, dtype=torch.bool), "x must be positive", lambda: "[0]")


def test_all_hold_raises_the_first_failing_check_with_its_error_type():
    ok, bad = torch.ones(3, dtype=torch.bool), torch.tensor([True, False])
    _checks.all_hold([None, _checks.ValueCheck(ok, "a"), _checks.ValueCheck(ok, "b")])
    with pytest.raises(TypeError, match=r"^b must hold; got 1 false$"):
        _checks.all_hold([_checks.ValueCheck(ok, "a"), _checks.ValueCheck(bad, "b must hold", lambda: "1 false", TypeError),
                          _checks.ValueCheck(bad, "c must hold")])
    assert _checks.ints_within_check(torch.zeros(0, dtype=torch.long), 0, 1, "x") is None
    with pytest.raises(ValueError, match=r"^x in \[0, 1\]; got values in \[0, 2\]$"):
        _checks.all_hold([_checks.ints_within_check(torch.tensor([0, 2]), 0, 1, "x in [0, 1]")])
