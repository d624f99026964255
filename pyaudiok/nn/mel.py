"""Triangular mel filterbanks on the HTK mel scale (unnormalised: each band peaks at 1).

`mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max)` gives a [n_mels, n_fft // 2 + 1] matrix
that maps STFT bins (0 … sample_rate / 2) to mel bands. The n_mels + 2 band edges are equally
spaced in mel between f_min and f_max; `triangles` says on which axis each band is linear:

- ``"hz"`` (default): linear in Hz between its edges, as torchaudio's HTK filterbanks. The SoundStream
  mel loss and the log-mel frontends of COLA and the training scripts use it.
- ``"mel"``: linear in mel between its edges, as ``tf.signal.linear_to_mel_weight_matrix``, which the
  official LEAF initialisation reads its Gabor centres and widths from (`pyaudiok.nn.leaf`).

The DC bin is 0 in both (every band starts at f_min >= 0). Filters narrower than a frequency bin
(small n_fft) come out all-zero. Results are cached per argument set: do not modify them in place
(clone first).
"""
from __future__ import annotations

import numbers
from functools import lru_cache
from typing import NamedTuple

import torch

from ..ops import _checks

__all__ = ["mel_filterbank", "hz_to_mel", "mel_to_hz"]

TRIANGLES = ("hz", "mel")


def hz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale, ``2595 · log10(1 + hz / 700)``; a tensor keeps its dtype, a number gives float64."""
    hz = hz if isinstance(hz, torch.Tensor) else torch.tensor(hz, dtype=torch.float64)
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor | float) -> torch.Tensor:
    """Inverse of `hz_to_mel`: ``700 · (10^(mel / 2595) − 1)``."""
    mel = mel if isinstance(mel, torch.Tensor) else torch.tensor(mel, dtype=torch.float64)
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _tf_hz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    """The same scale in TensorFlow's form, ``1127 · ln(1 + hz / 700)`` in float64: the "mel" triangles
    keep TF's rounding, so LEAF's initial filters are bit-identical to those it has always had."""
    return 1127.0 * torch.log1p(torch.as_tensor(hz, dtype=torch.float64) / 700.0)


class MelOptionNames(NamedTuple):
    """The argument names an error message uses (callers with their own parameter names pass theirs)."""
    n_fft: str = "n_fft"
    n_mels: str = "n_mels"
    sample_rate: str = "sample_rate"
    f_min: str = "f_min"
    f_max: str = "f_max"


def check_mel_options(n_fft: int, n_mels: int, sample_rate: float, f_min: float, f_max: float,
                      names: MelOptionNames = MelOptionNames()) -> tuple[float, float]:
    """(f_min, f_max) as floats; ValueError/TypeError naming the first bad option (`names` gives the
    names to use). Band edges may be any real numbers (numpy's included), not bools or tensors."""
    _checks.int_in_range(names.n_mels, n_mels, 1, 1 << 20)
    _checks.int_in_range(names.n_fft, n_fft, 2, 1 << 30)
    _checks.positive_float(names.sample_rate, sample_rate)
    for name, value in ((names.f_min, f_min), (names.f_max, f_max)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number (Hz); got {type(value).__name__}")
    f_min, f_max = float(f_min), float(f_max)
    # Bands beyond Nyquist, or an empty range, have no FFT bin to sit on: their filters would be degenerate.
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= {names.f_min} < {names.f_max} <= {names.sample_rate} / 2 = {sample_rate / 2:g}; "
                         f"got {names.f_min} = {f_min!r}, {names.f_max} = {f_max!r}")
    return f_min, f_max


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: float, f_min: float = 0.0, f_max: float | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32, *,
                   triangles: str = "hz") -> torch.Tensor:
    """Triangular HTK-mel filters [n_mels, n_fft // 2 + 1] (peak 1) between f_min and f_max
    (default sample_rate / 2), linear in Hz (``triangles="hz"``) or in mel (``"mel"``) between their
    edges; computed in float64, returned in `dtype` on `device`, cached: do not modify the result."""
    f_max = sample_rate / 2 if f_max is None else f_max
    f_min, f_max = check_mel_options(n_fft, n_mels, sample_rate, f_min, f_max)
    if triangles not in TRIANGLES:
        raise ValueError(f"triangles must be one of {TRIANGLES}; got {triangles!r}")
    return _cached_filterbank(n_fft, n_mels, sample_rate, f_min, f_max, device, dtype, triangles)


@lru_cache(maxsize=64)
def _cached_filterbank(n_fft: int, n_mels: int, sample_rate: float, f_min: float, f_max: float,
                       device: torch.device | str | None, dtype: torch.dtype, triangles: str) -> torch.Tensor:
    build = _hz_triangles if triangles == "hz" else _mel_triangles
    with torch.inference_mode(False):  # cached: must stay usable by autograd later
        return build(n_fft, n_mels, sample_rate, f_min, f_max).to(device=device, dtype=dtype)


def _bin_frequencies(n_fft: int, sample_rate: float) -> torch.Tensor:
    return torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)


def _triangles(points: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Band k rises from edges[k] to 1 at edges[k + 1] and falls to 0 at edges[k + 2], sampled at `points`."""
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (points - lower) / (centre - lower), (upper - points) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0)


def _hz_triangles(n_fft: int, n_mels: int, sample_rate: float, f_min: float, f_max: float) -> torch.Tensor:
    # The range's ends are mapped to mel in float32 and everything else in float64: the arithmetic
    # this filterbank has always used, kept so that trained models see an identical matrix.
    low, high = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float32)).tolist()
    edges = mel_to_hz(torch.linspace(low, high, n_mels + 2, dtype=torch.float64))
    return _triangles(_bin_frequencies(n_fft, sample_rate), edges)


def _mel_triangles(n_fft: int, n_mels: int, sample_rate: float, f_min: float, f_max: float) -> torch.Tensor:
    edges = torch.linspace(_tf_hz_to_mel(f_min).item(), _tf_hz_to_mel(f_max).item(), n_mels + 2, dtype=torch.float64)
    return _triangles(_tf_hz_to_mel(_bin_frequencies(n_fft, sample_rate)), edges)
