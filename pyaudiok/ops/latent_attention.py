"""Bottom-right causal latent cross-attention, the core of Perceiver AR (DESIGN §1).

`latent_cross_attention(q, k, v)` with q[B, H, N, d] and k, v[B, H, M, d], M ≥ N: query j of row
b sees key i iff  i ≤ L_b − N + j  and  i < L_b,  with L_b = key_lengths[b] (default M). This is
FlashAttention ≥ 2.1's causal convention for N ≠ M (PyTorch's `causal_lower_right`), not the
top-left `is_causal=True`. A query that sees no key outputs 0. M = N is square causal
self-attention (the latent stack).

`dropout_keep[B, M']` (int64, strictly increasing positions in [0, M)) gathers the kept keys of
each row first (cross-attend dropout): the mask and key_lengths then apply to the M' kept keys,
and dropped keys get zero gradient.

Backends: `reference` (below: explicit mask + softmax), `cpu` (the extension's flash-style C++
kernels, see `_cpu_forward`), `triton` (kernels/latent_attention.py). Each fused backend is a
registered pair of raw ops

    forward(q, k, v, key_lengths?, scale, keep?) -> (out, lse[B, H, N])
    backward(grad_out, q, k, v, out, lse, key_lengths?, scale, keep?) -> (dq, dk, dv)

(lse: natural log-sum-exp of the scaled scores over the visible keys, −inf if none), with the
autograd of the forward registered here once for both.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch

from .. import backends, dispatch
from . import _checks
from ._library import HALF_DTYPES, cpp_op, custom_op, first_order, register_autograd, triton_op, upcast_half

__all__ = ["latent_cross_attention", "latent_attention_reference"]

_INT_DTYPES = _checks.INDEX_DTYPES


# ----------------------------------------------------------------------------------------------
# Reference: the definition of the op.

def visible_mask(N: int, M: int, key_lengths: torch.Tensor | None, device=None) -> torch.Tensor:
    """Boolean [B or 1, 1, N, M]: query j sees key i iff i <= L_b - N + j and i < L_b."""
    L = (torch.tensor([M], device=device) if key_lengths is None else key_lengths.to(device).long())
    L = L[:, None, None, None]
    j = torch.arange(N, device=device)[:, None]
    i = torch.arange(M, device=device)[None, :]
    return (i <= L - N + j) & (i < L)


def _gather_keys(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    index = keep[:, None, :, None].expand(x.shape[0], x.shape[1], keep.shape[1], x.shape[3])
    return x.gather(2, index)


def latent_attention_reference(q, k, v, key_lengths=None, scale=None, dropout_keep=None):
    """Explicit scores, mask and softmax (float32 for half inputs, float64 for float64)."""
    if dropout_keep is not None:
        k, v = _gather_keys(k, dropout_keep), _gather_keys(v, dropout_keep)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k, v = k.to(acc), v.to(acc)
    if key_lengths is not None:  # keys past a row's length do not exist: none of their NaN (0 · NaN) gets in
        exists = (torch.arange(k.shape[2], device=k.device) < key_lengths.to(k.device)[:, None])[:, None, :, None]
        k, v = k.masked_fill(~exists, 0.0), v.masked_fill(~exists, 0.0)
    scores = (q.to(acc) @ k.transpose(-1, -2)) * scale
    mask = visible_mask(q.shape[2], k.shape[2], key_lengths, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).masked_fill(~mask, 0.0)  # rows with no key: NaN -> 0
    return (probs @ v).to(q.dtype)


# ----------------------------------------------------------------------------------------------
# cpu backend: the extension's flash-style kernels (csrc/cpu/latent_attention.cpp: blocks of keys
# with an online softmax, never an [N, M] score matrix, the products on the CPU BLAS; per-row
# key_lengths handled inside, one call for every row). Kept keys are gathered here first, and
# dropped keys' gradients scattered back.

def _lengths_arg(key_lengths: torch.Tensor | None) -> torch.Tensor | None:
    return None if key_lengths is None else key_lengths.to("cpu", torch.int64)


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """t[B, H, M, d] as the CPU forward reads keys and values: each head's M rows contiguous, the
    heads anywhere. The views of a growing cache's first rows pass without a copy."""
    if (t.shape[3] == 1 or t.stride(3) == 1) and (t.shape[2] <= 1 or t.stride(2) == t.shape[3]):
        return t
    return t.contiguous()


@custom_op("pyaudiok::latent_attention_cpu", device_types="cpu")
def _cpu_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None,
                 scale: float, keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if keep is not None:
        k, v = _gather_keys(k, keep), _gather_keys(v, keep)
    return cpp_op("latent_attention_forward")(q.contiguous(), _rows_contiguous(k), _rows_contiguous(v),
                                              _lengths_arg(key_lengths), scale)


@custom_op("pyaudiok::latent_attention_cpu_backward", device_types="cpu")
def _cpu_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, key_lengths: torch.Tensor | None, scale: float,
                  keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k_full, v_full = k, v
    if keep is not None:
        k, v = _gather_keys(k, keep), _gather_keys(v, keep)
    dq, dk, dv = cpp_op("latent_attention_backward")(grad_out.contiguous(), q.contiguous(), k.contiguous(),
                                                     v.contiguous(), out.contiguous(), lse.contiguous(),
                                                     _lengths_arg(key_lengths), scale)
    if keep is not None:  # contiguous, as the fake says (zeros_like would keep a permuted k's strides)
        index = keep[:, None, :, None].expand_as(dk)
        dk = k_full.new_zeros(k_full.shape).scatter_(2, index, dk)
        dv = v_full.new_zeros(v_full.shape).scatter_(2, index, dv)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Fake (meta) implementations and autograd of the raw op pairs.

def _register(forward: str, backward: Callable[[], Callable]) -> None:
    """Fake + autograd for a backend's forward op; `backward()` gives that backend's backward op."""

    @torch.library.register_fake(forward)
    def _(q, k, v, key_lengths, scale, keep):
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype)

    def setup_context(ctx, inputs, output):
        q, k, v, key_lengths, scale, keep = inputs
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, output[0], output[1], key_lengths, keep)
        ctx.set_materialize_grads(False)  # lse takes no gradient: no zeros made for it

    @first_order("latent_cross_attention")
    def grad(ctx, grad_out, grad_lse):
        if grad_out is None:
            return None, None, None, None, None, None
        q, k, v, out, lse, key_lengths, keep = ctx.saved_tensors
        # lse is an auxiliary output for the backward; its gradient is not propagated.
        dq, dk, dv = backward()(grad_out, q, k, v, out, lse, key_lengths, ctx.scale, keep)
        return dq, dk, dv, None, None, None

    register_autograd(forward, grad, setup_context=setup_context)


def _register_backward_fake(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(grad_out, q, k, v, out, lse, key_lengths, scale, keep):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous


_register_backward_fake("pyaudiok::latent_attention_cpu_backward")
_register("pyaudiok::latent_attention_cpu", lambda: _cpu_backward)


def _triton_backward():
    return triton_op("latent_attention_backward_triton", "latent_attention", "latent_attention_backward",
                     _register_backward_fake)


def _triton_forward():
    _triton_backward()
    return triton_op("latent_attention_triton", "latent_attention", "latent_attention_forward",
                     lambda name: _register(name, _triton_backward))


# ----------------------------------------------------------------------------------------------
# Backend registry.

def _fused(get_op: Callable[[], Callable], kv_layout: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.contiguous,
           lengths_dtype: torch.dtype = torch.int64):
    """A backend's call of its raw op; `kv_layout` gives k and v the layout its kernel reads (the CPU
    op lays them out itself: _rows_contiguous), key_lengths come in `lengths_dtype` (the Triton
    kernels read int32: converted here once, not by the forward and again by the backward)."""
    def run(q, k, v, key_lengths, scale, keep):
        if key_lengths is not None:
            key_lengths = key_lengths.to(q.device, lengths_dtype)
        return get_op()(q.contiguous(), kv_layout(k), kv_layout(v), key_lengths, scale, keep)[0]
    return run


def _triton_head_dim(q, k, v, key_lengths, scale, keep):
    from pyaudiok.kernels.latent_attention import HEAD_DIMS
    return None if q.shape[-1] in HEAD_DIMS else f"head dim {q.shape[-1]} is not one of the kernels' {HEAD_DIMS}"


OP = dispatch.op("latent_cross_attention")
OP.register("reference", latent_attention_reference, devices=("cpu", "cuda"), dtypes=dispatch.FLOAT_DTYPES)
OP.register("cpu", upcast_half(_fused(lambda: _cpu_forward, kv_layout=lambda t: t)), devices=("cpu",),
            dtypes=HALF_DTYPES + (torch.float32, torch.float64), availability=backends.cpu_reason)
OP.register("triton", _fused(_triton_forward, lengths_dtype=torch.int32), devices=("cuda", "cpu"),
            dtypes=(torch.float32, torch.float16, torch.bfloat16), availability=backends.triton_reason,
            constraint=_triton_head_dim)


# ----------------------------------------------------------------------------------------------
# Public API.

def _check_keep(keep, B: int, N: int, M: int, device) -> torch.Tensor:
    keep = _checks.tensor("dropout_keep", keep, ndim=2, layout="[B, M'] (kept key positions)", dtypes=_INT_DTYPES)
    _checks.same_device("dropout_keep", keep, "q", torch.empty(0, device=device))
    if keep.shape[0] != B or not N <= keep.shape[1] <= M:
        raise ValueError(f"dropout_keep must have shape [B, M'] with B = {B} and N = {N} <= M' <= M = {M}; "
                         f"got {_checks.shape_str(keep.shape)}")
    _checks.ints_within(keep, 0, M - 1, f"dropout_keep positions must lie in [0, M) = [0, {M})")
    _checks.values_hold(keep[:, 1:] > keep[:, :-1], "dropout_keep positions must be strictly increasing along each row")
    return keep.long().contiguous()


def latent_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                           key_lengths: torch.Tensor | Sequence[int] | None = None, scale: float | None = None,
                           dropout_keep: torch.Tensor | None = None) -> torch.Tensor:
    """Bottom-right causal attention of latent queries q[B, H, N, d] over k, v[B, H, M, d] (M ≥ N).

    key_lengths[B] (ints in [0, M], default M) right-pads rows; dropout_keep[B, M'] gathers the kept
    keys of each row first (see the module doc). scale defaults to d ** -0.5. Returns [B, H, N, d]
    in q's dtype, 0 for queries that see no key. Checks the integer arguments' values (one sync).
    """
    q = _checks.float_tensor("q", q, ndim=4, layout="[B, H, N, d]")
    k = _checks.float_tensor("k", k, ndim=4, layout="[B, H, M, d]")
    v = _checks.float_tensor("v", v, ndim=4, layout="[B, H, M, d]")
    for name, x in (("k", k), ("v", v)):
        _checks.same_dtype(name, x, "q", q)
        _checks.same_device(name, x, "q", q)
    B, H, N, d = q.shape
    if k.shape[:2] != q.shape[:2] or k.shape[3] != d:
        raise ValueError(f"k must have shape [B, H, M, d] = [{B}, {H}, M, {d}] to match q "
                         f"{_checks.shape_str(q.shape)}; got {_checks.shape_str(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {_checks.shape_str(k.shape)}; got {_checks.shape_str(v.shape)}")
    M = k.shape[2]
    if M < N:
        raise ValueError(f"k must have M >= N keys (bottom-right causal latents); got M = {M} < N = {N}")
    if d < 1:
        raise ValueError(f"q must have head dim d >= 1; got {_checks.shape_str(q.shape)}")
    keep = None if dropout_keep is None else _check_keep(dropout_keep, B, N, M, q.device)
    Mk = M if keep is None else keep.shape[1]
    lengths = None if key_lengths is None else _checks.int_vector("key_lengths", key_lengths, B, 0, Mk, q.device)
    if scale is None:
        scale = d ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a positive float; got {type(scale).__name__}")
    elif not 0 < scale < math.inf:
        raise ValueError(f"scale must be a finite number > 0; got {scale!r}")
    if q.numel() == 0 or Mk == 0:  # nothing to compute: the reference handles empty shapes exactly
        return latent_attention_reference(q, k, v, lengths, float(scale), keep)
    return OP(q, k, v, lengths, float(scale), keep, device=q.device, dtype=q.dtype)


def latent_cross_attention_trusted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   key_lengths: torch.Tensor) -> torch.Tensor:
    """latent_cross_attention(q, k, v, key_lengths=key_lengths) for a caller that guarantees the
    contract itself: non-empty float tensors of one dtype and device with the checked shapes, and
    key_lengths[B] int64 on q's device within [0, M]. Nothing is read back to the host (the public
    op checks the lengths' values, one wait on a GPU), so a call can be captured in a CUDA graph:
    Perceiver AR's cached step attends over its whole cache buffers with the filled lengths."""
    return OP(q, k, v, key_lengths, q.shape[-1] ** -0.5, None, device=q.device, dtype=q.dtype)
