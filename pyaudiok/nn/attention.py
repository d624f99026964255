"""Attention building blocks over `latent_cross_attention`: partial rotary position encoding and
a multi-head attention whose keys/values can be projected once and cached."""
from __future__ import annotations

import torch
from torch import nn

from pyaudiok.ops import latent_cross_attention

__all__ = ["PartialRotary", "LatentAttention", "squared_relu_mlp"]


class PartialRotary(nn.Module):
    """Rotary position encoding on the first `fraction` of each head's channels (the rest pass
    through): position information for the part, content-only matching for the rest."""

    def __init__(self, head_dim: int, fraction: float = 0.5, base: float = 10000.0):
        super().__init__()
        self.dims = int(head_dim * fraction) // 2 * 2
        inv_freq = base ** (-torch.arange(0, self.dims, 2, dtype=torch.float64) / max(self.dims, 1))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [T, dims/2] for positions[T], or [B, 1, T, dims/2] for positions[B, T]: computed
        once per forward and shared by every layer."""
        pos = positions.to(torch.float64 if dtype == torch.float64 else torch.float32)
        angles = pos[..., None] * self.inv_freq.to(pos.dtype)
        if angles.dim() == 3:
            angles = angles[:, None]  # per-row positions: broadcast over heads
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def apply(self, x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x[B, H, T, d] with channel pairs (i, i + dims/2), i < dims/2, rotated; the rest unchanged."""
        if self.dims == 0:
            return x
        cos, sin = tables
        half = self.dims // 2
        a, b, rest = x[..., :half], x[..., half:self.dims], x[..., self.dims:]
        return torch.cat((a * cos - b * sin, b * cos + a * sin, rest), dim=-1)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x[B, H, T, d], positions[T] or [B, T] (ints) -> x with its first `dims` channels rotated."""
        return self.apply(x, self.tables(positions.to(x.device), x.dtype))


class LatentAttention(nn.Module):
    """Multi-head attention of queries over keys/values (bottom-right causal), with rotary
    encoding at given positions. `keys_values` and `attend` are separate so callers can cache."""

    def __init__(self, width: int, heads: int, rotary_fraction: float = 0.5):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width)
        self.rotary = PartialRotary(self.head_dim, rotary_fraction)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.head_dim).transpose(1, 2)

    def queries(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotary-encoded queries [B, H, T, d]; rope = self.rotary.tables(positions, dtype)."""
        return self.rotary.apply(self._split(self.q(x)), rope)

    def keys_values(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.rotary.apply(self._split(k), rope), self._split(v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = latent_cross_attention(q, k, v)
        B, H, N, d = out.shape
        return self.out(out.transpose(1, 2).reshape(B, N, H * d))


def squared_relu_mlp(width: int, ratio: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(width, ratio * width), _SquaredReLU(), nn.Linear(ratio * width, width))


class _SquaredReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()
