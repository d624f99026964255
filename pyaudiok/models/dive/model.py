"""DIVE (DESIGN.md §8): frame embeddings, iterative speaker selection, per-speaker VAD.

    x[B, S] → encoder (learned filterbank, hop = sample_rate / frame_rate) → dilated residual
    convs → h[B, T, d] (L2-normalised), T = S // hop, about 100 frames per second
    selection, i = 1..N: t_i = argmax_t score_t over the allowed frames, e_i = h[t_i]
        training:  allowed = frames where exactly one not-yet-selected reference speaker is
                   active (that speaker becomes output i: the order is fixed, no PIT needed)
        inference: allowed = frames whose cosine similarity to every selected e_k is below
                   `exclusion`; stops when no allowed frame scores above 0.5
    score_t = sigmoid(w·h_t), trained (BCE) to find frames with exactly one active speaker
    VAD decoder: p[B, N, T] = sigmoid(f([h_t; e_i; h_t ⊙ e_i])), overlap allowed
    loss: multi-speaker BCE over frames not within ±collar of any reference turn boundary
        (+ `score_weight` × the score's BCE)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from pyaudiok.metrics.diarization import Segment
from pyaudiok.ops import _checks
from pyaudiok.ops.collar_vad import collar_mask, collar_vad_loss
from pyaudiok.models._inputs import check_model_dtype
from pyaudiok.models.wavesplit.model import DilatedResidual

__all__ = ["DIVEConfig", "DIVE", "DIVEOutput", "collar_mask", "frames_to_segments"]


@dataclass
class DIVEConfig:
    sample_rate: int = 8_000
    frame_rate: int = 100
    channels: int = 64
    embed_dim: int = 32
    layers: int = 6               # dilations 1, 2, 4, …
    max_speakers: int = 3         # N at inference
    collar: float = 0.25          # seconds per side excluded from the VAD loss
    # Inference: frames whose cosine similarity to a selected speaker exceeds this are skipped.
    # 0 (any positive similarity excludes) was chosen on conversations of held-out speakers other
    # than the ones DER is reported on: at 0.7 a trained model picked a third "speaker" among
    # frames of one already selected in nearly every 2-speaker conversation (duplicate activity,
    # false alarm 14 of 37 s); at 0 held-out tuning DER fell from 0.46 to 0.15.
    exclusion: float = 0.0
    score_weight: float = 0.5

    def __post_init__(self) -> None:
        for name, low in (("sample_rate", 1), ("frame_rate", 1), ("channels", 1), ("embed_dim", 1), ("layers", 0),
                          ("max_speakers", 1)):
            _checks.int_in_range(name, getattr(self, name), low, 1 << 31)
        if self.frame_rate > self.sample_rate:
            raise ValueError(f"frame_rate ({self.frame_rate}) must not exceed sample_rate ({self.sample_rate}): "
                             "a frame needs at least one sample")
        # Frames are timestamped (segments, the collar, the reference frames) at frame_rate: a hop of a
        # whole number of samples keeps that exact only when frame_rate divides sample_rate.
        if self.sample_rate % self.frame_rate:
            raise ValueError(f"frame_rate ({self.frame_rate}) must divide sample_rate ({self.sample_rate}): a frame "
                             f"is a hop of sample_rate / frame_rate samples; e.g. frame_rate = "
                             f"{_nearest_divisor(self.sample_rate, self.frame_rate)}")
        for name in ("collar", "score_weight"):
            _checks.real_in_range(name, getattr(self, name), 0)
        _checks.real_in_range("exclusion", self.exclusion, what="a finite number (a cosine similarity)")

    @property
    def hop(self) -> int:
        return self.sample_rate // self.frame_rate


def _nearest_divisor(n: int, near: int) -> int:
    """The divisor of n closest to `near` (the smaller on a tie)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return min(small + [n // d for d in small], key=lambda d: (abs(d - near), d))


def frames_to_segments(active: torch.Tensor, frame_rate: float, speakers=None) -> list[Segment]:
    """active[N, T] bool → segments (runs of active frames), speaker names `speakers[n]` or "spk<n>"."""
    out = []
    for n, row in enumerate(active.bool().cpu()):
        padded = F.pad(row.int(), (1, 1))
        edges = (padded[1:] - padded[:-1]).nonzero()[:, 0]
        name = speakers[n] if speakers is not None else f"spk{n}"
        out += [Segment(float(a) / frame_rate, float(b) / frame_rate, name) for a, b in edges.view(-1, 2).tolist()]
    return sorted(out)


class DIVEOutput(NamedTuple):
    probs: torch.Tensor       # [B, N, T] speaker activity probabilities
    embeddings: torch.Tensor  # [B, N, d] selected speaker embeddings
    selected: torch.Tensor    # [B, N] bool: slot holds a selected speaker
    frames: torch.Tensor      # [B, N] selected frame per slot (−1: none)
    scores: torch.Tensor      # [B, T] selection score logits


class DIVE(nn.Module):
    def __init__(self, config: DIVEConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or DIVEConfig()
        C, d = cfg.channels, cfg.embed_dim
        # Unpadded: embeddings() pads hop // 2 samples before and the rest of a hop after, so that
        # frame t covers [t·hop − hop // 2, (t + 2)·hop − hop // 2) and there are S // hop of them
        # for odd hops too (a symmetric padding of hop // 2 would give S // hop − 1).
        self.encoder = nn.Conv1d(1, C, 2 * cfg.hop, stride=cfg.hop, bias=False)
        self.encoder_norm = nn.GroupNorm(1, C)  # waveform level varies: normalise the filterbank output
        self.stack = nn.ModuleList(DilatedResidual(C, 2 ** i) for i in range(cfg.layers))
        self.embed = nn.Conv1d(C, d, 1)
        self.score = nn.Conv1d(d, 1, 1)
        self.vad = nn.Sequential(nn.Conv1d(3 * d, C, 5, padding=2), nn.PReLU(), DilatedResidual(C, 1),
                                 DilatedResidual(C, 2), nn.Conv1d(C, 1, 1))

    def embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """x[B, S] → h[B, T, d], T = S // hop."""
        _checks.float_tensor("x", x, ndim=2, layout="[B, S]")
        if x.shape[1] < self.config.hop:
            raise ValueError(f"x must hold at least one frame, hop = {self.config.hop} samples; "
                             f"got {_checks.shape_str(x.shape)}")
        check_model_dtype("x", x, self.encoder)
        hop = self.config.hop
        z = self.encoder_norm(self.encoder(F.pad(x[:, None], (hop // 2, hop - hop // 2))))
        for block in self.stack:
            z = block(z)
        return F.normalize(self.embed(z), dim=1).transpose(1, 2)

    def decode(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """VAD logits [B, N, T] for embeddings e[B, N, d]."""
        B, T, d = h.shape
        N = e.shape[1]
        ht, et = h.transpose(1, 2)[:, None].expand(B, N, d, T), e[..., None].expand(B, N, d, T)
        # [h; e; h ⊙ e]: the product's channel sum is the cosine similarity, the cue for "this speaker".
        pair = torch.cat([ht, et, ht * et], 2)
        return self.vad(pair.reshape(B * N, 3 * d, T)).view(B, N, T)

    def _select_training(self, h, scores, reference):
        B, S, T = reference.shape
        # The greedy walk is sequential and small: on the host, after one copy, instead of a device
        # wait for each of its B·S decisions.
        frames = torch.full((B, S), -1, dtype=torch.long)
        order = torch.full((B, S), -1, dtype=torch.long)   # slot i ← reference speaker order[b, i]
        ref = reference.bool().cpu()
        scores = scores.detach().cpu()
        for b in range(B):
            remaining = ref[b].any(-1).clone()                               # speakers still to select
            for i in range(S):
                if not remaining.any():
                    break
                solo = (ref[b] & remaining[:, None]).sum(0) == 1              # exactly one unselected speaker active
                if not solo.any():  # a speaker never alone: fall back to its least-overlapped frame
                    count = ref[b].sum(0).float().masked_fill(~(ref[b] & remaining[:, None]).any(0), float("inf"))
                    solo = count == count.min()
                t = int(scores[b].masked_fill(~solo, float("-inf")).argmax())
                speaker = int((ref[b, :, t] & remaining).float().argmax())
                frames[b, i], order[b, i] = t, speaker
                remaining[speaker] = False
        return frames.to(h.device), order.to(h.device)

    @torch.no_grad()
    def _select_inference(self, h, scores):
        B, T, _ = h.shape
        N = self.config.max_speakers
        frames = torch.full((B, N), -1, dtype=torch.long, device=h.device)
        allowed = torch.ones(B, T, dtype=torch.bool, device=h.device)
        for i in range(N):
            masked = scores.masked_fill(~allowed, float("-inf"))
            best, t = masked.max(-1)
            ok = best > 0 if i else best > float("-inf")  # the first speaker is always selected
            frames[:, i] = torch.where(ok, t, torch.full_like(t, -1))
            e = h[torch.arange(B), t]                                          # [B, d]
            near = (h @ e[..., None])[..., 0] > self.config.exclusion
            allowed &= ~(near & ok[:, None])
            allowed &= ok[:, None]
        return frames

    def forward(self, x: torch.Tensor, reference: torch.Tensor | None = None) -> DIVEOutput:
        """x[B, S]; reference[B, S_ref, T] activity (training: fixes the selection and the order)."""
        h = self.embeddings(x)
        B, T, d = h.shape
        scores = self.score(h.transpose(1, 2))[:, 0]
        if reference is not None:
            if reference.dim() != 3 or reference.shape[0] != B or reference.shape[2] != T:
                raise ValueError(f"reference must have shape [B, S_ref, T] = [{B}, S_ref, {T}] (T = S // hop); "
                                 f"got {list(reference.shape)}")
            frames, _ = self._select_training(h, scores, reference)
        else:
            frames = self._select_inference(h, scores)
        selected = frames >= 0
        e = h.gather(1, frames.clamp_min(0)[..., None].expand(-1, -1, d)) * selected[..., None]
        return DIVEOutput(torch.sigmoid(self.decode(h, e)), e, selected, frames, scores)

    def loss(self, x: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Collar-masked multi-speaker BCE (targets in selection order) + the score's BCE."""
        h = self.embeddings(x)
        B, T, d = h.shape
        if reference.dim() != 3 or reference.shape[0] != B or reference.shape[2] != T:
            raise ValueError(f"reference must have shape [B, S_ref, T] = [{B}, S_ref, {T}]; got {list(reference.shape)}")
        scores = self.score(h.transpose(1, 2))[:, 0]
        frames, order = self._select_training(h, scores, reference)
        e = h.gather(1, frames.clamp_min(0)[..., None].expand(-1, -1, d))
        logits = self.decode(h, e)
        # Slots with no selected speaker have order −1: left out, as the frames near a turn boundary.
        vad = collar_vad_loss(logits, reference, order, collar_frames=self.config.collar * self.config.frame_rate)
        solo = (reference.float().sum(1) == 1).float()
        score = F.binary_cross_entropy_with_logits(scores, solo)
        total = vad + self.config.score_weight * score
        # Parts as tensors: the training loop reads them when it logs, not one device wait per step.
        return total, {"vad": vad.detach(), "score": score.detach()}

    @torch.no_grad()
    def diarize(self, x: torch.Tensor, threshold: float = 0.5) -> list[list[Segment]]:
        """Segments per item of x[B, S] (speakers named spk0, spk1, … in selection order)."""
        out = self(x)
        active = (out.probs > threshold) & out.selected[..., None]
        return [frames_to_segments(a, self.config.frame_rate) for a in active]
