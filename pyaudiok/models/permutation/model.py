"""Permutation pretext task (DESIGN §5): cut a log-mel spectrogram into P patches along time
and/or frequency, shuffle them with a random permutation, encode each patch with one shared
encoder, score each patch, and learn to rank: loss ‖soft_rank(scores) − true ranks‖² (PAV) or the
Sinkhorn-ranking variant. Prediction is argsort of the scores. `embed` gives the frozen
representation for a linear probe (the patch embeddings of the unshuffled input, concatenated or
averaged)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ...nn.layout import channels_last, to_channels_last
from ...ops import _checks, sinkhorn_rank, soft_rank

RANKERS = ("pav", "sinkhorn")
POOLINGS = ("concat", "mean")


class PretextOutput(NamedTuple):
    loss: torch.Tensor       # scalar
    scores: torch.Tensor     # [B, P], one score per shuffled patch
    perm: torch.Tensor       # [B, P], original index of the patch at each shuffled position
    accuracy: torch.Tensor   # scalar, fraction of patches whose argsort position is right


class PermutationPretext(nn.Module):
    def __init__(self, n_mels: int = 64, frames: int = 64, time_patches: int = 4, freq_patches: int = 1,
                 dim: int = 128, ranker: str = "pav", eps: float = 0.1):
        super().__init__()
        for name, value in (("n_mels", n_mels), ("frames", frames), ("time_patches", time_patches),
                            ("freq_patches", freq_patches), ("dim", dim)):
            _checks.int_in_range(name, value, 1, 1 << 31)
        _checks.positive_float("eps", eps)
        if n_mels % freq_patches or frames % time_patches:
            raise ValueError(f"n_mels ({n_mels}) and frames ({frames}) must divide into freq_patches "
                             f"({freq_patches}) and time_patches ({time_patches})")
        if ranker not in RANKERS:
            raise ValueError(f"ranker must be one of {RANKERS}; got {ranker!r}")
        self.n_mels, self.frames = n_mels, frames
        self.grid = (freq_patches, time_patches)
        self.ranker, self.eps = ranker, eps
        self.encoder = nn.Sequential(  # shared across patches: [N, 1, F/p, T/q] -> [N, dim]
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, dim, 3, padding=1, stride=2), nn.BatchNorm2d(dim), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        to_channels_last(self.encoder)  # see pyaudiok.nn.layout
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def patches(self, logmel: torch.Tensor) -> torch.Tensor:
        """logmel[B, n_mels, frames] -> patches[B, P, n_mels/p, frames/q] (frequency-major order)."""
        _checks.float_tensor("logmel", logmel, layout=f"[B, {self.n_mels}, {self.frames}]")
        if logmel.dim() != 3 or tuple(logmel.shape[1:]) != (self.n_mels, self.frames):
            raise ValueError(f"logmel must have shape [B, {self.n_mels}, {self.frames}]; got {tuple(logmel.shape)}")
        B = logmel.shape[0]
        p, q = self.grid
        x = logmel.reshape(B, p, self.n_mels // p, q, self.frames // q).permute(0, 1, 3, 2, 4)
        return x.reshape(B, p * q, self.n_mels // p, self.frames // q)

    def _encode(self, patches: torch.Tensor) -> torch.Tensor:
        B, P, h, w = patches.shape
        z = self.encoder(channels_last(patches.reshape(B * P, 1, h, w)))
        return z.reshape(B, P, z.shape[-1])

    def embed(self, logmel: torch.Tensor, pooling: str = "concat") -> torch.Tensor:
        """Representation for downstream probes, from the patches in their original order: "concat"
        [B, P·dim] keeps which patch (which band, which time) holds what, "mean" [B, dim] averages it
        away. The encoder pools over each patch, so with frequency patches only "concat" can say where
        in frequency a feature is: pitch is such a position."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        z = self._encode(self.patches(logmel))
        return z.flatten(1) if pooling == "concat" else z.mean(1)

    def rank(self, scores: torch.Tensor) -> torch.Tensor:
        if self.ranker == "pav":
            return soft_rank(scores, regularization_strength=self.eps)
        return sinkhorn_rank(scores, eps=self.eps, n_iters=50)

    def forward(self, logmel: torch.Tensor, generator: torch.Generator | None = None) -> PretextOutput:
        patches = self.patches(logmel)
        B, P = patches.shape[:2]
        perm = torch.stack([torch.randperm(P, generator=generator) for _ in range(B)]).to(logmel.device) if B \
            else torch.zeros(0, P, dtype=torch.int64, device=logmel.device)
        shuffled = torch.gather(patches, 1, perm[:, :, None, None].expand_as(patches))
        scores = self.score(self._encode(shuffled))[..., 0]
        target = (perm + 1).to(scores.dtype)  # the patch from original position k must get rank k + 1
        loss = (self.rank(scores) - target).square().mean()
        predicted = scores.argsort(-1).argsort(-1)
        return PretextOutput(loss, scores, perm, (predicted == perm).float().mean())
