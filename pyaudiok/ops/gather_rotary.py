"""Rows of a small table gathered per position, with rotary position encoding: Perceiver AR's
cross-attention keys (DESIGN §1), whose projection depends on the token alone, so it is computed
once per vocabulary entry and gathered per input.

`gather_rows_rotary(rows, index, cos, sin, dims)` with rows[R, d], index[B, H, T] (ints in [0, R)),
cos, sin [T, dims/2] or [B, 1, T, dims/2] (the angles of each position, per item or shared):

    out[b, h, t] = rotate(rows[index[b, h, t]])
    rotate(x)[i] = x[i] cos − x[i + dims/2] sin,  rotate(x)[i + dims/2] = x[i + dims/2] cos + x[i] sin

for i < dims/2, the other channels copied (dims = 0: a plain gather). The gradient flows to rows
only (the angles are positions' functions, not parameters): the output gradient rotated back and
summed into the rows it came from.

Backends: `reference` (F.embedding then the rotation as tensor ops, the definition), `cpu`
(csrc/cpu/gather_rotary.cpp: one pass per output row in the forward and in the backward, where the
reference makes a gather and four passes over strided channel slices, and an index_add). Raw ops:

    gather_rotary_forward(rows, index, cos, sin, dims) -> out[B, H, T, d]
    gather_rotary_backward(grad, index, cos, sin, dims, num_rows) -> grad_rows[num_rows, d]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dispatch
from . import _checks
from ._library import HALF_DTYPES, cpp_op, register_backends, upcast_half

__all__ = ["gather_rows_rotary", "gather_rows_rotary_reference", "rotate_pairs"]

_INT_DTYPES = (torch.int64, torch.int32)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dims: int) -> torch.Tensor:
    """x[..., d] with channel pairs (i, i + dims/2) rotated by the angles' (cos, sin)[..., dims/2]."""
    if not dims:
        return x
    half = dims // 2
    a, b = x[..., :half], x[..., half:dims]
    return torch.cat((a * cos - b * sin, b * cos + a * sin, x[..., dims:]), dim=-1)


def gather_rows_rotary_reference(rows, index, cos, sin, dims: int) -> torch.Tensor:
    return rotate_pairs(F.embedding(index, rows), cos, sin, dims).to(rows.dtype)


# ----------------------------------------------------------------------------------------------
# cpu backend: the extension's kernels, with the autograd of the pair.

@torch.library.custom_op("pyaudiok::gather_rotary_cpu", mutates_args=(), device_types="cpu")
def _cpu_forward(rows: torch.Tensor, index: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 dims: int) -> torch.Tensor:
    return cpp_op("gather_rotary_forward")(rows.contiguous(), index, cos, sin, dims)


@_cpu_forward.register_fake
def _(rows, index, cos, sin, dims):
    return rows.new_empty((*index.shape, rows.shape[1]))


def _setup_context(ctx, inputs, output):
    rows, index, cos, sin, dims = inputs
    ctx.save_for_backward(index, cos, sin)
    ctx.dims, ctx.num_rows = dims, rows.shape[0]


def _backward(ctx, grad):
    index, cos, sin = ctx.saved_tensors
    return cpp_op("gather_rotary_backward")(grad, index, cos, sin, ctx.dims, ctx.num_rows), None, None, None, None


_cpu_forward.register_autograd(_backward, setup_context=_setup_context)


def _cpu(rows, index, cos, sin, dims):
    # The kernels read each angle row whole: the tables' layout is made here (they are [T, dims/2]).
    return _cpu_forward(rows, index, cos.contiguous(), sin.contiguous(), dims)


OP = dispatch.op("gather_rows_rotary")
register_backends(OP, reference=gather_rows_rotary_reference, cpu=upcast_half(_cpu),
                  cpu_dtypes=HALF_DTYPES + (torch.float32, torch.float64))


# ----------------------------------------------------------------------------------------------
# Public API.

def gather_rows_rotary(rows: torch.Tensor, index: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       dims: int) -> torch.Tensor:
    """Rows rows[index[b, h, t]] [B, H, T, d], their first `dims` channels rotary-encoded by (cos, sin)
    [T, dims/2] or [B, 1, T, dims/2] (see the module doc), in rows' dtype (half-precision rows are
    rotated in float32 and rounded once). Index values are checked on the host
    where they lie there (on a GPU the gather's own bounds check applies: no wait)."""
    rows = _checks.float_tensor("rows", rows, ndim=2, layout="[R, d]")
    index = _checks.tensor("index", index, ndim=3, layout="[B, H, T]", dtypes=_INT_DTYPES)
    _checks.same_device("index", index, "rows", rows)
    R, d = rows.shape
    B, H, T = index.shape
    dims = _checks.int_in_range("dims", dims, 0, d)
    if dims % 2:
        raise ValueError(f"dims must be even (channel pairs); got {dims}")
    angles = f"[T, dims/2] = [{T}, {dims // 2}] or [B, 1, T, dims/2] = [{B}, 1, {T}, {dims // 2}]"
    for name, table in (("cos", cos), ("sin", sin)):
        table = _checks.float_tensor(name, table, layout=angles)
        _checks.same_device(name, table, "rows", rows)
        if tuple(table.shape) not in ((T, dims // 2), (B, 1, T, dims // 2)):
            raise ValueError(f"{name} must have shape {angles}; got {_checks.shape_str(table.shape)}")
        if table.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} takes no gradient (angles of fixed positions); detach it")
    if cos.shape != sin.shape:
        raise ValueError(f"sin must have the shape of cos {_checks.shape_str(cos.shape)}; "
                         f"got {_checks.shape_str(sin.shape)}")
    if index.device.type == "cpu" and index.numel():
        _checks.ints_within(index, 0, R - 1, f"index values must lie in [0, R) = [0, {R})")
    index = index.long().contiguous()
    angle_dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32  # half rows rotate in fp32
    cos, sin = cos.to(angle_dtype), sin.to(angle_dtype)
    return OP(rows, index, cos, sin, dims, device=rows.device, dtype=rows.dtype)
