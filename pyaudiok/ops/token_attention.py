"""Latent cross-attention over keys and values that are functions of a token (Perceiver AR's
cross-attention over its inputs, DESIGN §1).

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

    token_attention_forward(q, rows, tokens, cos, sin, dims, heads) -> (out, lse, k)
    token_attention_backward(grad, q, rows, tokens, cos, sin, k, out, lse, dims, heads) -> (dq, d_rows)

k is the gathered, rotated keys that the backward reuses. Registered ops with fakes and autograd, so torch.compile keeps them whole.

Backends: `reference` (the definition: gather_rows_rotary for the keys and values, then
latent_cross_attention; both dispatch to their own fast backends, so this is also the route on
GPUs), `cpu` (the kernels above; float32/float64, half precision computed in float32).
"""
from __future__ import annotations

import torch

from .. import backends, dispatch
from . import _checks
from ._library import HALF_DTYPES, cpp_op, custom_op, first_order, register_autograd, upcast_half
from .latent_attention import _INT_DTYPES, latent_cross_attention
from .rotary import _check_angles, gather_rows_rotary

__all__ = ["token_attention", "token_attention_reference", "token_attention_trusted", "key_rows"]


def key_rows(tokens: torch.Tensor, vocab: int, heads: int) -> torch.Tensor:
    """index[B, H, M] of the key rows of tokens[B, M] in rows[2·H·V, d]: token + V·head (the value
    rows follow at + H·V)."""
    return tokens[:, None] + vocab * torch.arange(heads, device=tokens.device)[:, None]


def _tables(rows: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-head key and value tables [H, V, d], views of rows."""
    if heads < 1 or rows.dim() != 2 or rows.shape[0] % (2 * heads):
        raise ValueError(f"rows must have shape [2·H·V, d] with heads = H >= 1; got heads = {heads}, rows "
                         f"{_checks.shape_str(rows.shape)}")
    V, d = rows.shape[0] // (2 * heads), rows.shape[1]
    return rows[:heads * V].view(heads, V, d), rows[heads * V:].view(heads, V, d)


@custom_op("pyaudiok::token_attention_cpu", device_types="cpu")
def _forward(q: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             dims: int, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k_table, v_table = _tables(rows, heads)
    k = cpp_op("gather_rotary_forward")(rows, key_rows(tokens, k_table.shape[1], heads), cos, sin, dims)
    out, lse = cpp_op("latent_attention_tokens_forward")(q, k, tokens, k_table, v_table, dims, q.shape[-1] ** -0.5)
    return out, lse, k


@custom_op("pyaudiok::token_attention_cpu_backward", device_types="cpu")
def _backward(grad: torch.Tensor, q: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, cos: torch.Tensor,
              sin: torch.Tensor, k: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, dims: int,
              heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    k_table, v_table = _tables(rows, heads)
    dq, dk, dk_table, dv_table = cpp_op("latent_attention_tokens_backward")(
        grad.contiguous(), q, k, out, lse, tokens, k_table, v_table, dims, q.shape[-1] ** -0.5)
    # The rotated channels' gradient per input goes back through the gather and rotation; the
    # tables' shares of the others and of the values come summed per token already.
    index = key_rows(tokens, k_table.shape[1], heads)
    d_rows = cpp_op("gather_rotary_backward")(dk, index, cos, sin, dims, rows.shape[0])
    dk_rows, dv_rows = _tables(d_rows, heads)
    dk_rows[..., dims:] += dk_table[..., dims:]
    dv_rows += dv_table
    return dq, d_rows


@torch.library.register_fake("pyaudiok::token_attention_cpu")
def _(q, rows, tokens, cos, sin, dims, heads):
    B, H, N, d = q.shape
    return torch.empty_like(q), q.new_empty(B, H, N), q.new_empty(B, H, tokens.shape[1], d)


@torch.library.register_fake("pyaudiok::token_attention_cpu_backward")
def _(grad, q, rows, tokens, cos, sin, k, out, lse, dims, heads):
    return torch.empty_like(q), torch.empty_like(rows)


def _setup_context(ctx, inputs, output):
    q, rows, tokens, cos, sin, dims, heads = inputs
    out, lse, k = output
    ctx.save_for_backward(q, rows, tokens, cos, sin, k, out, lse)
    ctx.dims, ctx.heads = dims, heads
    ctx.set_materialize_grads(False)  # lse and k are auxiliary outputs: no gradient flows from them


@first_order("token_attention")
def _grad(ctx, grad_out, grad_lse, grad_k):
    if grad_out is None:
        return (None,) * 7
    q, rows, tokens, cos, sin, k, out, lse = ctx.saved_tensors
    dq, d_rows = _backward(grad_out, q, rows, tokens, cos, sin, k, out, lse, ctx.dims, ctx.heads)
    return dq, d_rows, None, None, None, None, None


register_autograd("pyaudiok::token_attention_cpu", _grad, setup_context=_setup_context)


def token_attention_reference(q, rows, tokens, cos, sin, dims: int, heads: int) -> torch.Tensor:
    """The definition: the keys gathered and rotated, the values gathered, latent_cross_attention."""
    V = rows.shape[0] // (2 * heads)
    index = key_rows(tokens, V, heads)
    k = gather_rows_rotary(rows, index, cos, sin, dims)
    v = gather_rows_rotary(rows, index + heads * V, cos[..., :0], sin[..., :0], 0)
    return latent_cross_attention(q, k, v)


def _cpu(q, rows, tokens, cos, sin, dims: int, heads: int) -> torch.Tensor:
    return _forward(q.contiguous(), rows.contiguous(), tokens, cos.contiguous(), sin.contiguous(), dims, heads)[0]


OP = dispatch.op("token_attention")
OP.register("reference", token_attention_reference, devices=("cpu", "cuda"), dtypes=dispatch.FLOAT_DTYPES)
OP.register("cpu", upcast_half(_cpu), devices=("cpu",), dtypes=HALF_DTYPES + (torch.float32, torch.float64),
            availability=backends.cpu_reason)


def token_attention(q: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    dims: int, heads: int) -> torch.Tensor:
    """latent_cross_attention of q[B, H, N, d] over the keys and values that rows[2·H·V, d] hold for
    tokens[B, M] (M >= N; see the module doc): key i is the key row of tokens[b, i] for its head
    with its first `dims` channels rotated by the angles cos, sin ([M, dims/2] or [B, 1, M, dims/2]),
    value i the value row. Returns [B, H, N, d] in q's dtype; gradients to q and rows."""
    q = _checks.float_tensor("q", q, ndim=4, layout="[B, H, N, d]")
    rows = _checks.float_tensor("rows", rows, ndim=2, layout="[2·H·V, d]")
    tokens = _checks.tensor("tokens", tokens, ndim=2, layout="[B, M]", dtypes=_INT_DTYPES)
    _checks.same_dtype("rows", rows, "q", q)
    for name, x in (("rows", rows), ("tokens", tokens)):
        _checks.same_device(name, x, "q", q)
    B, H, N, d = q.shape
    heads = _checks.int_in_range("heads", heads, 1, 1 << 16)
    if H != heads:
        raise ValueError(f"q must have H = heads = {heads} heads; got {_checks.shape_str(q.shape)}")
    if rows.shape[1] != d or rows.shape[0] % (2 * heads) or rows.shape[0] == 0:
        raise ValueError(f"rows must have shape [2·H·V, d] = [{2 * heads}·V, {d}] (V >= 1: a key and a value "
                         f"row per head and token); got {_checks.shape_str(rows.shape)}")
    if tokens.shape[0] != B or tokens.shape[1] < N:
        raise ValueError(f"tokens must have shape [B, M] = [{B}, M >= N = {N}]; got {_checks.shape_str(tokens.shape)}")
    V = rows.shape[0] // (2 * heads)
    if tokens.device.type == "cpu" and tokens.numel():
        _checks.ints_within(tokens, 0, V - 1, f"tokens must hold token ids in [0, V) = [0, {V})")
    cos, sin, dims = _check_angles(cos, sin, dims, d, B, tokens.shape[1], "q", q)
    tokens = tokens.long().contiguous()
    if q.numel() == 0:  # nothing to compute: the reference handles empty shapes exactly
        return token_attention_reference(q, rows, tokens, cos, sin, dims, heads)
    return OP(q, rows, tokens, cos, sin, dims, heads, device=q.device, dtype=q.dtype)


def token_attention_trusted(q, rows, tokens, cos, sin, dims: int, heads: int) -> torch.Tensor:
    """token_attention for a caller that guarantees its contract (LatentAttention: shapes, one dtype
    and device, token ids in range): no value is read back to check them."""
    return OP(q, rows, tokens.long().contiguous(), cos, sin, dims, heads, device=q.device, dtype=q.dtype)
