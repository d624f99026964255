"""GroupNorm, then a per-item channel affine (FiLM), then PReLU: the middle of Wavesplit's and DIVE's
residual blocks (conv → GroupNorm → FiLM → PReLU → 1×1 conv), in one pass over the activations.

`group_norm_film_prelu(x, num_groups, prelu_weight, weight=, bias=, scale=, shift=, eps=)` for
x[B, C, T] is, by definition (the `reference` backend),

    y = prelu(scale[..., None] · group_norm(x, G, weight, bias, eps) + shift[..., None], prelu_weight)

with torch's F.group_norm (biased variance over the C/G channels × T values of each item's group)
and F.prelu (slope [1] or [C]; at v = 0 the gradient is the slope's side: ∂v = a·g, ∂a = v·g = 0).
weight, bias [C] (GroupNorm's affine) and scale, shift [B, C] (FiLM) are optional.

The fused backends fold the affine and FiLM into per-(item, channel) coefficients, in the glue
below (whose autograd gives weight, bias, scale and shift their gradients):

    v = x̂·gain + offset,  x̂ = (x − mean)·rstd,  gain = scale·weight,  offset = scale·bias + shift

Raw ops of the fused backends (gain, offset [B, C] and prelu_weight in the statistics' dtype,
float32 for half inputs, float64 for float64 ones):

    group_norm_film_prelu_forward(x, gain, offset, prelu_weight, num_groups, eps) -> (y, stats[B, G, 3])
    group_norm_film_prelu_backward(grad, x, gain, offset, prelu_weight, stats, num_groups)
        -> (grad_x, Σ_t ∂v·x̂ [B, C], Σ_t ∂v [B, C], Σ_t [v ≤ 0]·v·g [B, C])

stats = (mean_hi, mean_lo, rstd) per (item, group), the mean kept as the unevaluated sum hi + lo so
that x − mean = (x − hi) − lo holds float32's precision for inputs whose mean is large against their
spread. The backward recomputes x̂ and v from x and stats (the same expression as the forward, so
both take the same side of the kink) and needs ∂x̂'s group means:
grad_x = rstd·(∂x̂ − mean(∂x̂) − x̂·mean(∂x̂·x̂)), ∂x̂ = ∂v·gain.

Backends: `reference` (the line above), `cpu` (csrc/cpu/group_norm_film_prelu.cpp: per (item, group)
the statistics block by block, merged in double, then the output; the backward in two passes),
`triton` (kernels/group_norm_film_prelu.py: one program per (item, channel) row, or a few short rows,
in two launches each way: row moments, then y with each program merging its group's moments in
float64; row gradient sums, then grad_x; fp32 accumulation). On a GPU the automatic choice takes the
reference (`_gpu_auto_skip`: measured faster than the earlier one-program-per-group kernels; the
per-row ones are not yet timed).
Under autocast, half-precision operands are taken in float32 and y is float32 (as F.group_norm
autocasts to float32 on CUDA); outside it every tensor must have x's dtype.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import dispatch
from . import _checks
from ._library import (HALF_DTYPES, accumulation_dtype, cpp_op, extension_loaded, first_order, float32_under_autocast,
                       register_autograd, register_backends, triton_op, upcast_half)

__all__ = ["group_norm_film_prelu", "group_norm_film_prelu_reference"]


# ----------------------------------------------------------------------------------------------
# Reference: the definition of the op.

def group_norm_film_prelu_reference(x: torch.Tensor, num_groups: int, prelu_weight: torch.Tensor,
                                    weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                                    scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                                    eps: float = 1e-5) -> torch.Tensor:
    """x[B, C, T] -> prelu(scale · group_norm(x) + shift) [B, C, T], in plain PyTorch."""
    if weight is None and bias is not None:  # F.group_norm's backward fails on a bias without a weight
        weight = torch.ones_like(bias)
    u = F.group_norm(x, num_groups, weight, bias, eps)
    if scale is not None:
        u = scale[..., None] * u
    if shift is not None:
        u = u + shift[..., None]
    return F.prelu(u, prelu_weight)


# ----------------------------------------------------------------------------------------------
# Fake + autograd of a backend's raw ops.

def _register_forward(qualname: str, backward_op: Callable[[], Callable]) -> None:
    @torch.library.register_fake(qualname)
    def _(x, gain, offset, prelu_weight, num_groups, eps):
        return x.new_empty(x.shape), x.new_empty((x.shape[0], num_groups, 3), dtype=gain.dtype)

    def setup_context(ctx, inputs, output):
        x, gain, offset, prelu_weight, num_groups, eps = inputs
        ctx.save_for_backward(x, gain, offset, prelu_weight, output[1])
        ctx.num_groups = num_groups
        ctx.set_materialize_grads(False)  # the stats' gradient is always absent

    @first_order("group_norm_film_prelu")
    def backward(ctx, grad_y, grad_stats):
        if grad_y is None:
            return None, None, None, None, None, None
        x, gain, offset, prelu_weight, stats = ctx.saved_tensors
        grad_x, d_gain, d_offset, d_prelu = backward_op()(grad_y.contiguous(), x, gain, offset, prelu_weight, stats,
                                                          ctx.num_groups)
        d_prelu = d_prelu.sum(0) if prelu_weight.numel() > 1 else d_prelu.sum().reshape(1)
        return grad_x, d_gain, d_offset, d_prelu, None, None

    register_autograd(qualname, backward, setup_context=setup_context)


def _register_backward(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(grad, x, gain, offset, prelu_weight, stats, num_groups):
        return x.new_empty(x.shape), gain.new_empty(gain.shape), gain.new_empty(gain.shape), gain.new_empty(gain.shape)


if extension_loaded():
    _register_backward("pyaudiok::group_norm_film_prelu_backward")
    _register_forward("pyaudiok::group_norm_film_prelu_forward", lambda: cpp_op("group_norm_film_prelu_backward"))


def _triton_backward():
    return triton_op("group_norm_film_prelu_backward_triton", "group_norm_film_prelu", "group_norm_film_prelu_backward",
                     _register_backward)


def _triton_forward():
    _triton_backward()
    return triton_op("group_norm_film_prelu_forward_triton", "group_norm_film_prelu", "group_norm_film_prelu_forward",
                     lambda name: _register_forward(name, _triton_backward))


# ----------------------------------------------------------------------------------------------
# Backend registry.

def _coefficients(x, weight, bias, scale, shift, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """gain = scale·weight and offset = scale·bias + shift, [B, C] in `dtype` (absent terms 1 and 0),
    differentiably."""
    B, C = x.shape[0], x.shape[1]
    gain = weight.to(dtype).expand(B, C) if weight is not None else x.new_ones((B, C), dtype=dtype)
    offset = bias.to(dtype).expand(B, C) if bias is not None else None
    if scale is not None:
        gain = scale.to(dtype) * gain
        offset = None if offset is None else scale.to(dtype) * offset
    if shift is not None:
        offset = shift.to(dtype) if offset is None else offset + shift.to(dtype)
    offset = x.new_zeros((B, C), dtype=dtype) if offset is None else offset
    return gain.contiguous(), offset.contiguous()


def _fused(get_op: Callable[[], Callable]):
    def run(x, num_groups, prelu_weight, weight, bias, scale, shift, eps):
        dtype = accumulation_dtype(x.dtype)
        gain, offset = _coefficients(x, weight, bias, scale, shift, dtype)
        return get_op()(x.contiguous(), gain, offset, prelu_weight.to(dtype).contiguous(), num_groups, eps)[0]
    return run


def _gpu_auto_skip(x, num_groups, prelu_weight, weight, bias, scale, shift, eps) -> str | None:
    """On a GPU the automatic choice takes the reference (measured faster).

    Fwd+bwd on an H200 (bench/results/2026-11-28_h200.txt, one call at a time): the Triton backend
    ran at 0.57×, 0.42× and 0.42-0.46× the reference's speed at [8, 64, 1001] with FiLM, [4, 64, 400]
    and [12, 64, 400] (Wavesplit's and DIVE's blocks), 1.09-1.36 ms against 0.50-0.71 ms; inside
    the Wavesplit and DIVE training steps its kernels took 56 µs (forward) and 74 µs (backward) a
    call, with one program per (item, group) to fill 132 multiprocessors. Larger inputs are not yet
    measured; use_backend("triton") still runs the kernels."""
    return "the reference is faster on a GPU at every measured size" if x.device.type == "cuda" else None


OP = dispatch.op("group_norm_film_prelu")
register_backends(OP, reference=group_norm_film_prelu_reference,
                  cpu=upcast_half(_fused(lambda: cpp_op("group_norm_film_prelu_forward"))),
                  cpu_dtypes=HALF_DTYPES + (torch.float32, torch.float64), triton=_fused(_triton_forward),
                  triton_auto_skip=_gpu_auto_skip)


# ----------------------------------------------------------------------------------------------
# Public API.

def _checked_parameters(x: torch.Tensor, prelu_weight, weight, bias, scale, shift) -> dict:
    """The optional tensors by name (None kept), each checked for its shape and x's device."""
    B, C = x.shape[0], x.shape[1]
    shapes = {"prelu_weight": None, "weight": (C,), "bias": (C,), "scale": (B, C), "shift": (B, C)}
    layouts = {"prelu_weight": "[1] or [C]", "weight": "[C]", "bias": "[C]", "scale": "[B, C]", "shift": "[B, C]"}
    given = {"prelu_weight": prelu_weight, "weight": weight, "bias": bias, "scale": scale, "shift": shift}
    for name, t in given.items():
        if t is None:
            continue
        _checks.float_tensor(name, t, layout=layouts[name], shape=shapes[name])
        _checks.same_device(name, t, "x", x)
    if prelu_weight.dim() != 1 or prelu_weight.shape[0] not in (1, C):
        raise ValueError(f"prelu_weight must have shape [1] or [C] = [{C}] (nn.PReLU's num_parameters); got "
                         f"{_checks.shape_str(prelu_weight.shape)}")
    return given


def group_norm_film_prelu(x: torch.Tensor, num_groups: int, prelu_weight: torch.Tensor, *,
                          weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                          scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                          eps: float = 1e-5) -> torch.Tensor:
    """prelu(scale · group_norm(x, num_groups, weight, bias, eps) + shift, prelu_weight) for x[B, C, T].

    weight, bias: [C] (GroupNorm's affine) or None; scale, shift: [B, C] (FiLM: per item and channel)
    or None (1 and 0); prelu_weight: [1] or [C]. Returns y[B, C, T] in x's dtype (float32 for half
    inputs under autocast). Differentiable with respect to every tensor argument.
    """
    x = _checks.float_tensor("x", x, ndim=3, layout="[B, C, T]")
    _checks.holds_data("x", x)  # autocast has no meta device to ask about
    if x.shape[1] < 1 or x.shape[2] < 1:  # a group of no values: the reference's gradients are NaN
        raise ValueError(f"x must have shape [B, C, T] with C >= 1 channels and T >= 1 steps; got "
                         f"{_checks.shape_str(x.shape)}")
    num_groups = _checks.int_in_range("num_groups", num_groups, 1, 1 << 31)
    if x.shape[1] % num_groups:
        raise ValueError(f"num_groups = {num_groups} must divide x's channel count C = {x.shape[1]} "
                         f"(x: {_checks.shape_str(x.shape)})")
    if prelu_weight is None:
        raise TypeError("prelu_weight must be a torch.Tensor of shape [1] or [C]; got None")
    tensors = _checked_parameters(x, prelu_weight, weight, bias, scale, shift)
    x, *values = float32_under_autocast(x.device.type, x, *tensors.values())  # F.group_norm's policy
    tensors = dict(zip(tensors, values))
    for name, t in tensors.items():
        if t is not None:
            _checks.same_dtype(name, t, "x", x)
    eps = _checks.positive_float("eps", eps)
    t = tensors
    return OP(x, num_groups, t["prelu_weight"], t["weight"], t["bias"], t["scale"], t["shift"], eps,
              device=x.device, dtype=x.dtype)
