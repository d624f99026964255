"""Sampling from Perceiver AR, with and without the latent KV cache.

Both samplers follow the same window schedule, so they compute the same logits: a window starts
with `carry` latents (the last tokens so far) over at most max_context − (N − carry) inputs, then
grows by one input and one latent per generated token until it holds N latents or max_context
inputs; the next token starts a new window. The cached sampler runs the full model once per window
and `PerceiverAR.step` for each token after; the uncached one runs the full model on the current
window for every token.

On a GPU a cached step is hundreds of small kernels (683 launches at 12 layers), so its time is the
host's, launching them. On a CUDA device `generate` therefore captures the step once per window as a
CUDA graph (`CUDAGraphStep`) and replays it per token: one launch for the whole step. On an H200
(bench/results/2026-11-27_h200_session10.txt, 12 layers, 16 tokens after 8 192) that took a call
from 240.7 ms to 61.1 ms, with the same tokens.
"""
from __future__ import annotations

import warnings

import torch

from pyaudiok.ops import _checks

from .model import LatentCache, PerceiverAR

__all__ = ["filter_logits", "sample_next", "generate", "CUDAGraphStep", "GRAPH_MIN_STEPS"]

# The automatic choice captures a window's step only when the window has at least this many cached
# steps left: a capture costs about two eager steps (one on a side stream to compile and allocate,
# one recorded), and a replay saves most of one.
GRAPH_MIN_STEPS = 4


def _check_sampling(temperature, top_k, top_p, *, greedy_ok: bool) -> None:
    """temperature > 0 (or 0 where greedy decoding is meant), top_k >= 1, 0 <= top_p <= 1."""
    _checks.real_in_range("temperature", temperature, 0, low_open=not greedy_ok,
                          what="a finite number >= 0 (0: greedy)" if greedy_ok else None)
    if top_k is not None:
        _checks.int_in_range("top_k", top_k, 1, 1 << 62)
    if top_p is not None:
        _checks.real_in_range("top_p", top_p, 0, 1, what="a number in [0, 1] or None")


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Temperature, then keep the top_k largest and the smallest set with probability >= top_p
    (never fewer than the most likely token: top_p = 0 keeps only it)."""
    _check_sampling(temperature, top_k, top_p, greedy_ok=False)
    return _filtered(logits, temperature, top_k, top_p)


def _filtered(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """filter_logits on options already checked (the sampler checks them once, not per token)."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, generator: torch.Generator | None, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """The next token [B] from logits [B, V] (argmax at temperature 0). A generator on another device
    than the logits (a CPU generator for GPU logits) draws on its device, so a seed gives the same
    tokens on any device at the cost of a copy and a wait per token; otherwise sampling stays on
    the logits' device, and a GPU sampler never waits for the host."""
    _check_sampling(temperature, top_k, top_p, greedy_ok=True)
    return _sampled(logits, generator, temperature, top_k, top_p)


def _sampled(logits: torch.Tensor, generator: torch.Generator | None, temperature: float, top_k: int | None,
             top_p: float | None) -> torch.Tensor:
    """sample_next on options already checked."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = _filtered(logits, temperature, top_k, top_p).softmax(-1).float()
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator)[:, 0].to(logits.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class CUDAGraphStep:
    """`model.step(token, cache)` for the tokens of one window, captured once as a CUDA graph.

    `PerceiverAR.cached_step` has fixed shapes and addresses across a window's tokens (whole cache
    buffers, fill counts on the device) and reads nothing back to the host, which is what capture
    needs. Before capture the step runs once on a side stream (Triton compiles its kernels, cuBLAS
    makes its workspace: neither may happen while capturing); that run writes the next cache row,
    which the first replay overwrites, and its count increments are undone. A call copies the token
    into the graph's input, advances the host counts (`LatentCache.advance`, which also refuses a
    step past the window) and replays; the logits it returns are the graph's output tensor,
    overwritten by the next call."""

    def __init__(self, model: PerceiverAR, cache: LatentCache, token: torch.Tensor):
        if token.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model and tokens on a CUDA device; got {token.device}")
        self.model, self.cache = model, cache
        self.token = token.clone()
        counters = [buffer.filled for buffer in (cache.cross, *cache.layers)]
        saved = [c.clone() for c in counters]
        # Capture and replay run on the tokens' device, whichever device is current (a graph
        # captured on another device's stream would hold kernels of the wrong device).
        with torch.cuda.device(token.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                model.cached_step(self.token, cache)
            torch.cuda.current_stream().wait_stream(side)
            for counter, value in zip(counters, saved):
                counter.copy_(value)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = model.cached_step(self.token, cache)

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        self.cache.advance(self.model.config)
        self.token.copy_(token)
        with torch.cuda.device(self.token.device):
            self.graph.replay()
        return self.logits


def _steps_left(model: PerceiverAR, total: int, start: int, n: int, end: int) -> int:
    """Cached steps the current window runs from the one at `total` (n latents, first input `start`)
    on, this one included, before the sequence ends at `end` or a new window starts (at N latents or
    max_context inputs)."""
    c = model.config
    return min(c.latents - n, c.max_context - (total - start), end - total - 1) + 1


def _graphs_possible(use_cache: bool, device: torch.device, cuda_graphs: bool | None) -> bool:
    """Whether `generate` may capture its steps: with the cache, on a CUDA device, unless told not to."""
    return use_cache and device.type == "cuda" and cuda_graphs is not False


def _capture(model: PerceiverAR, cache: LatentCache, token: torch.Tensor, forced: bool | None):
    """The window's CUDAGraphStep; where the automatic choice (`forced` None) fails to capture it
    (a module of the user's that reads a value back, say), None and a warning: sampling goes on
    eagerly, with the same tokens. An explicit cuda_graphs=True raises."""
    try:
        return CUDAGraphStep(model, cache, token)
    except RuntimeError as error:
        if forced:
            raise
        warnings.warn(f"generate: capturing the cached step as a CUDA graph failed ({error}); sampling "
                      f"continues without CUDA graphs (cuda_graphs=False skips the attempt)", RuntimeWarning)
        return None


def _window(model: PerceiverAR, total: int, carry: int, spread: int = 0) -> tuple[int, int]:
    """(first input position, latents) of a window started when `total` tokens exist in the longest
    row and `spread` fewer in the shortest (right-padded prompts): its latents are that row's last
    min(its tokens, carry), so every row holds them."""
    c = model.config
    n = min(total - spread, carry)
    start = max(0, total - (c.max_context - (c.latents - n)))
    return start, n


def _schedule(model: PerceiverAR, begin: int, end: int, carry: int, spread: int = 0):
    """(total, fresh, start, n) for each token to generate, at `total` tokens so far in the longest
    row (`spread` fewer in the shortest) from `begin` to `end`: whether it starts a window (the full
    model runs) or is a cached step, the window's first input position, and its latents."""
    c = model.config
    start, n = 0, 0
    for total in range(begin, end):
        fresh = n == 0 or n + 1 > c.latents or total - start > c.max_context
        if fresh:
            start, n = _window(model, total, carry, spread)
        else:
            n += 1
        yield total, fresh, start, n


class _Rows:
    """The sequences being generated, [B, T0 + steps]. The schedule follows the longest row, at
    `total` tokens; row b, `shortfall[b]` tokens shorter, holds total − shortfall[b]. Without prompt
    lengths every row is the longest (plain slices). With them, row b's prompt tokens come first, its
    generated tokens at ℓ_b + s, and its padding is moved to the end, after them."""

    def __init__(self, prompt: torch.Tensor, steps: int, lengths: torch.Tensor | None, longest: int):
        B, T0 = prompt.shape
        self.seq = prompt.new_empty((B, T0 + steps), dtype=torch.long)
        self.longest, self.end = longest, longest + steps
        self.shortfall = None
        if lengths is None:
            self.seq[:, :T0] = prompt
            return
        self.shortfall = longest - lengths
        t = torch.arange(T0, device=prompt.device)
        self.seq.scatter_(1, torch.where(t < lengths[:, None], t, t + steps), prompt.long())

    def ends(self, total: int) -> torch.Tensor:
        """[B, 1]: each row's token count when the longest row has `total`."""
        return (total - self.shortfall)[:, None]

    def window(self, total: int, start: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The window's inputs [B, W] and their lengths [B] (None: all W) for the longest row's window
        [start, total): row b's window is its last min(its tokens, W) ones, right-padded."""
        if self.shortfall is None:
            return self.seq[:, start:total], None
        width, ends = total - start, self.ends(total)
        starts = (ends - width).clamp_min(0)
        index = (starts + torch.arange(width, device=ends.device)).clamp_max(self.seq.shape[1] - 1)
        return self.seq.gather(1, index), (ends - starts)[:, 0]

    def last(self, total: int) -> torch.Tensor:
        """[B]: each row's last token."""
        if self.shortfall is None:
            return self.seq[:, total - 1]
        return self.seq.gather(1, self.ends(total) - 1)[:, 0]

    def write(self, total: int, token: torch.Tensor) -> None:
        """Append token[B], each row's next."""
        if self.shortfall is None:
            self.seq[:, total] = token
        else:
            self.seq.scatter_(1, self.ends(total), token[:, None])


def _check_prompt_lengths(prompt_lengths, prompt: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(prompt_lengths[B] int64 on the prompt's device, shortest, longest), each in [1, T0]."""
    B, T0 = prompt.shape
    lengths = _checks.int_vector("prompt_lengths", prompt_lengths, B, 1, T0, prompt.device).long()
    shortest, longest = (int(x) for x in torch.aminmax(lengths))
    return lengths, shortest, longest


@torch.no_grad()
def generate(model: PerceiverAR, prompt: torch.Tensor, steps: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True, carry: int | None = None, cuda_graphs: bool | None = None,
             prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """prompt[B, T0] (T0 >= 1) -> [B, T0 + steps] tokens. `carry` (default N/2) latents start each
    window. `cuda_graphs` replays each window's cached step as a CUDA graph: the same tokens,
    without the host's per-kernel launch cost. None (the default): with the cache on a CUDA device,
    for each window with at least GRAPH_MIN_STEPS cached steps left; True: every window (it needs
    the cache and a CUDA device); False: never.

    prompt_lengths[B] (ints in [1, T0]; None: all T0): right-padded prompts, generated together.
    Row b of the output holds its ℓ_b prompt tokens, its `steps` new ones (out[b, ℓ_b:ℓ_b + steps])
    and then its padding. The rows' windows start together, each with min(carry, the shortest row's
    tokens) latents: the schedule of the shortest row alone. So with greedy decoding a row's tokens
    are those it gets generated alone whenever its prompt is a shortest one or the shortest prompt
    holds at least `carry` tokens (otherwise its first window carries fewer latents than alone);
    equal lengths give what no lengths give. Sampling draws for the batch at once."""
    c = model.config
    if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[1] < 1 or \
            prompt.is_floating_point() or prompt.is_complex() or prompt.dtype == torch.bool:
        got = f"{prompt.dtype} {tuple(prompt.shape)}" if isinstance(prompt, torch.Tensor) else type(prompt).__name__
        raise ValueError(f"prompt must be an integer tensor [B, T0] with T0 >= 1; got {got}")
    lengths, longest = None, prompt.shape[1]
    if prompt_lengths is not None:  # the tokens past them are padding, of any value
        lengths, shortest, longest = _check_prompt_lengths(prompt_lengths, prompt)
    real = prompt if lengths is None else PerceiverAR._padding_zeroed(prompt, lengths)
    _checks.ints_within(real, 0, c.vocab_size - 1, f"prompt tokens must lie in [0, vocab_size) = [0, {c.vocab_size})")
    steps = _checks.int_in_range("steps", steps, 0, 1 << 62)
    _check_sampling(temperature, top_k, top_p, greedy_ok=True)
    if carry is not None:
        _checks.int_in_range("carry", carry, 1, c.latents)
    if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
        raise TypeError(f"cuda_graphs must be True, False or None (automatic); got {cuda_graphs!r}")
    if cuda_graphs and (not use_cache or prompt.device.type != "cuda"):
        raise ValueError(f"cuda_graphs needs use_cache=True and a prompt on a CUDA device; got "
                         f"use_cache={use_cache}, device {prompt.device}")
    carry = max(1, c.latents // 2) if carry is None else carry
    spread = 0 if lengths is None else longest - shortest  # every row's windows hold the same latents
    was_training = model.training
    model.eval()
    # The whole output at once, filled a token at a time (no copy of the sequence per token).
    rows = _Rows(prompt, steps, lengths, longest)
    graphs_possible = _graphs_possible(use_cache, prompt.device, cuda_graphs)
    cache, graphed, graph_window, decided_for = None, None, False, None
    try:
        # Windows start where the longest row's do: with n latents in every row, a window ends only
        # when its latents reach N (its inputs reach max_context no sooner), the same step for all.
        for total, fresh, start, n in _schedule(model, longest, rows.end, carry, spread):
            if graphs_possible and not fresh and decided_for is not cache:
                # The window's first cached step: capture it, if worth it (the steps left only fall).
                decided_for = cache
                graph_window = cuda_graphs or _steps_left(model, total, start, n, rows.end) >= GRAPH_MIN_STEPS
                graphed = _capture(model, cache, rows.last(total), cuda_graphs) if graph_window else None
                if graph_window and graphed is None:  # the automatic choice could not capture: eager from here
                    graphs_possible = graph_window = False
            if use_cache and not fresh and graph_window:
                logits = graphed(rows.last(total))
            elif use_cache and not fresh:
                logits = model.step(rows.last(total), cache)
            else:
                window, window_lengths = rows.window(total, start)
                logits, cache = model(window, n, return_cache=use_cache, lengths=window_lengths)
                logits = logits[:, -1]
            rows.write(total, _sampled(logits, generator, temperature, top_k, top_p))  # options checked above
    finally:
        model.train(was_training)
    return rows.seq

