"""Benchmark of one CHARM training step (forward, cross-entropy, backward, Adam) at the trainer's
default size (batch 64, 16 channels × 256 samples, d 32, 32 filters): ChannelReorder with softmax
normalization, with Sinkhorn normalization (20 unrolled iterations) on the reference and on the
fused Sinkhorn backend, and the same classifier without CHARM as the floor (what reordering adds).
No peer implements CHARM (DESIGN §7: no public code)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

import pyaudiok
from pyaudiok.models import CharmClassifier, CharmConfig

from .harness import Candidate, Case


def _step(device, batch, backend, **config):
    torch.manual_seed(0)
    model = CharmClassifier(CharmConfig(**config)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 16, 256, device=device)
    mask = torch.rand(batch, 16, device=device) > 0.25
    mask[:, 0] = True
    y = torch.randint(0, 4, (batch,), device=device)

    def step():
        with pyaudiok.use_backend(backend):
            loss = F.cross_entropy(model(x, mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def cases(device: torch.device, quick: bool) -> list[Case]:
    batch = 16 if quick else 64
    fused = "cpu" if device.type == "cpu" else "triton"
    cands = [Candidate("CHARM sinkhorn (reference Sinkhorn)", "reference",
                       _step(device, batch, "reference", normalization="sinkhorn")),
             Candidate(f"CHARM sinkhorn ({fused} Sinkhorn)", "backend",
                       _step(device, batch, fused, normalization="sinkhorn")),
             Candidate("CHARM softmax", "backend", _step(device, batch, fused, normalization="softmax")),
             Candidate("classifier without CHARM", "floor", _step(device, batch, fused, reorder=False))]
    return [Case("charm.train_step", {"B": batch, "C": 16, "T": 256}, cands)]
