"""Benchmark of one Perceiver AR training step (forward, loss, backward, Adam) at the trainer's
default size (context 8192, 256 latents, width 128, 2 heads of 64, 3 latent layers, cross-attend
dropout 0.5, batch 4) against `perceiver-ar-pytorch`'s model of equal size (same widths, depth,
heads, latents and dropout), both with the trainer's optimiser (fused Adam)."""
from __future__ import annotations

import torch

import pyaudiok
from pyaudiok.models import PerceiverAR, PerceiverARConfig
from pyaudiok.train.perceiver_ar import make_optimizer

from .harness import Candidate, Case
from .peers import load

SIZES = {"cpu": dict(max_context=8192, latents=256, width=128, heads=2, layers=3, batch=4),
         "cuda": dict(max_context=8192, latents=1024, width=768, heads=12, layers=12, batch=4)}
QUICK = {"cpu": dict(max_context=2048, latents=128, width=128, heads=2, layers=2, batch=2),
         "cuda": dict(max_context=4096, latents=512, width=256, heads=4, layers=4, batch=4)}


def _ours(size, device, backend):
    torch.manual_seed(0)
    config = PerceiverARConfig(vocab_size=256, max_context=size["max_context"], latents=size["latents"],
                               width=size["width"], heads=size["heads"], layers=size["layers"], cross_dropout=0.5)
    model = PerceiverAR(config).to(device)
    opt = make_optimizer(model, 3e-4)
    seq = torch.randint(0, 256, (size["batch"], size["max_context"] + 1), device=device)

    def step():
        with pyaudiok.use_backend(backend):
            loss, _ = model.loss(seq)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _peer(size, device):
    module, reason = load("perceiver_ar_pytorch", "perceiver-ar-pytorch")
    if module is None:
        return None, reason
    torch.manual_seed(0)
    M, N = size["max_context"], size["latents"]
    model = module.PerceiverAR(num_tokens=256, dim=size["width"], depth=size["layers"], max_seq_len=M,
                               cross_attn_seq_len=M - N, dim_head=size["width"] // size["heads"],
                               heads=size["heads"], cross_attn_dropout=0.5).to(device)
    opt = make_optimizer(model, 3e-4)  # the same optimiser: the models are compared
    seq = torch.randint(1, 256, (size["batch"], M + 1), device=device)

    def step():
        loss = model(seq[:, :-1], labels=seq[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, None


def cases(device: torch.device, quick: bool) -> list[Case]:
    size = (QUICK if quick else SIZES)[device.type]
    fused = "cpu" if device.type == "cpu" else "triton"
    peer, reason = _peer(size, device)
    cands = [Candidate("reference attention", "reference", _ours(size, device, "reference")),
             Candidate(f"PerceiverAR ({fused} attention)", "backend", _ours(size, device, fused)),
             Candidate("perceiver-ar-pytorch PerceiverAR", "peer", peer, skip=reason)]
    return [Case("perceiver_ar.train_step", dict(size), cands)]
