"""Attention building blocks over `latent_cross_attention`: partial rotary position encoding and
a multi-head attention whose keys/values can be projected once and cached."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyaudiok.dispatch import requested_backend
from pyaudiok.ops import _checks, gather_rows_rotary, latent_cross_attention, split_heads_rotary
from pyaudiok.ops.rotary import rotate_pairs
from pyaudiok.ops.latent_attention import latent_cross_attention_trusted
from pyaudiok.ops.token_attention import key_rows, token_attention_trusted

__all__ = ["PartialRotary", "LatentAttention", "squared_relu_mlp"]


_SMALL = 1 << 20  # elements: below, the fewest ops win (per-op overhead); above, the least memory traffic


def _cpu_kernels(x: torch.Tensor) -> bool:
    """Whether the rotary layouts run on pyaudiok.ops.rotary's CPU kernels: CPU tensors in eager mode,
    unless a backend other than theirs was asked for (they have no Triton form; the tensor-op forms
    below are what the GPUs and torch.compile run)."""
    return x.device.type == "cpu" and requested_backend() in (None, "cpu") and not torch.compiler.is_compiling()


def _full_cos(cos: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[..., head_dim] = cos | cos | 1 ... 1: one multiply then scales every channel (1 passes through)."""
    ones = cos.new_ones(cos.shape[:-1] + (head_dim - 2 * cos.shape[-1],))
    return torch.cat((cos, cos, ones), dim=-1)


def _rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dims: int,
                 sign: float, full_cos: torch.Tensor | None = None) -> None:
    """out = x[..., d] with channel pairs (i, i + dims/2) rotated by sign·angle, the rest copied (dims
    = 0: a copy); any strides. With full_cos (`_full_cos(cos)`): three ops, x·full_cos then the two
    sin terms (fewest calls, for small tensors); without: the pairs' four ops and a copy of the rest
    (each channel read and written once, for large ones). A large head-interleaved `out` ([B, T, H, d]
    memory) is written head by head on the CPU: TensorIterator's inner loop would otherwise cover only
    a d/2 × H tile per call (~10× slower)."""
    if out.device.type == "cpu" and out.dim() == 4 and out.shape[1] > 1 and out.stride(1) < out.stride(2) \
            and out.numel() >= _SMALL:
        for h in range(out.shape[1]):
            _rotate_into(out[:, h:h + 1], x[:, h:h + 1], cos, sin, dims, sign, full_cos)
        return
    half = dims // 2
    a, b = x[..., :half], x[..., half:dims]
    if dims and full_cos is not None:
        torch.mul(x, full_cos, out=out)
        out[..., :half].addcmul_(b, sin, value=-sign)
        out[..., half:dims].addcmul_(a, sin, value=sign)
        return
    if dims:
        torch.mul(a, cos, out=out[..., :half]).addcmul_(b, sin, value=-sign)
        torch.mul(b, cos, out=out[..., half:dims]).addcmul_(a, sin, value=sign)
    out[..., dims:].copy_(x[..., dims:])


def _split_rotate(parts, cos, sin, dims: int, rotated: int):
    """_HeadsRotary's forward: (the P outputs, the full_cos table used or None)."""
    full_cos = _full_cos(cos, parts.shape[-1]) if parts[0].numel() < _SMALL else None
    outs = tuple(parts.new_empty(parts.shape[1:]) for _ in range(parts.shape[0]))
    for i, out in enumerate(outs):
        _rotate_into(out, parts[i], cos, sin, dims if i < rotated else 0, 1.0, full_cos)
    return outs, full_cos


def split_rotate(parts, cos, sin, dims: int, rotated: int) -> tuple[torch.Tensor, ...]:
    """_HeadsRotary where a gradient is needed; without one (sampling) the same writes without the
    autograd node, whose Python overhead was most of the time of a one-token call."""
    if torch.compiler.is_compiling():
        return tuple(rotate_pairs(parts[i], cos, sin, dims if i < rotated else 0).contiguous()
                     for i in range(parts.shape[0]))
    if torch.is_grad_enabled() and (parts.requires_grad or cos.requires_grad or sin.requires_grad):
        return _HeadsRotary.apply(parts, cos, sin, dims, rotated)
    return _split_rotate(parts, cos, sin, dims, rotated)[0]


class _HeadsRotary(torch.autograd.Function):
    """parts[P, B, H, T, d] (any strides, e.g. a view of a projection's output [B, T, P·H·d]) ->
    P contiguous [B, H, T, d], the first `rotated` of them rotary-encoded. The head split, the copy
    the attention op needs and the rotation are one write, and the backward (the inverse rotation)
    writes the gradient straight in the layout of `parts`, so the projection's backward gets it
    without slicing, concatenating or re-laying out the [B, T, ·] gradient."""

    @staticmethod
    def forward(ctx, parts, cos, sin, dims: int, rotated: int):
        outs, full_cos = _split_rotate(parts, cos, sin, dims, rotated)
        ctx.save_for_backward(cos, sin, full_cos)
        ctx.dims, ctx.rotated = dims, rotated
        ctx.layout = torch.empty_like(parts, device="meta")  # parts' strides where dense, for the gradient
        return outs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        cos, sin, full_cos = ctx.saved_tensors
        layout = ctx.layout
        grad = torch.empty_strided(layout.shape, layout.stride(), dtype=grads[0].dtype, device=grads[0].device)
        for i, g in enumerate(grads):  # a rotation's inverse is its transpose
            _rotate_into(grad[i], g, cos, sin, ctx.dims if i < ctx.rotated else 0, -1.0, full_cos)
        return grad, None, None, None, None


class _RotaryInPlace(torch.autograd.Function):
    """Rotary encoding of x[..., d] in place (only the rotated channels are read and written again);
    its backward writes the inversely rotated gradient anew."""

    @staticmethod
    def forward(ctx, x, cos, sin, dims: int):
        if dims:
            half = dims // 2
            a, b = x[..., :half], x[..., half:dims]
            a0 = a.clone()
            a.mul_(cos).addcmul_(b, sin, value=-1.0)
            b.mul_(cos).addcmul_(a0, sin)
        ctx.mark_dirty(x)
        ctx.save_for_backward(cos, sin)
        ctx.dims = dims
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        out = torch.empty_like(grad, memory_format=torch.contiguous_format)
        _rotate_into(out, grad, cos, sin, ctx.dims, -1.0)  # a rotation's inverse is its transpose
        return out, None, None, None


class _GatherRows(torch.autograd.Function):
    """F.embedding(index, rows) for each index tensor, where gather_rows_rotary's CPU kernels do not
    run (GPUs, or another backend requested). The backward is embedding's own, deterministic one
    (index_add_ uses atomics on CUDA), run once for all the index tensors."""

    @staticmethod
    def forward(ctx, rows, *indices):
        ctx.save_for_backward(*indices)
        ctx.num_rows = rows.shape[0]
        return tuple(F.embedding(index, rows) for index in indices)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        indices = ctx.saved_tensors
        out = sum(torch.ops.aten.embedding_dense_backward(g, index, ctx.num_rows, -1, False)
                  for index, g in zip(indices, grads))
        return (out,) + (None,) * len(indices)


_POSITION_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


class PartialRotary(nn.Module):
    """Rotary position encoding on the first `fraction` of each head's channels (the rest pass
    through): position information for the part, content-only matching for the rest."""

    def __init__(self, head_dim: int, fraction: float = 0.5, base: float = 10000.0):
        super().__init__()
        _checks.int_in_range("head_dim", head_dim, 1, 1 << 31)
        _checks.real_in_range("fraction", fraction, 0, 1)
        _checks.positive_float("base", base)
        self.head_dim = head_dim
        self.dims = int(head_dim * fraction) // 2 * 2
        inv_freq = base ** (-torch.arange(0, self.dims, 2, dtype=torch.float64) / max(self.dims, 1))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self._cache: dict = {}  # (device, dtype) -> [L, dims] table of cos | sin at positions 0..L-1

    def _compute(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[..., dims]: cos | sin of positions[...]."""
        pos = positions.to(torch.float64 if dtype == torch.float64 else torch.float32)
        angles = pos[..., None] * self.inv_freq.to(pos.dtype)
        return torch.cat((angles.cos(), angles.sin()), dim=-1).to(dtype)

    def _table(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        key = (self.inv_freq.device, dtype)
        table = self._cache.get(key)
        if table is None or table.shape[0] < length:
            table = self._cache[key] = self._compute(torch.arange(length, device=self.inv_freq.device), dtype)
        return table

    def tables(self, positions: torch.Tensor, dtype: torch.dtype,
               bound: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [T, dims/2] for positions[T], or [B, 1, T, dims/2] for positions[B, T]: computed
        once per forward and shared by every layer. With `bound` (all positions in [0, bound)) they are
        rows of a table cached per device and dtype: a gather instead of two transcendental passes."""
        if bound is None or self.dims == 0:
            both = self._compute(positions, dtype)
        else:
            both = F.embedding(positions.long(), self._table(bound, dtype))
        if both.dim() == 3:  # per-row positions: broadcast over heads
            both = both[:, None]
        half = self.dims // 2
        return both[..., :half], both[..., half:]

    def apply(self, x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x[B, H, T, d] with channel pairs (i, i + dims/2), i < dims/2, rotated; the rest unchanged."""
        if self.dims == 0:
            return x
        return split_rotate(x[None], *tables, self.dims, 1)[0]

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x[B, H, T, d], positions[T] or [B, T] (ints) -> x with its first `dims` channels rotated."""
        x = _checks.float_tensor("x", x, ndim=4, layout="[B, H, T, d]")
        B, _, T, d = x.shape
        if d != self.head_dim:
            raise ValueError(f"x must have head_dim = {self.head_dim} channels a head (its last dim); got {d}")
        positions = _checks.tensor("positions", positions, dtypes=_POSITION_DTYPES)
        if tuple(positions.shape) not in ((T,), (B, T)):
            raise ValueError(f"positions must have shape [T] = [{T}] or [B, T] = [{B}, {T}]; got "
                             f"{_checks.shape_str(positions.shape)}")
        return self.apply(x, self.tables(positions.to(x.device), x.dtype))


class LatentAttention(nn.Module):
    """Multi-head attention of queries over keys/values (bottom-right causal), with rotary
    encoding at given positions. `keys_values` and `attend` are separate so callers can cache."""

    def __init__(self, width: int, heads: int, rotary_fraction: float = 0.5):
        super().__init__()
        _checks.int_in_range("width", width, 1, 1 << 31)
        _checks.int_in_range("heads", heads, 1, 1 << 31)
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width)
        self.rotary = PartialRotary(self.head_dim, rotary_fraction)

    def split_heads(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                    rotated: int) -> tuple[torch.Tensor, ...]:
        """Projections x[B, T, P·width] -> P contiguous [B, H, T, d], the first `rotated` rotary-encoded."""
        B, T, C = x.shape
        P = C // (self.heads * self.head_dim)
        if _cpu_kernels(x):  # one pass each way (csrc/cpu/rotary.cpp)
            return split_heads_rotary(x, P, self.heads, *rope, self.rotary.dims, rotated).unbind(0)
        parts = x.view(B, T, P, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return split_rotate(parts, *rope, self.rotary.dims, rotated)

    def gathered_keys_values(self, table: torch.Tensor, tokens: torch.Tensor,
                             rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary-encoded keys and values [B, H, T, d] of inputs whose projection self.kv(x) is the row
        tokens[b, t] of table[V, 2·width] (inputs that are a function of a token id).

        The small table is re-laid out head-major instead of the [B, T, ·] activations, so the
        gathers write the attention op's contiguous layout directly: no head-split copy, the rotation
        runs in place on contiguous rows, and the gathers' backward sums the gradient's rows into
        the table without writing a [B, T, 2·width] gradient first."""
        V = table.shape[0]
        rows = self._head_major(table)
        index = key_rows(tokens, V, self.heads)  # [B, H, T]
        if torch.compiler.is_compiling():  # plain gathers and rotation, for the compiler to fuse
            k, v = F.embedding(index, rows), F.embedding(index + self.heads * V, rows)
            return rotate_pairs(k, *rope, self.rotary.dims), v
        if _cpu_kernels(rows):  # one pass per row each way (csrc/cpu/rotary.cpp)
            cos, sin = rope
            return (gather_rows_rotary(rows, index, cos, sin, self.rotary.dims),
                    gather_rows_rotary(rows, index + self.heads * V, cos[..., :0], sin[..., :0], 0))
        k, v = _GatherRows.apply(rows, index, index + self.heads * V)
        return _RotaryInPlace.apply(k, *rope, self.rotary.dims), v

    def _head_major(self, table: torch.Tensor) -> torch.Tensor:
        """A projection table[V, 2·width] of each token as rows [(part, head, token), d]."""
        V, d = table.shape[0], self.head_dim
        return table.view(V, 2 * self.heads, d).transpose(0, 1).reshape(-1, d)

    def attend_tokens(self, q: torch.Tensor, table: torch.Tensor, tokens: torch.Tensor,
                      rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
        """attend(q, *gathered_keys_values(table, tokens, rope)) through pyaudiok.ops.token_attention
        (the products of the unrotated key channels and of the values per vocabulary entry) on CPU
        tensors, unless a backend that op lacks is requested; else None (the caller takes the gathered
        route, whose ops have it). tokens[B, M], M >= N; q and table of one dtype, as the projections
        give them (half precision under autocast: the op computes it in float32)."""
        if table.device.type != "cpu" or requested_backend() not in (None, "cpu"):
            return None
        out = token_attention_trusted(q, self._head_major(table), tokens, *rope, self.rotary.dims, self.heads)
        B, H, N, d = out.shape
        return self.out(out.transpose(1, 2).reshape(B, N, H * d))

    def queries(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotary-encoded queries [B, H, T, d]; rope = self.rotary.tables(positions, dtype)."""
        return self.split_heads(self.q(x), rope, 1)[0]

    def keys_values(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary-encoded keys and values [B, H, T, d] of x[B, T, width]."""
        return self.split_heads(self.kv(x), rope, 1)

    def queries_keys_values(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """queries(x, rope) and keys_values(x, rope) (self-attention: the same positions) from one
        projection by the stacked weights and one head split."""
        qkv = F.linear(x, torch.cat((self.q.weight, self.kv.weight)))
        return self.split_heads(qkv, rope, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Attention output [B, N, width]. With key_lengths[B] (int64 on q's device, from a cache that
        keeps them valid) only the first key_lengths[b] keys exist, and no value is checked on the host."""
        if key_lengths is None:
            out = latent_cross_attention(q, k, v)
        else:
            out = latent_cross_attention_trusted(q, k, v, key_lengths)
        B, H, N, d = out.shape
        return self.out(out.transpose(1, 2).reshape(B, N, H * d))


def squared_relu_mlp(width: int, ratio: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(width, ratio * width), _SquaredReLU(), nn.Linear(ratio * width, width))


class _SquaredReLUFn(torch.autograd.Function):
    """relu(x)²: saves relu(x) once; the gradient 2·relu(x)·g needs no separate threshold mask."""

    @staticmethod
    def forward(ctx, x):
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r.square()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (r,) = ctx.saved_tensors
        return (g * r).mul_(2)


class _SquaredReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SquaredReLUFn.apply(x)
