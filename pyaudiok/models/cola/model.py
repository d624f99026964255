"""COLA: contrastive learning of general-purpose audio representations (DESIGN §6).

Two crops of one clip are a positive pair; the batch's other clips are the negatives. Log-mel
frontend (STFT window 400, hop 160, FFT 1024, Hann; 64 mel bins 60–7800 Hz; log(clip(·, 1e-5)))
or LEAF, a conv encoder (or EfficientNet-B0, models/cola/efficientnet.py), global max pool, the
projection Dense → LayerNorm → tanh, and the bilinear similarity g(x)ᵀ W g(x') scored by the fused
`bilinear_contrastive_loss`.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ...nn._spectral import on_fft_friendly_input
from ...nn.layout import channels_last, to_channels_last
from ...nn.leaf import Leaf
from ...nn.mel import mel_filterbank
from ...ops import _checks, bilinear_contrastive_loss
from .efficientnet import EfficientNetB0

__all__ = ["COLA", "COLAConfig", "LogMel"]


@dataclasses.dataclass
class COLAConfig:
    sample_rate: int = 16_000
    n_fft: int = 1024
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 7800.0
    frontend: str = "logmel"                      # "logmel" or "leaf" (pyaudiok.nn.Leaf, n_mels filters)
    encoder: str = "conv"                         # "conv" (the stages below) or "efficientnet" (B0)
    widths: tuple[int, ...] = (32, 64, 128, 256)  # conv encoder stages (each halves time and mel)
    embedding_dim: int = 512                      # the projection g's width (Dense(512))
    symmetric: bool = False

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "embedding_dim"):
            _checks.int_in_range(name, getattr(self, name), 1, 1 << 31)
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must be <= n_fft ({self.n_fft})")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2 = {self.sample_rate / 2:g}; "
                             f"got f_min = {self.f_min!r}, f_max = {self.f_max!r}")
        if not self.widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints; got {self.widths!r}")
        if self.frontend not in FRONTENDS:
            raise ValueError(f"frontend must be one of {FRONTENDS}; got {self.frontend!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}; got {self.encoder!r}")


FRONTENDS = ("logmel", "leaf")
ENCODERS = ("conv", "efficientnet")


class LogMel(nn.Module):
    """wav [B, T] or [B, 1, T] -> log-mel [B, 1, frames, n_mels], frames = 1 + (T − win) // hop
    (98 for 1 s at 16 kHz): frames of `win_length` samples, Hann-windowed, zero-padded to n_fft."""

    def __init__(self, cfg: COLAConfig):
        super().__init__()
        self.n_fft, self.win, self.hop = cfg.n_fft, cfg.win_length, cfg.hop_length
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        fb = mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.f_max).clone()
        self.register_buffer("filterbank", fb, persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if isinstance(wav, torch.Tensor) and wav.dim() == 3 and wav.shape[1] == 1:
            wav = wav[:, 0]
        wav = _checks.float_tensor("wav", wav, ndim=2, layout="[B, T] or [B, 1, T]")
        if wav.shape[1] < self.win:
            raise ValueError(f"wav must hold at least win_length = {self.win} samples (one frame); "
                             f"got {_checks.shape_str(wav.shape)}")
        return on_fft_friendly_input(self._log_mel, wav)[:, None]

    def _log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        frames = wav.unfold(-1, self.win, self.hop) * self.window.to(wav.dtype)  # [B, frames, win]
        spec = torch.fft.rfft(frames, n=self.n_fft).abs()
        mel = spec @ self.filterbank.to(wav.dtype).T
        return torch.log(mel.clamp(min=1e-5))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2, ceil_mode=True))


class LeafFrontend(nn.Module):
    """LEAF (pyaudiok.nn.Leaf, hop `hop_length`, window `win_length`) in LogMel's layout
    [B, 1, frames, n_filters]: the learnable alternative to the fixed log-mel."""

    def __init__(self, cfg: COLAConfig):
        super().__init__()
        ms = 1000.0 / cfg.sample_rate
        self.leaf = Leaf(cfg.n_mels, cfg.sample_rate, window_ms=cfg.win_length * ms, hop_ms=cfg.hop_length * ms,
                         min_freq=cfg.f_min, max_freq=cfg.f_max)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.leaf(wav).transpose(1, 2)[:, None]


def _encoder(cfg: COLAConfig) -> tuple[nn.Module, int]:
    """The encoder and its output width."""
    if cfg.encoder == "efficientnet":
        net = EfficientNetB0(in_channels=1)
        return net, net.out_channels
    chans = (1,) + tuple(cfg.widths)
    return nn.Sequential(*(_block(a, b) for a, b in zip(chans[:-1], chans[1:]))), chans[-1]


class COLA(nn.Module):
    """`embed(wav)` -> the encoder's max-pooled features [B, widths[-1]] (what a downstream linear
    probe reads); `project(wav)` -> g [B, embedding_dim]; `forward(anchors, positives)` -> the loss."""

    def __init__(self, cfg: COLAConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or COLAConfig()
        self.frontend = LeafFrontend(cfg) if cfg.frontend == "leaf" else LogMel(cfg)
        self.norm = nn.BatchNorm2d(1)  # log-mel levels vary by tens of dB: normalise the input
        self.encoder, width = _encoder(cfg)
        to_channels_last(self.encoder)  # see pyaudiok.nn.layout
        self.head = nn.Sequential(nn.Linear(width, cfg.embedding_dim), nn.LayerNorm(cfg.embedding_dim), nn.Tanh())
        self.similarity = nn.Parameter(torch.empty(cfg.embedding_dim, cfg.embedding_dim))
        # g has |g_i| ≲ 1 in every one of the d dims, so ‖g‖² ~ d: std 1/d keeps the initial logits
        # O(1) (std 1/√d gives logits of std ~√d and a loss far above chance at the start).
        nn.init.normal_(self.similarity, std=1.0 / cfg.embedding_dim)

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(channels_last(self.norm(self.frontend(wav))))
        return feats.amax(dim=(2, 3))  # global max pool

    def project(self, wav: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(wav))

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        for name, value in (("anchors", anchors), ("positives", positives)):
            _checks.float_tensor(name, value, layout="[B, T] or [B, 1, T]")
        if anchors.shape != positives.shape:
            raise ValueError(f"positives must have the shape of anchors {_checks.shape_str(anchors.shape)}; "
                             f"got {_checks.shape_str(positives.shape)}")
        # Anchors and positives go through the encoder together (one batch, shared statistics).
        g = self.project(torch.cat([anchors, positives]))
        ga, gp = g.chunk(2)
        # Under autocast the embeddings come in half precision and W stays float32: the loss runs in
        # the wider dtype, as autocast runs losses.
        dtype = torch.promote_types(g.dtype, self.similarity.dtype)
        return bilinear_contrastive_loss(ga.to(dtype), gp.to(dtype), self.similarity.to(dtype),
                                         symmetric=self.cfg.symmetric)
