"""Benchmarks of the rotary layout ops (pyaudiok.ops.rotary) at Perceiver AR's trainer shapes,
forward + backward, the reference and every backend:
- `gather_rows_rotary`: the cross-attention keys (rotary on half of each head's channels) and
  values gathered from the vocabulary table for the kept inputs (context 8192, cross-attend
  dropout 0.5: 4 224 kept of each row), per-item angles (no library does this gather: what a user
  writes instead, an embedding lookup then the rotation, is the reference);
- `split_heads_rotary`: a latent block's stacked q, k, v projection split into heads, queries and
  keys rotary-encoded, beside the peer's form of the same work: perceiver-ar-pytorch's head split
  (einops `rearrange`) and its `apply_rotary_pos_emb` on the queries and keys."""
from __future__ import annotations

import torch

import pyaudiok
from pyaudiok.ops.rotary import GATHER_OP, SPLIT_OP, gather_rows_rotary, split_heads_rotary

from .harness import Candidate, Case, backend_candidates, relative_error
from .peers import load

# (batch, kept inputs, latents, width, heads) of the trainer's CPU default and the GPU bench model.
SIZES = {"cpu": (4, 4224, 256, 128, 2), "cuda": (4, 4224, 1024, 768, 12)}
QUICK = {"cpu": (2, 1056, 128, 128, 2), "cuda": (2, 2112, 512, 256, 4)}
VOCAB = 256


_check = relative_error()


def gather_case(device, B, T, width, heads) -> Case:
    d = width // heads
    dims, gen = d // 2, torch.Generator().manual_seed(0)
    rows = torch.randn(2 * heads * VOCAB, d, generator=gen).to(device).requires_grad_(True)
    tokens = torch.randint(0, VOCAB, (B, 1, T), generator=gen).to(device)
    index = tokens + VOCAB * torch.arange(heads, device=device)[:, None]
    angles = torch.rand(B, 1, T, dims // 2, generator=gen).to(device) * 8192
    cos, sin = angles.cos(), angles.sin()
    grads = [torch.randn(B, heads, T, d, generator=gen).to(device) for _ in range(2)]

    def ours(backend):
        def run():
            with pyaudiok.use_backend(backend):
                k = gather_rows_rotary(rows, index, cos, sin, dims)
                v = gather_rows_rotary(rows, index + heads * VOCAB, cos[..., :0], sin[..., :0], 0)
            torch.autograd.backward((k, v), grads)
            return k.detach()
        return run

    cands = [Candidate("reference", "reference", ours("reference"))]
    cands += backend_candidates(GATHER_OP, device, rows.dtype, (rows, index, cos, sin, dims), ours, _check)
    return Case("rotary.gather.fwd+bwd", {"B": B, "T": T, "heads": heads, "d": d, "rows": rows.shape[0]}, cands)


def split_case(device, B, N, width, heads) -> Case:
    d = width // heads
    dims, gen = d // 2, torch.Generator().manual_seed(1)
    x = torch.randn(B, N, 3 * width, generator=gen).to(device).requires_grad_(True)
    angles = torch.arange(N, dtype=torch.float32)[:, None] * (10000.0 ** (-torch.arange(0, dims, 2) / dims))
    cos, sin = angles.cos().to(device), angles.sin().to(device)
    grads = [torch.randn(B, heads, N, d, generator=gen).to(device) for _ in range(3)]

    def ours(backend):
        def run():
            with pyaudiok.use_backend(backend):
                q, k, v = split_heads_rotary(x, 3, heads, cos, sin, dims, 2).unbind(0)
            torch.autograd.backward((q, k, v), grads)
            return q.detach()
        return run

    cands = [Candidate("reference", "reference", ours("reference"))]
    cands += backend_candidates(SPLIT_OP, device, x.dtype, (x, 3, heads, cos, sin, dims, 2), ours, _check)
    peer, reason = load("perceiver_ar_pytorch.perceiver_ar_pytorch", "perceiver-ar-pytorch")
    einops, einops_reason = load("einops", "einops")
    reason = reason or einops_reason

    def run_peer():
        pos = torch.cat((angles, angles), dim=-1).to(device)  # its table: the frequencies twice
        q, k, v = (einops.rearrange(t, "b n (h d) -> b h n d", h=heads) for t in x.chunk(3, dim=-1))
        q, k = peer.apply_rotary_pos_emb(pos, q), peer.apply_rotary_pos_emb(pos, k)
        torch.autograd.backward((q, k, v), grads)
        return q.detach()
    cands.append(Candidate("perceiver-ar-pytorch rearrange + apply_rotary_pos_emb", "peer",
                           run_peer if reason is None else None, skip=reason, check=_check))
    return Case("rotary.split_heads.fwd+bwd", {"B": B, "N": N, "parts": 3, "heads": heads, "d": d}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    B, T, N, width, heads = (QUICK if quick else SIZES)[device.type]
    return [gather_case(device, B, T, width, heads), split_case(device, B, N, width, heads)]
