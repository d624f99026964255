"""Perceiver AR on right-padded rows (`lengths`): each row gives what it gives alone, unpadded; its
padding has no influence; the loss, the cached step and generation follow each row's own length."""
from __future__ import annotations

import pytest
import torch

import pyaudiok
from pyaudiok.models.perceiver_ar import KVBuffer, generate
from pyaudiok.models.perceiver_ar import sampling

from .test_perceiver_ar import _EagerGraphStep, _graphs_on_any_device, _model, _no_host_reads

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = (40, 25, 12, 33)  # T = 40, from full to just the 12 latents


def _padded(lengths=LENGTHS, T: int = 40, vocab: int = 32, seed: int = 0, pad: int | None = None):
    """Random tokens [B, T] whose rows past their lengths hold `pad` (None: random ids)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (len(lengths), T), generator=gen)
    if pad is not None:
        past = torch.arange(T) >= torch.tensor(lengths)[:, None]
        tokens = tokens.masked_fill(past, pad)
    return tokens, torch.tensor(lengths)


def _each_row_alone(model, tokens, lengths, n):
    return [model(tokens[b:b + 1, :int(length)], n)[0][0] for b, length in enumerate(lengths)]


@pytest.mark.parametrize("backend", ("reference", "cpu"))
@pytest.mark.parametrize("n", (12, 5))
@pytest.mark.parametrize("training", (False, True))
def test_padded_rows_equal_each_row_alone(backend, n, training):
    """Row b of the padded batch = the forward of its first ℓ_b tokens alone (float64), in eval and in
    training without cross-attend dropout. A vocabulary of 16 sends the long rows alone through the
    per-vocabulary-entry route, the padded batch through the gathered keys."""
    model = _model(vocab_size=16, cross_dropout=0.0).double().train(training)
    tokens, lengths = _padded(vocab=16)
    with pyaudiok.use_backend(backend):
        logits, _ = model(tokens, n, lengths=lengths)
        want = _each_row_alone(model, tokens, lengths, n)
    assert logits.shape == (4, n, 16)
    for b, w in enumerate(want):
        torch.testing.assert_close(logits[b], w)


@pytest.mark.parametrize("training", (False, True))
def test_padding_has_no_influence(training):
    """Whatever the padding holds (other ids, a -1 pad id), the logits and the gradients are the same
    bits, in training with cross-attend dropout too (the same draw)."""
    model = _model(cross_dropout=0.5).double().train(training)
    results = []
    for pad in (None, 0, 31, -1):
        tokens, lengths = _padded(pad=pad)
        torch.manual_seed(3)
        logits, _ = model(tokens, lengths=lengths)
        grads = torch.autograd.grad(logits.square().sum(), list(model.parameters()), allow_unused=True)
        results.append((logits, grads))
    for logits, grads in results[1:]:
        assert torch.equal(logits, results[0][0])
        for g, want in zip(grads, results[0][1]):
            assert (g is None and want is None) or torch.equal(g, want)


def test_full_lengths_equal_no_lengths_under_dropout():
    """Rows all of length T keep the prefix positions the unpadded forward keeps (the same draw), so
    the training loss and gradients are those without lengths."""
    model = _model(cross_dropout=0.5, vocab_size=16).double().train()
    sequence = torch.randint(0, 16, (3, 41))
    runs = []
    for lengths in (None, torch.full((3,), 40)):
        torch.manual_seed(7)
        loss = model.loss(sequence, lengths=lengths)[0]
        runs.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    torch.testing.assert_close(runs[1][0], runs[0][0])
    for a, b in zip(runs[1][1], runs[0][1]):
        torch.testing.assert_close(a, b)


def test_cross_attend_dropout_per_row_keeps_a_subset_of_its_prefix_and_all_latents():
    """Each row keeps the fraction of its own prefix (ℓ_b − n positions) that a row of that prefix
    keeps unpadded, strictly increasing, then its n latents; key lengths end each row there; and
    gradients flow through the kept inputs."""
    model = _model(cross_dropout=0.5).train()
    lengths = torch.tensor(LENGTHS + (31,))
    torch.manual_seed(0)
    keep, key_lengths = model._keep_rows(lengths, 40, 12)
    assert keep.shape == (5, model._prefix_kept(28) + 12)
    for b, length in enumerate(lengths.tolist()):
        kept = model._prefix_kept(length - 12)
        assert int(key_lengths[b]) == kept + 12
        row = keep[b, :kept + 12]
        assert (row[1:] > row[:-1]).all() and (row[:kept] < length - 12).all()
        assert torch.equal(row[kept:], torch.arange(length - 12, length))
        assert (keep[b] < 40).all()
    assert model._prefix_kept(19) == 9  # 9.5 dropped rounds half to even
    tokens, lengths = _padded()
    logits, _ = model(tokens, lengths=lengths)
    grads = torch.autograd.grad(logits.square().sum(), [model.embed.weight, model.cross.attn.kv.weight])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("z_loss", (0.0, 1e-2))
def test_loss_with_lengths_is_the_mean_of_the_rows_losses(z_loss):
    model = _model(z_loss=z_loss, cross_dropout=0.0).double().train()
    sequence, _ = _padded(T=41, pad=-1)
    lengths = torch.tensor(LENGTHS)  # inputs per row; row b's sequence holds ℓ_b + 1 tokens
    sequence[torch.arange(4), lengths] = torch.randint(0, 32, (4,))
    loss, parts = model.loss(sequence, lengths=lengths)
    rows = [model.loss(sequence[b:b + 1, :length + 1]) for b, length in enumerate(LENGTHS)]
    torch.testing.assert_close(loss, sum(r[0] for r in rows) / 4)
    for key in ("nll", "z"):
        torch.testing.assert_close(parts[key], sum(r[1][key] for r in rows) / 4)
    params = list(model.parameters())
    want = torch.autograd.grad(sum(r[0] for r in rows) / 4, params)
    for g, w in zip(torch.autograd.grad(loss, params), want):
        torch.testing.assert_close(g, w)


def test_lengths_are_checked():
    model = _model()
    tokens = torch.randint(0, 32, (2, 20))
    with pytest.raises(ValueError, match=r"lengths must lie in \[12, 20\]"):
        model(tokens, lengths=torch.tensor([20, 11]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[5, 20\]"):
        model(tokens, 5, lengths=torch.tensor([21, 6]))
    with pytest.raises(TypeError, match="lengths must have dtype"):
        model(tokens, lengths=torch.tensor([20.0, 12.0]))
    with pytest.raises(ValueError, match=r"lengths must have shape \[B\] = \[2\]"):
        model(tokens, lengths=torch.tensor([20, 12, 12]))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, vocab_size\)"):
        model(torch.full((2, 20), 32).index_fill_(1, torch.tensor([19]), 0), lengths=torch.tensor([20, 12]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[12, 20\]"):
        model.loss(torch.randint(0, 32, (2, 21)), lengths=torch.tensor([20, 2]))
    # A list or a numpy integer array gives what the tensor gives.
    import numpy as np
    model.eval()  # no cross-attend dropout: the same result call after call
    want = model(tokens, lengths=torch.tensor([20, 13]))[0]
    for given in ([20, 13], np.array([20, 13]), np.array([20, 13], dtype=np.int32)):
        torch.testing.assert_close(model(tokens, lengths=given)[0], want, rtol=0, atol=0)


def _padded_cache(model, n: int = 5):
    """A cached window over padded rows (lengths 25, 18, 21 of 25), the rows' next tokens to step,
    and each row's whole sequence (its window then those tokens)."""
    tokens, lengths = _padded((25, 18, 21), T=25, pad=-1)
    nxt = torch.randint(0, 32, (3, 4), generator=torch.Generator().manual_seed(1))
    _, cache = model(tokens, n, return_cache=True, lengths=lengths)
    rows = [torch.cat((tokens[b, :int(length)], nxt[b])) for b, length in enumerate(lengths)]
    return cache, nxt, rows


def test_cached_steps_on_padded_rows_equal_each_row_alone():
    """A step writes each row's token at its own position (over its padding) with its own rotary
    position: its logits are those of the row's full forward alone."""
    model = _model().double().eval()
    cache, nxt, rows = _padded_cache(model)
    assert cache.cross.filled.tolist() == [25, 18, 21] and cache.layers[0].filled.tolist() == [5]
    for s in range(4):
        logits = model.step(nxt[:, s], cache)
        for b, row in enumerate(rows):
            end = len(row) - 4 + s + 1
            full, _ = model(row[None, :end], 5 + s + 1)
            torch.testing.assert_close(logits[b], full[0, -1])
    assert cache.cross.filled.tolist() == [29, 22, 25] and cache.cross.length == 29


@pytest.mark.parametrize("backend", ("reference", "cpu"))
def test_cached_step_on_padded_rows_reads_nothing_back(backend, monkeypatch):
    """The per-row step keeps what a CUDA graph needs (fixed buffers, counts on the device, no host
    read), and rows past each row's count, NaN here, are never read."""
    model = _model().double().eval()
    with pyaudiok.use_backend(backend):
        cache, nxt, rows = _padded_cache(model)
        for buffer in (cache.cross, *cache.layers):
            for b, filled in enumerate(buffer.filled.expand(3).tolist()):
                buffer.k[b, :, filled:], buffer.v[b, :, filled:] = float("nan"), float("inf")
        buffers = [(b.k, b.v, b.filled) for b in (cache.cross, *cache.layers)]
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
            monkeypatch.setattr(torch.Tensor, name, _no_host_reads(name))
        got = []
        for s in range(2):
            cache.advance(model.config)
            got.append(model.cached_step(nxt[:, s], cache))
        monkeypatch.undo()
        for s in range(2):
            for b, row in enumerate(rows):
                full, _ = model(row[None, :len(row) - 3 + s], 6 + s)
                torch.testing.assert_close(got[s][b], full[0, -1])
    for (k, v, filled), b in zip(buffers, (cache.cross, *cache.layers)):
        assert b.k is k and b.v is v and b.filled is filled


def test_kv_buffer_pushes_each_row_at_its_own_count():
    buffer = KVBuffer(5)
    k = torch.randn(2, 1, 3, 2)
    buffer.append(k, -k, torch.tensor([3, 1]))
    new = torch.randn(2, 1, 1, 2)
    got_k, got_v, lengths = buffer.push(new, -new)
    assert lengths.tolist() == [4, 2]
    assert torch.equal(got_k[0, :, 3], new[0, :, 0]) and torch.equal(got_k[1, :, 1], new[1, :, 0])
    assert torch.equal(got_v[1, :, 1], -new[1, :, 0]) and torch.equal(got_k[0, :, :3], k[0])


def _prompts(lengths, T0):
    return _padded(lengths, T=T0, seed=4, pad=-1)


@pytest.mark.parametrize("prompt_lengths, carry", [((15, 9, 12), None), ((15, 3, 12), 8), ((7, 7), 4)])
def test_generation_from_prompts_of_different_lengths(prompt_lengths, carry, monkeypatch):
    """Cached (also through the CUDA-graph step's interface) and uncached sampling give the same
    tokens; a shortest row's are those it gets generated alone, and so are every row's when the
    shortest prompt holds `carry` tokens; 45 steps cross several windows (latents fill up, the
    context reaches max_context). Row b holds its prompt, its new tokens, then its padding."""
    model = _model().double().eval()  # 12 latents, max_context 40
    prompt, lengths = _prompts(prompt_lengths, 15)
    runs = {use_cache: generate(model, prompt, 45, temperature=0, carry=carry, use_cache=use_cache,
                                prompt_lengths=lengths) for use_cache in (True, False)}
    assert runs[True].shape == (len(prompt_lengths), 60) and torch.equal(runs[True], runs[False])
    monkeypatch.setattr(sampling, "_graphs_possible", _graphs_on_any_device)
    monkeypatch.setattr(sampling, "CUDAGraphStep", _EagerGraphStep)
    monkeypatch.setattr(_EagerGraphStep, "captures", [])
    assert torch.equal(generate(model, prompt, 45, temperature=0, carry=carry, prompt_lengths=lengths), runs[True])
    assert _EagerGraphStep.captures
    shortest = min(prompt_lengths)
    for b, length in enumerate(prompt_lengths):
        assert torch.equal(runs[True][b, length + 45:], prompt[b, length:])
        if length == shortest or shortest >= (carry or 6):
            alone = generate(model, prompt[b:b + 1, :length], 45, temperature=0, carry=carry)[0]
            assert torch.equal(runs[True][b, :length + 45], alone)


def test_generation_with_full_prompt_lengths_equals_without():
    model = _model().double().eval()
    prompt = torch.randint(0, 32, (2, 7))
    want = generate(model, prompt, 30, temperature=0)
    assert torch.equal(generate(model, prompt, 30, temperature=0, prompt_lengths=[7, 7]), want)
    # Prompts shorter than the carry (6): only the first window carries fewer latents, as without lengths.
    short = prompt[:, :3]
    assert torch.equal(generate(model, short, 30, temperature=0, prompt_lengths=[3, 3]),
                       generate(model, short, 30, temperature=0))
    assert torch.equal(generate(model, prompt, 0, prompt_lengths=[7, 3]), prompt)


def test_prompt_lengths_are_checked():
    model = _model().eval()
    prompt = torch.randint(0, 32, (2, 6))
    with pytest.raises(ValueError, match=r"prompt_lengths must lie in \[1, 6\]"):
        generate(model, prompt, 3, prompt_lengths=torch.tensor([6, 0]))
    with pytest.raises(ValueError, match=r"prompt_lengths must have shape \[B\] = \[2\]"):
        generate(model, prompt, 3, prompt_lengths=torch.tensor([6]))
    with pytest.raises(TypeError, match="prompt_lengths must"):
        generate(model, prompt, 3, prompt_lengths=[6, 2.5])
    with pytest.raises(ValueError, match="prompt tokens must lie"):
        generate(model, prompt.index_fill(1, torch.tensor([1]), 32), 3, prompt_lengths=[6, 2])
    padded = generate(model, prompt.index_fill(1, torch.tensor([5]), -1), 3, prompt_lengths=[5, 5], temperature=0)
    assert torch.equal(padded[:, :8], generate(model, prompt[:, :5], 3, temperature=0))


@pytest.mark.gpu
def test_cuda_graph_generation_from_padded_prompts_equals_eager():
    """The per-row step captures and replays as a CUDA graph: the eager cached sampler's tokens."""
    model = _model().cuda()
    prompt, lengths = _prompts((15, 9, 12), 15)
    prompt, lengths = prompt.cuda(), lengths.cuda()
    out = {}
    for graphs in (True, False):
        gen = torch.Generator("cuda").manual_seed(5)
        out[graphs] = generate(model, prompt, 45, generator=gen, temperature=0.9, top_k=8, cuda_graphs=graphs,
                               prompt_lengths=lengths)
    assert torch.equal(out[True], out[False])
