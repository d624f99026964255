"""SoundStream's training losses (DESIGN.md §2) and an SI-SNR monitor.

- Hinge adversarial losses, averaged over the K discriminators and over each one's logits:
  discriminator ``mean_k[mean relu(1 − D_k(x)) + mean relu(1 + D_k(G(x)))]``,
  generator ``mean_k mean relu(1 − D_k(G(x)))`` (as in the SoundStream paper, not the −D(G(x)) variant).
- Feature matching: L1 between the discriminators' feature maps of real and generated audio,
  each divided by the mean magnitude of the real map (so layers of any scale weigh alike), averaged
  over all K × L maps. The real features are detached: this is a generator loss.
- Multi-scale mel reconstruction: for s = 2^6 … 2^11, STFT (Hann window s, hop s/4) → magnitude →
  64-bin mel spectrogram S_s, loss
  ``Σ_s [ mean|S_s(x) − S_s(G)| + √(s/2) · mean_t ‖log S_s(x) − log S_s(G)‖₂ ]``
  — L1 on mel magnitudes plus the α_s-weighted L2 (over mel bins, per frame) of log-mels, as in
  the paper's reconstruction loss (sums over frames replaced by means so the value does not grow
  with length). Mel magnitudes (not power) are floored at `eps` before the log.
  The mel filterbank is `pyaudiok.nn.mel.mel_filterbank` (HTK scale, triangles linear in Hz,
  unnormalised, cached per size, device and dtype), re-exported here.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from ...nn.mel import mel_filterbank

__all__ = ["hinge_discriminator_loss", "hinge_generator_loss", "feature_matching_loss", "mel_filterbank",
           "MultiScaleMelLoss", "si_snr"]

Logits = torch.Tensor | Sequence[torch.Tensor]


def _as_list(logits: Logits) -> list[torch.Tensor]:
    return [logits] if isinstance(logits, torch.Tensor) else list(logits)


def _mean_over(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    terms = list(terms)
    if not terms:
        raise ValueError("expected at least one discriminator output")
    return torch.stack(terms).mean()


def hinge_discriminator_loss(real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
    """``mean_k [mean relu(1 − D_k(x)) + mean relu(1 + D_k(G(x)))]``; pass the fake logits of a
    detached generator output."""
    real, fake = _as_list(real_logits), _as_list(fake_logits)
    if len(real) != len(fake):
        raise ValueError(f"got {len(real)} real and {len(fake)} fake logit tensors")
    return _mean_over(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake))


def hinge_generator_loss(fake_logits: Logits) -> torch.Tensor:
    """``mean_k mean relu(1 − D_k(G(x)))``."""
    return _mean_over(F.relu(1 - f).mean() for f in _as_list(fake_logits))


def feature_matching_loss(real_features: Sequence[Sequence[torch.Tensor]],
                          fake_features: Sequence[Sequence[torch.Tensor]], eps: float = 1e-8) -> torch.Tensor:
    """``mean_{k,l} mean|D_k^l(x) − D_k^l(G(x))| / mean|D_k^l(x)|`` over all K discriminators and
    their L feature maps (lists as in `DiscriminatorOutput.features`)."""
    if len(real_features) != len(fake_features):
        raise ValueError(f"got features of {len(real_features)} real and {len(fake_features)} fake discriminators")
    terms = []
    for real_maps, fake_maps in zip(real_features, fake_features):
        for real, fake in zip(real_maps, fake_maps, strict=True):
            real = real.detach()
            terms.append((real - fake).abs().mean() / (real.abs().mean() + eps))
    return _mean_over(terms)


@lru_cache(maxsize=64)
def _hann_window(size: int, device: torch.device | None, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.hann_window(size, device=device, dtype=dtype)


class MultiScaleMelLoss:
    """Multi-scale mel reconstruction loss (see the module docstring); a plain callable with no
    parameters: ``MultiScaleMelLoss(sample_rate)(estimate, reference)``, inputs [B, 1, T] or [B, T].

    `scales` are the log2 window sizes (default 6 … 11); `eps` floors the mel magnitudes before
    the log. Signals shorter than a window are zero-padded by the centred STFT.
    """

    def __init__(self, sample_rate: int, n_mels: int = 64, scales: Sequence[int] = range(6, 12),
                 eps: float = 1e-5) -> None:
        self.sample_rate, self.n_mels, self.eps = sample_rate, n_mels, eps
        self.windows = [2 ** i for i in scales]

    def mel(self, wav: torch.Tensor, window: int) -> torch.Tensor:
        """wav[..., T] -> mel magnitudes [N, n_mels, frames] at one window size, in float32 for
        half-precision signals (cuFFT has no bf16 transform; bf16 magnitudes would blur the log)."""
        if wav.dtype in (torch.float16, torch.bfloat16):
            wav = wav.float()
        spec = torch.stft(wav.reshape(-1, wav.shape[-1]), window, window // 4,
                          window=_hann_window(window, wav.device, wav.dtype), center=True,
                          pad_mode="constant", return_complex=True).abs()
        return mel_filterbank(window, self.n_mels, self.sample_rate, device=wav.device, dtype=wav.dtype) @ spec

    def __call__(self, estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if estimate.shape != reference.shape:
            raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ in shape")
        total = estimate.new_zeros(())
        for window in self.windows:
            est, ref = self.mel(estimate, window), self.mel(reference, window)
            l1 = (est - ref).abs().mean()
            log_diff = torch.log(est.clamp_min(self.eps)) - torch.log(ref.clamp_min(self.eps))
            # linalg.vector_norm has a zero (not NaN) gradient at 0, so identical inputs are safe.
            l2 = torch.linalg.vector_norm(log_diff, dim=1).mean()
            total = total + l1 + math.sqrt(window / 2) * l2
        return total


def si_snr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB over the last axis (one value per signal, e.g. [B, 1]).

    Both signals are made zero-mean; the target is the projection of the estimate on the reference.
    """
    estimate = estimate - estimate.mean(dim=-1, keepdim=True)
    reference = reference - reference.mean(dim=-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * reference
    noise = estimate - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))
