"""The shared mel filterbank (pyaudiok.nn.mel): every caller gets the matrix its own formula gave
before the filterbanks were merged (the formulas are frozen below as the reference), plus the
scale conversions, caching and argument checks."""
from __future__ import annotations

import itertools

import pytest
import torch

from pyaudiok.models.cola.model import COLAConfig, LogMel as ColaLogMel
from pyaudiok.models.leaf.classifier import LogMel as LeafLogMel
from pyaudiok.models.soundstream import losses
from pyaudiok.nn import leaf, mel_filterbank
from pyaudiok.nn.mel import hz_to_mel, mel_to_hz
from pyaudiok.train import diffstride as diffstride_train, permutation as permutation_train


# ---- frozen reference formulas ----------------------------------------------------------------

def _old_soundstream_bank(n_fft, n_mels, sample_rate, f_min=0.0, f_max=None):
    """Triangles linear in Hz; the range's ends went through the mel scale in the default dtype (float32)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    to_mel = lambda hz: 2595.0 * torch.log10(1.0 + hz / 700.0)  # noqa: E731
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(float(to_mel(torch.tensor(f_min))), float(to_mel(torch.tensor(f_max))), n_mels + 2,
                          dtype=torch.float64)
    edges = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (center - lower)
    falling = (upper - freqs) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0)


def _old_leaf_bank(n_filters, n_fft, sample_rate, min_freq, max_freq):
    """Triangles linear in mel (TensorFlow's 1127·ln(1 + f/700)), DC bin zeroed."""
    to_mel = lambda f: 1127.0 * torch.log1p(torch.as_tensor(f, dtype=torch.float64) / 700.0)  # noqa: E731
    mel = to_mel(torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64))
    edges = torch.linspace(to_mel(min_freq).item(), to_mel(max_freq).item(), n_filters + 2, dtype=torch.float64)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (mel - lower) / (centre - lower), (upper - mel) / (upper - centre)
    bank = torch.clamp(torch.minimum(rising, falling), min=0)
    bank[:, 0] = 0
    return bank


SIZES = list(itertools.product((64, 256, 400, 512, 1024, 2048), (8, 40, 64, 128), (8000, 16000, 22050, 24000)))


def _ranges(sample_rate):
    """(f_min, f_max) pairs; None means Nyquist. Ints and floats both, as callers pass either."""
    return [(0.0, None), (0, sample_rate // 2), (60.0, 3800.0 if sample_rate < 16000 else 7800.0), (20.0, None)]


# ---- every caller gets its old matrix, bit for bit ---------------------------------------------

@pytest.mark.parametrize("n_fft, n_mels, sample_rate", SIZES)
def test_hz_triangles_match_the_soundstream_formula(n_fft, n_mels, sample_rate):
    for f_min, f_max in _ranges(sample_rate):
        want = _old_soundstream_bank(n_fft, n_mels, sample_rate, f_min, f_max)
        for dtype in (torch.float32, torch.float64):
            got = losses.mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max, dtype=dtype)
            assert got.dtype == dtype and torch.equal(got, want.to(dtype)), (f_min, f_max, dtype)


@pytest.mark.parametrize("n_fft, n_filters, sample_rate", SIZES)
def test_mel_triangles_match_the_leaf_formula(n_fft, n_filters, sample_rate):
    for min_freq, max_freq in _ranges(sample_rate):
        max_freq = sample_rate / 2 if max_freq is None else max_freq
        want = _old_leaf_bank(n_filters, n_fft, sample_rate, min_freq, max_freq)
        got = leaf.mel_filterbank(n_filters, n_fft, sample_rate, min_freq, max_freq)
        assert got.dtype == torch.float64 and torch.equal(got, want), (min_freq, max_freq)
        general = mel_filterbank(n_fft, n_filters, sample_rate, min_freq, max_freq, dtype=torch.float64,
                                 triangles="mel")
        assert torch.equal(general, want)


def test_model_and_script_callers_get_their_old_matrices():
    for sample_rate in (16000, 24000):  # the SoundStream mel loss at each of its window sizes
        for window in losses.MultiScaleMelLoss(sample_rate).windows:
            got = losses.mel_filterbank(window, 64, sample_rate, device=torch.device("cpu"))
            assert torch.equal(got, _old_soundstream_bank(window, 64, sample_rate).float())
    cfg = COLAConfig()
    assert torch.equal(ColaLogMel(cfg).filterbank,
                       _old_soundstream_bank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.f_max).float())
    for script in (permutation_train, diffstride_train):
        got = mel_filterbank(script.N_FFT, script.N_MELS, script.SAMPLE_RATE)
        assert torch.equal(got, _old_soundstream_bank(script.N_FFT, script.N_MELS, script.SAMPLE_RATE).float())
    assert torch.equal(LeafLogMel().bank, _old_leaf_bank(40, 512, 16000, 60.0, 7800.0).float())


def test_leaf_initialisation_is_unchanged():
    bank = _old_leaf_bank(40, 512, 16000, 60.0, 7800.0).sqrt()
    peaks, peak_bins = bank.max(dim=1)
    fwhm = (bank >= peaks[:, None] / 2).sum(dim=1).to(torch.float64)
    eta, sigma = leaf.mel_gabor_init()
    assert torch.equal(eta, peak_bins.to(torch.float64) * 2 * torch.pi / 512)
    assert torch.equal(sigma, leaf._FWHM * 512 / (torch.pi * fwhm))


# ---- the general function ----------------------------------------------------------------------

@pytest.mark.parametrize("triangles", ["hz", "mel"])
def test_layout(triangles):
    bank = mel_filterbank(1024, 40, 16000, 60.0, 7800.0, triangles=triangles)
    assert bank.shape == (40, 513) and bank.dtype == torch.float32
    assert (bank[:, 0] == 0).all()  # DC: every band starts at f_min >= 0
    assert bank.max().item() <= 1.0 and (bank.sum(dim=1) > 0).all()
    peaks = bank.argmax(dim=1)
    assert (peaks[1:] > peaks[:-1]).all()


def test_triangle_conventions_share_edges_and_differ_between_them():
    hz, mel = (mel_filterbank(2048, 16, 16000, 0.0, 7900.0, dtype=torch.float64, triangles=t) for t in ("hz", "mel"))
    assert torch.equal(hz > 0, mel > 0)  # same supports
    assert not torch.allclose(hz, mel)   # different shapes within them


def test_results_are_cached_and_leaf_gets_a_copy():
    bank = mel_filterbank(256, 20, 16000)
    assert mel_filterbank(256, 20, 16000) is bank
    assert mel_filterbank(256, 20, 16000, triangles="mel") is not bank
    with torch.inference_mode():  # a bank first built under inference mode still serves autograd later
        cached = mel_filterbank(128, 10, 8000, dtype=torch.float64)
    x = torch.rand(65, 3, dtype=torch.float64, requires_grad=True)
    (cached @ x).sum().backward()
    assert x.grad is not None
    first = leaf.mel_filterbank(4, 64, 8000, 0.0, 4000.0)
    first.zero_()  # LEAF's function returns a fresh tensor: changing it changes nothing cached
    assert leaf.mel_filterbank(4, 64, 8000, 0.0, 4000.0).sum() > 0


def test_scale_conversions():
    hz = torch.tensor([0.0, 700.0, 1000.0, 8000.0], dtype=torch.float64)
    assert hz_to_mel(700.0).item() == pytest.approx(2595.0 * torch.log10(torch.tensor(2.0)).item())
    assert hz_to_mel(1000.0).item() == pytest.approx(1000.0, abs=0.1)  # the scale's anchor
    assert torch.allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)
    assert hz_to_mel(hz.float()).dtype == torch.float32 and hz_to_mel(8000).dtype == torch.float64


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_fft=1), ValueError, "n_fft"), (dict(n_fft=512.0), TypeError, "n_fft"),
    (dict(n_mels=0), ValueError, "n_mels"), (dict(sample_rate=0), ValueError, "sample_rate"),
    (dict(f_min=-1.0), ValueError, "0 <= f_min < f_max"), (dict(f_min=4000.0, f_max=100.0), ValueError, "f_min"),
    (dict(f_max=9000.0), ValueError, r"f_max <= sample_rate / 2 = 8000"),
    (dict(f_max=float("nan")), ValueError, "f_max = nan"), (dict(f_min=[0.0]), TypeError, "f_min"),
    (dict(triangles="slaney"), ValueError, "triangles must be one of")])
def test_bad_options_are_named(kwargs, error, match):
    options = dict(n_fft=512, n_mels=40, sample_rate=16000) | kwargs
    with pytest.raises(error, match=match):
        mel_filterbank(**options)


def test_leaf_convention_names_its_own_arguments():
    with pytest.raises(ValueError, match="n_filters"):
        leaf.mel_filterbank(0, 512, 16000, 60.0, 7800.0)
    with pytest.raises(ValueError, match=r"min_freq < max_freq <= sample_rate / 2 = 4000; got .*max_freq = 7800"):
        leaf.mel_filterbank(40, 512, 8000, 60.0, 7800.0)


def test_band_edges_take_any_real_number_and_refuse_others():
    import numpy as np
    from pyaudiok.nn.mel import mel_filterbank as bank

    assert torch.equal(bank(512, 40, 16_000, np.float32(60.0), np.float64(7800.0)), bank(512, 40, 16_000, 60, 7800))
    for bad in (torch.tensor(60.0), "60", True):
        with pytest.raises(TypeError, match="f_min must be a real number"):
            bank(512, 40, 16_000, bad, 7800.0)
