"""Embedded training audio: determinism, shapes, very short clips, bad arguments."""
import numpy as np
import pytest
import torch

from pyaudiok.data.audio_synth import SyntheticAudio, speech_like


def _data(**kw):
    return SyntheticAudio(**{"sample_rate": 8000, "segment_seconds": 0.05, "real_speech": False, **kw})


def test_clips_are_deterministic_float32_and_finite():
    clip = _data(seed=2).clip(3)
    assert clip.shape == (1, 400) and clip.dtype == torch.float32 and torch.isfinite(clip).all()
    assert torch.equal(clip, _data(seed=2).clip(3))
    assert _data().batch([]).shape == (0, 1, 400)


def test_clips_shorter_than_a_glottal_period():
    # No glottal pulse falls inside: the overlap-add sum used to come back as integers.
    for n in (1, 2, 3):
        assert np.isfinite(speech_like(np.random.default_rng(1), n, 8000)).all()
    data = _data(segment_seconds=0.001)
    assert all(torch.isfinite(data.clip(i)).all() for i in range(30))


@pytest.mark.parametrize("kw, match", [
    ({"sample_rate": 100}, "sample_rate"),   # used to raise from numpy, or hang below 8 Hz
    ({"segment_seconds": float("nan")}, "segment_seconds"),
    ({"speech_fraction": 2}, "speech_fraction"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        _data(**kw)
    with pytest.raises(ValueError, match="clip index"):
        _data().clip(-1)
