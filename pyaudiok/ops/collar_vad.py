"""DIVE's collar-aware multi-speaker VAD loss (DESIGN §8): the binary cross-entropy of each selected
speaker's frame logits against its reference activity, averaged over the frames that are not within
±collar of any reference speaker-turn boundary.

    collar_vad_loss(logits[B, N, T], reference[B, S, T], order[B, N], *, collar_frames) -> scalar

Row n of item b is scored against reference row order[b, n] (−1: no speaker there, the row is left
out). A turn boundary is a frame edge e in [0, T] where any reference row of the item changes value
(rows are 0 outside the frames, so an active first or last frame makes one). Frame t, centred at
t + ½, is left out when it lies strictly within `collar_frames` of a boundary (per side, in frames:
DIVE's 0.25 s at 100 frames a second is 25). The loss is Σ BCE over the kept terms / max(terms, 1),
so 0 when nothing is kept; the gradient goes to the logits.

Backends: `reference` (the mask from a dilated map of the boundaries, then
F.binary_cross_entropy_with_logits: plain torch, any float dtype), `cpu` (csrc/cpu/collar_vad.cpp:
the mask from prefix counts of the boundaries, and the BCE or its gradient, in one pass per item,
float64 sums), `triton` (kernels/collar_vad.py: boundaries, mask, then a program per logit row;
fp32 arithmetic, the rows' sums added in float64).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .. import dispatch
from . import _checks
from ._library import (HALF_DTYPES, cpp_op, extension_loaded, first_order, register_autograd, register_backends,
                       triton_op, upcast_half)

__all__ = ["collar_vad_loss", "collar_vad_loss_reference", "collar_mask", "collar_window"]

_ACTIVITY_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64) + dispatch.FLOAT_DTYPES
_ORDER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8)


def collar_window(collar_frames: float, T: int) -> tuple[int, int]:
    """(lo, hi): frame t, centred at t + ½, is strictly within `collar_frames` of edge e iff
    lo <= e − t <= hi, that is 0.5 − c < e − t < 0.5 + c (hi < lo: no collar). In items of T frames
    e − t lies in [−T, T + 1]: a collar of T + 1 frames covers them all, and a wider one is taken as
    that (its window would need a huge padding, and overflow the kernels' integers)."""
    c = min(collar_frames, T + 1.0)
    return math.floor(0.5 - c) + 1, math.ceil(0.5 + c) - 1


def collar_mask(reference: torch.Tensor, collar_frames: float) -> torch.Tensor:
    """reference[B, S, T] activity -> keep[B, T] bool: False for frames whose centre lies strictly
    within `collar_frames` of a turn boundary (a frame edge where any speaker turns on or off; the
    edges 0 and T count when a speaker is active there)."""
    if collar_frames < 0:
        raise ValueError(f"collar_frames must be >= 0; got {collar_frames}")
    B, _, T = reference.shape
    padded = F.pad(reference.float(), (1, 1))
    boundary = (padded[..., 1:] != padded[..., :-1]).any(1).float()          # [B, T + 1], boundary b at frame edge b
    lo, hi = collar_window(collar_frames, T)
    if hi < lo or T == 0:  # no collar, or no frame (the window below would be longer than the one edge)
        return torch.ones(B, T, dtype=torch.bool, device=reference.device)
    left = max(0, -lo)
    padded = F.pad(boundary, (left, max(0, hi - 1)))                        # padded[k] = boundary[k − left]
    near = padded[:, lo + left:].unfold(1, hi - lo + 1, 1)[:, :T].amax(-1)   # max over boundary[t + lo .. t + hi]
    return near == 0


def collar_vad_loss_reference(logits: torch.Tensor, reference: torch.Tensor, order: torch.Tensor,
                              collar_frames: float) -> torch.Tensor:
    """The definition in plain torch: the collar mask, the targets gathered by `order`, a masked BCE mean."""
    T = logits.shape[-1]
    keep = collar_mask(reference, collar_frames)[:, None] & (order >= 0)[..., None]
    # A zero row past the reference's: rows left out (−1) gather from it, which exists even when S = 0.
    rows = F.pad(reference.to(logits.dtype), (0, 0, 0, 1))
    target = rows.gather(1, order.where(order >= 0, reference.shape[1])[..., None].expand(-1, -1, T))
    weights = keep.to(logits.dtype)
    terms = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weights
    return terms.sum() / weights.sum().clamp_min(1)


# ----------------------------------------------------------------------------------------------
# Fused backends: the raw op pairs of the cpu (csrc/cpu/collar_vad.cpp) and triton
# (kernels/collar_vad.py) backends, with one contract:
#
#     collar_vad_forward(logits, reference, order, collar_frames) -> (loss, keep[B, T] uint8, count int64)
#     collar_vad_backward(grad, logits, reference, order, keep, count) -> grad_logits

def _register(forward: str, backward_op: Callable[[], Callable]) -> None:
    """Fakes and the autograd of a backend's pair; `backward_op()` gives its backward op."""
    @torch.library.register_fake(forward)
    def _(logits, reference, order, collar_frames):
        B, _, T = logits.shape
        return (logits.new_empty(()), logits.new_empty((B, T), dtype=torch.uint8),
                logits.new_empty((), dtype=torch.int64))

    def setup_context(ctx, inputs, output):
        logits, reference, order, _ = inputs
        ctx.save_for_backward(logits, reference, order, output[1], output[2])
        ctx.set_materialize_grads(False)  # the mask and the count take no gradient

    @first_order("collar_vad_loss")
    def backward(ctx, grad, grad_keep, grad_count):
        if grad is None:
            return None, None, None, None
        logits, reference, order, keep, count = ctx.saved_tensors
        return backward_op()(grad, logits, reference, order, keep, count), None, None, None

    register_autograd(forward, backward, setup_context=setup_context)


def _register_backward_fake(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(grad, logits, reference, order, keep, count):
        return torch.empty_like(logits)


if extension_loaded():
    _register_backward_fake("pyaudiok::collar_vad_backward")
    _register("pyaudiok::collar_vad_forward", lambda: cpp_op("collar_vad_backward"))


def _triton_backward():
    return triton_op("collar_vad_backward_triton", "collar_vad", "collar_vad_backward", _register_backward_fake)


def _triton_forward():
    return triton_op("collar_vad_triton", "collar_vad", "collar_vad_forward",
                     lambda q: _register(q, _triton_backward))


def _fused(get_forward: Callable[[], Callable]):
    def run(logits, reference, order, collar_frames):
        return get_forward()(logits.contiguous(), reference.contiguous(), order.contiguous(), collar_frames)[0]
    return run


OP = dispatch.op("collar_vad_loss")
register_backends(OP, reference=collar_vad_loss_reference,
                  cpu=upcast_half(_fused(lambda: cpp_op("collar_vad_forward"))), triton=_fused(_triton_forward),
                  cpu_dtypes=HALF_DTYPES + (torch.float32, torch.float64))


# ----------------------------------------------------------------------------------------------
# Public API.

def _activity_check(reference: torch.Tensor) -> _checks.ValueCheck | None:
    """Activity in [0, 1] (0/1, or soft targets between): BCE targets outside it, and NaN (which the
    fused backends would take as a turn boundary and drop), are refused. One pass (aminmax)."""
    if reference.dtype == torch.bool or reference.numel() == 0:
        return None
    lo, hi = torch.aminmax(reference.detach())
    return _checks.ValueCheck((lo >= 0) & (hi <= 1), "reference must hold activity in [0, 1] (not NaN)",
                              lambda: f"values in [{lo.item():g}, {hi.item():g}]")


def collar_vad_loss(logits: torch.Tensor, reference: torch.Tensor, order: torch.Tensor, *,
                    collar_frames: float) -> torch.Tensor:
    """Collar-masked multi-speaker BCE with logits (see the module doc): logits[B, N, T] (float),
    reference[B, S, T] activity (bool, integer or float in [0, 1]: the targets, in the logits' dtype;
    values between 0 and 1 are soft targets, and any change of value is a turn boundary; NaN or values
    outside [0, 1] raise a ValueError), order[B, N] (integer, the reference row of each logit row, −1
    for none), collar_frames >= 0 per side. Returns a scalar in the logits' dtype, differentiable with
    respect to the logits."""
    logits = _checks.float_tensor("logits", logits, ndim=3, layout="[B, N, T]")
    reference = _checks.tensor("reference", reference, ndim=3, layout="[B, S, T]", dtypes=_ACTIVITY_DTYPES)
    order = _checks.tensor("order", order, ndim=2, layout="[B, N]", dtypes=_ORDER_DTYPES)
    _checks.same_device("reference", reference, "logits", logits)
    _checks.same_device("order", order, "logits", logits)
    B, N, T = logits.shape
    if reference.shape[0] != B or reference.shape[2] != T:
        raise ValueError(f"reference must have shape [B, S, T] = [{B}, S, {T}] to match logits; got "
                         f"{_checks.shape_str(reference.shape)}")
    if tuple(order.shape) != (B, N):
        raise ValueError(f"order must have shape [B, N] = [{B}, {N}] to match logits; got "
                         f"{_checks.shape_str(order.shape)}")
    collar_frames = _checks.real_in_range("collar_frames", collar_frames, 0)
    S = reference.shape[1]
    # One wait on the device for both value checks.
    _checks.all_hold([_checks.ints_within_check(order, -1, S - 1,
                                                f"order must hold reference rows in [-1, {S - 1}] (-1: no speaker)"),
                      _activity_check(reference)])
    # The targets take no gradient (the fused backends give none): detached for every backend alike.
    return OP(logits, reference.detach().to(logits.dtype), order.long(), float(collar_frames), device=logits.device,
              dtype=logits.dtype)
