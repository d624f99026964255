"""Benchmark of `token_attention` (Perceiver AR's cross-attention over keys and values that are rows
of a per-token table, DESIGN §1), forward + backward to q and the table rows, at the trainer's
cross-attention (batch 4, 2 heads, 256 latents over 8 192 byte tokens, d 64, rotary on 32 channels):
the reference (the keys and values gathered and rotated, then latent_cross_attention, all of it on
the reference backends), the same gathered route on the fused gather and attention kernels (the route
the model took before), every backend, and the peer a user writes: the gather and rotation in plain
PyTorch, then SDPA with `causal_lower_right`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from pyaudiok.ops.rotary import rotate_pairs
from pyaudiok.ops.token_attention import OP, token_attention, token_attention_reference

from .harness import Candidate, Case, backward_step, op_candidates, relative_error

SIZES = [(4, 2, 256, 8192, 64, 256, 32)]  # B, H, N, M, d, V, rotated dims
QUICK = [(2, 2, 64, 1024, 64, 256, 32)]


def _inputs(B, H, N, M, d, V, dims, device):
    gen = torch.Generator().manual_seed(M + V)
    q = torch.randn(B, H, N, d, generator=gen).to(device).requires_grad_()
    rows = torch.randn(2 * H * V, d, generator=gen).to(device).requires_grad_()
    tokens = torch.randint(0, V, (B, M), generator=gen).to(device)
    angles = torch.arange(M)[:, None] * 10000.0 ** (-torch.arange(dims // 2) / (dims // 2))
    return q, rows, tokens, angles.cos().to(device), angles.sin().to(device)


def _sdpa(q, rows, tokens, cos, sin, dims, heads):
    """The plain-PyTorch route: embedding gathers, the rotation, SDPA."""
    V = rows.shape[0] // (2 * heads)
    index = tokens[:, None] + V * torch.arange(heads, device=tokens.device)[:, None]
    k = rotate_pairs(F.embedding(index, rows), cos, sin, dims)
    v = F.embedding(index + heads * V, rows)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]))


def case(device: torch.device, B, H, N, M, d, V, dims) -> Case:
    q, rows, tokens, cos, sin = _inputs(B, H, N, M, d, V, dims, device)
    check = relative_error("out")
    step = backward_step(lambda: token_attention(q, rows, tokens, cos, sin, dims, H), [q, rows])
    cands = op_candidates(OP, device, q.dtype, (q, rows, tokens, cos, sin, dims, H), step, check,
                          compile_reference=False)
    gathered = backward_step(lambda: token_attention_reference(q, rows, tokens, cos, sin, dims, H), [q, rows])
    cands.append(Candidate("gathered keys and values, fused gather + attention", "peer", gathered, check=check))
    cands.append(Candidate("torch gathers + SDPA causal_lower_right", "peer",
                           backward_step(lambda: _sdpa(q, rows, tokens, cos, sin, dims, H), [q, rows]), check=check))
    return Case("token_attention.fwd+bwd", {"B": B, "H": H, "N": N, "M": M, "d": d, "V": V, "rotary": dims}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [case(device, *size) for size in (QUICK if quick else SIZES)]
