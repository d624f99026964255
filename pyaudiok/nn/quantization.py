"""Residual vector quantizer with EMA-learned codebooks (SoundStream, DESIGN.md §2).

`ResidualVQ` quantizes channels-last features x[B, T, D] with the fused op
`pyaudiok.ops.residual_vq`; every nearest-codeword search goes through that op. The codebooks
receive no gradient. They are learned as follows:

* k-means initialisation on the first training batch, stage by stage on the residuals left by
  the stages before;
* an EMA of the per-codeword counts and residual sums, with Laplace-smoothed counts;
* dead-code replacement: a codeword whose EMA count falls below `dead_code_threshold` is replaced
  by a random residual of the current batch at that stage.

Quantizer dropout (training): each example b uses only its first n_q(b) ~ U{1..Q} stages. The
fused op runs all Q stages once for the whole batch (greedy RVQ codes do not depend on later
stages), then every stage's contribution is masked per example: the output is the sum of the
codewords of the stages the example used, the commitment loss counts only those stages, and
the EMA statistics of a stage only see vectors of the examples that used it.

Under `torch.distributed`, the per-step counts and sums are all-reduced before the EMA update;
the k-means initialisation and the dead-code replacement vectors come from rank 0.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from ..ops import _checks, residual_vq, rvq_decode
from ..ops._library import accumulation_dtype  # codebook statistics are sums over many vectors

__all__ = ["ResidualVQ", "ResidualVQOutput", "kmeans"]

_CODE_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


class ResidualVQOutput(NamedTuple):
    quantized: torch.Tensor    # [B, T, D]; value Σ of the used codewords, gradient identity to x
    codes: torch.Tensor        # [B, T, n_q] int64
    commit_loss: torch.Tensor  # scalar: Σ over used stages of the mean squared residual


# ----------------------------------------------------------------------------------------------
# Argument checks.

def _int_at_least(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    return float(value)


def _positive(name: str, value) -> float:
    value = _real(name, value)
    if not (value > 0 and math.isfinite(value)):  # also rejects NaN
        raise ValueError(f"{name} must be a positive finite number; got {value}")
    return value



# ----------------------------------------------------------------------------------------------
# Distributed helpers: no-ops in a single process.

def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_rank0() -> bool:
    return not _distributed() or dist.get_rank() == 0


def _all_reduce_sum_(*tensors: torch.Tensor) -> None:
    if _distributed():
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def _broadcast_from_rank0_(*tensors: torch.Tensor) -> None:
    if _distributed():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


# ----------------------------------------------------------------------------------------------
# k-means and per-stage bookkeeping.

def _sample_rows(num_rows: int, count: int, device: torch.device) -> torch.Tensor:
    """`count` random row indices in [0, num_rows): distinct when there are enough rows."""
    if num_rows >= count:
        return torch.randperm(num_rows, device=device)[:count]
    return torch.randint(num_rows, (count,), device=device)


def _nearest(vectors: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of each vector (ties → lowest index), by the fused op."""
    return residual_vq(vectors, centroids[None], 1).codes[:, 0]


def kmeans(vectors: torch.Tensor, num_clusters: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on vectors[N, D] (N >= 1, floating point).

    Seeds are `num_clusters` vectors sampled from the data (without replacement when N allows);
    a cluster that becomes empty keeps its previous centroid. Returns (centroids[K, D],
    assignment[N]), the assignment being to the final centroids.
    """
    with torch.no_grad():
        vectors = vectors.detach().contiguous()
        centroids = vectors[_sample_rows(vectors.shape[0], num_clusters, vectors.device)]
        for _ in range(iters):
            assignment = _nearest(vectors, centroids)
            counts = torch.bincount(assignment, minlength=num_clusters).to(vectors.dtype)
            sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)
            means = sums / counts.clamp_min(1)[:, None]
            centroids = torch.where(counts[:, None] > 0, means, centroids)
        return centroids, _nearest(vectors, centroids)


def _stage_codewords(codebooks: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """codebooks[Q, K, D], codes[N, n] -> the chosen codeword of every stage, [n, N, D]."""
    stages = torch.arange(codes.shape[1], device=codes.device)[:, None]
    return codebooks[stages, codes.T]


def _stage_residuals(x: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    """r_0 = x, r_q = r_{q-1} − ẑ_q, as [n + 1, N, D]: entry q is what stage q + 1 saw."""
    return torch.cat([x[None], -codewords]).cumsum(0)


def _trace_stages(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached per-stage codewords [n, N, D] and residuals [n + 1, N, D] of x[N, D] given its
    codes[N, n], in the accumulation precision."""
    codewords = _stage_codewords(codebooks.detach().to(accumulation_dtype(codebooks.dtype)), codes)
    return codewords, _stage_residuals(x.detach().to(codewords.dtype), codewords)


def _row_weights(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Weight [n, N] of each row in each stage's statistics: 1 if it used the stage, else 0."""
    if mask is None:
        return torch.ones(like.shape[:2], dtype=like.dtype, device=like.device)
    return mask.to(like.dtype)


def _masked_outputs(x: torch.Tensor, codewords: torch.Tensor, residuals: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through output and commitment loss of rows that use only some stages.

    x[N, D] (carries the gradient), codewords[n, N, D] and residuals[n + 1, N, D] (detached),
    mask[n, N] (stage used by the row). The loss has the fused op's normalisation (sum over rows
    of ‖r_q‖² / x.numel()), so it equals the fused loss when every row uses every stage.
    """
    weight = mask.to(codewords.dtype)[..., None]
    # Masked stages add exact zeros: a row using one stage gets exactly its first codeword.
    quantized = (codewords * weight).sum(0)
    through = x - x.detach()  # zero in value, identity gradient
    quantized = quantized.to(x.dtype) + through
    after = residuals[1:] + through.to(residuals.dtype)  # ∂r_q/∂x = I for every stage
    commit = (after.pow(2) * weight).sum() / max(x.numel(), 1)
    return quantized, commit


def _assignment_stats(residuals: torch.Tensor, codes: torch.Tensor, weight: torch.Tensor,
                      codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per stage and codeword: number (counts[n, K]) and sum (sums[n, K, D]) of the residuals
    assigned to it, each row weighted by weight[n, N] (0 for rows that did not use the stage)."""
    n, N, D = residuals.shape
    # One flat index over all stages' codewords, so a single bincount / index_add_ does it all.
    flat = (codes.T + codebook_size * torch.arange(n, device=codes.device)[:, None]).reshape(-1)
    # index_add_ rather than bincount: the same sums, with a size torch.compile knows while tracing.
    counts = residuals.new_zeros(n * codebook_size).index_add_(0, flat, weight.reshape(-1).to(residuals.dtype))
    sums = residuals.new_zeros(n * codebook_size, D).index_add_(0, flat, (residuals * weight[..., None]).reshape(-1, D))
    return counts.view(n, codebook_size), sums.view(n, codebook_size, D)


def _laplace_smooth(count: torch.Tensor, eps: float) -> torch.Tensor:
    """n_k = (c_k + ε) / (Σc + K·ε) · Σc over the last dim: no codeword has a zero count."""
    total = count.sum(-1, keepdim=True)
    return (count + eps) / (total + count.shape[-1] * eps) * total


def _dead_codes_readable(device: torch.device) -> bool:
    """Whether finding the dead codes on the host is free: on the CPU, in a single process (under
    DDP every process must install rank 0's candidates, so they are gathered and broadcast), and
    not while torch.compile traces (a host read would split its graph)."""
    return device.type == "cpu" and not _distributed() and not torch.compiler.is_compiling()


def _sample_stage_rows(weight: torch.Tensor, count: int) -> torch.Tensor:
    """`count` random row indices per stage, [n, count], drawn from the rows that used the stage
    (from all rows of a stage no row used on this process)."""
    usable = torch.where(weight.sum(-1, keepdim=True) > 0, weight, torch.ones_like(weight))
    return torch.multinomial(usable, count, replacement=True)


# ----------------------------------------------------------------------------------------------
# The module.

class ResidualVQ(nn.Module):
    """Residual vector quantizer of x[B, T, D] with `num_quantizers` EMA codebooks of
    `codebook_size` codewords (see the module docstring).

    forward(x, n_q) -> ResidualVQOutput(quantized[B, T, D], codes[B, T, n_q], commit_loss). n_q:
    * None: all stages, except in training with `quantizer_dropout`, where each example draws its
      own n_q ~ U{1..Q} (codes then hold all Q stages; those past an example's n_q are unused);
    * an int: that many stages for every example (no dropout);
    * an integer tensor [B]: per-example stage counts (codes hold all Q stages).
    In training mode, the call also updates the codebooks (k-means init, EMA, dead codes).
    """

    codebooks: torch.Tensor
    ema_count: torch.Tensor
    ema_sum: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, dim: int, num_quantizers: int, codebook_size: int = 1024, *, decay: float = 0.99,
                 eps: float = 1e-5, kmeans_init: bool = True, kmeans_iters: int = 50,
                 dead_code_threshold: float = 2.0, quantizer_dropout: bool = True) -> None:
        super().__init__()
        self.dim = _int_at_least("dim", dim, 1)
        self.num_quantizers = _int_at_least("num_quantizers", num_quantizers, 1)
        self.codebook_size = _int_at_least("codebook_size", codebook_size, 1)
        self.decay = _real("decay", decay)
        if not 0 < self.decay < 1:
            raise ValueError(f"decay must be in (0, 1); got {decay}")
        self.eps = _positive("eps", eps)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = _int_at_least("kmeans_iters", kmeans_iters, 0)
        self.dead_code_threshold = _real("dead_code_threshold", dead_code_threshold)
        if not self.dead_code_threshold >= 0:
            raise ValueError(f"dead_code_threshold must be >= 0; got {dead_code_threshold}")
        self.quantizer_dropout = bool(quantizer_dropout)

        shape = (self.num_quantizers, self.codebook_size, self.dim)
        codebooks = torch.randn(shape) / math.sqrt(self.dim)  # unit expected norm
        # Start every codeword at the count it needs to survive, so none is dead before it is used.
        start_count = max(self.dead_code_threshold, 1.0)
        self.register_buffer("codebooks", codebooks)
        self.register_buffer("ema_count", torch.full(shape[:2], start_count))
        self.register_buffer("ema_sum", codebooks * start_count)
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        # A host copy of `initialized` once it is known to be set, so that the check before every
        # training call reads no tensor (torch.compile would split its graph there). Loading a
        # state dict may clear the buffer: it forgets the copy.
        self._initialized_seen = False
        self.register_load_state_dict_post_hook(ResidualVQ._forget_initialized)

    @staticmethod
    def _forget_initialized(module: "ResidualVQ", incompatible_keys) -> None:
        module._initialized_seen = False

    def _apply(self, fn, recurse=True):
        """As nn.Module's (`.half()`, `.to(...)`, `.cuda()`), except that the EMA statistics, sums over
        many vectors, are never cast to half precision: a half model keeps them in float32 (moved to
        its device) and its codebooks follow them to half at each update."""
        statistics = {name: self._buffers[name] for name in ("ema_count", "ema_sum")}
        super()._apply(fn, recurse)
        for name, before in statistics.items():
            after = self._buffers[name]
            if after.dtype in (torch.float16, torch.bfloat16) and before.dtype not in (torch.float16, torch.bfloat16):
                self._buffers[name] = before.to(device=after.device)
        return self

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_quantizers={self.num_quantizers}, codebook_size={self.codebook_size}, "
                f"decay={self.decay}, kmeans_init={self.kmeans_init}, "
                f"dead_code_threshold={self.dead_code_threshold}, quantizer_dropout={self.quantizer_dropout}")

    # ------------------------------------------------------------------------------------------
    # Checks.

    def _check_input(self, x) -> torch.Tensor:
        x = _checks.float_tensor("x", x, ndim=3, layout="[B, T, D]")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape [B, T, D] with D = dim = {self.dim}; got "
                             f"{_checks.shape_str(x.shape)}")
        return x

    def _check_n_q(self, n_q) -> int:
        return self.num_quantizers if n_q is None else _checks.int_in_range("n_q", n_q, 1, self.num_quantizers)

    def _check_n_q_per_example(self, n_q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _checks.tensor("n_q", n_q, ndim=1, layout="[B]", dtypes=_CODE_DTYPES)
        if n_q.shape[0] != x.shape[0]:
            raise ValueError(f"n_q must have shape [B] with B = {x.shape[0]} (x's batch size); got "
                             f"{_checks.shape_str(n_q.shape)}")
        _checks.ints_within(n_q, 1, self.num_quantizers, f"n_q values must lie in [1, {self.num_quantizers}]")
        return n_q.to(device=x.device, dtype=torch.int64)

    # ------------------------------------------------------------------------------------------
    # Forward.

    def sample_num_quantizers(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Quantizer dropout: an independent n_q ~ U{1..Q} per example, int64 [batch_size]."""
        return torch.randint(1, self.num_quantizers + 1, (batch_size,), device=device)

    def _per_example_n_q(self, x: torch.Tensor, n_q) -> torch.Tensor | None:
        """Per-example stage counts [B], or None when every example uses the same number."""
        if isinstance(n_q, torch.Tensor):
            return self._check_n_q_per_example(n_q, x)
        if n_q is None and self.training and self.quantizer_dropout and self.num_quantizers > 1:
            return self.sample_num_quantizers(x.shape[0], x.device)
        return None

    def forward(self, x: torch.Tensor, n_q: int | torch.Tensor | None = None) -> ResidualVQOutput:
        x = self._check_input(x)
        per_example = self._per_example_n_q(x, n_q)
        stages = self.num_quantizers if per_example is not None else self._check_n_q(n_q)
        B, T, D = x.shape
        flat = x.reshape(-1, D).to(self.codebooks.dtype)
        learn = self.training and flat.shape[0] > 0
        if learn and self.kmeans_init and not self._initialized_seen:
            if not bool(self.initialized):
                if not bool(torch.isfinite(flat).all()):  # no codebook fitted to NaN: wait for a finite batch
                    learn = False
                else:
                    self._kmeans_init_(flat)
                    self._initialized_seen = True
            else:
                self._initialized_seen = True
        # The fused op saves the codebooks for its backward: in training, give it a snapshot that
        # the in-place EMA update below leaves untouched (it is also "the values before the update").
        codebooks = self.codebooks.clone() if learn else self.codebooks
        result = residual_vq(flat, codebooks, stages)
        quantized, commit = result.quantized, result.commit_loss.sum()
        mask = None if per_example is None else self._stage_mask(per_example, T)
        if mask is not None or learn:
            codewords, residuals = _trace_stages(flat, codebooks, result.codes)
            if mask is not None:
                quantized, commit = _masked_outputs(flat, codewords, residuals, mask)
            if learn:
                self._learn_(residuals[:-1], result.codes, _row_weights(mask, codewords), torch.isfinite(flat).all())
        return ResidualVQOutput(quantized.to(x.dtype).reshape(x.shape), result.codes.reshape(B, T, stages), commit)

    def _stage_mask(self, n_q: torch.Tensor, frames: int) -> torch.Tensor:
        """mask[q, b·T + t] = stage q + 1 is used by example b: [Q, B·T] bool."""
        stages = torch.arange(self.num_quantizers, device=n_q.device)[:, None]
        return (stages < n_q[None, :]).repeat_interleave(frames, dim=1)

    # ------------------------------------------------------------------------------------------
    # Codebook learning.

    @torch.no_grad()
    def _kmeans_init_(self, flat: torch.Tensor) -> None:
        """Fit every stage's codebook by k-means on the residuals of the stages before it."""
        if _is_rank0():
            residual = flat.detach().to(accumulation_dtype(flat.dtype))
            for q in range(self.num_quantizers):
                centroids, assignment = kmeans(residual, self.codebook_size, self.kmeans_iters)
                counts = torch.bincount(assignment, minlength=self.codebook_size).to(centroids.dtype)
                self.codebooks[q] = centroids
                self.ema_count[q] = counts
                self.ema_sum[q] = centroids * counts[:, None]  # consistent with codebook = sum / count
                residual = residual - centroids[assignment]
        _broadcast_from_rank0_(self.codebooks, self.ema_count, self.ema_sum)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _learn_(self, residuals: torch.Tensor, codes: torch.Tensor, weight: torch.Tensor,
                finite: torch.Tensor) -> None:
        """EMA update then dead-code replacement of the first n stages, from residuals[n, N, D]
        (what each stage saw), codes[N, n], row weights[n, N] and whether the batch is finite."""
        counts, sums = _assignment_stats(residuals, codes, weight, self.codebook_size)
        _all_reduce_sum_(counts, sums)
        # A stage that no vector reached (quantizer dropout) learns nothing and keeps its state. So
        # does every stage on a batch with a NaN or inf (an fp16 overflow whose optimizer step
        # GradScaler skips, a diverging encoder), on any process: its codebooks are not poisoned
        # for good. Sync-free: the sums are zeroed, not skipped.
        finite = finite.to(counts.dtype)
        _all_reduce_sum_(finite)
        active = (counts.sum(-1) > 0) & (finite == (dist.get_world_size() if _distributed() else 1))
        sums.masked_fill_(~active[:, None, None], 0.0)
        self._ema_update_(counts, sums, active)
        if self.dead_code_threshold > 0:
            self._replace_dead_codes_(residuals, weight, active)

    def _ema_update_(self, counts: torch.Tensor, sums: torch.Tensor, active: torch.Tensor) -> None:
        """EMA of the counts and sums (counts and sums are this step's, consumed), codebooks =
        sums / Laplace-smoothed counts. In place over the [n, K, D] buffers: each is one pass or two,
        no temporaries of that size but the division's."""
        n = counts.shape[0]
        # A stage that no vector reached keeps its state bit for bit: its weights are (1, 0), and its
        # counts and sums are zero. The weights are formed in float64, as a Python float would be.
        f64 = dict(dtype=torch.float64, device=counts.device)
        new = torch.zeros(n, **f64).masked_fill_(active, 1 - self.decay).to(counts.dtype)
        old = torch.ones(n, **f64).masked_fill_(active, self.decay).to(counts.dtype)
        count, total = self.ema_count[:n], self.ema_sum[:n]
        count.mul_(old[:, None]).add_(counts.mul_(new[:, None]))
        total.mul_(old[:, None, None]).add_(sums.mul_(new[:, None, None]))
        smoothed = _laplace_smooth(count, self.eps)
        codebooks = self.codebooks[:n]
        updated = total / smoothed[..., None]
        if updated.dtype == codebooks.dtype:
            torch.where(active[:, None, None], updated, codebooks, out=codebooks)
        else:  # a half module's codebooks, from its float32 statistics
            codebooks.copy_(torch.where(active[:, None, None], updated, codebooks.to(updated.dtype)))

    def _replace_dead_codes_(self, residuals: torch.Tensor, weight: torch.Tensor, active: torch.Tensor) -> None:
        # A replaced codeword restarts at count = threshold (sum = vector · threshold): it keeps
        # its place only if it then earns about `threshold` hits per step, like any other.
        n, threshold = residuals.shape[0], self.dead_code_threshold
        dead = (self.ema_count[:n] < threshold) & active[:, None]
        # Candidates are drawn every step (the same random stream on every route).
        rows = _sample_stage_rows(weight, self.codebook_size)
        codebooks, count, total = self.codebooks[:n], self.ema_count[:n], self.ema_sum[:n]
        if _dead_codes_readable(residuals.device):  # only the dead codes' candidates are gathered
            stage, code = dead.nonzero(as_tuple=True)
            if stage.numel():
                vectors = residuals[stage, rows[stage, code]].to(codebooks.dtype)
                codebooks[stage, code] = vectors
                count[stage, code] = threshold
                total[stage, code] = vectors * threshold
            return
        # Elsewhere asking whether any code is dead would sync the device: every candidate is
        # gathered, and rank 0's installed by every process.
        candidates = residuals[torch.arange(n, device=residuals.device)[:, None], rows]
        _broadcast_from_rank0_(candidates)
        candidates = candidates.to(codebooks.dtype)
        torch.where(dead[..., None], candidates, codebooks, out=codebooks)
        count.masked_fill_(dead, threshold)
        torch.where(dead[..., None], candidates.mul_(threshold), total, out=total)

    # ------------------------------------------------------------------------------------------
    # Codes.

    @torch.no_grad()
    def encode(self, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """x[B, T, D] -> codes[B, T, n_q] int64 (default all stages); never changes the codebooks."""
        x = self._check_input(x)
        return residual_vq(x.to(self.codebooks.dtype), self.codebooks, self._check_n_q(n_q)).codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes[B, T, n_q] (n_q <= num_quantizers) -> Σ of the chosen codewords, [B, T, D]."""
        return rvq_decode(codes, self.codebooks)

    # ------------------------------------------------------------------------------------------
    # Bitrate ↔ number of quantizers.

    def bits_per_frame(self, n_q: int) -> float:
        """n_q · log2(K): the bits one frame costs with n_q stages."""
        return _checks.int_in_range("n_q", n_q, 1, self.num_quantizers) * math.log2(self.codebook_size)

    def bitrate(self, n_q: int, frame_rate: float) -> float:
        """Bits per second with n_q stages at `frame_rate` frames per second."""
        return self.bits_per_frame(n_q) * _positive("frame_rate", frame_rate)

    def num_quantizers_for_bitrate(self, bitrate_bps: float, frame_rate: float) -> int:
        """The largest n_q (at most num_quantizers) whose bitrate does not exceed `bitrate_bps`."""
        per_stage = self.bitrate(1, frame_rate)
        bitrate_bps = _real("bitrate_bps", bitrate_bps)
        if not (bitrate_bps > 0 and math.isfinite(bitrate_bps)):
            raise ValueError(f"bitrate_bps must be a positive finite number; got {bitrate_bps}")
        if per_stage == 0:  # K = 1: codes carry no information, every stage is free
            return self.num_quantizers
        ratio = bitrate_bps / per_stage
        # An exact multiple computed in floating point (e.g. 3 · 10 · 75.0) must not round down.
        stages = round(ratio) if math.isclose(ratio, round(ratio), rel_tol=1e-9) else math.floor(ratio)
        if stages < 1:
            raise ValueError(f"bitrate_bps = {bitrate_bps} is below the rate of one quantizer "
                             f"({per_stage:g} bps at {frame_rate:g} frames/s)")
        return min(stages, self.num_quantizers)
