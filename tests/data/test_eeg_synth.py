"""Synthetic EEG for CHARM: deterministic, the documented shapes and structure, and the channel
augmentations."""
from __future__ import annotations

import pytest
import torch

from pyaudiok.data.eeg_synth import ELECTRODES, SyntheticEEG, drop_channels, shuffle_channels


def test_trials_are_a_function_of_the_seeds():
    data = SyntheticEEG(4)
    x, y = data.trials(8, seed=3)
    assert x.shape == (8, len(ELECTRODES), 256) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= int(y.min()) and int(y.max()) < 4 and torch.isfinite(x).all()
    x2, y2 = SyntheticEEG(4).trials(8, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, data.trials(8, seed=4)[0])
    assert not torch.equal(x, SyntheticEEG(4, montage_seed=1).trials(8, seed=3)[0])
    with pytest.raises(ValueError, match="n_classes"):
        SyntheticEEG(9)


def test_classes_differ_in_where_the_alpha_rhythm_is():
    data = SyntheticEEG(4, artefacts=False)
    x, y = data.trials(400, seed=0)
    freqs = torch.fft.rfftfreq(x.shape[-1], 1 / data.sample_rate)
    band = (freqs >= 9) & (freqs <= 13)
    power = torch.fft.rfft(x, dim=-1).abs().square()[..., band].mean(-1)  # [n, E]
    left, right = data.names.index("C3"), data.names.index("C4")
    asym = (power[:, left] - power[:, right]) / (power[:, left] + power[:, right])
    assert asym[y == 0].mean() > asym[y == 1].mean() + 0.2  # class 0 sits left, class 1 right


def test_channels_have_distinct_spectra():
    """Every electrode's mean spectrum is nearer its own than any other electrode's in a second draw
    (what lets CHARM's per-channel encoder tell the channels apart)."""
    data = SyntheticEEG(4)
    spectra = [torch.fft.rfft(data.trials(200, seed=s)[0], dim=-1).abs().mean(0).log() for s in (0, 1)]
    distance = torch.cdist(spectra[0], spectra[1])
    assert torch.equal(distance.argmin(1), torch.arange(len(ELECTRODES)))


def test_shuffle_and_drop_channels():
    x = torch.randn(6, 5, 7)
    gen = torch.Generator().manual_seed(0)
    shuffled, mask, perm = shuffle_channels(x, torch.ones(6, 5, dtype=torch.bool), gen)
    assert torch.equal(shuffled, x.gather(1, perm[:, :, None].expand_as(x))) and mask.all()
    assert torch.equal(perm.sort(1).values, torch.arange(5).expand(6, 5))
    same, none, perm = shuffle_channels(x, None, gen, p=0.0)
    assert torch.equal(same, x) and none is None and torch.equal(perm, torch.arange(5).expand(6, 5))
    dropped, mask = drop_channels(x, 0.4, gen)
    assert (~mask).sum(1).tolist() == [2] * 6
    assert torch.equal(dropped, x * mask[:, :, None])
    kept, mask = drop_channels(x, 0.4, gen, p=0.0)
    assert torch.equal(kept, x) and mask.all()


def test_empty_batches_and_bad_arguments():
    x, y = SyntheticEEG(4).trials(0, seed=0)
    assert x.shape == (0, 16, 256) and y.shape == (0,)
    assert torch.isfinite(SyntheticEEG(4, n_background=0).trials(2, seed=0)[0]).all()
    # a single sample per trial has no variance to normalise: NaN
    with pytest.raises(ValueError, match="at least 2 samples"):
        SyntheticEEG(4, seconds=0.01)
    with pytest.raises(ValueError, match="n must be >= 0"):
        SyntheticEEG(4).trials(-1, seed=0)
    with pytest.raises(ValueError, match="sample_rate must be at least 32 Hz"):
        SyntheticEEG(4, sample_rate=10.0)
    assert SyntheticEEG(4, sample_rate=32.0).trials(1, seed=0)[0].shape == (1, 16, 64)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"mask must have shape \[B, C\]"):
        shuffle_channels(torch.zeros(2, 16, 4), torch.ones(2, 5, dtype=torch.bool), gen)
    with pytest.raises(ValueError, match="fraction"):
        drop_channels(torch.zeros(2, 16, 4), 1.5, gen)


@pytest.mark.parametrize("name", ["noise", "class_amplitude"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_levels_must_be_finite_and_non_negative(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        SyntheticEEG(4, **{name: value})


@pytest.mark.parametrize("p", [2.0, -0.5, float("nan")])
def test_augmentation_probabilities_must_lie_in_0_1(p):
    gen, x = torch.Generator().manual_seed(0), torch.zeros(2, 16, 4)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        drop_channels(x, 0.5, gen, p=p)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        shuffle_channels(x, None, gen, p=p)
    with pytest.raises(ValueError, match=r"fraction must lie in \[0, 1\]"):
        drop_channels(x, p, gen)
