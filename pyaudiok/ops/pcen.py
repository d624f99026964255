"""Per-channel energy normalisation with a learnable smoother (sPCEN), LEAF's compression (DESIGN §4).

`pcen(E, alpha, delta, r, smooth, eps=1e-12)` for E[B, F, T] (energies, time last) and per-channel
parameters [F]:

    M_0 = E_0,   M_t = s E_t + (1 − s) M_{t−1}                    (the smoother, fp32 state)
    y_t = (E_t · exp(−α log(ε + M_t)) + δ)^{1/r} − δ^{1/r}

The op applies the parameters as given; the DESIGN's ranges (α ≤ 1, r ≥ 1, s ∈ [0, 1]) are the
caller's clipping (pyaudiok.nn.SPCEN does it). Backends: `reference` (a Python loop over time, the
definition), `cpu` (csrc/cpu/pcen.cpp: a loop over time, blocks of channels side by side),
`triton` (kernels/pcen.py: associative scan over time, reverse scan for the backward). Raw ops of
the fused backends, with params = stack(α, δ, r, s) [4, F] in the state dtype:

    pcen_forward(E[B, F, T], params[4, F], eps) -> (y[B, F, T] in E's dtype, M[B, F, T] fp32/fp64 or [0])
    pcen_backward(grad_y, E, kept, params, eps) -> (grad_E, partial[B·F, 4])

`kept` is what the forward keeps for the backward. Triton's forward returns the smoother state M
and its backward takes it. The CPU forward returns M empty: its backward recomputes the state group
by group of channels (the recurrence costs less than writing [B, F, T] out and reading it back) and
takes the forward's y instead (z^{1/r} = y + δ^{1/r}, one power fewer), so the op saves E and its
output.

The backward is the adjoint of the recurrence: with gz = g (1/r) Z^{1/r−1}, Z = E P + δ, P = (ε+M)^{−α},
    λ_t = −α gz_t E_t P_t / (ε + M_t) + (1 − s) λ_{t+1}
    ∂E_t = gz_t P_t + (s λ_t, or λ_0 at t = 0),  ∂s = Σ_{t≥1} λ_t (E_t − M_{t−1}),
    ∂α = −Σ gz E P log(ε+M),  ∂δ = Σ g((1/r)Z^{1/r−1} − (1/r)δ^{1/r−1}),
    ∂r = −Σ g (Z^{1/r} log Z − δ^{1/r} log δ) / r²;
per-row partial sums (`partial`) are summed over the batch here.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import dispatch
from . import _checks
from ._library import (HALF_DTYPES, accumulation_dtype, cpp_op, extension_loaded, first_order, register_autograd,
                       register_backends, triton_op, upcast_half)

__all__ = ["pcen", "pcen_reference"]


# ----------------------------------------------------------------------------------------------
# Reference: the definition of the op.

def pcen_reference(E: torch.Tensor, alpha: torch.Tensor, delta: torch.Tensor, r: torch.Tensor,
                   smooth: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """E[B, F, T], parameters [F] -> y[B, F, T] (recurrence looped in Python, in fp32 or fp64)."""
    acc = accumulation_dtype(E.dtype)
    e = E.to(acc)
    a, d, root, s = (p.to(acc)[:, None] for p in (alpha, delta, r, smooth))
    states = [e[..., 0] + 0 * s[:, 0]]  # M_0 = E_0 (s kept in the graph: a zero gradient at T = 1)
    for t in range(1, e.shape[-1]):
        states.append(s[:, 0] * e[..., t] + (1 - s[:, 0]) * states[-1])
    M = torch.stack(states, dim=-1)
    y = (e * torch.exp(-a * torch.log(eps + M)) + d) ** (1 / root) - d ** (1 / root)
    return y.to(E.dtype)


# ----------------------------------------------------------------------------------------------
# Fake + autograd of a backend's raw forward op.

def _register_forward(qualname: str, backward_op: Callable[[], Callable], recomputes_state: bool) -> None:
    """`recomputes_state`: the backend's forward returns an empty M, and its backward recomputes the
    state from E and takes the forward's y (the CPU's); else its backward takes M."""
    @torch.library.register_fake(qualname)
    def _(E, params, eps):
        return E.new_empty(E.shape), E.new_empty((0,) if recomputes_state else E.shape, dtype=params.dtype)

    def setup_context(ctx, inputs, output):
        E, params, eps = inputs
        y, M = output
        ctx.save_for_backward(E, y if recomputes_state else M, params)
        ctx.eps = eps
        ctx.set_materialize_grads(False)  # M's gradient is always absent: no [B, F, T] of zeros for it

    @first_order("pcen")
    def backward(ctx, grad_y, grad_M):
        if grad_y is None:
            return None, None, None
        E, kept, params = ctx.saved_tensors
        grad_E, partial = backward_op()(grad_y.contiguous(), E, kept, params, ctx.eps)
        B, F = E.shape[0], E.shape[1]
        grad_params = partial.view(B, F, 4).sum(0).T.to(params.dtype)
        return grad_E, grad_params, None

    register_autograd(qualname, backward, setup_context=setup_context)


def _register_backward(qualname: str) -> None:
    @torch.library.register_fake(qualname)
    def _(grad, E, kept, params, eps):
        return E.new_empty(E.shape), E.new_empty((E.shape[0] * E.shape[1], 4), dtype=params.dtype)


if extension_loaded():
    _register_backward("pyaudiok::pcen_backward")
    _register_forward("pyaudiok::pcen_forward", lambda: cpp_op("pcen_backward"), recomputes_state=True)


def _triton_backward():
    return triton_op("pcen_backward_triton", "pcen", "pcen_backward", _register_backward)


def _triton_forward():
    _triton_backward()
    return triton_op("pcen_forward_triton", "pcen", "pcen_forward",
                     lambda name: _register_forward(name, _triton_backward, recomputes_state=False))


# ----------------------------------------------------------------------------------------------
# Backend registry.

def _fused(get_op: Callable[[], Callable]):
    def run(E, alpha, delta, r, smooth, eps):
        params = torch.stack([alpha, delta, r, smooth]).to(accumulation_dtype(E.dtype))
        return get_op()(E.contiguous(), params.contiguous(), eps)[0]
    return run


PCEN = dispatch.op("pcen")
register_backends(PCEN, reference=pcen_reference, cpu=upcast_half(_fused(lambda: cpp_op("pcen_forward"))),
                  cpu_dtypes=HALF_DTYPES + (torch.float32, torch.float64), triton=_fused(_triton_forward))


# ----------------------------------------------------------------------------------------------
# Public API.

def pcen(E: torch.Tensor, alpha: torch.Tensor, delta: torch.Tensor, r: torch.Tensor, smooth: torch.Tensor,
         *, eps: float = 1e-12) -> torch.Tensor:
    """sPCEN of energies E[B, F, T] with per-channel alpha, delta, r, smooth (each [F]).

    Returns y[B, F, T] in E's dtype; the smoother state is fp32 (fp64 for fp64 input) on every
    backend. Differentiable with respect to E and all four parameters.
    """
    E = _checks.float_tensor("E", E, ndim=3, layout="[B, F, T]")
    if E.shape[2] < 1:
        raise ValueError(f"E must have shape [B, F, T] with T >= 1 frames; got {_checks.shape_str(E.shape)}")
    for name, p in (("alpha", alpha), ("delta", delta), ("r", r), ("smooth", smooth)):
        _checks.float_tensor(name, p, ndim=1, layout="[F]")
        _checks.dim_size(name, p, 0, E.shape[1], "E's channel count F")
        _checks.same_device(name, p, "E", E)
    eps = _checks.real_in_range("eps", eps, 0.0)  # eps = inf would make every output 0
    return PCEN(E, alpha, delta, r, smooth, eps, device=E.device, dtype=E.dtype)
