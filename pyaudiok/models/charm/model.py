"""CHARM (DESIGN §7): ChannelReorder → an EEG conv classifier, trained end to end; and the same
classifier without CHARM (`CharmConfig(reorder=False)`) as the baseline, which reads the input
channels in the order they come.

The classifier is ShallowConvNet-like, the shape of the classic band-power pipeline: spatial
filters (1×1 conv over the channels) → depthwise temporal band filters → BatchNorm → square →
average pool → log → 1×1 conv → mean over time → linear. Its first layer weighs channels by
position, so it needs the canonical order that CHARM provides.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ...nn.channel_reorder import ChannelReorder
from ...ops import _checks

__all__ = ["CharmClassifier", "CharmConfig", "EEGConvNet"]


@dataclasses.dataclass
class CharmConfig:
    n_channels: int = 16          # K: canonical channels (= the classifier's input channels)
    n_classes: int = 4
    reorder: bool = True          # False: the baseline, the classifier alone
    d: int = 32                   # ChannelReorder key/query width
    normalization: str = "softmax"
    sinkhorn_eps: float = 1.0
    sinkhorn_iters: int = 20
    filters: int = 32             # spatial / temporal filters of the classifier
    kernel: int = 25              # temporal filter length (samples)
    pool: int = 32                # band-power window (samples), hop pool // 2
    dropout: float = 0.25

    def __post_init__(self) -> None:
        for name in ("n_channels", "n_classes", "d", "sinkhorn_iters", "filters", "kernel", "pool"):
            _checks.int_in_range(name, getattr(self, name), 1, 1 << 31)
        _checks.positive_float("sinkhorn_eps", self.sinkhorn_eps)
        _checks.real_in_range("dropout", self.dropout, 0, 1, high_open=True)


class EEGConvNet(nn.Module):
    """x[B, C, T] -> logits[B, n_classes] (module doc); T >= 1 (the pool window shrinks to fit)."""

    def __init__(self, n_channels: int, n_classes: int, filters: int = 32, kernel: int = 25, pool: int = 32,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.n_channels, self.pool = n_channels, pool
        self.spatial = nn.Conv1d(n_channels, filters, 1, bias=False)
        self.temporal = nn.Conv1d(filters, filters, kernel, padding=kernel // 2, groups=filters, bias=False)
        self.norm = nn.BatchNorm1d(filters)
        self.mix = nn.Sequential(nn.Conv1d(filters, filters, 1), nn.GELU(), nn.Dropout(dropout))
        self.head = nn.Linear(filters, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.temporal(self.spatial(x))).square()
        window = max(1, min(self.pool, h.shape[-1]))
        h = nn.functional.avg_pool1d(h, window, max(1, window // 2)).clamp_min(1e-6).log()
        return self.head(self.mix(h).mean(-1))


class CharmClassifier(nn.Module):
    """x[B, C_in, T] (+ mask[B, C_in], True = present) -> logits[B, n_classes].

    With reorder=True, ChannelReorder maps any order and subset of channels to the K canonical
    ones first (`forward(..., return_reordering=True)` also returns A[B, K, C_in]); without it,
    C_in must equal K and absent channels are zeroed in place.
    """

    def __init__(self, config: CharmConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CharmConfig()
        self.reorder = (ChannelReorder(config.n_channels, config.d, normalization=config.normalization,
                                       eps=config.sinkhorn_eps, n_iters=config.sinkhorn_iters)
                        if config.reorder else None)
        self.classifier = EEGConvNet(config.n_channels, config.n_classes, config.filters, config.kernel,
                                     config.pool, config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_reordering: bool = False):
        A = None
        if self.reorder is not None:
            x, A = self.reorder(x, mask)
        else:
            K = self.config.n_channels
            x = _checks.float_tensor("x", x, ndim=3, layout=f"[B, C_in = {K}, T]")
            _checks.dim_size("x", x, 1, K, "the classifier's n_channels (no channel reordering)")
            if mask is not None:
                mask = _checks.tensor("mask", mask, shape=x.shape[:2], layout="[B, C_in]", dtypes=(torch.bool,))
                x = x.masked_fill(~mask[:, :, None], 0.0)
        logits = self.classifier(x)
        return (logits, A) if return_reordering else logits
