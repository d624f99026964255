"""Perceiver AR: causality, cross-attend dropout, cached sampling, a tiny training run."""
from __future__ import annotations

import pytest
import torch

import pyaudiok
from pyaudiok.models import PerceiverAR, PerceiverARConfig
from pyaudiok.models.perceiver_ar import filter_logits, generate

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(vocab_size=32, max_context=40, latents=12, width=32, heads=2, layers=2)


def _model(**overrides):
    model = PerceiverAR(PerceiverARConfig(**{**TINY, **overrides}))
    with torch.no_grad():  # the zero-initialised logits would make every output equal
        model.logits.weight.normal_(std=0.3)
    return model


@pytest.mark.parametrize("backend", ("reference", "cpu"))
def test_causal(backend):
    """Perturbing token t changes the logits only at latent positions >= t."""
    model = _model().double().eval()
    tokens = torch.randint(0, 32, (2, 40))
    with pyaudiok.use_backend(backend):
        base, _ = model(tokens)
        for t in (0, 17, 28, 30, 39):
            other = tokens.clone()
            other[:, t] = (other[:, t] + 1) % 32
            logits, _ = model(other)
            changed = (logits - base).abs().amax(dim=(0, 2)) > 1e-12
            positions = torch.arange(28, 40)  # the latents' input positions
            assert torch.equal(changed, positions >= t), f"token {t}"


def test_zero_initialised_logits_start_uniform():
    model = PerceiverAR(PerceiverARConfig(**TINY))
    logits, _ = model(torch.randint(0, 32, (1, 20)))
    assert torch.equal(logits, torch.zeros_like(logits))
    seq = torch.randint(0, 32, (2, 41))
    loss, parts = model.loss(seq)
    torch.testing.assert_close(loss, torch.log(torch.tensor(32.0)))


def test_cross_attend_dropout_keeps_latents_and_prefix_subset():
    model = _model(cross_dropout=0.5).train()
    keep = model._keep(3, 40, 12, "cpu")
    assert keep.shape == (3, 12 + 14)
    assert torch.equal(keep[:, -12:], torch.arange(28, 40).expand(3, 12))
    assert (keep[:, 1:] > keep[:, :-1]).all() and (keep[:, :14] < 28).all()
    assert not torch.equal(keep[0], keep[1]) or not torch.equal(keep[1], keep[2])
    # Dropout changes training outputs, never evaluation ones; a model without dropout = eval.
    tokens = torch.randint(0, 32, (2, 40))
    train_out, _ = model(tokens)
    model.eval()
    eval_out, _ = model(tokens)
    assert not torch.allclose(train_out, eval_out)
    model.config.cross_dropout = 0.0
    model.train()
    torch.testing.assert_close(model(tokens)[0], eval_out)


@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(temperature=0.8, top_k=5),
                                      dict(temperature=1.2, top_p=0.7), dict(temperature=0)])
def test_cached_generation_equals_uncached(sampling):
    model = _model().double()
    prompt = torch.randint(0, 32, (2, 7))
    # 45 steps cross several windows: latents fill up (12) and the context reaches max_context (40).
    out = {}
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(5)
        out[use_cache] = generate(model, prompt, 45, generator=gen, use_cache=use_cache, **sampling)
    assert out[True].shape == (2, 52)
    assert torch.equal(out[True][:, :7], prompt)
    assert torch.equal(out[True], out[False])


def test_step_logits_equal_full_forward():
    model = _model().double().eval()
    tokens = torch.randint(0, 32, (2, 30))
    _, cache = model(tokens[:, :25], 5, return_cache=True)
    for t in range(25, 30):
        step_logits = model.step(tokens[:, t], cache)
        full, _ = model(tokens[:, :t + 1], t + 1 - 20)
        torch.testing.assert_close(step_logits, full[:, -1])


def test_filter_logits():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    p = logits.softmax(-1)[0]
    kept = filter_logits(logits, top_p=float(p[0] + p[1] / 2))
    assert torch.isfinite(kept[0, :2]).all() and torch.isinf(kept[0, 2:]).all()


def test_bad_inputs():
    model = _model()
    with pytest.raises(ValueError, match="max_context"):
        model(torch.randint(0, 32, (1, 41)))
    with pytest.raises(ValueError, match="latents"):
        model(torch.randint(0, 32, (1, 20)), 13)
    with pytest.raises(ValueError, match="integer"):
        model(torch.rand(1, 20))


def test_tiny_training_run_loss_falls():
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig(**TINY, z_loss=1e-4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    # A learnable sequence: a repeating pattern with a random phase per row.
    pattern = torch.randint(0, 32, (9,))
    losses = []
    for _ in range(60):
        phase = torch.randint(0, 9, (8, 1))
        seq = pattern[(phase + torch.arange(41)) % 9]
        loss, parts = model.loss(seq)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["nll"].item())
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
