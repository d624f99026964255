"""Perceiver AR (DESIGN §1): tokens x[B, T]; the last n positions are latents that cross-attend,
bottom-right causally, to all T inputs, then run L causal self-attention blocks; logits at the n
latent positions predict the token after each.

Rotary positions are the positions inside the given window (keys at 0..T-1, latent j at
T - n + j), so only their differences matter. In training, cross-attend dropout keeps a random
subset of the prefix (the first T - n positions) per row, never the latents' own segment, and
gathers the kept embeddings before projecting them: compute shrinks with the rate, and the
bottom-right mask stays valid on the gathered sequence.

Right-padded rows (`lengths`, each row's true number of tokens ℓ_b): row b's latents are its last n
real tokens, at ℓ_b − n + j, and its keys stop at ℓ_b (DESIGN §1's per-row offset), so a row gives
what it gives alone, unpadded, and its padding has no influence.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pyaudiok.nn.attention import LatentAttention, squared_relu_mlp
from pyaudiok.ops import _checks

__all__ = ["PerceiverARConfig", "PerceiverAR", "LatentCache", "KVBuffer"]

TOKEN_DTYPES = (torch.int64, torch.int32, torch.uint8)


@dataclass
class PerceiverARConfig:
    vocab_size: int = 256          # bytes
    max_context: int = 8192        # M: inputs seen by the cross-attention
    latents: int = 256             # N: latent positions (those with a loss)
    width: int = 256
    heads: int = 4
    layers: int = 4                # latent self-attention blocks
    mlp_ratio: int = 4
    rotary_fraction: float = 0.5
    cross_dropout: float = 0.5     # fraction of the prefix dropped per row in training
    z_loss: float = 0.0            # weight of log²Z (1e-4 in DESIGN §1 when on)

    def __post_init__(self) -> None:
        big = 1 << 31
        for name, low in (("vocab_size", 1), ("max_context", 1), ("width", 1), ("heads", 1), ("layers", 0),
                          ("mlp_ratio", 1)):
            _checks.int_in_range(name, getattr(self, name), low, big)
        # A window never holds more latents than inputs: more would leave generation no valid window.
        _checks.int_in_range("latents", self.latents, 1, self.max_context)
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        for name, low, high in (("rotary_fraction", 0, 1), ("cross_dropout", 0, 1), ("z_loss", 0, float("inf"))):
            _checks.real_in_range(name, getattr(self, name), low, high)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _CrossBlock(nn.Module):
    def __init__(self, c: PerceiverARConfig):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(c.width), nn.LayerNorm(c.width)
        self.attn = LatentAttention(c.width, c.heads, c.rotary_fraction)
        self.norm_mlp, self.mlp = nn.LayerNorm(c.width), squared_relu_mlp(c.width, c.mlp_ratio)

    def finish(self, latents: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.finish_attended(latents, self.attn.attend(q, k, v, key_lengths))

    def finish_attended(self, latents: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = latents + attended  # query residual
        return x + self.mlp(self.norm_mlp(x))


class _SelfBlock(nn.Module):
    def __init__(self, c: PerceiverARConfig):
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(c.width), LatentAttention(c.width, c.heads, c.rotary_fraction)
        self.norm_mlp, self.mlp = nn.LayerNorm(c.width), squared_relu_mlp(c.width, c.mlp_ratio)

    def forward(self, x, rope, cache: KVBuffer | None = None, step: bool = False):
        """step: x is one new latent, its keys and values pushed into the (filled) cache."""
        h = self.norm(x)
        q, k, v = self.attn.queries_keys_values(h, rope)
        lengths = None
        if step:
            k, v, lengths = cache.push(k, v)
        elif cache is not None:  # the earlier latents' keys and values, this call's appended
            k, v = cache.append(k, v)
        x = x + self.attn.attend(q, k, v, lengths)
        return x + self.mlp(self.norm_mlp(x))


class KVBuffer:
    """Keys and values [B, H, ·, d] that grow along the sequence in storage allocated once, at the
    window's capacity: a generated token writes one row instead of copying the cache (at a context
    of 8192 the copy was a third of a cached step).

    `append` (the window's full forward) writes rows at the host-side `length` and returns views of
    the filled rows. `push` (a cached step) writes one row at `filled`, the same count kept on the
    device, and returns the whole buffers with the lengths for the attention to stop at: shapes and
    addresses stay fixed from step to step and nothing is read back to the host, so a step can be
    captured once as a CUDA graph and replayed. The host count of a pushed row is advanced apart
    (`advance`), since a replayed graph runs no Python.

    `filled` holds one count for every row, or one per row ([B]) for right-padded rows appended with
    their lengths: a push then writes row b's keys at its own `filled[b]` (over its padding), and the
    host `length` counts the longest row."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.filled: torch.Tensor | None = None  # int64 [1] or [B] on the buffers' device: rows written

    def append(self, k: torch.Tensor, v: torch.Tensor,
               lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, H, T, d] after the filled rows; with lengths[B] (int64 on their device, into an
        empty buffer) only the first lengths[b] rows of row b count as filled."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions; appending {k.shape[2]} to {self.length}")
        if self.k is None:
            shape = (*k.shape[:2], self.capacity, k.shape[3])
            # Zeroed, not empty: the rows past `filled` are read (masked) by a step over whole buffers.
            self.k, self.v = k.new_zeros(shape), v.new_zeros(shape)
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        if lengths is None:
            self.filled = torch.full((1,), end, dtype=torch.int64, device=k.device)
        else:  # a copy: push counts in place
            self.filled = lengths.to(k.device, torch.int64, copy=True)
        return self.k[:, :, :end], self.v[:, :, :end]

    def push(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write one position's k, v [B, H, 1, d] at row `filled` and count it there; returns (k, v)
        buffers [B, H, capacity, d] and key lengths [B]. Room is the caller's to check (`advance`)."""
        if self.filled is None:
            raise ValueError("push needs a cache filled by a full forward first (forward(..., return_cache=True))")
        if self.filled.shape[0] == 1:  # one count for all rows (also B = 1)
            self.k.index_copy_(2, self.filled, k)
            self.v.index_copy_(2, self.filled, v)
        else:
            rows = self.filled.view(-1, 1, 1, 1).expand(k.shape)
            self.k.scatter_(2, rows, k)
            self.v.scatter_(2, rows, v)
        self.filled += 1
        return self.k, self.v, self.filled.expand(k.shape[0])

    def advance(self) -> None:
        """The host count of one pushed row."""
        if self.length >= self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions; all are filled")
        self.length += 1


@dataclass
class LatentCache:
    """What generation keeps between steps of one window: the cross-attention keys/values of all
    inputs and each latent block's keys/values (rotary already applied), with room for the tokens
    the window can still take."""
    cross: KVBuffer
    layers: list[KVBuffer]
    length: int       # inputs in the window
    latents: int      # latents in the window

    def check_room(self, config: PerceiverARConfig) -> None:
        """Refuse a step that the window has no room for."""
        if self.length >= config.max_context or self.latents >= config.latents:
            raise ValueError("the cached window is full: start a new one with forward(..., return_cache=True)")

    def advance(self, config: PerceiverARConfig) -> None:
        """Count one more token on the host (the device counts are the step's own), refusing a step
        that the window has no room for."""
        self.check_room(config)
        for buffer in (self.cross, *self.layers):
            buffer.advance()
        self.length += 1
        self.latents += 1


class PerceiverAR(nn.Module):
    def __init__(self, config: PerceiverARConfig | None = None):
        super().__init__()
        self.config = c = config or PerceiverARConfig()
        self.embed = nn.Embedding(c.vocab_size, c.width)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.cross = _CrossBlock(c)
        self.blocks = nn.ModuleList(_SelfBlock(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.logits = nn.Linear(c.width, c.vocab_size)
        nn.init.zeros_(self.logits.weight)  # start at the uniform distribution
        nn.init.zeros_(self.logits.bias)

    # ------------------------------------------------------------------------------------------
    def _check_ids(self, name: str, tokens: torch.Tensor) -> None:
        """Token ids are checked where that is free (CPU tensors, eagerly): elsewhere it would wait for
        the device, and the embedding's own bounds check still stops a bad id there."""
        if tokens.device.type == "cpu" and not torch.compiler.is_compiling():
            _checks.ints_within(tokens, 0, self.config.vocab_size - 1,
                                f"{name} must lie in [0, vocab_size) = [0, {self.config.vocab_size})")

    def _check(self, tokens: torch.Tensor, n: int) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in TOKEN_DTYPES:
            got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an integer tensor [B, T]; got {got}")
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"latents must be an int or None; got {type(n).__name__}")
        T = tokens.shape[1]
        if not 1 <= n <= min(T, self.config.latents) or T > self.config.max_context:
            raise ValueError(f"need 1 <= latents ({n}) <= min(T = {T}, {self.config.latents}) and "
                             f"T <= max_context = {self.config.max_context}")

    @staticmethod
    def _check_lengths(lengths, tokens: torch.Tensor, n: int) -> torch.Tensor:
        """lengths[B] (ints in [n, T], on the tokens' device or the host) as int64 on the tokens' device.
        Their values are checked where they lie: one wait when they are on a GPU, none from the host."""
        B, T = tokens.shape
        return _checks.int_vector("lengths", lengths, B, n, T, tokens.device).long()

    @staticmethod
    def _padding_zeroed(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens with id 0 past each row's length: padding of any value (a -1 pad id, say) embeds
        as a valid id, and the key lengths then keep it out of every result."""
        real = torch.arange(tokens.shape[1], device=tokens.device) < lengths[:, None]
        return tokens.masked_fill(~real, 0)

    def _prefix_kept(self, prefix):
        """The positions cross-attend dropout keeps of a prefix of `prefix` (an int, or a tensor of
        one per row: the same rounding, half to even, in float64 both ways)."""
        rate = self.config.cross_dropout
        if isinstance(prefix, torch.Tensor):
            return prefix - torch.round(prefix.double() * rate).long()
        return prefix - int(round(prefix * rate))

    def _keep(self, B: int, T: int, n: int, device) -> torch.Tensor | None:
        """Kept input positions [B, T'] (sorted): a random subset of the prefix and all latents."""
        prefix = T - n
        kept = self._prefix_kept(prefix)
        if not self.training or self.config.cross_dropout <= 0 or kept == prefix:
            return None
        scores = torch.rand(B, prefix, device=device)  # keep the `kept` smallest scores of each row
        order = None
        if kept > 0 and scores.device.type == "cpu" and not torch.compiler.is_compiling():
            # The kept-th smallest score bounds the kept set: a selection, not a sort of the row, and
            # the same set as the sort whenever no other score ties it (else the sort decides ties).
            chosen = scores <= scores.kthvalue(kept, dim=1, keepdim=True).values
            if bool((chosen.sum(dim=1) == kept).all()):
                order = torch.arange(prefix).expand(B, prefix)[chosen].view(B, kept)
        if order is None:
            order = scores.argsort(dim=1)[:, :kept].sort(dim=1).values
        latent = torch.arange(prefix, T, device=device).expand(B, n)
        return torch.cat((order, latent), dim=1)

    def _keep_rows(self, lengths: torch.Tensor, T: int, n: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """_keep for right-padded rows: (kept input positions [B, T'] or None, key lengths [B]). Row b
        keeps the same fraction of its own prefix (ℓ_b − n positions), then its n latents; the rows are
        padded to the widest a row of T tokens keeps, which no read-back is needed to know (the kept
        count never falls as the prefix grows), and the key lengths (kept_b + n) end each row."""
        widest = self._prefix_kept(T - n)
        if not self.training or self.config.cross_dropout <= 0 or widest == T - n:
            return None, lengths  # keeps whole prefixes (no row's prefix drops a position if T's drops none)
        B, device = lengths.shape[0], lengths.device
        prefix = lengths - n
        kept = self._prefix_kept(prefix)
        past_prefix = torch.arange(T - n, device=device) >= prefix[:, None]
        scores = torch.rand(B, T - n, device=device).masked_fill(past_prefix, 2.0)  # past the prefix: never kept
        order = scores.argsort(dim=1)[:, :widest]
        slot = torch.arange(widest + n, device=device)
        marked = torch.where(slot[:widest] < kept[:, None], order, T)  # the kept, then T (sorts last)
        chosen = F.pad(marked.sort(dim=1).values, (0, n))
        # Slots past the kept prefix: the latents ℓ_b − n + j, then padding (past the key lengths).
        after = (prefix[:, None] + slot - kept[:, None]).clamp_max(T - 1)
        return torch.where(slot < kept[:, None], chosen, after), kept + n

    def forward(self, tokens: torch.Tensor, latents: int | None = None, return_cache: bool = False, *,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, LatentCache | None]:
        """tokens[B, T] -> (logits[B, n, V] at the last n positions, the window's LatentCache for
        `step` if return_cache else None). lengths[B] (ints in [n, T]; None: all T): right-padded
        rows, row b's latents its last n real tokens (positions ℓ_b − n + j) and the logits theirs;
        each row's result is that of its ℓ_b tokens alone, whatever its padding holds. With
        return_cache, cross-attend dropout is off even in training: the cache is for sampling, and a
        step appends at the position after the window's whole inputs."""
        n = self.config.latents if latents is None else latents
        self._check(tokens, n)
        if lengths is not None:
            lengths = self._check_lengths(lengths, tokens, n)
            tokens = self._padding_zeroed(tokens, lengths)
        self._check_ids("tokens", tokens)
        B, T = tokens.shape
        tokens = tokens.long()
        positions = torch.arange(T, device=tokens.device)
        if lengths is None:
            latent_positions = positions[T - n:]
            h = self.embed(tokens[:, T - n:])  # the latents are the last n inputs, kept or not
            keep, key_lengths = (None if return_cache else self._keep(B, T, n, tokens.device)), None
        else:  # per row: its queries' own positions (rotary tables [B, 1, n, ·]) and key lengths
            latent_positions = lengths[:, None] - n + torch.arange(n, device=tokens.device)
            h = self.embed(tokens.gather(1, latent_positions))
            keep, key_lengths = (None, lengths) if return_cache else self._keep_rows(lengths, T, n)
        rope = self._tables(latent_positions)
        if keep is not None:  # gather tokens, not embeddings: only kept inputs are embedded
            tokens, positions = tokens.gather(1, keep), keep
        q = self.cross.attn.queries(self.cross.norm_q(h), rope)
        rope_inputs = self._tables(positions)
        # The per-vocabulary-entry route (pyaudiok.ops.token_attention) has no key lengths: padded
        # rows take the gathered keys and values, whose attention stops at each row's length.
        by_token = not return_cache and key_lengths is None
        attended = self._attend_inputs_by_token(q, tokens, rope_inputs) if by_token else None
        cache = None
        if attended is None:
            k, v = self._input_keys_values(tokens, rope_inputs)
            if return_cache:  # room for the tokens `step` may append: up to N latents or max_context inputs
                room = min(self.config.latents - n, self.config.max_context - T)
                cache = LatentCache(KVBuffer(T + room), [KVBuffer(n + room) for _ in self.blocks], T, n)
                k, v = cache.cross.append(k, v, key_lengths)
            attended = self.cross.attn.attend(q, k, v, key_lengths)
        h = self.cross.finish_attended(h, attended)
        for i, block in enumerate(self.blocks):
            h = block(h, rope, cache.layers[i] if cache else None)
        return self.logits(self.norm(h)), cache

    def _tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary (cos, sin) at positions: the same for every layer (same head dim and fraction)."""
        return self.cross.attn.rotary.tables(positions, self.embed.weight.dtype, self.config.max_context)

    def _attend_inputs_by_token(self, q: torch.Tensor, tokens: torch.Tensor, rope) -> torch.Tensor | None:
        """The cross-attention over the inputs tokens[B, T] computed per vocabulary entry
        (LatentAttention.attend_tokens) where that route runs and pays: its [V, queries] tables cost
        what V inputs' products cost, so no more vocabulary entries than inputs per row; else None."""
        if tokens.shape[1] < self.config.vocab_size:
            return None
        return self.cross.attn.attend_tokens(q, self._vocabulary_keys_values(), tokens, rope)

    def _vocabulary_keys_values(self) -> torch.Tensor:
        """The cross-attention's key and value projections of every token id: [V, 2·width]."""
        cross = self.cross
        return cross.attn.kv(cross.norm_kv(self.embed.weight))

    def _input_keys_values(self, tokens: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention's keys and values [B, H, T, d] of the inputs tokens[B, T].

        embed -> norm_kv -> kv is a function of the token alone, so for more inputs than vocabulary
        entries it runs on the vocabulary once and its rows are gathered: the context's LayerNorm and
        projection (and their backward, a matmul over every input) shrink to V rows, and the gather's
        backward sums each token's gradients before that V-row backward."""
        cross = self.cross
        if tokens.numel() > self.config.vocab_size:
            return cross.attn.gathered_keys_values(self._vocabulary_keys_values(), tokens, rope)
        return cross.attn.keys_values(cross.norm_kv(self.embed(tokens)), rope)

    @torch.no_grad()
    def step(self, token: torch.Tensor, cache: LatentCache) -> torch.Tensor:
        """Append one token [B] to the window of `cache` (as a new latent); its logits [B, V]. A step
        refused for its input or for a full window leaves the cache as it was."""
        self._check_step(token, cache)
        cache.check_room(self.config)
        logits = self.cached_step(token, cache)
        cache.advance(self.config)  # counted once the step's rows are written
        return logits

    def _check_step(self, token: torch.Tensor, cache: LatentCache) -> None:
        if not isinstance(cache, LatentCache):
            raise TypeError(f"cache must be the LatentCache of forward(..., return_cache=True); "
                            f"got {type(cache).__name__}")
        if cache.cross.k is None:
            raise ValueError("cache must be filled by a full forward first (forward(..., return_cache=True))")
        B = cache.cross.k.shape[0]
        _checks.tensor("token", token, shape=(B,), layout="[B] (B of the cache)", dtypes=TOKEN_DTYPES)
        _checks.same_device("token", token, "the cache", cache.cross.k)
        self._check_ids("token", token)

    @torch.no_grad()
    def cached_step(self, token: torch.Tensor, cache: LatentCache) -> torch.Tensor:
        """`step` without its host bookkeeping (`cache.advance`, the caller's): tensor work only,
        with the same shapes at every token of a window and no value read back to the host, so that
        sampling on a GPU can capture it once as a CUDA graph (sampling.CUDAGraphStep)."""
        x = self.embed(token.long())[:, None]
        filled = cache.cross.filled  # the new input's position in the window: one for all rows, or per row
        rope = self._tables(filled if filled.shape[0] == 1 else filled[:, None])
        k, v, lengths = cache.cross.push(*self._input_keys_values(token.long()[:, None], rope))
        q = self.cross.attn.queries(self.cross.norm_q(x), rope)
        h = self.cross.finish(x, q, k, v, lengths)
        for block, layer_cache in zip(self.blocks, cache.layers):
            h = block(h, rope, layer_cache, step=True)
        return self.logits(self.norm(h))[:, 0]

    def loss(self, sequence: torch.Tensor, *,
             lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """sequence[B, T + 1]: inputs sequence[:, :T], targets the token after each latent.
        Returns (loss to minimise, {"nll": mean nats per target, "z": mean log²Z}). lengths[B]: right-
        padded rows of lengths[b] inputs each (then their next token), at least n = min(latents, T):
        row b's targets are sequence[b, ℓ_b − n + j + 1], every row has n, and the loss is the mean
        of the rows' own."""
        if not isinstance(sequence, torch.Tensor) or sequence.dim() != 2 or sequence.shape[1] < 2:
            got = tuple(sequence.shape) if isinstance(sequence, torch.Tensor) else type(sequence).__name__
            raise ValueError(f"sequence must be a tensor [B, T + 1] with T >= 1 (inputs and the next token); got {got}")
        tokens = sequence[:, :-1]
        n = min(self.config.latents, tokens.shape[1])
        logits, _ = self(tokens, n, lengths=lengths)
        if lengths is None:
            return self.loss_from_logits(logits, sequence[:, -n:])
        ends = torch.as_tensor(lengths, device=sequence.device).long()  # checked by the forward
        targets = sequence.gather(1, ends[:, None] - n + 1 + torch.arange(n, device=sequence.device))
        return self.loss_from_logits(logits, targets)

    def loss_from_logits(self, logits: torch.Tensor, targets: torch.Tensor):
        logits = logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), targets.long().flatten())
        with torch.set_grad_enabled(bool(self.config.z_loss) and torch.is_grad_enabled()):
            z = torch.logsumexp(logits, dim=-1).square().mean()  # only reported unless weighted
        total = nll + self.config.z_loss * z if self.config.z_loss else nll
        return total, {"nll": nll.detach(), "z": z.detach()}
