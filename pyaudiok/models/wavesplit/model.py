"""Wavesplit (DESIGN.md §9): a speaker stack infers per-step speaker vectors, their centroids
condition (FiLM) a separation stack that outputs N waveforms.

    x[B, S] → encoder (learned filterbank, stride `hop`) → z[B, C, T']
    speaker stack: residual dilated convs → h[B, N, d, T'], L2-normalised over d
    speaker loss, per step t: min over permutations π of Σ_j ℓ(h_t^{π(j)}, s_j), with
        d(h, e) = α‖h − e‖² + β to the speaker table E[|S|, d] (rows L2-normalised) and
        ℓ = −log softmax(−d) over the mixture's speakers (local) + over all training speakers (global),
        plus a regulariser: each table row classified as itself among all rows (keeps rows apart)
    centroids c[B, N, d]: training — mean over t of the permutation-aligned vectors;
                          inference — pyaudiok.ops.kmeans (k = N) over all N·T' step vectors
    separation stack: residual dilated convs with FiLM γ(c) ⊙ u + β(c) from the concatenated
        centroids → N masks on z → decoder (transposed filterbank) → estimates[B, N, S]
    separation loss: pyaudiok.ops.neg_si_sdr_loss (permutation-invariant, clipped at 30 dB)
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from pyaudiok.models._inputs import check_model_dtype
from pyaudiok.ops import _checks, distance_logsumexp, distance_nll, group_norm_film_prelu, kmeans, neg_si_sdr_loss

__all__ = ["WavesplitConfig", "Wavesplit", "WavesplitOutput", "speaker_loss", "DilatedResidual"]


@dataclass
class WavesplitConfig:
    num_sources: int = 2
    num_speakers: int = 16        # |S|, training speaker identities
    channels: int = 64
    embed_dim: int = 32           # d
    kernel: int = 16              # encoder filter length (samples)
    hop: int = 8                  # encoder stride (samples)
    speaker_layers: int = 6       # dilations 1, 2, 4, … per stack
    separation_layers: int = 8
    local_weight: float = 1.0
    global_weight: float = 1.0
    regulariser_weight: float = 0.1
    speaker_weight: float = 1.0   # weight of the speaker loss in the total
    clip_db: float = 30.0

    def __post_init__(self) -> None:
        for name in ("num_sources", "num_speakers", "channels", "embed_dim", "kernel", "hop"):
            _checks.int_in_range(name, getattr(self, name), 1, 1 << 31)
        for name in ("speaker_layers", "separation_layers"):
            _checks.int_in_range(name, getattr(self, name), 0, 24)  # dilations up to 2^23
        if self.num_speakers < self.num_sources:
            raise ValueError(f"need 1 <= num_sources <= num_speakers; got {self.num_sources}, {self.num_speakers}")
        if self.hop > self.kernel:
            raise ValueError(f"hop ({self.hop}) must not exceed kernel ({self.kernel}): the encoder would skip samples")
        for name in ("local_weight", "global_weight", "regulariser_weight", "speaker_weight"):
            _checks.real_in_range(name, getattr(self, name), 0)
        _checks.real_in_range("clip_db", self.clip_db, 0, low_open=True)


class DilatedResidual(nn.Module):
    """Dilated conv → GroupNorm → (FiLM) → PReLU → 1×1, added back."""

    def __init__(self, channels: int, dilation: int, cond_dim: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm = nn.GroupNorm(1, channels)
        self.act = nn.PReLU()
        self.out = nn.Conv1d(channels, channels, 1)
        self.film = nn.Linear(cond_dim, 2 * channels) if cond_dim else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        scale = shift = None
        if self.film is not None:
            gamma, shift = self.film(cond).chunk(2, dim=1)
            scale = 1 + gamma  # γ(c) ⊙ u + β(c), γ initialised near 1
        # GroupNorm, FiLM and PReLU in one fused op (the modules keep the parameters and the state_dict).
        u = group_norm_film_prelu(self.conv(x), self.norm.num_groups, self.act.weight, weight=self.norm.weight,
                                  bias=self.norm.bias, scale=scale, shift=shift, eps=self.norm.eps)
        return x + self.out(u)


class WavesplitOutput(NamedTuple):
    estimates: torch.Tensor        # [B, N, S]
    vectors: torch.Tensor          # [B, N, d, T'] speaker-stack vectors (L2-normalised)
    centroids: torch.Tensor        # [B, N, d]
    permutation: torch.Tensor | None  # [B, T', N] per-step: vectors[π_t(j)] belongs to speaker j (training)
    speaker_loss: torch.Tensor | None


def _permutations(n: int, device) -> torch.Tensor:
    return torch.tensor(list(itertools.permutations(range(n))), device=device, dtype=torch.int64)


def speaker_loss(vectors: torch.Tensor, speakers: torch.Tensor, table: torch.Tensor, alpha: torch.Tensor,
                 beta: torch.Tensor, local_weight: float = 1.0, global_weight: float = 1.0):
    """vectors[B, N, d, T'], speakers[B, N] (rows of table[|S|, d]) → (loss, permutation[B, T', N]).

    ℓ(h, s_j) = local_weight·(−log softmax over the mixture's speakers) + global_weight·(−log softmax
    over all rows), both of −d(h, e) = −(α‖h − e‖² + β); the loss is the mean over items and steps of
    the best per-step assignment's Σ_j ℓ / N. β shifts every distance alike, so neither softmax
    depends on it. The global term's log-sum-exp over the whole table is the fused
    pyaudiok.ops.distance_logsumexp (no [B, T', N, |S|] distances in memory)."""
    B, N, d, T = vectors.shape
    h = vectors.permute(0, 3, 1, 2)                                                        # [B, T, N, d]
    chosen = table[speakers]                                                               # [B, N(spk), d]
    dist = alpha * (h[:, :, :, None] - chosen[:, None, None]).square().sum(-1) + beta      # [B, T, N(h), N(spk)]
    global_nll = dist - beta + distance_logsumexp(h, table, alpha=alpha)[..., None]
    local_nll = -(-dist).log_softmax(-1)
    cost = local_weight * local_nll + global_weight * global_nll
    perms = _permutations(N, vectors.device)                                               # [P, N]
    # total[b, t, p] = Σ_j cost[b, t, perms[p, j], j]
    total = cost[:, :, perms, torch.arange(N, device=vectors.device)].sum(-1)              # [B, T, P]
    best, which = total.min(-1)
    return best.mean() / N, perms[which]


def _distance_regulariser(table: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Each table row classified as itself among all rows: −log softmax(−d(E_i, E_j))[i], mean over i
    (β cancels)."""
    own = torch.arange(len(table), device=table.device)[:, None]
    return distance_nll(table, table, own, alpha=alpha).mean()


class Wavesplit(nn.Module):
    def __init__(self, config: WavesplitConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or WavesplitConfig()  # checked when built (__post_init__)
        C, N, d = cfg.channels, cfg.num_sources, cfg.embed_dim
        self.encoder = nn.Conv1d(1, C, cfg.kernel, stride=cfg.hop, padding=cfg.kernel // 2, bias=False)
        self.speaker_stack = nn.ModuleList(DilatedResidual(C, 2 ** i) for i in range(cfg.speaker_layers))
        self.speaker_head = nn.Conv1d(C, N * d, 1)
        self.separation_in = nn.Conv1d(C, C, 1)
        self.separation_stack = nn.ModuleList(DilatedResidual(C, 2 ** (i % 6), N * d) for i in range(cfg.separation_layers))
        self.masks = nn.Conv1d(C, N * C, 1)
        self.decoder = nn.ConvTranspose1d(C, 1, cfg.kernel, stride=cfg.hop, padding=cfg.kernel // 2, bias=False)
        self.table = nn.Parameter(F.normalize(torch.randn(cfg.num_speakers, d), dim=-1))
        self.log_alpha = nn.Parameter(torch.tensor(1.0))  # α = exp(·) > 0, starting near e
        self.beta = nn.Parameter(torch.tensor(0.0))

    def speaker_vectors(self, z: torch.Tensor) -> torch.Tensor:
        for block in self.speaker_stack:
            z = block(z)
        B, _, T = z.shape
        h = self.speaker_head(z).view(B, self.config.num_sources, self.config.embed_dim, T)
        return F.normalize(h, dim=2)

    def separate(self, x: torch.Tensor, z: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        cond = centroids.flatten(1)
        u = self.separation_in(z)
        for block in self.separation_stack:
            u = block(u, cond)
        B, C, T = z.shape
        masks = F.relu(self.masks(u)).view(B * self.config.num_sources, C, T)
        z_rep = z.repeat_interleave(self.config.num_sources, 0)
        wav = self.decoder(masks * z_rep)[..., :x.shape[-1]]
        wav = F.pad(wav, (0, x.shape[-1] - wav.shape[-1]))
        return wav.view(B, self.config.num_sources, x.shape[-1])

    def forward(self, x: torch.Tensor, speakers: torch.Tensor | None = None, *, kmeans_iters: int = 10,
                generator: torch.Generator | None = None) -> WavesplitOutput:
        """x[B, S]; speakers[B, N] (training labels, rows of the table) selects the training path
        (permutation-aligned centroids and the speaker loss), None the inference path (k-means)."""
        _checks.float_tensor("x", x, ndim=2, layout="[B, S]")
        check_model_dtype("x", x, self.encoder)
        N = self.config.num_sources
        if speakers is not None:
            _checks.tensor("speakers", speakers, shape=(x.shape[0], N), layout="[B, N]",
                           dtypes=(torch.int64, torch.int32, torch.int16, torch.uint8))
            # A negative id would silently pick a row from the table's end. Checked where that is free
            # (CPU tensors, eagerly): on a GPU it would wait for the device at every step.
            if speakers.device.type == "cpu" and not torch.compiler.is_compiling():
                _checks.ints_within(speakers, 0, self.config.num_speakers - 1,
                                    f"speakers must lie in [0, num_speakers) = [0, {self.config.num_speakers})")
        z = self.encoder(x[:, None])
        h = self.speaker_vectors(z)                                                     # [B, N, d, T']
        B, _, d, T = h.shape
        if speakers is not None:
            table = F.normalize(self.table, dim=-1)
            loss, perm = speaker_loss(h, speakers, table, self.log_alpha.exp(), self.beta,
                                      self.config.local_weight, self.config.global_weight)
            loss = loss + self.config.regulariser_weight * _distance_regulariser(table, self.log_alpha.exp(), self.beta)
            aligned = h.gather(1, perm.permute(0, 2, 1)[:, :, None, :].expand(B, N, d, T))  # [B, N(spk), d, T]
            centroids = aligned.mean(-1)
        else:
            points = h.permute(0, 1, 3, 2).reshape(B, N * T, d)
            centroids = kmeans(points.detach(), N, n_iters=kmeans_iters, generator=generator).centroids
            loss = perm = None
        return WavesplitOutput(self.separate(x, z, centroids), h, centroids, perm, loss)

    def loss(self, x: torch.Tensor, sources: torch.Tensor, speakers: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Total training loss and its parts: clipped negative SI-SDR (PIT) + weighted speaker loss."""
        out = self(x, speakers)
        if not isinstance(sources, torch.Tensor) or tuple(sources.shape) != tuple(out.estimates.shape):
            got = list(sources.shape) if isinstance(sources, torch.Tensor) else type(sources).__name__
            raise ValueError(f"sources must have shape [B, N, S] = {list(out.estimates.shape)}; got {got}")
        # Under autocast the estimates come in half precision: the loss runs in the wider dtype of the two.
        dtype = torch.promote_types(out.estimates.dtype, sources.dtype)
        separation = neg_si_sdr_loss(out.estimates.to(dtype), sources.to(dtype), clip_db=self.config.clip_db)
        total = separation + self.config.speaker_weight * out.speaker_loss
        # Parts as tensors: the training loop reads them when it logs, not one device wait per step.
        return total, {"separation": separation.detach(), "speaker": out.speaker_loss.detach()}
