"""Embedded synthetic EEG for CHARM (DESIGN §7): generated on the fly, small, a pure function of
the seeds; no files, no network.

One "head" (`SyntheticEEG(montage_seed=...)`) fixes where things are: 16 electrodes of the 10–20
system on a unit disc (x: left → right, y: back → front), `n_background` background rhythms at
random scalp positions, each with its own centre frequency (2–30 Hz, log-spaced), and one
class-specific source position per class. A trial of class c is, per electrode e,

    x_e(t) = Σ_s g_s G(e, p_s) r_s(t)              background rhythms (random gain g_s per trial)
           + a G_c(e, p_c) α(t)                    the class's pattern: a 9–13 Hz rhythm at p_c
           + blink(t) G(e, eyes) + muscle_e(t)     artefacts: frontal eye blinks, temporal EMG
           + sensor noise (1/f-ish, per electrode)

with G(e, p) = exp(−|pos_e − p|² / 2σ²) the volume conduction from a source at p to the
electrode. Each electrode sees its own mixture of background rhythms, so a channel's spectrum
identifies it (what CHARM's per-channel encoder can learn), while the classes differ only in
*where* the same-band rhythm is: a classifier must know which channel is which to tell them
apart. Signals: `sample_rate` 128 Hz, `seconds` 2 s, float32, about unit variance.

Channel augmentations for training and evaluation (`shuffle_channels`, `drop_channels`) take a
`torch.Generator`, so a run is reproducible step by step.
"""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["ELECTRODES", "SyntheticEEG", "shuffle_channels", "drop_channels"]

# name: (x, y) on the unit disc (azimuthal projection of the 10–20 positions, rounded).
ELECTRODES = {
    "Fp1": (-0.31, 0.95), "Fp2": (0.31, 0.95), "F7": (-0.81, 0.59), "F3": (-0.39, 0.50), "F4": (0.39, 0.50),
    "F8": (0.81, 0.59), "T7": (-1.0, 0.0), "C3": (-0.5, 0.0), "C4": (0.5, 0.0), "T8": (1.0, 0.0),
    "P7": (-0.81, -0.59), "P3": (-0.39, -0.50), "P4": (0.39, -0.50), "P8": (0.81, -0.59), "O1": (-0.31, -0.95),
    "O2": (0.31, -0.95),
}
# Class sources: left / right sensorimotor, frontal midline, parietal-occipital midline, ...
_CLASS_POSITIONS = ((-0.5, 0.0), (0.5, 0.0), (0.0, 0.6), (0.0, -0.6), (-0.6, -0.6), (0.6, 0.6))
_EYES = (0.0, 1.25)
# The class rhythm (9–13 Hz, a Gaussian band of 1 Hz) must lie below the Nyquist frequency, three
# band widths clear: at lower rates the band-limited draw would be normalised out of the tail of
# the band, not the rhythm the classes differ by.
MIN_SAMPLE_RATE = 2 * (13.0 + 3.0)


def _bandlimited(shape: tuple[int, ...], T: int, sample_rate: float, centre: torch.Tensor, width: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
    """Unit-variance noise [*shape, T] filtered by a Gaussian band around `centre` Hz (broadcast to shape)."""
    if math.prod(shape) == 0:  # the FFT backends reject empty batches
        return torch.zeros(*shape, T)
    spec = torch.fft.rfft(torch.randn(*shape, T, generator=gen), dim=-1)
    freqs = torch.fft.rfftfreq(T, 1.0 / sample_rate)
    band = torch.exp(-0.5 * ((freqs - centre[..., None]) / width[..., None]) ** 2)
    out = torch.fft.irfft(spec * band, n=T, dim=-1)
    return out / out.std(-1, keepdim=True).clamp_min(1e-8)


def _conduction(points: torch.Tensor, sources: torch.Tensor, sigma: float) -> torch.Tensor:
    """G[e, s] = exp(−|points_e − sources_s|² / 2σ²)."""
    return torch.exp(-torch.cdist(points, sources).square() / (2 * sigma ** 2))


class SyntheticEEG:
    """A fixed synthetic head; `trials(n, seed)` draws labelled trials from it (module doc)."""

    def __init__(self, n_classes: int = 4, *, sample_rate: float = 128.0, seconds: float = 2.0,
                 n_background: int = 12, class_amplitude: float = 0.6, noise: float = 0.5, artefacts: bool = True,
                 montage_seed: int = 0) -> None:
        if not 2 <= n_classes <= len(_CLASS_POSITIONS):
            raise ValueError(f"n_classes must be in [2, {len(_CLASS_POSITIONS)}]; got {n_classes}")
        if not (sample_rate > 0 and seconds > 0 and round(sample_rate * seconds) >= 2):
            # one sample has no variance: the unit-variance normalisation would give NaN
            raise ValueError(f"sample_rate and seconds must be positive and give at least 2 samples; got "
                             f"sample_rate={sample_rate}, seconds={seconds}")
        if sample_rate < MIN_SAMPLE_RATE:
            raise ValueError(f"sample_rate must be at least {MIN_SAMPLE_RATE:g} Hz (the 9–13 Hz class rhythm below "
                             f"the Nyquist frequency); got {sample_rate}")
        if n_background < 0:
            raise ValueError(f"n_background must be >= 0; got {n_background}")
        for name, value in (("class_amplitude", class_amplitude), ("noise", noise)):
            if isinstance(value, bool) or not (isinstance(value, numbers.Real) and 0 <= value < math.inf):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        self.n_classes, self.sample_rate = n_classes, float(sample_rate)
        self.T = int(round(sample_rate * seconds))
        self.class_amplitude, self.noise, self.artefacts = class_amplitude, noise, artefacts
        self.names = list(ELECTRODES)
        self.positions = torch.tensor(list(ELECTRODES.values()))
        gen = torch.Generator().manual_seed(montage_seed)
        angle = 2 * math.pi * torch.rand(n_background, generator=gen)
        radius = torch.rand(n_background, generator=gen).sqrt()
        background = torch.stack([radius * angle.cos(), radius * angle.sin()], -1)
        self.background_freqs = torch.logspace(math.log10(2.0), math.log10(30.0), n_background)
        self.background_freqs = self.background_freqs[torch.randperm(n_background, generator=gen)]
        self.background_gain = _conduction(self.positions, background, 0.35)            # [E, S]
        self.class_gain = _conduction(self.positions, torch.tensor(_CLASS_POSITIONS[:n_classes]), 0.3)  # [E, K]
        self.blink_gain = _conduction(self.positions, torch.tensor([_EYES]), 0.45)[:, 0]  # [E]
        self.muscle_gain = ((self.positions[:, 0].abs() - 0.6) / 0.4).clamp_min(0.0)  # temporal sites

    @property
    def n_channels(self) -> int:
        return len(self.names)

    def trials(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x[n, 16, T] float32, labels[n] int64), a pure function of (this head, n, seed)."""
        if n < 0:
            raise ValueError(f"n must be >= 0; got {n}")
        gen = torch.Generator().manual_seed(seed)
        E, T, sr = self.n_channels, self.T, self.sample_rate
        labels = torch.randint(0, self.n_classes, (n,), generator=gen)
        S = self.background_gain.shape[1]
        freqs = self.background_freqs * (1 + 0.05 * torch.randn(n, S, generator=gen))
        rhythms = _bandlimited((n, S), T, sr, freqs, 0.15 * freqs + 0.5, gen)
        gains = torch.exp(0.3 * torch.randn(n, S, generator=gen))
        x = torch.einsum("es,nst->net", self.background_gain, gains[:, :, None] * rhythms)
        alpha_f = 9.0 + 4.0 * torch.rand(n, generator=gen)
        alpha = _bandlimited((n,), T, sr, alpha_f, torch.full((n,), 1.0), gen)
        amp = self.class_amplitude * (0.6 + 0.8 * torch.rand(n, 1, 1, generator=gen))
        x = x + amp * self.class_gain.T[labels][:, :, None] * alpha[:, None, :]
        if self.artefacts:
            t = torch.arange(T) / sr
            at = torch.rand(n, 1, generator=gen) * (T / sr)
            blink = (torch.rand(n, 1, generator=gen) < 0.5) * 3.0 * torch.exp(-0.5 * ((t - at) / 0.1) ** 2)
            x = x + self.blink_gain[None, :, None] * blink[:, None, :]
            emg = _bandlimited((n, E), T, sr, torch.full((n, E), 45.0), torch.full((n, E), 12.0), gen)
            burst = torch.rand(n, 1, 1, generator=gen) < 0.3
            x = x + 2.0 * burst * self.muscle_gain[None, :, None] * emg
        pink = _bandlimited((n, E), T, sr, torch.zeros(n, E), torch.full((n, E), 8.0), gen)
        x = x + self.noise * (0.5 * pink + 0.5 * torch.randn(n, E, T, generator=gen))
        return x.float(), labels


def _check_fraction(name: str, value) -> None:
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and 0 <= value <= 1):  # NaN fails
        raise ValueError(f"{name} must lie in [0, 1]; got {value!r}")


def _check_mask(mask: torch.Tensor | None, B: int, C: int) -> None:
    if mask is not None and tuple(mask.shape) != (B, C):
        raise ValueError(f"mask must have shape [B, C] = {[B, C]} like x; got {tuple(mask.shape)}")


def shuffle_channels(x: torch.Tensor, mask: torch.Tensor | None, gen: torch.Generator,
                     p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Permute the channels of x[B, C, T] (and mask[B, C]) independently per example, each with
    probability p. Returns (x, mask, perm[B, C]) with x_out[b, j] = x[b, perm[b, j]]."""
    B, C = x.shape[:2]
    _check_mask(mask, B, C)
    _check_fraction("p", p)
    perm = torch.argsort(torch.rand(B, C, generator=gen), dim=1)
    keep = torch.rand(B, generator=gen) >= p
    perm[keep] = torch.arange(C)
    perm = perm.to(x.device)
    x = x.gather(1, perm[:, :, None].expand_as(x))
    return x, (mask.gather(1, perm) if mask is not None else None), perm


def drop_channels(x: torch.Tensor, fraction: float, gen: torch.Generator, p: float = 1.0,
                  mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mark round(fraction · C) random channels of each example of x[B, C, T] missing (zeroed,
    mask False), each example with probability p. Returns (x, mask[B, C] bool, True = present)."""
    B, C = x.shape[:2]
    _check_mask(mask, B, C)
    _check_fraction("fraction", fraction)
    _check_fraction("p", p)
    n_drop = int(round(fraction * C))
    rank = torch.argsort(torch.argsort(torch.rand(B, C, generator=gen), dim=1), dim=1)
    drop = (rank < n_drop) & (torch.rand(B, 1, generator=gen) < p)
    keep = ~drop.to(x.device)
    mask = keep if mask is None else mask & keep
    return x * mask[:, :, None], mask
