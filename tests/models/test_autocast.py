"""Every model trains under bf16 autocast, on the CPU and (gpu-marked) on CUDA: the fused ops take
the half-precision activations (the CPU kernels compute in float32, the GPU kernels accumulate in
it), the parameters that meet them stay float32, and no op falls back to its reference. One
forward + backward per model, small sizes; backward() both after the autocast region (the usual
way) and inside it."""
from __future__ import annotations

import warnings

import pytest
import torch

from pyaudiok import BackendFallbackWarning, dispatch
from pyaudiok.models import (COLA, DIVE, CharmClassifier, CharmConfig, COLAConfig, DIVEConfig, LeafClassifier,
                             PerceiverAR, PerceiverARConfig, PermutationPretext, SoundStream, SoundStreamConfig,
                             Wavesplit, WavesplitConfig, resnet18_diffstride)

pytestmark = pytest.mark.usefixtures("one_thread")


def _perceiver_ar(device):
    model = PerceiverAR(PerceiverARConfig(vocab_size=32, max_context=40, latents=12, width=32, heads=2, layers=2))
    tokens = torch.randint(0, 32, (2, 41), device=device)
    return model.to(device), lambda: model.loss(tokens)[0]


def _soundstream(device):
    config = SoundStreamConfig.preset_tiny(channels=4, dim=8, num_quantizers=4, codebook_size=16)
    model = SoundStream(config).train().to(device)
    wav = torch.randn(2, 1, 3 * 320 + 5, device=device)
    return model, lambda: (lambda out: out[0].float().square().mean() + out[2])(model(wav, n_q=3))


def _diffstride(device, dims):
    if dims == 2:
        model, x = resnet18_diffstride(5, width=4), torch.randn(2, 3, 32, 32, device=device)
    else:
        model, x = resnet18_diffstride(7, dims=1, in_channels=20, width=4), torch.randn(2, 20, 100, device=device)
    return model.to(device), lambda: model(x).float().logsumexp(-1).mean()


def _leaf(device):
    model = LeafClassifier(5, frontend="leaf", n_filters=16, channels=(4, 8, 8, 8, 8, 8)).to(device)
    x = torch.randn(2, 2000, device=device)
    return model, lambda: model(x).float().logsumexp(-1).mean()


def _cola(device):
    model = COLA(COLAConfig(widths=(4, 8), embedding_dim=16)).to(device)
    a, p = torch.randn(5, 4000, device=device), torch.randn(5, 4000, device=device)
    return model, lambda: model(a, p)


def _charm(device, normalization):
    config = CharmConfig(n_channels=16, n_classes=4, d=8, filters=8, normalization=normalization)
    model, x = CharmClassifier(config).to(device), torch.randn(3, 16, 256, device=device)
    return model, lambda: model(x).float().logsumexp(-1).mean()


def _permutation(device, ranker):
    model = PermutationPretext(n_mels=16, frames=32, time_patches=4, dim=16, ranker=ranker, eps=0.5).to(device)
    x = torch.randn(3, 16, 32, device=device)
    return model, lambda: model(x).loss


def _dive(device):
    model = DIVE(DIVEConfig(channels=16, embed_dim=8, layers=2, collar=0.01)).to(device)
    x, ref = torch.randn(2, 8000, device=device), (torch.rand(2, 3, 100, device=device) > 0.5).float()
    return model, lambda: model.loss(x, ref)[0]


def _wavesplit(device):
    model = Wavesplit(WavesplitConfig(num_sources=2, num_speakers=5, channels=16, embed_dim=8, speaker_layers=2,
                                      separation_layers=2)).to(device)
    mix, src = torch.randn(2, 2000, device=device), torch.randn(2, 2, 2000, device=device)
    who = torch.tensor([[0, 1], [2, 3]], device=device)
    return model, lambda: model.loss(mix, src, who)[0]


MODELS = {"perceiver_ar": _perceiver_ar, "soundstream": _soundstream,
          "diffstride_2d": lambda d: _diffstride(d, 2), "diffstride_1d": lambda d: _diffstride(d, 1),
          "leaf": _leaf, "cola": _cola,
          "charm_softmax": lambda d: _charm(d, "softmax"), "charm_sinkhorn": lambda d: _charm(d, "sinkhorn"),
          "permutation_pav": lambda d: _permutation(d, "pav"),
          "permutation_sinkhorn": lambda d: _permutation(d, "sinkhorn"),
          "dive": _dive, "wavesplit": _wavesplit}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward_after", "backward_inside"])
@pytest.mark.parametrize("name", list(MODELS))
def test_model_trains_under_bf16_autocast(name, backward_inside, device, monkeypatch):
    monkeypatch.setattr(dispatch, "_warned", set())  # every fallback warns again, here as an error
    torch.manual_seed(0)
    model, loss_fn = MODELS[name](device)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendFallbackWarning)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_fn()
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
