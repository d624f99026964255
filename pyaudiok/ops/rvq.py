"""Residual vector quantization (RVQ), the hot path of SoundStream (DESIGN §2).

`residual_vq(x, codebooks, n_q)` runs n_q greedy stages: each picks the nearest codeword of its
codebook to the current residual (ties → lowest index) and subtracts it. It returns the
straight-through quantized vectors, the codes, and the per-stage commitment loss.
`rvq_decode(codes, codebooks)` maps codes back to vectors.

Backends: `reference` (below), `cpu` (csrc/cpu/rvq.cpp), `triton` (kernels/rvq.py),
`cuda` (csrc/cuda/rvq.cu). Every fused backend exposes the same two raw ops:

    rvq_forward(x[N, D], codebooks[Q, K, D], n_q) -> (ẑ[N, D], codes[N, n_q] int64, sqerr[n_q] fp32)
    rvq_decode(codes[N, n_q], codebooks[Q, K, D], weights[n_q] | None) -> Σ_q w_q C_q[codes[:, q]]

with sqerr[q] = Σ ‖r_q‖² over all rows (r_q the residual after stage q). Their gradients are
registered here once: ∂ẑ/∂x is the identity (straight-through), ∂sqerr_q/∂x = 2 r_q, and
Σ_q g_q 2 r_q = 2 ((Σ_q g_q) x − Σ_p w_p ẑ_p) with w_p = Σ_{q≥p} g_q: a weighted decode. So the
backward of every backend is one call of its own decode op.

The codebooks get no gradient from `residual_vq` (SoundStream learns them by EMA; see
DESIGN §2). `rvq_decode` does carry gradient to the codebooks, for codebook losses.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .. import _extension, dispatch
from . import _checks
from ._library import (HALF_DTYPES, accumulation_dtype, cpp_op, extension_loaded, register_autograd, register_backends,
                       triton_op, upcast_half)

__all__ = ["RVQResult", "residual_vq", "rvq_decode", "rvq_reference", "rvq_decode_reference"]


class RVQResult(NamedTuple):
    quantized: torch.Tensor    # [..., D], value ẑ, gradient identity to x (straight-through)
    codes: torch.Tensor        # [..., n_q] int64
    commit_loss: torch.Tensor  # [n_q], mean squared residual after each stage, gradient to x


# ----------------------------------------------------------------------------------------------
# Reference: the definition of the op.

def rvq_reference(x: torch.Tensor, codebooks: torch.Tensor, n_q: int):
    """x[N, D], codebooks[Q, K, D] -> (quantized[N, D], codes[N, n_q], commit_loss[n_q])."""
    acc = accumulation_dtype(x.dtype)
    residual = x.to(acc)
    quantized = torch.zeros_like(residual.detach())
    codes, losses = [], []
    for q in range(n_q):
        C = codebooks[q].detach().to(acc)
        r = residual.detach()
        # ‖r − c‖² = ‖r‖² − 2 r·c + ‖c‖²; ‖r‖² is the same for every c of a row, so drop it.
        score = C.pow(2).sum(-1) - 2 * (r @ C.T)
        k = score.argmin(dim=-1)  # first minimum: ties -> lowest index
        chosen = C[k]
        residual = residual - chosen  # gradient to x flows through the residual only
        losses.append(residual.pow(2).sum() / max(residual.numel(), 1))
        quantized = quantized + chosen
        codes.append(k)
    # Value ẑ exactly (x − x.detach() is exactly 0), gradient identity to x.
    quantized_st = quantized.to(x.dtype) + (x - x.detach())
    return quantized_st, torch.stack(codes, dim=-1), torch.stack(losses)


def rvq_decode_reference(codes: torch.Tensor, codebooks: torch.Tensor, weights: torch.Tensor | None = None):
    """codes[N, n_q], codebooks[Q, K, D] -> Σ_q w_q C_q[codes[:, q]]  ([N, D])."""
    out = torch.zeros(codes.shape[0], codebooks.shape[-1], dtype=accumulation_dtype(codebooks.dtype),
                      device=codebooks.device)
    for q in range(codes.shape[1]):
        chosen = codebooks[q][codes[:, q]].to(out.dtype)
        out = out + (chosen if weights is None else weights[q] * chosen)
    return out.to(codebooks.dtype)


# ----------------------------------------------------------------------------------------------
# Gradients and fake (meta) implementations of the fused backends' raw ops.

def _register_forward(qualname: str, decode: Callable[[], Callable]) -> None:
    """Fake + autograd for a backend's rvq_forward op; `decode()` gives that backend's decode op."""

    @torch.library.register_fake(qualname)
    def _(x, codebooks, n_q):
        return (x.new_empty(x.shape), x.new_empty((x.shape[0], n_q), dtype=torch.int64),
                x.new_empty((n_q,), dtype=torch.float32))

    def setup_context(ctx, inputs, output):
        x, codebooks, _ = inputs
        ctx.save_for_backward(x, codebooks, output[1])
        ctx.set_materialize_grads(False)  # the codes take no gradient: no zeros made for them

    def backward(ctx, grad_quantized, grad_codes, grad_sqerr):
        if grad_sqerr is None:  # only the straight-through output was used
            return grad_quantized, None, None
        x, codebooks, codes = ctx.saved_tensors
        g = grad_sqerr.float()
        suffix = g.flip(0).cumsum(0).flip(0)  # w_p = Σ_{q ≥ p} g_q
        # Codebooks as constants, as in the forward (no gradient reaches them), also when this
        # backward is differentiated again (create_graph).
        dx = 2 * (g.sum() * x.float() - decode()(codes, codebooks.detach(), suffix).float())
        dx = dx.to(x.dtype)
        if grad_quantized is not None:
            dx = dx + grad_quantized
        return dx, None, None

    register_autograd(qualname, backward, setup_context=setup_context)


def _register_decode(qualname: str) -> None:
    """Fake + autograd (to codebooks and weights) for a backend's rvq_decode op."""

    @torch.library.register_fake(qualname)
    def _(codes, codebooks, weights):
        return codebooks.new_empty((codes.shape[0], codebooks.shape[2]))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        codes, codebooks, weights = ctx.saved_tensors
        Q, K, D = codebooks.shape
        n_q = codes.shape[1]
        g = grad.float()
        w = torch.ones(n_q, device=g.device) if weights is None else weights.float()
        # Row index of each chosen codeword in codebooks viewed as [Q*K, D].
        flat = codes + K * torch.arange(n_q, device=codes.device)
        d_codebooks = d_weights = None
        if ctx.needs_input_grad[1]:
            d_codebooks = torch.zeros(Q * K, D, dtype=torch.float32, device=g.device)
            src = (g[:, None, :] * w[None, :, None]).reshape(-1, D)
            d_codebooks.index_add_(0, flat.reshape(-1), src)
            d_codebooks = d_codebooks.view(Q, K, D).to(codebooks.dtype)
        if weights is not None and ctx.needs_input_grad[2]:
            chosen = codebooks.reshape(Q * K, D)[flat].float()  # [N, n_q, D]
            d_weights = torch.einsum("nqd,nd->q", chosen, g).to(weights.dtype)
        return None, d_codebooks, d_weights

    register_autograd(qualname, backward, setup_context=setup_context)


if extension_loaded():  # the C++ ops (cpu and, when built, cuda) exist only then
    _register_decode("pyaudiok::rvq_decode")
    _register_forward("pyaudiok::rvq_forward", lambda: cpp_op("rvq_decode"))


def _triton_decode():
    return triton_op("rvq_decode_triton", "rvq", "rvq_decode", _register_decode)


def _triton_forward():
    _triton_decode()
    return triton_op("rvq_forward_triton", "rvq", "rvq_forward",
                     lambda name: _register_forward(name, _triton_decode))


# ----------------------------------------------------------------------------------------------
# Backend registry.

def _fused_forward(get_op: Callable[[], Callable]):
    def run(x, codebooks, n_q):
        quantized, codes, sqerr = get_op()(x.contiguous(), codebooks.contiguous(), n_q)
        return quantized, codes, sqerr / max(x.numel(), 1)
    return run


def _fused_decode(get_op: Callable[[], Callable]):
    return lambda codes, codebooks: get_op()(codes.contiguous(), codebooks.contiguous(), None)


def _cuda_width_limit(x, codebooks, n_q):
    """The CUDA forward keeps a tile's residual in shared memory: D is bounded per device."""
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    limit = _extension.MODULE.rvq_cuda_max_dim(index)
    return None if x.shape[-1] <= limit else f"D = {x.shape[-1]} exceeds the CUDA kernel's limit of {limit} here"


def _triton_width_limit(x, codebooks, n_q):
    """The Triton forward keeps a tile's residual in registers: D is bounded."""
    from pyaudiok.kernels.rvq import MAX_D
    return None if x.shape[-1] <= MAX_D else f"D = {x.shape[-1]} exceeds the Triton kernel's limit of {MAX_D}"


FORWARD = dispatch.op("residual_vq")
register_backends(FORWARD, reference=rvq_reference,
                  # the commit loss stays float32, as the reference and the GPU kernels return it (in half
                  # precision it would overflow to inf above 65 504 and round away most of its bits)
                  cpu=upcast_half(_fused_forward(lambda: cpp_op("rvq_forward")), float32_outputs=(2,)),
                  triton=_fused_forward(_triton_forward), cuda=_fused_forward(lambda: cpp_op("rvq_forward")),
                  cpu_dtypes=HALF_DTYPES + (torch.float32,),
                  triton_constraint=_triton_width_limit, cuda_constraint=_cuda_width_limit)
DECODE = dispatch.op("rvq_decode")
register_backends(DECODE, reference=rvq_decode_reference, cpu=upcast_half(_fused_decode(lambda: cpp_op("rvq_decode"))),
                  triton=_fused_decode(_triton_decode), cuda=_fused_decode(lambda: cpp_op("rvq_decode")),
                  cpu_dtypes=HALF_DTYPES + (torch.float32,))


# ----------------------------------------------------------------------------------------------
# Public API.

def _check_codebooks(codebooks) -> torch.Tensor:
    codebooks = _checks.float_tensor("codebooks", codebooks, ndim=3, layout="[Q, K, D]")
    if min(codebooks.shape) < 1:
        raise ValueError(f"codebooks must have shape [Q, K, D] with Q, K, D >= 1; got "
                         f"{_checks.shape_str(codebooks.shape)}")
    if codebooks.shape[1] >= 2**31:
        raise ValueError(f"codebooks: K = {codebooks.shape[1]} codewords exceeds the supported 2**31 - 1")
    return codebooks


def residual_vq(x: torch.Tensor, codebooks: torch.Tensor, n_q: int | None = None) -> RVQResult:
    """Quantize x[..., D] with the first n_q (default all Q) codebooks of codebooks[Q, K, D].

    Returns RVQResult(quantized[..., D], codes[..., n_q] int64, commit_loss[n_q]).
    `quantized` equals Σ_q C_q[codes[..., q]] in value and passes gradients straight through to x;
    commit_loss[q] = mean ‖r_q‖² (r_q = x − Σ_{p ≤ q} ẑ_p, in float32, float64 for float64 input; 0
    for an empty batch) and carries gradient to x. Codebooks receive no gradient.
    A NaN or inf in x or in a codeword is not rejected (no host sync): as in the reference, a NaN
    score ranks first in the nearest-codeword search, and `quantized` is NaN where x is NaN or inf.
    """
    x = _checks.float_tensor("x", x, min_ndim=1, layout="[..., D]")
    codebooks = _check_codebooks(codebooks)
    _checks.same_dtype("codebooks", codebooks, "x", x)
    _checks.same_device("codebooks", codebooks, "x", x)
    _checks.dim_size("codebooks", codebooks, 2, x.shape[-1], "x's last dim D")
    Q = codebooks.shape[0]
    n_q = Q if n_q is None else _checks.int_in_range("n_q", n_q, 1, Q)
    D = x.shape[-1]
    flat = x.reshape(-1, D)
    quantized, codes, commit_loss = FORWARD(flat, codebooks, n_q, device=x.device, dtype=x.dtype)
    return RVQResult(quantized.reshape(x.shape), codes.reshape(*x.shape[:-1], n_q), commit_loss)


def rvq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """codes[..., n_q] (integers in [0, K)) and codebooks[Q, K, D] with n_q ≤ Q -> vectors [..., D].

    Checks the code values (one device sync), so corrupt codes raise instead of reading out of
    bounds. Differentiable with respect to the codebooks.
    """
    codebooks = _check_codebooks(codebooks)
    codes = _checks.tensor("codes", codes, min_ndim=1, layout="[..., n_q]",
                           dtypes=(torch.int64, torch.int32, torch.int16, torch.uint8))
    _checks.same_device("codes", codes, "codebooks", codebooks)
    Q, K, D = codebooks.shape
    n_q = codes.shape[-1]
    if not 1 <= n_q <= Q:
        raise ValueError(f"codes must have shape [..., n_q] with 1 <= n_q <= Q = {Q}; got "
                         f"{_checks.shape_str(codes.shape)}")
    _checks.ints_within(codes, 0, K - 1, f"codes must lie in [0, K) = [0, {K})")
    flat = codes.reshape(-1, n_q).long()
    out = DECODE(flat, codebooks, device=codebooks.device, dtype=codebooks.dtype)
    return out.reshape(*codes.shape[:-1], D)
