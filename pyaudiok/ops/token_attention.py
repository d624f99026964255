"""Latent cross-attention over keys and values that are functions of a token (Perceiver AR's
cross-attention over its inputs, DESIGN §1), on the CPU kernels.

`rows[2·H·V, d]` holds, per head, a key row and a value row for each of the V token ids (the layout
of LatentAttention.gathered_keys_values: [(part, head, token), d]). Key i of item b is the key row
of token tokens[b, i] with its first `dims` channels rotated by that input's angle (cos, sin);
value i is the value row. The op equals latent_cross_attention(q, k, v) on the gathered keys and
values (bottom-right causal, no key lengths, M >= N, scale d^-1/2), and so are its gradients to q
and rows.

Only the keys' rotated channels depend on the position. So the kernels
(csrc/cpu/latent_attention.cpp, latent_attention_*_tokens) take the unrotated share of every score
and all of P V, dP and the tables' gradients through [V, queries] tables made once per query block
or (batch, head). Per tile they run one product of `dims` channels in the forward, instead of two
of d, and three in the backward, instead of five. Only the keys' rotated channels are gathered.

    token_attention_forward(q, rows, tokens, index, cos, sin, dims, heads) -> (out, lse, k)
    token_attention_backward(grad, q, rows, tokens, index, cos, sin, k, out, lse, dims, heads) -> (dq, d_rows)

index[B, H, M] = tokens + V·head picks the key rows. k is the gathered, rotated keys that the
backward reuses. Registered ops with fakes and autograd, so torch.compile keeps them whole.
float32/float64 CPU tensors; callers upcast half precision.
"""
from __future__ import annotations

import torch

from ._library import cpp_op, custom_op

__all__ = ["token_attention"]


def _tables(rows: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-head key and value tables [H, V, d], views of rows."""
    V, d = rows.shape[0] // (2 * heads), rows.shape[1]
    return rows[:heads * V].view(heads, V, d), rows[heads * V:].view(heads, V, d)


@custom_op("pyaudiok::token_attention_cpu", device_types="cpu")
def _forward(q: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, index: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor, dims: int, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k_table, v_table = _tables(rows, heads)
    k = cpp_op("gather_rotary_forward")(rows, index, cos, sin, dims)
    out, lse = cpp_op("latent_attention_tokens_forward")(q, k, tokens, k_table, v_table, dims, q.shape[-1] ** -0.5)
    return out, lse, k


@custom_op("pyaudiok::token_attention_cpu_backward", device_types="cpu")
def _backward(grad: torch.Tensor, q: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, index: torch.Tensor,
              cos: torch.Tensor, sin: torch.Tensor, k: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
              dims: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    k_table, v_table = _tables(rows, heads)
    dq, dk, dk_table, dv_table = cpp_op("latent_attention_tokens_backward")(
        grad.contiguous(), q, k, out, lse, tokens, k_table, v_table, dims, q.shape[-1] ** -0.5)
    # The rotated channels' gradient per input goes back through the gather and rotation; the
    # tables' shares of the others and of the values come summed per token already.
    d_rows = cpp_op("gather_rotary_backward")(dk, index, cos, sin, dims, rows.shape[0])
    dk_rows, dv_rows = _tables(d_rows, heads)
    dk_rows[..., dims:] += dk_table[..., dims:]
    dv_rows += dv_table
    return dq, d_rows


@torch.library.register_fake("pyaudiok::token_attention_cpu")
def _(q, rows, tokens, index, cos, sin, dims, heads):
    B, H, N, d = q.shape
    return torch.empty_like(q), q.new_empty(B, H, N), q.new_empty(B, H, index.shape[2], d)


@torch.library.register_fake("pyaudiok::token_attention_cpu_backward")
def _(grad, q, rows, tokens, index, cos, sin, k, out, lse, dims, heads):
    return torch.empty_like(q), torch.empty_like(rows)


def _setup_context(ctx, inputs, output):
    q, rows, tokens, index, cos, sin, dims, heads = inputs
    out, lse, k = output
    ctx.save_for_backward(q, rows, tokens, index, cos, sin, k, out, lse)
    ctx.dims, ctx.heads = dims, heads
    ctx.set_materialize_grads(False)  # lse and k are auxiliary outputs: no gradient flows from them


def _grad(ctx, grad_out, grad_lse, grad_k):
    if grad_out is None:
        return (None,) * 8
    q, rows, tokens, index, cos, sin, k, out, lse = ctx.saved_tensors
    dq, d_rows = _backward(grad_out, q, rows, tokens, index, cos, sin, k, out, lse, ctx.dims, ctx.heads)
    return dq, d_rows, None, None, None, None, None, None


torch.library.register_autograd("pyaudiok::token_attention_cpu", _grad, setup_context=_setup_context)


def token_attention(q: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    dims: int, heads: int) -> torch.Tensor:
    """latent_cross_attention of q[B, H, N, d] over the keys and values that rows[2·H·V, d] hold for
    tokens[B, M] (see the module doc), the keys rotated on their first `dims` channels by the
    angles cos, sin ([M, dims/2] or [B, 1, M, dims/2]). Trusted arguments (LatentAttention's): float32
    or float64 CPU tensors of one dtype, token ids in [0, V), M >= N. Returns out [B, H, N, d]."""
    V = rows.shape[0] // (2 * heads)
    tokens = tokens.long().contiguous()
    index = tokens[:, None] + V * torch.arange(heads, device=tokens.device)[:, None]  # [B, H, M]
    return _forward(q.contiguous(), rows.contiguous(), tokens, index, cos.contiguous(), sin.contiguous(), dims,
                    heads)[0]
