"""Losses for learning from label proportions (DESIGN §10) as modules: the mean-of-probabilities
proportion loss, and the cross-entropy to per-bag optimal-transport pseudo-labels (both ops in
pyaudiok.ops.label_proportions). Each takes logits[B, K], bag_index[B] (int64) and
proportions[n_bags, K]."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..ops import ot_pseudo_labels, proportion_loss

__all__ = ["ProportionLoss", "OTPseudoLabelLoss"]


class ProportionLoss(nn.Module):
    """−Σ_c π_bc log clamp(mean_{i∈b} softmax(logits_i)_c), averaged over the non-empty bags."""

    def __init__(self, clamp: float = 1e-7) -> None:
        super().__init__()
        self.clamp = clamp

    def forward(self, logits: torch.Tensor, bag_index: torch.Tensor, proportions: torch.Tensor) -> torch.Tensor:
        return proportion_loss(logits, bag_index, proportions, from_logits=True, clamp=self.clamp)

    def extra_repr(self) -> str:
        return f"clamp={self.clamp:g}"


class OTPseudoLabelLoss(nn.Module):
    """Cross-entropy of the logits to the OT pseudo-labels of their own (detached) log-softmax:
    soft labels k_b·Q_b, or hard=True the argmax of each row of the plan. Mean over instances."""

    def __init__(self, eps: float = 1.0, n_iters: int | None = 100, tol: float | None = 1e-6,
                 hard: bool = False) -> None:
        super().__init__()
        self.eps, self.n_iters, self.tol, self.hard = eps, n_iters, tol, hard

    def forward(self, logits: torch.Tensor, bag_index: torch.Tensor, proportions: torch.Tensor) -> torch.Tensor:
        labels = ot_pseudo_labels(logits, bag_index, proportions, eps=self.eps, n_iters=self.n_iters, tol=self.tol,
                                  hard=self.hard, from_logits=True)
        if logits.shape[0] == 0:
            return logits.sum() * 0  # an empty batch: zero loss, still connected to the graph
        return F.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}, n_iters={self.n_iters}, tol={self.tol}, hard={self.hard}"
