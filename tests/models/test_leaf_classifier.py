"""LeafClassifier: shapes and gradients for both frontends, the default ConvNet widths."""
from __future__ import annotations

import pytest
import torch

from pyaudiok.models import LeafClassifier
from pyaudiok.models.leaf.classifier import LogMel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("frontend", ["leaf", "mel"])
def test_logits_and_gradients(frontend):
    model = LeafClassifier(5, frontend=frontend, n_filters=16, channels=(4, 8, 8, 8, 8, 8))
    x = torch.randn(2, 2000)
    logits = model(x)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    frontend_grads = [p.grad for p in model.frontend.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in frontend_grads)
    assert (len(frontend_grads) > 0) == (frontend == "leaf")


def test_default_head_widths_and_bad_frontend():
    model = LeafClassifier(10)
    convs = [m.out_channels for m in model.classifier.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [64, 128, 256, 256, 512, 512]
    assert sum(p.numel() for p in model.frontend.parameters()) == 280
    with pytest.raises(ValueError, match="frontend must be 'leaf' or 'mel'"):
        LeafClassifier(10, frontend="sinc")


def test_mel_frontend_checks_its_input_and_takes_one_channel():
    model = LeafClassifier(3, frontend="mel", n_filters=8, channels=(4, 4, 4, 4, 4, 4)).eval()
    x = torch.randn(2, 1600)
    torch.testing.assert_close(model(x[:, None]), model(x))  # [B, 1, T], as the LEAF frontend takes
    with pytest.raises(ValueError, match="T > n_fft / 2"):
        model(torch.randn(2, 100))
    with pytest.raises(ValueError, match=r"\[B, T\] or \[B, 1, T\]"):
        model(torch.randn(1600))
    with pytest.raises(ValueError, match="n_classes"):
        LeafClassifier(0)


def test_log_mel_refuses_bands_above_nyquist_as_leaf_does():
    """At 8 kHz the default 7800 Hz upper band edge lies above Nyquist: both frontends refuse it."""
    for frontend in ("leaf", "mel"):
        with pytest.raises(ValueError, match=r"max_freq <= sample_rate / 2 = 4000; got .*max_freq = 7800"):
            LeafClassifier(3, frontend, sample_rate=8000, channels=(4,))
    with pytest.raises(ValueError, match=r"max_freq <= sample_rate / 2 = 4000"):
        LogMel(40, 8000)
    bank = LogMel(40, 8000, max_freq=3900).bank
    assert (bank.sum(1) > 0).all()  # every band sits on some FFT bin
