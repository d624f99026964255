"""End-to-end training steps of the models whose trainers have no bench of their own, at their
trainers' default sizes: what a user training them gains from the fused ops over stock PyTorch.

Each case times one step (forward, loss, backward, Adam) of the same model, with every pyaudiok op
on the reference backend (plain PyTorch: the "stock" model) and on the device's fused backends (the
automatic choice), each also with the model's forward and loss under torch.compile (what
`pyaudiok train … --compile` does; full runs only). Inputs are random tensors of the trainers' batch shapes: the time
of a step does not depend on what the audio holds. Perceiver AR, SoundStream and CHARM have their
own step benches (bench_perceiver_ar, bench_soundstream, bench_charm)."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch.nn import functional as F

from pyaudiok.models import (COLA, DIVE, COLAConfig, DIVEConfig, LeafClassifier, PermutationPretext, Wavesplit,
                             WavesplitConfig, resnet18_diffstride)
from pyaudiok.nn.diffstride import clamp_strides_
from pyaudiok.train.runtime import compile_model

from .harness import Candidate, Case, first_compile_alone, with_backend

# A model, a function from the model to its loss on a fixed batch, and what to do after each step.
Setup = tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor], Callable[[torch.nn.Module], None]]


def _nothing(model: torch.nn.Module) -> None:
    pass


def _classifier_loss(x: torch.Tensor, y: torch.Tensor):
    return lambda model: F.cross_entropy(model(x), y)


def _diffstride(device, gen, dims: int, batch: int) -> Setup:
    """`pyaudiok train diffstride` (--task image / audio): ResNet-18 of width 8, nominal strides."""
    if dims == 2:  # 32 × 32 single-channel images, 10 classes
        x, classes = torch.randn(batch, 1, 32, 32, generator=gen), 10
    else:  # 40-band log-mel frames of 0.5 s clips, 7 classes
        x, classes = torch.randn(batch, 40, 63, generator=gen), 7
    model = resnet18_diffstride(classes, (1.0, 1.0, 2.0, 2.0, 2.0), in_channels=x.shape[1], dims=dims, width=8)
    y = torch.randint(0, classes, (batch,), generator=gen)
    return model, _classifier_loss(x.to(device), y.to(device)), clamp_strides_


def _leaf(device, gen, batch: int) -> Setup:
    """`pyaudiok train leaf`: the LEAF frontend (40 Gabor filters, sPCEN) and the small conv stack."""
    model = LeafClassifier(7, frontend="leaf", channels=(16, 32, 64, 64, 128, 128))
    x, y = torch.randn(batch, 8000, generator=gen), torch.randint(0, 7, (batch,), generator=gen)
    return model, _classifier_loss(x.to(device), y.to(device)), _nothing


def _cola(device, gen, batch: int) -> Setup:
    """`pyaudiok train cola`: log-mel conv encoder, 1 s crops at 16 kHz, bilinear contrastive loss."""
    model = COLA(COLAConfig(widths=(16, 32, 64, 128), embedding_dim=512))
    anchors, positives = (torch.randn(batch, 16_000, generator=gen).to(device) for _ in range(2))
    return model, lambda m: m(anchors, positives), _nothing


def _wavesplit(device, gen, batch: int) -> Setup:
    """`pyaudiok train wavesplit`: 2 sources, 1 s at 8 kHz, 16 training speakers; PIT SI-SDR loss."""
    model = Wavesplit(WavesplitConfig(num_sources=2, num_speakers=16, channels=64, embed_dim=32, speaker_layers=6,
                                      separation_layers=8))
    mix, src = torch.randn(batch, 8000, generator=gen), torch.randn(batch, 2, 8000, generator=gen)
    who = torch.stack([torch.randperm(16, generator=gen)[:2] for _ in range(batch)])
    mix, src, who = mix.to(device), src.to(device), who.to(device)
    return model, lambda m: m.loss(mix, src, who)[0], _nothing


def _dive(device, gen, batch: int) -> Setup:
    """`pyaudiok train dive`: 4 s conversations at 8 kHz, up to 3 speakers; collar-aware VAD loss.
    No pyaudiok op is in its training step (the loss is plain PyTorch): stock and fused run the same
    code, and their ratio shows the run's spread; compiling is what this case measures."""
    model = DIVE(DIVEConfig(sample_rate=8000, channels=64, embed_dim=32, layers=6, max_speakers=3, collar=0.25))
    x = torch.randn(batch, 32_000, generator=gen)
    frames = 32_000 // model.config.hop
    activity = (torch.rand(batch, 3, frames, generator=gen) > 0.6).float()
    x, activity = x.to(device), activity.to(device)
    return model, lambda m: m.loss(x, activity)[0], _nothing


def _permutation(device, gen, batch: int, ranker: str) -> Setup:
    """`pyaudiok train permutation`: 64-band log-mel of notes, 4 × 2 patches, soft ranks of their scores."""
    model = PermutationPretext(n_mels=64, frames=64, time_patches=2, freq_patches=4, dim=128, ranker=ranker, eps=0.1)
    x = torch.randn(batch, 64, 64, generator=gen).to(device)

    def loss(m):
        return m(x, generator=torch.Generator().manual_seed(0)).loss
    return model, loss, _nothing


SETUPS = {"diffstride_resnet18.image": lambda d, g, q: _diffstride(d, g, 2, 8 if q else 32),
          "diffstride_resnet18.audio": lambda d, g, q: _diffstride(d, g, 1, 8 if q else 32),
          "leaf_classifier": lambda d, g, q: _leaf(d, g, 4 if q else 32),
          "cola": lambda d, g, q: _cola(d, g, 4 if q else 32),
          "wavesplit": lambda d, g, q: _wavesplit(d, g, 2 if q else 8),
          "dive": lambda d, g, q: _dive(d, g, 1 if q else 4),
          "permutation.pav": lambda d, g, q: _permutation(d, g, 4 if q else 32, "pav"),
          "permutation.sinkhorn": lambda d, g, q: _permutation(d, g, 4 if q else 32, "sinkhorn")}


def _train_step(model: torch.nn.Module, loss_fn, after_step) -> Callable[[], torch.Tensor]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        loss.backward()
        opt.step()
        after_step(model)
        return loss.detach()
    return step


def _same_first_loss(output: torch.Tensor, reference: torch.Tensor) -> str:
    """Both runs start from the same weights: their first losses differ by the ops' rounding only."""
    return f"first loss diff {abs(output.item() - reference.item()) / max(abs(reference.item()), 1e-12):.1e}"


def model_case(device: torch.device, name: str, quick: bool) -> Case:
    torch.manual_seed(0)
    model, loss_fn, after_step = SETUPS[name](device, torch.Generator().manual_seed(0), quick)
    model = model.to(device).train()
    fused = "auto"  # what a user gets: the fused backends, and the reference where measured faster

    def step(backend: str, compiled: bool = False):
        run = with_backend(backend, _train_step(compile_model(copy.deepcopy(model), compiled), loss_fn, after_step))
        return first_compile_alone(run) if compiled else run
    cands = [Candidate("stock PyTorch (reference ops)", "reference", step("reference")),
             Candidate(f"pyaudiok ops ({fused})", "backend", step(fused), check=_same_first_loss),
             Candidate("stock PyTorch, torch.compile", "peer", step("reference", True), check=_same_first_loss,
                       compiles=True),
             Candidate(f"pyaudiok ops ({fused}), torch.compile", "backend", step(fused, True),
                       check=_same_first_loss, compiles=True)]
    params = sum(p.numel() for p in model.parameters())
    return Case(f"model_step.{name}", {"parameters": params}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [model_case(device, name, quick) for name in SETUPS]
