"""Every model: a state_dict loaded into a fresh instance gives the same outputs; inputs of another
dtype than the model's are named; strided (non-contiguous) inputs give the contiguous result."""
from __future__ import annotations

import pytest
import torch

from pyaudiok.models import (COLA, DIVE, CharmClassifier, CharmConfig, COLAConfig, DIVEConfig, LeafClassifier,
                             PerceiverAR, PerceiverARConfig, PermutationPretext, SoundStream, SoundStreamConfig,
                             Wavesplit, WavesplitConfig, resnet18_diffstride)
from pyaudiok.nn import DiffStride2d, Leaf, ResidualVQ

pytestmark = pytest.mark.usefixtures("one_thread")

_SOUNDSTREAM = dict(channels=4, dim=8, num_quantizers=3, codebook_size=16)
_WAVESPLIT = dict(num_sources=2, num_speakers=5, channels=8, embed_dim=4, speaker_layers=1, separation_layers=1)

# name: (a new model, inputs, what to compare: the model and inputs → a tensor or tuple of tensors)
MODELS = {
    "perceiver_ar": (lambda: PerceiverAR(PerceiverARConfig(vocab_size=16, max_context=12, latents=4, width=16,
                                                           heads=2, layers=1)),
                     lambda: (torch.randint(0, 16, (2, 10)),), lambda m, x: m(x)[0]),
    "soundstream": (lambda: SoundStream(SoundStreamConfig.preset_tiny(**_SOUNDSTREAM)),
                    lambda: (torch.randn(2, 1, 700),), lambda m, x: m(x)[:2]),
    "diffstride_2d": (lambda: resnet18_diffstride(3, width=4), lambda: (torch.randn(2, 3, 16, 16),), None),
    "diffstride_1d": (lambda: resnet18_diffstride(3, dims=1, in_channels=8, width=4),
                      lambda: (torch.randn(2, 8, 40),), None),
    "leaf": (lambda: LeafClassifier(3, "leaf", n_filters=8, channels=(4, 4)), lambda: (torch.randn(2, 2000),), None),
    "mel": (lambda: LeafClassifier(3, "mel", n_filters=8, channels=(4, 4)), lambda: (torch.randn(2, 2000),), None),
    "cola": (lambda: COLA(COLAConfig(widths=(4,), embedding_dim=8)),
             lambda: (torch.randn(3, 2000), torch.randn(3, 2000)), None),
    "charm": (lambda: CharmClassifier(CharmConfig(n_channels=8, n_classes=3, d=4, filters=4)),
              lambda: (torch.randn(2, 8, 64),), None),
    "permutation": (lambda: PermutationPretext(n_mels=16, frames=32, time_patches=4, dim=16),
                    lambda: (torch.randn(3, 16, 32),),
                    lambda m, x: m(x, generator=torch.Generator().manual_seed(0)).loss),
    "dive": (lambda: DIVE(DIVEConfig(channels=8, embed_dim=4, layers=1)), lambda: (torch.randn(2, 1600),),
             lambda m, x: m(x)[0]),
    "wavesplit": (lambda: Wavesplit(WavesplitConfig(**_WAVESPLIT)), lambda: (torch.randn(2, 400),),
                  lambda m, x: m(x, torch.tensor([[0, 1], [2, 3]]))[:3]),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_round_trip_gives_the_same_outputs(name):
    make, inputs, run = MODELS[name]
    run = run or (lambda m, *x: m(*x))
    torch.manual_seed(0)
    trained = make().eval()
    with torch.no_grad():  # move every parameter off its initialisation, so a missed one shows
        for p in trained.parameters():
            p.add_(0.01 * torch.rand_like(p))  # upwards: strides stay >= 1
    torch.manual_seed(1)
    fresh = make().eval()
    fresh.load_state_dict(trained.state_dict())
    x = inputs()
    with torch.no_grad():
        want, got = run(trained, *x), run(fresh, *x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name,argument", [("soundstream", "wav"), ("dive", "x"), ("wavesplit", "x"),
                                           ("diffstride_2d", "x")])
def test_input_of_another_dtype_than_the_model_is_named(name, argument):
    make, inputs, run = MODELS[name]
    run = run or (lambda m, *x: m(*x))
    x = inputs()
    with pytest.raises(TypeError, match=rf"^{argument} must have the model's dtype \(float32\); got float64"):
        run(make().eval(), *(t.double() for t in x))
    run(make().double().eval(), *(t.double() for t in x))  # converted together: fine


def test_wavesplit_refuses_an_integer_waveform():
    with pytest.raises(TypeError, match="x must have dtype float16, bfloat16, float32, float64; got int64"):
        Wavesplit(WavesplitConfig(**_WAVESPLIT))(torch.zeros(1, 400, dtype=torch.long))


def _strided(x: torch.Tensor) -> torch.Tensor:
    """The values of x in a non-contiguous tensor (every other element of a twice-as-long last axis)."""
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype).index_copy(
        -1, torch.arange(0, 2 * x.shape[-1], 2), x)
    out = wide[..., ::2]
    assert not out.is_contiguous()
    return out


@pytest.mark.parametrize("name", ["leaf", "diffstride", "residual_vq", "soundstream"])
def test_non_contiguous_inputs_give_the_contiguous_result(name):
    torch.manual_seed(0)
    if name == "leaf":
        module, x, run = Leaf(n_filters=8), torch.randn(2, 1000), lambda m, x: m(x)
    elif name == "diffstride":
        module, x, run = DiffStride2d((2.0, 1.5)), torch.randn(2, 3, 12, 10), lambda m, x: m(x)
    elif name == "residual_vq":
        module, x = ResidualVQ(8, 3, 16).eval(), torch.randn(2, 10, 8)
        run = lambda m, x: m(x, 2)[:3]  # noqa: E731
    else:
        module, x = SoundStream(SoundStreamConfig.preset_tiny(**_SOUNDSTREAM)).eval(), torch.randn(2, 1, 700)
        run = lambda m, x: m(x)[:2]  # noqa: E731
    x = x.requires_grad_()
    strided = _strided(x.detach()).requires_grad_()
    want, got = run(module, x), run(module, strided)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    first(want).float().square().sum().backward()
    first(got).float().square().sum().backward()
    torch.testing.assert_close(strided.grad, x.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mel", "cola", "charm"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fft_frontends_run_in_half_precision_and_on_empty_batches(name, dtype):
    """The frontends built on torch's FFTs (log-mel, channel spectra) compute half inputs in float32:
    a model cast to half gives its float32 result to half precision, and an empty batch an empty result."""
    make, inputs, compare = MODELS[name]
    compare = compare or (lambda m, *x: m(*x))
    torch.manual_seed(0)
    model, args = make().eval(), inputs()
    with torch.no_grad():
        want = compare(model, *args)
        got = compare(model.to(dtype), *(a.to(dtype) for a in args))
        empty = compare(model, *(a[:0].to(dtype) for a in args))
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.allclose(got.float(), want, rtol=0.1, atol=0.1), (got, want)
    assert empty.numel() == 0 if empty.dim() else empty.isfinite()  # COLA: the loss of an empty batch
