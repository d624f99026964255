"""CharmClassifier and its baseline (DESIGN §7): shapes, any order and subset of channels,
order invariance with CHARM, input checks, and a short training run that learns."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from pyaudiok.data.eeg_synth import SyntheticEEG, shuffle_channels
from pyaudiok.models import CharmClassifier, CharmConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(n_channels=16, n_classes=4, d=8, filters=8)


@pytest.mark.parametrize("normalization", ("softmax", "sinkhorn"))
def test_charm_takes_any_order_and_subset_of_channels(normalization):
    model = CharmClassifier(CharmConfig(**SMALL, normalization=normalization)).eval()
    x = torch.randn(3, 16, 256)
    logits, A = model(x, return_reordering=True)
    assert logits.shape == (3, 4) and A.shape == (3, 16, 16)
    perm = torch.randperm(16)
    torch.testing.assert_close(model(x[:, perm]), logits, atol=1e-4, rtol=1e-4)
    subset = x[:, :11]                       # fewer electrodes than canonical channels
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[0, 3] = False
    logits, A = model(subset, mask, return_reordering=True)
    assert logits.shape == (3, 4) and A.shape == (3, 16, 11) and torch.isfinite(logits).all()
    assert torch.equal(A[0, :, 3], torch.zeros(16))


def test_baseline_reads_channels_in_place_and_zeroes_missing_ones():
    model = CharmClassifier(CharmConfig(**SMALL, reorder=False)).eval()
    x = torch.randn(2, 16, 128)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, 5] = False
    logits, A = model(x.masked_fill(~mask[:, :, None], 1e6), mask, return_reordering=True)
    assert A is None
    torch.testing.assert_close(logits, model(x.masked_fill(~mask[:, :, None], 0.0)))
    assert not torch.allclose(model(x[:, torch.randperm(16)]), model(x))  # order matters without CHARM
    with pytest.raises(ValueError, match=r"x has size 12 in dim 1 .*expected 16"):
        model(torch.randn(2, 12, 128))
    with pytest.raises(ValueError, match=r"mask must have shape \[B, C_in\] = \[2, 16\]; got \[2, 15\]"):
        model(x, torch.ones(2, 15, dtype=torch.bool))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model(x.numpy())


def test_short_training_run_learns():
    """80 steps of CHARM on fresh synthetic EEG with shuffled channels: well above chance (0.25)."""
    torch.manual_seed(0)
    data = SyntheticEEG(4)
    model = CharmClassifier(CharmConfig(**SMALL))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(80):
        x, y = data.trials(32, seed=step)
        x, _, _ = shuffle_channels(x, None, gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = data.trials(256, seed=10_000)
    model.eval()
    with torch.no_grad():
        accuracy = (model(shuffle_channels(x, None, gen)[0]).argmax(1) == y).float().mean().item()
    assert accuracy > 0.45


@pytest.mark.parametrize("field, value", [("n_classes", 0), ("filters", 0), ("kernel", 0), ("pool", 0),
                                          ("dropout", 1.5), ("sinkhorn_eps", 0.0)])
def test_bad_config_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        CharmConfig(**{field: value})
