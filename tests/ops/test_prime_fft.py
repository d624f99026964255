"""Real FFTs of prime lengths by Rader's algorithm (pyaudiok/ops/_prime_fft.py, kernels/rader.py)
against torch.fft, and the rules that decide where they apply."""
from __future__ import annotations

import pytest
import torch

from pyaudiok.ops import _prime_fft
from pyaudiok.ops.fourier_crop import FOURIER_CROP

from ..harness import assert_close, require_backend

COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


@pytest.mark.parametrize("n,applies", [
    (8009, True),    # DiffStride's T = 16 000 at stride 2
    (1031, True),
    (1021, False),   # a prime below MIN_LENGTH: small transforms stay torch's
    (8007, False),   # 3·17·157: not prime
    (8008, False), (2, False), (3, False)])
def test_applies_to_long_primes(n, applies):
    assert _prime_fft.applies(n) is applies


@pytest.mark.parametrize("n,smooth_factors,length", [
    (8009, 7, 16128),   # 8 008 = 2³·7·11·13 is not 7-smooth: the shortest 7-smooth length ≥ 2·8008 − 1
    (8009, 13, 8008),   # with 11 and 13 allowed, the cyclic length itself
    (1201, 7, 1200),    # 1 200 = 2⁴·3·5²
    (1031, 7, 2100)])   # 1 030 = 2·5·103: the first 7-smooth length ≥ 2 059 is 2 100 = 2²·3·5²·7
def test_convolution_length(monkeypatch, n, smooth_factors, length):
    monkeypatch.setattr(_prime_fft, "SMOOTH_FACTORS", smooth_factors)
    assert _prime_fft.convolution_length(n) == length


@pytest.mark.parametrize("n", [131, 257, 8009, 65537])
def test_primitive_root_generates_the_group_and_tables_invert(n):
    t = _prime_fft.tables(n)
    assert sorted(t.powers.tolist()) == list(range(1, n))  # g has order n − 1
    assert t.place[t.powers].tolist() == list(range(n - 1))  # place is the discrete log
    # gather[q] = g^(−q): g^q · gather[q] = 1 mod n
    assert all(int(p) * int(g) % n == 1 for p, g in zip(t.powers[:50], t.gather[:50]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("n,smooth_factors", [(131, 13), (131, 7), (8009, 13), (8009, 7), (1201, 7)])
def test_transforms_match_torch_fft(monkeypatch, n, smooth_factors, rows, dtype):
    """rfft and irfft against torch.fft, with the convolution at its cyclic length or padded (see
    SMOOTH_FACTORS), odd and even row counts (an odd last row pairs with zeros), including the DC
    bin's imaginary part, which c2r ignores."""
    monkeypatch.setattr(_prime_fft, "SMOOTH_FACTORS", smooth_factors)
    device = require_backend(FOURIER_CROP, "triton")
    x = torch.randn(rows, n, dtype=dtype, device=device)
    assert_close("rfft", _prime_fft.rfft(x), torch.view_as_real(torch.fft.rfft(x.double())), dtype)
    spectra = torch.randn(rows, (n + 1) // 2, dtype=COMPLEX[dtype], device=device)
    out = torch.full((rows, n), float("nan"), dtype=dtype, device=device)
    _prime_fft.irfft(torch.view_as_real(spectra), n, out)
    assert_close("irfft", out, torch.fft.irfft(spectra.to(torch.complex128), n), dtype)


def test_non_contiguous_and_empty_inputs():
    device = require_backend(FOURIER_CROP, "triton")
    n = 131
    x = torch.randn(n, 3, device=device).T  # [3, n], not contiguous
    assert_close("rfft", _prime_fft.rfft(x), torch.view_as_real(torch.fft.rfft(x.double())), torch.float32)
    spectra = torch.randn(4, (n + 1) // 2 * 2, dtype=torch.float64, device=device)[:, ::2]
    spectra = torch.stack([spectra, spectra.flip(-1)], -1)  # a real view [4, 66, 2], not contiguous
    out = torch.empty(n, 4, dtype=torch.float64, device=device).T  # written through its strides
    _prime_fft.irfft(spectra, n, out)
    assert_close("irfft", out, torch.fft.irfft(torch.view_as_complex(spectra.contiguous()), n), torch.float64)
    assert _prime_fft.rfft(x[:0]).shape == (0, (n + 1) // 2, 2)
    _prime_fft.irfft(spectra[:0], n, out[:0])


def test_irfft_rejects_mismatched_shapes():
    device = require_backend(FOURIER_CROP, "triton")
    with pytest.raises(ValueError, match=r"\[R, 66, 2\]"):
        _prime_fft.irfft(torch.zeros(2, 65, 2, device=device), 131, torch.empty(2, 131, device=device))
    with pytest.raises(ValueError, match="out"):
        _prime_fft.irfft(torch.zeros(2, 66, 2, device=device), 131, torch.empty(3, 131, device=device))
