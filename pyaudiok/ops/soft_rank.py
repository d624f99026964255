"""Soft rank and soft sort by projection onto the permutahedron (Blondel et al., "Fast
differentiable sorting and ranking"; the functions `torchsort` computes), DESIGN §5.

With z sorted in decreasing order (s = z[σ]) and w = (n, n−1, …, 1):

    soft_rank(x, ε) = P(x/ε, w):  L2: s − v,  v = iso(s − w)          out[σ] = that
                                  KL: exp(s − v),  v = iso_kl(s, log w)
    soft_sort(x, ε) = P(w/ε, x):  L2: w/ε − v,  v = iso(w/ε − s)      (kept in sorted order)
                                  KL: w/ε − v,  v = iso_kl(w/ε, s)

iso is the non-increasing isotonic regression, solved by pool-adjacent-violators (PAV): each
block of pooled positions takes its mean (L2) or LSE(y_B) − LSE(w_B) (KL). The Jacobian of a block's
value is the block mean (L2) or the block softmax of s (KL), so the backward is O(n) per row
given σ and the block partition, which the fused forward saves (`blocks[j]` = last position of
the block holding sorted position j).

Ascending ranks (default) give the largest entry rank n; `descending=True` ranks on −x (largest
→ rank 1). `soft_sort` is ascending by default, like torch.sort.

Every fused backend (cpu, triton, cuda) exposes the same two raw ops:

    soft_sort_rank(x[R, n] fp32, strength, kl, rank, descending) -> (out[R, n], perm[R, n] int64, blocks[R, n] int32)
    soft_sort_rank_backward(grad[R, n], x, out, perm, blocks, strength, kl, rank, descending) -> grad_x[R, n]
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import dispatch
from . import _checks
from ._library import (cpp_op, extension_loaded, first_order, register_autograd, register_backends, triton_op,
                       upcast_half)

__all__ = ["soft_rank", "soft_sort", "soft_rank_reference", "soft_sort_reference", "pav_blocks"]

REGULARIZATIONS = ("l2", "kl")


# ----------------------------------------------------------------------------------------------
# Reference: the definition of the op.

def pav_blocks(y: list[float], w: list[float] | None = None) -> list[int]:
    """Start indices of the blocks of the non-increasing isotonic regression of y (PAV), for the
    L2 loss, or for the KL loss when w is given (block value LSE(y_B) − LSE(w_B))."""
    import math

    def value(sy, sw):
        return sy / sw if w is None else sy - sw

    def merge(a, b):
        if w is None:
            return a + b
        hi = max(a, b)
        # LSE of two equal infinities is that infinity (as torch.logsumexp, which gives the block values), not
        # the NaN of inf − inf.
        return hi if math.isinf(hi) else hi + math.log1p(math.exp(-abs(a - b)))

    starts, sums_y, sums_w = [], [], []
    for i, yi in enumerate(y):
        starts.append(i)
        sums_y.append(yi)
        sums_w.append(1.0 if w is None else w[i])
        # Pool while the last block's value exceeds the one before it (a violation of v_1 >= v_2 >= ...).
        while len(starts) > 1 and value(sums_y[-2], sums_w[-2]) <= value(sums_y[-1], sums_w[-1]):
            sy, sw = sums_y.pop(), sums_w.pop()
            starts.pop()
            sums_y[-1], sums_w[-1] = merge(sums_y[-1], sy), merge(sums_w[-1], sw)
    return starts


def _isotonic(y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Rows of y[R, n]: the partition is found without gradient, block values are differentiable
    segment reductions (mean, or LSE(y_B) − LSE(w_B)), so autograd gives the exact Jacobian."""
    rows = []
    for r in range(y.shape[0]):
        yr = y[r]
        wr = None if w is None else w[r]
        starts = pav_blocks(yr.detach().tolist(), None if wr is None else wr.detach().tolist())
        bounds = starts + [y.shape[1]]
        parts = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            if wr is None:
                val = yr[s:e].mean()
            else:
                val = torch.logsumexp(yr[s:e], 0) - torch.logsumexp(wr[s:e], 0)
            parts.append(val.expand(e - s))
        rows.append(torch.cat(parts) if parts else yr)
    return torch.stack(rows) if rows else y


def _descending_weights(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(n, 0, -1, dtype=like.dtype, device=like.device).expand(like.shape[0], n)


def _internal_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def soft_rank_reference(x: torch.Tensor, regularization: str = "l2", regularization_strength: float = 1.0,
                        descending: bool = False) -> torch.Tensor:
    """x[R, n] -> soft ranks[R, n] (1 … n)."""
    z = x.to(_internal_dtype(x.dtype)) * ((-1.0 if descending else 1.0) / regularization_strength)
    s, perm = torch.sort(z, dim=-1, descending=True, stable=True)
    w = _descending_weights(z.shape[-1], z)
    if regularization == "l2":
        out_sorted = s - _isotonic(s - w, None)
    else:
        out_sorted = torch.exp(s - _isotonic(s, w.log()))
    return torch.empty_like(out_sorted).scatter(-1, perm, out_sorted).to(x.dtype)


def soft_sort_reference(x: torch.Tensor, regularization: str = "l2", regularization_strength: float = 1.0,
                        descending: bool = False) -> torch.Tensor:
    """x[R, n] -> soft sorted values[R, n] (ascending unless descending)."""
    sign = 1.0 if descending else -1.0
    z = x.to(_internal_dtype(x.dtype)) * sign
    s, _ = torch.sort(z, dim=-1, descending=True, stable=True)
    w = _descending_weights(z.shape[-1], z) / regularization_strength
    v = _isotonic(w - s, None) if regularization == "l2" else _isotonic(w, s)
    return (sign * (w - v)).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Gradients and fake implementations of the fused backends' raw ops.

def _register(qualname: str, backward_op: Callable[[], Callable]) -> None:
    @torch.library.register_fake(qualname)
    def _(x, strength, kl, rank, descending):
        return (x.new_empty(x.shape), x.new_empty(x.shape, dtype=torch.int64),
                x.new_empty(x.shape, dtype=torch.int32))

    def setup_context(ctx, inputs, output):
        x, strength, kl, rank, descending = inputs
        ctx.flags = (strength, kl, rank, descending)
        ctx.save_for_backward(x, output[0], output[1], output[2])
        # The index outputs take no gradient: no zero tensors made for them on each backward.
        ctx.set_materialize_grads(False)

    @first_order("soft_rank")
    def backward(ctx, grad_out, grad_perm, grad_blocks):
        x, out, perm, blocks = ctx.saved_tensors
        if grad_out is None:
            return None, None, None, None, None
        return (backward_op()(grad_out.contiguous(), x, out, perm, blocks, *ctx.flags),
                None, None, None, None)

    register_autograd(qualname, backward, setup_context=setup_context)


def _register_backward_fake(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(grad, x, out, perm, blocks, strength, kl, rank, descending):
        return grad.new_empty(grad.shape)


if extension_loaded():
    _register_backward_fake("pyaudiok::soft_sort_rank_backward")
    _register("pyaudiok::soft_sort_rank", lambda: cpp_op("soft_sort_rank_backward"))


def _triton_backward():
    return triton_op("soft_sort_rank_backward_triton", "soft_rank", "soft_sort_rank_backward",
                     _register_backward_fake)


def _triton_forward():
    _triton_backward()
    return triton_op("soft_sort_rank_triton", "soft_rank", "soft_sort_rank",
                     lambda name: _register(name, _triton_backward))


# ----------------------------------------------------------------------------------------------
# Backend registry. Fused kernels compute in fp32; half inputs are upcast, results cast back.

def _fused(get_op: Callable[[], Callable], rank: bool):
    def run(x, regularization, strength, descending):
        return get_op()(x.contiguous(), float(strength), regularization == "kl", rank, descending)[0]
    return upcast_half(run)


RANK = dispatch.op("soft_rank")
SORT = dispatch.op("soft_sort")
_CPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
for _op, _ref, _rank in ((RANK, soft_rank_reference, True), (SORT, soft_sort_reference, False)):
    register_backends(_op, reference=_ref, cpu=_fused(lambda: cpp_op("soft_sort_rank"), _rank),
                      triton=_fused(_triton_forward, _rank), cuda=_fused(lambda: cpp_op("soft_sort_rank"), _rank),
                      cpu_dtypes=_CPU_DTYPES)


# ----------------------------------------------------------------------------------------------
# Public API.

def _check(x, regularization, regularization_strength, descending) -> torch.Tensor:
    x = _checks.float_tensor("x", x, min_ndim=1, layout="[..., n]")
    if regularization not in REGULARIZATIONS:
        raise ValueError(f"regularization must be one of {REGULARIZATIONS}; got {regularization!r}")
    _checks.positive_float("regularization_strength", regularization_strength)
    if not isinstance(descending, bool):
        raise TypeError(f"descending must be a bool; got {type(descending)!r}")
    return x


def _call(op: dispatch.Op, x, regularization, regularization_strength, descending):
    x = _check(x, regularization, regularization_strength, descending)
    n = x.shape[-1]
    flat = x.reshape(x.shape[:-1].numel(), n)
    out = op(flat, regularization, float(regularization_strength), descending, device=x.device, dtype=x.dtype)
    return out.reshape(x.shape)


def soft_rank(x: torch.Tensor, *, regularization: str = "l2", regularization_strength: float = 1.0,
              descending: bool = False) -> torch.Tensor:
    """Soft ranks (1 … n) along the last dim of x[..., n].

    regularization_strength ε → 0 gives the hard ranks (largest → n, or → 1 when descending),
    ε → ∞ gives (n + 1)/2 everywhere. Ties get equal ranks. Differentiable in x.
    Example: soft_rank(tensor([5., 1, 2]), regularization_strength=2) = [3, 1.25, 1.75].
    """
    return _call(RANK, x, regularization, regularization_strength, descending)


def soft_sort(x: torch.Tensor, *, regularization: str = "l2", regularization_strength: float = 1.0,
              descending: bool = False) -> torch.Tensor:
    """Soft sorted values along the last dim of x[..., n] (ascending unless descending).

    ε → 0 gives torch.sort's values; with L2, ε → ∞ gives the row mean everywhere.
    """
    return _call(SORT, x, regularization, regularization_strength, descending)
