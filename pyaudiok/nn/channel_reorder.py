"""CHARM's channel reordering (DESIGN §7): from x[B, C_in, T], an arbitrarily ordered and possibly
incomplete set of electrodes, to x̃[B, K, T] in a canonical order of K channels, x̃ = A x.

    keys    k = encoder(x_c)                     [B, C_in, d]   one shared encoder, channel by channel
    queries q = learned canonical slots          [K, d]
    logits  L = q kᵀ / √d                        [B, K, C_in]   absent channels masked out
    A       = softmax over the input channels of L                   (normalization="softmax",
              with x̃ in one fused op: pyaudiok.ops.reorder_channels)
            = K · Sinkhorn plan of cost −L, marginals 1/K (rows) and   (normalization="sinkhorn")
              1/C_present on present channels, 0 on absent ones

Each row of A sums to 1 (a canonical channel is a convex mix of the present inputs); with
"sinkhorn" every present input is also used equally in total (A is doubly stochastic up to the
factor K / C_present), which discourages one input from feeding several canonical slots. Keys
depend on a channel's own signal only and A is a function of the set of channels, so x̃ does not
depend on the order of the inputs: shuffling the channels of x permutes the columns of A alone.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ._spectral import on_fft_friendly_input

from ..ops import _checks
from ..ops.reorder_channels import reorder_channels_trusted
from ..ops.sinkhorn import sinkhorn

__all__ = ["ChannelReorder", "ChannelEncoder", "Reordered", "NORMALIZATIONS", "reordering_loss"]

NORMALIZATIONS = ("softmax", "sinkhorn")


class Reordered(NamedTuple):
    x: torch.Tensor  # [B, K, T] channels in canonical order
    A: torch.Tensor  # [B, K, C_in] reordering matrix (zero on masked channels)


class ChannelEncoder(nn.Module):
    """Default per-channel signal encoder: x[N, T] -> [N, d]. The channel's log power spectrum
    (Hann-windowed FFT, averaged into `bands` equal bands) and its log standard deviation, through
    a two-layer MLP: what tells electrodes apart is mostly which rhythms they pick up and how
    strongly (e.g. blinks frontally, muscle temporally), and a spectrum is cheap."""

    def __init__(self, d: int, bands: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.bands = bands
        self.mlp = nn.Sequential(nn.LayerNorm(bands + 1), nn.Linear(bands + 1, hidden), nn.GELU(),
                                 nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 2:  # the spectrum without its DC bin needs at least one more bin
            raise ValueError(f"ChannelEncoder needs signals of T >= 2 samples; got T = {x.shape[-1]}")
        power = on_fft_friendly_input(self._band_power, x)
        log_std = x.std(-1, keepdim=True, unbiased=False).clamp_min(1e-6).log()
        return self.mlp(torch.cat([power.add(1e-6).log() - 2 * log_std, log_std], -1))

    def _band_power(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T] -> [N, bands]: the Hann-windowed power spectrum without DC, averaged into bands."""
        window = torch.hann_window(x.shape[-1], periodic=False, dtype=x.dtype, device=x.device)
        power = torch.fft.rfft((x - x.mean(-1, keepdim=True)) * window, dim=-1).abs().square()
        return nn.functional.adaptive_avg_pool1d(power[:, None, 1:], self.bands)[:, 0]


class ChannelReorder(nn.Module):
    """x[B, C_in, T] (+ mask[B, C_in], True = present) -> Reordered(x̃[B, K, T], A[B, K, C_in]).
    An absent channel's row of x must be finite (zeros): its weight in A is 0, and 0 · NaN is NaN.

    n_canonical: K, the canonical channels; d: key/query width; encoder: a module mapping one
    signal per row, [N, T] -> [N, d] (default ChannelEncoder(d)); normalization: "softmax" or
    "sinkhorn" (pyaudiok.ops.sinkhorn, entropic ε = `eps` on the logits, `n_iters` iterations,
    unrolled backward).
    """

    def __init__(self, n_canonical: int, d: int = 32, encoder: nn.Module | None = None,
                 normalization: str = "softmax", *, eps: float = 1.0, n_iters: int = 20) -> None:
        super().__init__()
        self.n_canonical = _checks.int_in_range("n_canonical", n_canonical, 1, 1 << 20)
        self.d = _checks.int_in_range("d", d, 1, 1 << 20)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}; got {normalization!r}")
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module mapping [N, T] -> [N, d={d}]; "
                            f"got {type(encoder).__name__}")
        self.normalization = normalization
        self.eps = _checks.positive_float("eps", eps)
        self.n_iters = _checks.int_in_range("n_iters", n_iters, 1, 10**6)
        self.encoder = encoder if encoder is not None else ChannelEncoder(d)
        self.queries = nn.Parameter(torch.randn(n_canonical, d))

    def _check(self, x, mask):
        x = _checks.float_tensor("x", x, ndim=3, layout="[B, C_in, T]")
        B, C, T = x.shape
        if C == 0 or T == 0:
            raise ValueError(f"x must have shape [B, C_in, T] with C_in, T >= 1; got {_checks.shape_str(x.shape)}")
        if mask is None:
            return x, torch.ones(B, C, dtype=torch.bool, device=x.device)
        mask = _checks.tensor("mask", mask, ndim=2, layout=f"[B, C_in] = [{B}, {C}]", dtypes=(torch.bool,))
        if tuple(mask.shape) != (B, C):
            raise ValueError(f"mask must have shape [B, C_in] = [{B}, {C}] (that of x's first two dims); "
                             f"got {_checks.shape_str(mask.shape)}")
        _checks.same_device("mask", mask, "x", x)
        _checks.values_hold(mask.any(1), "mask must mark at least one channel present (True) in every example")
        return x, mask

    def logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q kᵀ / √d: [B, K, C_in] (masked channels' entries are left as they are)."""
        B, C, T = x.shape
        keys = self.encoder(x.reshape(B * C, T))
        if not isinstance(keys, torch.Tensor) or tuple(keys.shape) != (B * C, self.d):
            got = _checks.shape_str(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__
            raise ValueError(f"encoder must map [N, T] = [{B * C}, {T}] to [N, d] = [{B * C}, {self.d}]; got {got}")
        keys = keys.reshape(B, C, self.d)
        return torch.einsum("kd,bcd->bkc", self.queries.to(keys.dtype), keys) / math.sqrt(self.d)

    def reorder(self, logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> Reordered:
        """x̃ = A x and A[B, K, C_in] from the logits (rows sum to 1, zero on masked channels)."""
        if self.normalization == "softmax":  # the fused op; x in the logits' dtype, as bmm under autocast
            return Reordered(*reorder_channels_trusted(logits, x.to(logits.dtype), mask))
        # Transport from the inputs (rows, mass 1/C_present each, 0 if absent) to the K slots
        # (columns, 1/K each): Sinkhorn ends on a column update, so every slot's total, the row sum
        # of A, is exact after any number of iterations.
        B, K, C = logits.shape
        a = mask.to(logits.dtype) / mask.sum(1, keepdim=True).to(logits.dtype)
        b = logits.new_full((B, K), 1.0 / K)
        plan = sinkhorn(-logits.transpose(1, 2), a, b, eps=self.eps, n_iters=self.n_iters, tol=None,
                        backward="unroll")
        A = K * plan.transpose(1, 2)
        return Reordered(torch.bmm(A, x), A)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> Reordered:
        x, mask = self._check(x, mask)
        x = x.masked_fill(~mask[:, :, None], 0.0)  # absent channels carry nothing, not even NaN
        if x.shape[0] == 0:
            return Reordered(x.new_zeros(0, self.n_canonical, x.shape[2]), x.new_zeros(0, self.n_canonical, x.shape[1]))
        return self.reorder(self.logits(x, mask), x, mask)

    def extra_repr(self) -> str:
        return f"n_canonical={self.n_canonical}, d={self.d}, normalization={self.normalization!r}"


def reordering_loss(A: torch.Tensor, where: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """Mean −log A[b, k, where[b, k]] over the canonical slots k whose electrode is present: a
    supervision of A where the order is known (e.g. channels shuffled on purpose in training).
    A[B, K, C_in]; where[B, K] int64, the input position of canonical channel k; present[B, K]
    bool (default all)."""
    A = _checks.float_tensor("A", A, ndim=3, layout="[B, K, C_in]")
    where = _checks.tensor("where", where, shape=A.shape[:2], layout="[B, K]", dtypes=(torch.int64,))
    _checks.same_device("where", where, "A", A)
    if where.device.type == "cpu" and not torch.compiler.is_compiling():  # elsewhere a wait for the device
        _checks.ints_within(where, 0, A.shape[2] - 1, f"where must lie in [0, C_in) = [0, {A.shape[2]})")
    if present is not None:
        present = _checks.tensor("present", present, shape=A.shape[:2], layout="[B, K]", dtypes=(torch.bool,))
        _checks.same_device("present", present, "A", A)
    picked = A.gather(2, where[:, :, None])[:, :, 0].clamp_min(1e-12).log()
    if present is None:
        return -picked.mean()
    present = present.to(picked.dtype)
    return -(picked * present).sum() / present.sum().clamp_min(1.0)
