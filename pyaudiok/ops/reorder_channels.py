"""CHARM's fused reordering (DESIGN §7): a softmax over the input channels with the absent ones left
out, then the batched product with the signals.

    reorder_channels(logits[B, K, C], x[B, C, T], mask[B, C] | None) -> (y[B, K, T], A[B, K, C])

    A[b, k, :] = softmax over the present channels c (mask[b, c] True) of logits[b, k, :], exactly 0
                 on the absent ones (mask None: every channel present; each item needs one)
    y          = A x: an absent channel's row of x enters as 0 · x, so it must be finite (zero-fill
                 missing electrodes that a dataset marks with NaN; checking every call for that costs
                 a fifth of a small call, so it is left to the data pipeline)

Gradients go to logits and x (the mask takes none):

    dx = Aᵀ dy,   G = dy xᵀ + dA,   dlogits = A ⊙ (G − Σ_c A ⊙ G)   (0 on absent channels, as A is)

Backends: `reference` (masked_fill, softmax, bmm: what `nn.ChannelReorder` did), `cpu` (the same ATen
calls behind one registered op whose backward is the formula above: one autograd node, one GEMM
per gradient, no mask pass backward; automatic for float16 only: `_cpu_auto_skip` has the timings),
`triton` (kernels/reorder_channels.py: one launch forward, a program per item × tile of T with the
[K, C] softmax in registers; K, C <= 128; automatic for half precision only: `_gpu_auto_skip`).

The raw op pairs of the fused backends:

    forward(logits, x, mask) -> (y, A)
    cpu backward(dy, dA, x, A) -> (dlogits, dx)                 A saved
    triton backward(dy, dA, x, logits, mask) -> (dlogits, dx)   A recomputed in fp32 from the logits
dA is None when A's output took no gradient.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import dispatch
from . import _checks
from ._library import (HALF_DTYPES, custom_op, first_order, register_autograd, register_backends, triton_op,
                       upcast_half, without_autocast)

__all__ = ["reorder_channels", "reorder_channels_reference", "reorder_channels_trusted"]

# The Triton kernels hold a [K, C] tile of logits and [C, T-tile] of signals in registers.
TRITON_MAX_CHANNELS = 128


def reorder_channels_reference(logits: torch.Tensor, x: torch.Tensor,
                               mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition in plain torch."""
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    A = logits.softmax(-1)
    return torch.bmm(A, x), A


# ----------------------------------------------------------------------------------------------
# cpu backend: ATen calls behind one registered op.

@custom_op("pyaudiok::reorder_channels_cpu", device_types="cpu")
def _cpu_forward(logits: torch.Tensor, x: torch.Tensor,
                 mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return reorder_channels_reference(logits, x, mask)


@custom_op("pyaudiok::reorder_channels_cpu_backward", device_types="cpu")
def _cpu_backward(dy: torch.Tensor, dA: torch.Tensor | None, x: torch.Tensor,
                  A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xt = x.transpose(1, 2)
    G = torch.bmm(dy, xt) if dA is None else torch.baddbmm(dA, dy, xt)
    return torch._softmax_backward_data(G, A, -1, A.dtype), torch.bmm(A.transpose(1, 2), dy)


# ----------------------------------------------------------------------------------------------
# Fakes and autograd of the raw op pairs.

def _register(forward: str, backward_op: Callable[[], Callable], recompute: bool) -> None:
    """Fake and autograd of a backend's forward; its backward takes (dy, dA, x, A), or with
    `recompute` (dy, dA, x, logits, mask)."""
    @torch.library.register_fake(forward)
    def _(logits, x, mask):
        B, K, _ = logits.shape
        return x.new_empty((B, K, x.shape[2])), torch.empty_like(logits)

    def setup_context(ctx, inputs, output):
        logits, x, mask = inputs
        ctx.save_for_backward(x, *((logits, mask) if recompute else output[1:]))
        ctx.set_materialize_grads(False)  # dA stays None when A took no gradient

    @first_order("reorder_channels")
    @without_autocast  # the products in the dtypes the forward saved, as the forward ran them
    def backward(ctx, dy, dA):
        x, *rest = ctx.saved_tensors
        if dy is None and dA is None:
            return None, None, None
        only_A = dy is None  # y took no gradient: x gets none (as in the reference's graph)
        if only_A:
            dy = x.new_zeros((x.shape[0], rest[0].shape[1], x.shape[2]))
        dlogits, dx = backward_op()(dy.contiguous(), None if dA is None else dA.contiguous(), x, *rest)
        return dlogits, None if only_A else dx, None

    register_autograd(forward, backward, setup_context=setup_context)


def _register_backward_fake(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(dy, dA, x, logits_or_A, *mask):
        return torch.empty_like(logits_or_A), torch.empty_like(x)


_register_backward_fake("pyaudiok::reorder_channels_cpu_backward")
_register("pyaudiok::reorder_channels_cpu", lambda: _cpu_backward, recompute=False)


def _triton_backward():
    return triton_op("reorder_channels_backward_triton", "reorder_channels", "reorder_channels_backward",
                     _register_backward_fake)


def _triton_forward():
    return triton_op("reorder_channels_triton", "reorder_channels", "reorder_channels_forward",
                     lambda q: _register(q, _triton_backward, recompute=True))


def _fused(get_forward: Callable[[], Callable], contiguous: bool):
    def run(logits, x, mask):
        if contiguous:
            logits, x, mask = logits.contiguous(), x.contiguous(), None if mask is None else mask.contiguous()
        return tuple(get_forward()(logits, x, mask))
    return run


def _triton_constraint(logits, x, mask) -> str | None:
    K, C = logits.shape[1:]
    if max(K, C) > TRITON_MAX_CHANNELS:
        return f"K and C must be <= {TRITON_MAX_CHANNELS} (one [K, C] tile in registers); got K = {K}, C = {C}"
    return None


def _cpu_auto_skip(logits, x, mask) -> str | None:
    """On the CPU the automatic choice takes the reference except for float16 (measured).

    Fwd+bwd on the 2-core Zen 4, in alternation (bench/interleave.py, `pyaudiok bench --only
    reorder_channels`, a busy machine): float32 at CHARM's size (B 64, K = C = 16, T 256) the reference
    0.56-0.84 ms against the cpu op's 0.62-0.96 ms (its registered op's Python autograd costs more
    than the mask pass it saves); at B 256, K = C = 64, T 2 560 both 0.55-0.66 s, the same batched
    GEMMs. bfloat16 (one thread): the reference's native bf16 GEMMs 0.76 / 33 ms (B 64, K = C = 16 / 64)
    against 1.0 / 146 ms computed in fp32. float16, which has no fast CPU GEMM: the reference 5.0 / 714
    ms, the cpu op 1.75 / 149 ms. float64 is not measured; it is the same ATen calls as float32.
    use_backend("cpu") still runs it for any dtype."""
    if logits.dtype != torch.float16:
        return "the reference is as fast or faster on the CPU for this dtype"
    return None


def _gpu_auto_skip(logits, x, mask) -> str | None:
    """float32 on a GPU: the reference (measured faster).

    Fwd+bwd on an H200 (bench/results/2026-11-27_h200_session10.txt): the Triton kernels ran at 0.65×
    the reference's speed at CHARM's size (B 64, K = C = 16, T 256: 0.92 against 0.60 ms, both
    bound by the host's launches) and 0.96× at B 256, K = C = 64, T 2 560, at the same peak memory.
    Half precision is not measured and stays on the kernels; use_backend("triton") keeps them."""
    return reference_faster_on_gpu(logits.dtype) if logits.device.type == "cuda" else None


def reference_faster_on_gpu(dtype: torch.dtype) -> str | None:
    """The measured rule of _gpu_auto_skip: why the reference is faster on a GPU, or None."""
    return "the reference is as fast or faster on a GPU in float32" if dtype == torch.float32 else None


OP = dispatch.op("reorder_channels")
register_backends(OP, reference=reorder_channels_reference, triton=_fused(_triton_forward, contiguous=True),
                  triton_constraint=_triton_constraint, triton_auto_skip=_gpu_auto_skip)
# Pure ATen: available wherever torch is, extension or not.
OP.register("cpu", upcast_half(_fused(lambda: _cpu_forward, contiguous=False)), devices=("cpu",),
            dtypes=HALF_DTYPES + (torch.float32, torch.float64), auto_skip=_cpu_auto_skip)


# ----------------------------------------------------------------------------------------------
# Public API.

def _check(logits, x, mask):
    logits = _checks.float_tensor("logits", logits, ndim=3, layout="[B, K, C]")
    x = _checks.float_tensor("x", x, ndim=3, layout="[B, C, T]")
    _checks.same_dtype("x", x, "logits", logits)
    _checks.same_device("x", x, "logits", logits)
    B, K, C = logits.shape
    if x.shape[0] != B or x.shape[1] != C:
        raise ValueError(f"x must have shape [B, C, T] = [{B}, {C}, T] to match logits [B, K, C]; "
                         f"got {_checks.shape_str(x.shape)}")
    if C == 0:
        raise ValueError(f"logits must have C >= 1 input channels; got {_checks.shape_str(logits.shape)}")
    if mask is None:
        return logits, x, None
    mask = _checks.tensor("mask", mask, ndim=2, layout=f"[B, C] = [{B}, {C}]", dtypes=(torch.bool,))
    if tuple(mask.shape) != (B, C):
        raise ValueError(f"mask must have shape [B, C] = [{B}, {C}] to match logits; "
                         f"got {_checks.shape_str(mask.shape)}")
    _checks.same_device("mask", mask, "logits", logits)
    _checks.values_hold(mask.any(1),
                        "mask must mark at least one channel present (True) in every item",
                        lambda: f"none in item(s) {(~mask.any(1)).nonzero()[:, 0].tolist()[:8]}")
    return logits, x, mask


def reorder_channels(logits: torch.Tensor, x: torch.Tensor,
                     mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, A): A = softmax over the present input channels of logits[B, K, C] (0 on the absent ones,
    mask[B, C] False; None: all present), y = A x for x[B, C, T]; see the module doc. logits and x
    share one float dtype and device. Differentiable with respect to logits and x."""
    logits, x, mask = _check(logits, x, mask)
    return OP(logits, x, mask, device=logits.device, dtype=logits.dtype)


def reorder_channels_trusted(logits: torch.Tensor, x: torch.Tensor,
                             mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """reorder_channels for a caller that has checked its arguments (nn.ChannelReorder): no second
    check, in particular no second read of the mask on the host (a wait on a GPU)."""
    return OP(logits, x, mask, device=logits.device, dtype=logits.dtype)
