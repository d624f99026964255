"""Real FFTs of a prime length n by Rader's algorithm: a DFT of prime length is a cyclic convolution of
length n − 1, computed with FFTs of that length, or of a smooth length ≥ 2n − 3 (SMOOTH_FACTORS).

Why: DiffStride's 1-D outputs have odd lengths 2K + 1 (DESIGN §3), often prime (8 009 for T = 16 000
at stride 2). cuFFT transforms a large prime length by Bluestein's algorithm, padded to a smooth
length ≥ 2n − 1 (16 200 for 8 009: three passes of a twice-as-long sequence per transform, most of the
1-D op's GPU time in bench/results/2026-11-27_h200_fourier_crop_profile.txt). Rader's convolution has
length n − 1 (8 008 = 2³·7·11·13), and two real rows share one complex transform.

With g a primitive root mod n, every non-zero index is a power of g, and for the DFT
Z[k] = Σ_m z[m] ω^{km} (ω = e^{∓2πi/n}):

    Z[g^p] = z[0] + Σ_q z[g^{−q}] ω^{g^{p−q}} = z[0] + (a ⊛ b)[p],   a_q = z[g^{−q}],  b_j = ω^{g^j}
    Z[0] = z[0] + Σ_q a_q = z[0] + DFT(a)[0]

so one transform is: permute (a Triton kernel), FFT, multiply by DFT(b) (precomputed per n), inverse
FFT, and un-permute (a Triton kernel). The kernels are in kernels/rader.py; both transforms are exact
to fp32 rounding, as torch's are.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch

# Rader's route replaces torch's transform for prime lengths from this on: cuFFT runs a large prime
# length by Bluestein's algorithm (8 009 was, in the profile above); below it the transforms are small
# beside the call's other costs.
MIN_LENGTH = 1024

# The cyclic convolution of length L = n − 1 runs as FFTs of length L when L's prime factors are at
# most this, else as FFTs of the shortest such length Lp ≥ 2L − 1, with the sequence zero-padded and
# the kernel wrapped around (exact either way). 7: the factors cuFFT documents as its fast sizes
# (2^a·3^b·5^c·7^d); whether its transforms of 8 008 = 2³·7·11·13 beat those of 16 128 = 2⁸·3²·7 is
# for a GPU run to say (the bench times both).
SMOOTH_FACTORS = 7


def _prime_factors(n: int) -> list[int]:
    factors, d = [], 2
    while d * d <= n:
        if n % d == 0:
            factors.append(d)
            while n % d == 0:
                n //= d
        d += 1
    return factors + ([n] if n > 1 else [])


@functools.cache
def _is_prime(n: int) -> bool:
    return n >= 2 and _prime_factors(n) == [n]


def applies(n: int) -> bool:
    """Whether Rader's route replaces torch's transform of length n."""
    return n >= MIN_LENGTH and _is_prime(n)


def convolution_length(n: int) -> int:
    """The FFT length of the cyclic convolution for prime n (see SMOOTH_FACTORS)."""
    return _convolution_length(n, SMOOTH_FACTORS)


@functools.cache
def _convolution_length(n: int, factors: int) -> int:
    def smooth(m):
        return max(_prime_factors(m), default=1) <= factors
    if smooth(n - 1):
        return n - 1
    return next(m for m in range(2 * n - 3, 4 * n) if smooth(m))


def primitive_root(n: int) -> int:
    """The smallest generator of the multiplicative group mod the prime n."""
    orders = [(n - 1) // f for f in _prime_factors(n - 1)]
    return next(g for g in range(2, n) if all(pow(g, e, n) != 1 for e in orders))


class Tables(NamedTuple):
    gather: np.ndarray     # [n − 1] int32: g^(−q) mod n, the index feeding position q
    place: np.ndarray      # [n] int32: p with g^p = m, where output m (≥ 1) sits in the convolution; place[0] = 0
    powers: np.ndarray     # [n − 1] int64: g^j mod n


@functools.cache
def tables(n: int) -> Tables:
    g = primitive_root(n)
    powers = np.empty(n - 1, dtype=np.int64)
    value = 1
    for j in range(n - 1):
        powers[j] = value
        value = value * g % n
    place = np.zeros(n, dtype=np.int32)
    place[powers] = np.arange(n - 1, dtype=np.int32)
    gather = np.empty(n - 1, dtype=np.int32)  # g^(−q) = g^(n−1−q)
    gather[0] = 1
    gather[1:] = powers[:0:-1]
    return Tables(gather, place, powers)


class _DevicePlan(NamedTuple):
    gather: torch.Tensor
    place: torch.Tensor
    kernel_inverse: torch.Tensor   # DFT(b) for ω = e^{+2πi/n}: irfft
    kernel_forward: torch.Tensor   # DFT(b) for ω = e^{−2πi/n}: rfft


@functools.lru_cache(maxsize=16)
def _device_plan(n: int, length: int, device: torch.device, dtype: torch.dtype) -> _DevicePlan:
    """The tables and both convolution kernels' spectra for FFTs of `length` on `device` (computed in
    float64 on the host, once per length, then cast to the complex type of `dtype`). Past n − 1 the
    kernel wraps around: b[−j] sits at length − j, so the first n − 1 values of the padded product
    are the cyclic convolution of length n − 1."""
    t = tables(n)
    angles = 2 * math.pi * t.powers.astype(np.float64) / n
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64

    def kernel(sign):
        b = np.cos(angles) + sign * 1j * np.sin(angles)
        padded = np.zeros(length, dtype=np.complex128)
        padded[:n - 1] = b
        if length > n - 1:
            padded[length - (n - 2):] = b[1:]
        return torch.from_numpy(np.fft.fft(padded)).to(device=device, dtype=complex_dtype)
    return _DevicePlan(torch.from_numpy(t.gather).to(device), torch.from_numpy(t.place).to(device),
                       kernel(1.0), kernel(-1.0))


def _plan(n: int, like: torch.Tensor) -> tuple[_DevicePlan, int]:
    length = convolution_length(n)
    return _device_plan(n, length, like.device, like.dtype), length


def _cyclic_convolution(a: torch.Tensor, kernel_spectrum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a ⊛ b as a real view [P, Lp, 2], Σ_q a_q as [P, 2]) for a [P, Lp, 2] and kernel_spectrum = DFT(b)."""
    spectrum = torch.fft.fft(torch.view_as_complex(a))
    total = torch.view_as_real(spectrum[:, 0]).clone()  # a copy: the product below is in place
    return torch.view_as_real(torch.fft.ifft(spectrum.mul_(kernel_spectrum))), total


def irfft(spectra: torch.Tensor, n: int, out: torch.Tensor) -> None:
    """out[R, n] = torch.fft.irfft(view_as_complex(spectra), n) for half spectra [R, (n+1)/2, 2] (a
    real view), n prime (`applies`)."""
    from ..kernels import rader
    if spectra.dim() != 3 or spectra.shape[1:] != ((n + 1) // 2, 2) or out.shape != (spectra.shape[0], n):
        raise ValueError(f"irfft of length {n} takes spectra [R, {(n + 1) // 2}, 2] into out [R, {n}]; got "
                         f"{tuple(spectra.shape)} and {tuple(out.shape)}")
    if spectra.shape[0] == 0:
        return
    spectra = spectra.contiguous()
    plan, length = _plan(n, spectra)
    conv, total = _cyclic_convolution(rader.pack_half_spectra(spectra, plan.gather, n, length), plan.kernel_inverse)
    target = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    rader.unpack_signals(conv, total, spectra, plan.place, target)
    if target is not out:
        out.copy_(target)


def rfft(x: torch.Tensor) -> torch.Tensor:
    """torch.fft.rfft(x) for real signals x[R, n], n prime (`applies`), as a real view [R, (n+1)/2, 2]."""
    from ..kernels import rader
    x = x.contiguous()
    rows, n = x.shape
    if rows == 0:
        return x.new_empty((0, (n - 1) // 2 + 1, 2))
    plan, length = _plan(n, x)
    conv, total = _cyclic_convolution(rader.pack_signals(x, plan.gather, length), plan.kernel_forward)
    return rader.unpack_half_spectra(conv, total, x, plan.place)
