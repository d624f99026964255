"""Leaf and its modules: mel initialisation, shapes, the fused path against the unfused modules,
parameter clipping, gradients to all 280 parameters."""
from __future__ import annotations

import math

import pytest
import torch

from pyaudiok.nn import SPCEN, GaborFilterbank, GaussianLowpass, Leaf
from pyaudiok.nn.leaf import mel_gabor_init
from pyaudiok.ops.pcen import pcen_reference


def _mel(f):
    return 1127.0 * math.log1p(f / 700.0)


def test_initialisation_has_a_mel_layout():
    eta, sigma = mel_gabor_init(40, 16_000, 60.0, 7800.0, 512)
    hz = eta * 16_000 / (2 * math.pi)
    assert torch.all(hz[1:] >= hz[:-1]) and hz[0] > 40 and hz[-1] < 7900
    # Centres equally spaced on the mel scale, to within the 31.25 Hz bin grid.
    want = torch.linspace(_mel(60.0), _mel(7800.0), 42)[1:-1]
    got = torch.tensor([_mel(f) for f in hz.tolist()])
    spacing = (want[1] - want[0]).item()
    assert (got - want).abs().max().item() < 0.75 * spacing
    # Bandwidths shrink (in samples) as the bands widen (in Hz) with frequency.
    assert sigma[0] > 4 * sigma[-1] and sigma.min() > 1.5 and sigma.max() < 151


def test_leaf_shapes_and_parameter_count():
    leaf = Leaf()
    assert sum(p.numel() for p in leaf.parameters()) == 280
    assert leaf.window == 401 and leaf.stride == 160
    x = torch.randn(2, 16_001)
    y = leaf(x)
    assert y.shape == (2, 40, 101) and torch.isfinite(y).all()
    assert leaf(x[:, None]).shape == y.shape


def test_fused_path_matches_the_modules_chained():
    leaf = Leaf(n_filters=8, sample_rate=8000, window_ms=8.0, hop_ms=4.0, max_freq=3800.0)
    with torch.no_grad():
        leaf.pooling.pool_widths.uniform_(0.1, 0.6)  # some outside the clip range
    x = torch.randn(2, 1000)
    chained = leaf.compression(leaf.pooling(leaf.filterbank(x)))
    assert torch.allclose(leaf(x), chained, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter():
    leaf = Leaf(n_filters=6, window_ms=6.0, hop_ms=4.0)
    x = torch.randn(2, 2000, requires_grad=True)
    leaf(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in leaf.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_spcen_clips_its_parameters():
    spcen = SPCEN(3, alpha=1.5, root=0.5, smooth=2.0)
    E = torch.rand(1, 3, 20) + 0.1
    want = pcen_reference(E, torch.ones(3), torch.full((3,), 2.0), torch.ones(3), torch.ones(3))
    assert torch.allclose(spcen(E), want, atol=1e-6)


def test_modules_clip_to_the_design_ranges():
    fb = GaborFilterbank(4, window=401)
    with torch.no_grad():
        fb.center_freqs.copy_(torch.tensor([-1.0, 0.5, 4.0, 3.0]))
        fb.bandwidths.copy_(torch.tensor([0.1, 10.0, 500.0, 50.0]))
    eta, sigma = fb.clipped()
    assert eta.tolist() == pytest.approx([0.0, 0.5, math.pi, 3.0])
    assert sigma.tolist() == pytest.approx([4 * math.sqrt(2 * math.log(2)) / math.pi, 10.0,
                                            401 * math.sqrt(2 * math.log(2)) / math.pi, 50.0], rel=1e-6)
    pool = GaussianLowpass(2, window=401)
    with torch.no_grad():
        pool.pool_widths.copy_(torch.tensor([0.0, 0.9]))
    assert pool.clipped().tolist() == pytest.approx([2 / 401, 0.5])


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_filters=0), "n_filters"), (dict(hop_ms=0.0), "hop_ms"), (dict(n_fft=0), "n_fft"),
    (dict(min_freq=5000.0, max_freq=100.0), "min_freq"), (dict(max_freq=9000.0), "max_freq"),
    (dict(sample_rate=0), "sample_rate")])
def test_bad_configuration_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Leaf(**kwargs)


def test_modules_alone_check_their_arguments():
    with pytest.raises(ValueError, match="stride"):
        GaussianLowpass(stride=0)
    with pytest.raises(ValueError, match="n_channels"):
        SPCEN(0)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T\]"):
        GaborFilterbank(4, window=11)(torch.randn(2, 1, 100))


def test_filterbank_alone_keeps_float64():
    bank = GaborFilterbank(n_filters=4, window=31)
    x = torch.randn(2, 200, dtype=torch.float64)
    out = bank(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, bank.double()(x), rtol=1e-12, atol=1e-12)
    assert bank(x.float()).dtype == torch.float64  # float64 parameters: computed in float64


def test_lowpass_alone_refuses_integer_energies_and_wrong_shapes():
    pool = GaussianLowpass(2, window=11, stride=4)
    energy = torch.arange(20).repeat(1, 2, 1)
    with pytest.raises(TypeError, match="energy must have dtype float16, bfloat16, float32, float64; got int64"):
        pool(energy)  # the window cast to int64 would keep only its centre tap
    for shape in ((1, 3, 20), (2, 20), (1, 1, 2, 20)):
        with pytest.raises(ValueError, match=r"energy must have shape \[B, F, T\] with F = n_channels = 2; got"):
            pool(torch.rand(shape))
