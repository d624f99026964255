"""Perceiver AR: causality, cross-attend dropout, cached sampling, a tiny training run."""
from __future__ import annotations

import pytest
import torch

import pyaudiok
from pyaudiok.models import PerceiverAR, PerceiverARConfig
from pyaudiok.models.perceiver_ar import KVBuffer, filter_logits, generate
from pyaudiok.models.perceiver_ar import sampling
from pyaudiok.models.perceiver_ar.sampling import _schedule, _steps_left
from pyaudiok.ops.latent_attention import OP as LATENT_ATTENTION

from ..harness import require_backend

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


def test_generation_without_a_generator_samples_on_the_logits_device():
    model = _model()
    prompt = torch.randint(0, 32, (3, 5))
    torch.manual_seed(0)
    out = generate(model, prompt, 20, temperature=0.9, top_k=8)
    assert out.shape == (3, 25) and out.dtype == torch.long and torch.equal(out[:, :5], prompt)
    assert int(out.min()) >= 0 and int(out.max()) < model.config.vocab_size
    torch.manual_seed(0)  # the global generator draws the same tokens again
    assert torch.equal(generate(model, prompt, 20, temperature=0.9, top_k=8), out)


def test_step_logits_equal_full_forward():
    model = _model().double().eval()
    tokens = torch.randint(0, 32, (2, 30))
    _, cache = model(tokens[:, :25], 5, return_cache=True)
    for t in range(25, 30):
        step_logits = model.step(tokens[:, t], cache)
        full, _ = model(tokens[:, :t + 1], t + 1 - 20)
        torch.testing.assert_close(step_logits, full[:, -1])


@pytest.mark.parametrize("lengths", (None, [25, 21]))
def test_cache_taken_in_training_mode_holds_every_input(lengths):
    # Cross-attend dropout would fill the cache with a subset of the window, and the step after it
    # would sit at the subset's length, not after the window: a cache is for sampling, so no dropout.
    model = _model(cross_dropout=0.5).double()
    tokens = torch.randint(0, 32, (2, 25))
    torch.manual_seed(1)
    train_logits, train_cache = model.train()(tokens, 5, return_cache=True, lengths=lengths)
    eval_logits, eval_cache = model.eval()(tokens, 5, return_cache=True, lengths=lengths)
    torch.testing.assert_close(train_logits, eval_logits, rtol=0, atol=0)
    step = torch.randint(0, 32, (2,))
    torch.testing.assert_close(model.step(step, train_cache), model.step(step, eval_cache), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ("reference", "cpu", "triton"))
def test_cached_step_keeps_shapes_and_reads_nothing_back(backend, monkeypatch):
    """What capturing the step in a CUDA graph needs, checked on any device: the step attends over
    the whole cache buffers (the same tensors at every token), counts rows on the device, and never
    reads a tensor's value on the host (which on a GPU is a wait, and fails inside a capture)."""
    device = require_backend(LATENT_ATTENTION, backend)
    model = (_model().double() if backend != "triton" else _model()).eval().to(device)
    tokens = torch.randint(0, 32, (2, 30), device=device)
    with pyaudiok.use_backend(backend):
        _, cache = model(tokens[:, :25], 5, return_cache=True)
        buffers = [(b.k, b.v, b.filled) for b in (cache.cross, *cache.layers)]
        for k, v, filled in buffers:  # rows not yet written hold whatever memory held: none may be read
            k[:, :, int(filled):], v[:, :, int(filled):] = float("nan"), float("inf")
        expected = [model(tokens[:, :t + 1], t + 1 - 20)[0][:, -1] for t in (25, 26)]
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
            monkeypatch.setattr(torch.Tensor, name, _no_host_reads(name))
        got = []
        for t in (25, 26):
            cache.advance(model.config)
            got.append(model.cached_step(tokens[:, t], cache))
        monkeypatch.undo()
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **({} if backend != "triton" else dict(rtol=1e-4, atol=1e-4)))
    for (k, v, filled), b in zip(buffers, (cache.cross, *cache.layers)):
        assert b.k is k and b.v is v and b.filled is filled
    assert cache.cross.filled.tolist() == [27] and [b.filled.tolist() for b in cache.layers] == [[7], [7]]
    assert cache.cross.length == 27 and cache.latents == 7


def _no_host_reads(name):
    def read(self, *args):
        raise AssertionError(f"the cached step read a tensor on the host (Tensor.{name})")
    return read


def test_cuda_graphs_need_the_cache_and_a_cuda_device():
    model = _model()
    with pytest.raises(ValueError, match="cuda_graphs needs"):
        generate(model, torch.randint(0, 32, (1, 5)), 3, cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs needs"):
        generate(model, torch.randint(0, 32, (1, 5)), 3, use_cache=False, cuda_graphs=True)


def test_steps_left_counts_each_windows_cached_steps():
    """What the automatic choice of CUDA graphs reads at a window's first cached step: how many cached
    steps that window runs, checked against the sampler's own schedule over several windows (latents
    filling up, the context reaching max_context, the sequence ending mid-window)."""
    model = _model()  # 12 latents, max_context 40
    for begin, end, carry in ((7, 52, 6), (3, 90, 1), (30, 41, 10)):
        runs, first = [], None
        for total, fresh, start, n in _schedule(model, begin, end, carry):
            if fresh:
                first = None
            elif first is None:
                first = _steps_left(model, total, start, n, end)
                runs.append([first, 0])
            if not fresh:
                runs[-1][1] += 1
        assert runs and all(predicted == seen for predicted, seen in runs), runs


class _EagerGraphStep:
    """CUDAGraphStep's interface without CUDA: what a replay computes, run eagerly; counts captures."""
    captures: list = []

    def __init__(self, model, cache, token):
        self.model, self.cache = model, cache
        type(self).captures.append(cache)

    def __call__(self, token):
        self.cache.advance(self.model.config)
        return self.model.cached_step(token, self.cache)


def _graphs_on_any_device(use_cache, device, cuda_graphs):
    return use_cache and cuda_graphs is not False


def test_automatic_graphs_capture_the_windows_worth_it(monkeypatch):
    """The automatic choice's bookkeeping, on the CPU with a stand-in for the capture: one capture per
    window with >= GRAPH_MIN_STEPS cached steps left, none for the rest, and the eager tokens."""
    model = _model().double().eval()  # 12 latents, max_context 40; carry 10: windows of 2 cached steps
    prompt = torch.randint(0, 32, (2, 15))
    want = generate(model, prompt, 30, temperature=0, carry=10, cuda_graphs=False)
    monkeypatch.setattr(sampling, "_graphs_possible", _graphs_on_any_device)
    monkeypatch.setattr(sampling, "CUDAGraphStep", _EagerGraphStep)
    monkeypatch.setattr(_EagerGraphStep, "captures", [])
    assert torch.equal(generate(model, prompt, 30, temperature=0, carry=10), want)
    assert _EagerGraphStep.captures == []  # 2 cached steps a window (12 − 10): below GRAPH_MIN_STEPS
    assert torch.equal(generate(model, prompt, 30, temperature=0, carry=4), generate(
        model, prompt, 30, temperature=0, carry=4, cuda_graphs=False))
    # Windows from 15, 24, 33 (8 cached steps each) are captured; the one from 42 has 2 steps left.
    assert len({id(c) for c in _EagerGraphStep.captures}) == len(_EagerGraphStep.captures) == 3


def test_a_failed_automatic_capture_falls_back_to_eager_sampling(monkeypatch):
    model = _model().double().eval()
    prompt = torch.randint(0, 32, (2, 7))
    want = generate(model, prompt, 20, temperature=0, cuda_graphs=False)

    def fail(*args):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(sampling, "_graphs_possible", _graphs_on_any_device)
    monkeypatch.setattr(sampling, "CUDAGraphStep", fail)
    with pytest.warns(RuntimeWarning, match="sampling continues without CUDA graphs"):
        assert torch.equal(generate(model, prompt, 20, temperature=0), want)


def test_cuda_graphs_flag_is_checked():
    with pytest.raises(TypeError, match="cuda_graphs must be True, False or None"):
        generate(_model(), torch.randint(0, 32, (1, 5)), 3, cuda_graphs="yes")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_cuda_graph_generation_equals_eager(dtype):
    """Replayed graphs give the eager cached sampler's tokens, across windows (45 steps: latents
    fill up and the context reaches max_context), sampling on the device with a seeded generator."""
    model = _model().to("cuda", dtype)
    prompt = torch.randint(0, 32, (2, 7), device="cuda")
    out = {}
    for graphs in (True, False, None):
        gen = torch.Generator("cuda").manual_seed(5)
        out[graphs] = generate(model, prompt, 45, generator=gen, temperature=0.9, top_k=8, cuda_graphs=graphs)
    assert torch.equal(out[True], out[False]) and torch.equal(out[None], out[False])


def test_cache_grows_in_place_to_its_capacity():
    """The window's caches are allocated once at its capacity (N latents or max_context inputs):
    steps write rows into them, and a step past the capacity is refused."""
    model = _model().eval()  # 12 latents, max_context 40
    _, cache = model(torch.randint(0, 32, (2, 30)), 5, return_cache=True)
    assert cache.cross.capacity == 30 + 7 and all(layer.capacity == 12 for layer in cache.layers)
    storage = cache.cross.k.data_ptr()
    for t in range(7):
        model.step(torch.randint(0, 32, (2,)), cache)
    assert cache.cross.k.data_ptr() == storage and cache.cross.length == 37 and cache.latents == 12
    with pytest.raises(ValueError, match="full"):
        model.step(torch.randint(0, 32, (2,)), cache)
    buffer = KVBuffer(3)
    k = torch.randn(1, 2, 2, 4)
    got_k, got_v = buffer.append(k, -k)
    assert torch.equal(got_k, k) and torch.equal(got_v, -k)
    with pytest.raises(ValueError, match="holds 3"):
        buffer.append(k, k)


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


def _rotary_reference(x, cos, sin, dims):
    half = dims // 2
    a, b, rest = x[..., :half], x[..., half:dims], x[..., dims:]
    return torch.cat((a * cos - b * sin, b * cos + a * sin, rest), dim=-1)


@pytest.mark.parametrize("T", (24, 8192))  # few-ops route / large route (pairs only, head by head)
def test_head_split_with_rotary_matches_reference(T):
    """queries_keys_values = split heads + rotate q and k, forward and backward (float64)."""
    from pyaudiok.nn import LatentAttention
    attn = LatentAttention(128, 2).double()
    x = torch.randn(1, T, 128, dtype=torch.float64, requires_grad=True)
    rope = attn.rotary.tables(torch.arange(T), x.dtype, T)
    got = attn.queries_keys_values(x, rope)
    dims = attn.rotary.dims
    qkv = torch.nn.functional.linear(x, torch.cat((attn.q.weight, attn.kv.weight)))
    parts = qkv.view(1, T, 3, 2, 64).permute(2, 0, 3, 1, 4)
    want = (_rotary_reference(parts[0], *rope, dims), _rotary_reference(parts[1], *rope, dims), parts[2])
    grads = [torch.randn_like(w) for w in want]
    for g, w in zip(got, want):
        assert g.is_contiguous()
        torch.testing.assert_close(g, w)
    got_grad = torch.autograd.grad(got, (x, attn.q.weight, attn.kv.weight), grads)
    want_grad = torch.autograd.grad(want, (x, attn.q.weight, attn.kv.weight), grads)
    for g, w in zip(got_grad, want_grad):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("dropout", (0.0, 0.5))
def test_vocabulary_table_keys_equal_projected_inputs(dropout):
    """Cross-attention keys/values gathered from the projected vocabulary equal those projected from
    the embedded inputs, with per-row positions too; so do the parameters' gradients (float64)."""
    model = _model(cross_dropout=dropout).double().train()
    tokens = torch.randint(0, 32, (3, 40))
    keep = model._keep(3, 40, 12, "cpu")
    inputs, positions = (tokens, torch.arange(40)) if keep is None else (tokens.gather(1, keep), keep)
    assert inputs.numel() > model.config.vocab_size  # the table route
    rope = model._tables(positions)
    got = model._input_keys_values(inputs, rope)
    cross = model.cross
    want = cross.attn.keys_values(cross.norm_kv(model.embed(inputs)), rope)
    params = (model.embed.weight, cross.norm_kv.weight, cross.norm_kv.bias, cross.attn.kv.weight)
    grads = [torch.randn_like(w) for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    for g, w in zip(torch.autograd.grad(got, params, grads), torch.autograd.grad(want, params, grads)):
        torch.testing.assert_close(g, w)


def _both_routes(model, run, monkeypatch):
    """run() (-> loss, gradients) through attend_tokens, checked to take the per-vocabulary-entry
    route, then with that route refused (the gathered keys and values)."""
    attention = type(model.cross.attn)
    original, taken = attention.attend_tokens, []

    def counted(self, *args):
        out = original(self, *args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(attention, "attend_tokens", counted)
    by_token = run()
    assert taken == [True]
    monkeypatch.setattr(attention, "attend_tokens", lambda self, *args: None)
    return by_token, run()


def _loss_and_gradients(model, sequence, autocast: bool = False):
    def run():
        torch.manual_seed(5)  # the same dropout draw
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model.loss(sequence)[0]
        return loss, torch.autograd.grad(loss, list(model.parameters()))
    return run


@pytest.mark.parametrize("dropout", (0.0, 0.5))
def test_cross_attention_by_token_equals_gathered_keys(dropout, monkeypatch):
    """The training forward's cross-attention through attend_tokens (per vocabulary entry, forward
    and backward) gives the loss and every parameter's gradient of the gathered-keys route (float64),
    with per-row positions under cross-attend dropout too."""
    model = _model(cross_dropout=dropout, vocab_size=16).double().train()  # token ids <= kept inputs
    by_token, gathered = _both_routes(model, _loss_and_gradients(model, torch.randint(0, 16, (3, 41))), monkeypatch)
    torch.testing.assert_close(by_token[0], gathered[0])
    for a, b in zip(by_token[1], gathered[1]):
        torch.testing.assert_close(a, b)


def test_cross_attention_by_token_under_bf16_autocast(monkeypatch):
    """Under bf16 autocast the per-vocabulary-entry route runs too (in float32, as the gathered
    route's kernels do), and the loss and gradients match the gathered route's to bf16 precision."""
    model = _model(cross_dropout=0.0, vocab_size=16).train()
    run = _loss_and_gradients(model, torch.randint(0, 16, (2, 41)), autocast=True)
    by_token, gathered = _both_routes(model, run, monkeypatch)
    torch.testing.assert_close(by_token[0], gathered[0], rtol=2e-2, atol=2e-2)
    for a, b in zip(by_token[1], gathered[1]):
        assert torch.isfinite(a).all()
        assert (a.float() - b.float()).norm() <= 5e-2 * b.float().norm() + 1e-6


def test_cached_rotary_tables_equal_computed():
    model = _model().double()
    rotary = model.cross.attn.rotary
    for positions in (torch.arange(5, 17), torch.randint(0, 40, (2, 9))):
        for cached, computed in zip(rotary.tables(positions, torch.float64, 40),
                                    rotary.tables(positions, torch.float64)):
            torch.testing.assert_close(cached, computed, rtol=0, atol=1e-15)


def test_squared_relu_gradient():
    from pyaudiok.nn.attention import _SquaredReLU
    x = torch.randn(7, 9, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(_SquaredReLU(), (x,))
    torch.testing.assert_close(_SquaredReLU()(x), torch.relu(x) ** 2)


@pytest.mark.parametrize("z_loss", (0.0, 1e-2))
def test_loss_parts(z_loss):
    model = _model(z_loss=z_loss).double().eval()  # no dropout: both calls see the same inputs
    seq = torch.randint(0, 32, (2, 41))
    loss, parts = model.loss(seq)
    logits = model(seq[:, :-1])[0].float()  # the loss is taken in float32 at least
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), seq[:, -12:].flatten())
    z = torch.logsumexp(logits, -1).square().mean()
    torch.testing.assert_close(parts["nll"], nll.detach())
    torch.testing.assert_close(parts["z"], z.detach())
    torch.testing.assert_close(loss, nll + z_loss * z)
    want = torch.autograd.grad(nll + z_loss * z, model.logits.weight)[0]
    torch.testing.assert_close(torch.autograd.grad(loss, model.logits.weight)[0], want)


def test_cross_attend_dropout_selection_equals_sorting(monkeypatch):
    """The kept prefix positions are those of the smallest random scores: the same set the sort of
    the scores gives, ties at the boundary included (the sort decides those)."""
    model = _model(cross_dropout=0.5).train()

    def check(seed):
        torch.manual_seed(seed)
        keep = model._keep(3, 1000, 12, "cpu")
        torch.manual_seed(seed)
        want = torch.rand(3, 988).argsort(dim=1)[:, :494].sort(dim=1).values
        assert torch.equal(keep[:, :-12], want)
    for seed in range(5):
        check(seed)
    rand = torch.rand  # scores with ties at the boundary: the sorting route
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: (rand(*shape, **kw) * 4).floor())
    check(0)


@pytest.mark.parametrize("field, value", [("heads", 0), ("heads", 3), ("width", 0), ("vocab_size", 0), ("latents", 0),
                                          ("latents", 41), ("layers", -1), ("mlp_ratio", 0), ("rotary_fraction", 1.5),
                                          ("cross_dropout", -0.1), ("z_loss", -1.0)])
def test_bad_config_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        PerceiverARConfig(**{**TINY, field: value})


def test_out_of_vocabulary_tokens_and_bad_sequences_are_named():
    model = _model()
    for bad in (32, -1):
        with pytest.raises(ValueError, match=r"tokens must lie in \[0, vocab_size\)"):
            model(torch.full((1, 20), bad))
    with pytest.raises(TypeError, match="latents must be an int"):
        model(torch.randint(0, 32, (1, 20)), 2.0)
    with pytest.raises(ValueError, match=r"sequence must be a tensor \[B, T \+ 1\]"):
        model.loss(torch.randint(0, 32, (2, 1)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_p=1.5), "top_p"), (dict(top_p=-0.1), "top_p"),
    (dict(carry=0), "carry"), (dict(steps=-1), "steps")])
def test_generate_rejects_bad_sampling_arguments(kwargs, match):
    model = _model().eval()
    steps = kwargs.pop("steps", 3)
    with pytest.raises(ValueError, match=match):
        generate(model, torch.randint(0, 32, (1, 4)), steps, **kwargs)


def test_generate_edge_cases():
    model = _model().eval()
    prompt = torch.randint(0, 32, (2, 1))
    assert torch.equal(generate(model, prompt, 0), prompt)
    greedy = generate(model, prompt, 6, temperature=0)
    # top_p = 0 keeps only the most likely token: greedy decoding, not an error.
    assert torch.equal(generate(model, prompt, 6, top_p=0.0, generator=torch.Generator().manual_seed(0)), greedy)
    with pytest.raises(ValueError, match="prompt must be an integer tensor"):
        generate(model, prompt[:, :0], 3)
    with pytest.raises(ValueError, match="prompt tokens must lie"):
        generate(model, prompt + 32, 3)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        filter_logits(torch.zeros(1, 4), temperature=0)


def test_step_refuses_bad_input_and_keeps_the_cache_intact():
    """A refused step leaves the cache as it was: the steps that follow give the logits of the full
    forward, and the window still takes as many tokens as it has room for."""
    model = _model(latents=4).eval()
    tokens = torch.randint(0, 32, (2, 12))
    _, cache = model(tokens[:, :10], 2, return_cache=True)  # room for 2 more latents
    bad = [(tokens[:1, 10], ValueError, r"token must have shape \[B\] \(B of the cache\) = \[2\]; got \[1\]"),
           (tokens[:, 10:11], ValueError, r"token must have shape .*got \[2, 1\]"),
           (tokens[:, 10].float(), TypeError, "token must have dtype int64, int32, uint8; got float32"),
           (tokens[:, 10] + 32, ValueError, r"token must lie in \[0, vocab_size\) = \[0, 32\)"),
           (tokens[:, 10].tolist(), TypeError, "token must be a torch.Tensor")]
    for token, error, match in bad:
        with pytest.raises(error, match=match):
            model.step(token, cache)
    with pytest.raises(TypeError, match="cache must be the LatentCache"):
        model.step(tokens[:, 10], None)
    for t in (10, 11):
        full, _ = model(tokens[:, :t + 1], t + 1 - 8)
        torch.testing.assert_close(model.step(tokens[:, t], cache), full[:, -1])
    lengths = (cache.length, cache.latents, cache.cross.length, int(cache.cross.filled))
    with pytest.raises(ValueError, match="the cached window is full"):
        model.step(tokens[:, 0], cache)
    assert (cache.length, cache.latents, cache.cross.length, int(cache.cross.filled)) == lengths
