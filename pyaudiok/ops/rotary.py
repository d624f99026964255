"""Rotary position encoding fused with the copy that lays rows out for attention (DESIGN §1's
partial rotary encoding). Two ops:

`gather_rows_rotary(rows, index, cos, sin, dims)`: rows of a small table gathered per position,
Perceiver AR's cross-attention keys and values (their projection depends on the token alone, so it
is computed once per vocabulary entry and gathered per input). rows[R, d], index[B, H, T] (ints in
[0, R)), cos, sin [T, dims/2] or [B, 1, T, dims/2] (each position's angles, shared or per item):

    out[b, h, t] = rotate(rows[index[b, h, t]])
    rotate(x)[i] = x[i] cos − x[i + dims/2] sin,  rotate(x)[i + dims/2] = x[i + dims/2] cos + x[i] sin

for i < dims/2, the other channels copied (dims = 0: a plain gather). The gradient flows to rows
only (the angles are positions' functions, not parameters): the output gradient rotated back and
summed into the rows it came from.

`split_heads_rotary(x, parts, heads, cos, sin, dims, rotated)`: a projection's output
x[B, T, P·H·d] as [P, B, H, T, d], out[p, b, h, t] = x[b, t, (p·H + h)·d : (p·H + h + 1)·d], rotated
as above for the first `rotated` parts (the latent queries and keys; values pass unrotated). The
gradient to x is the output gradient rotated back into x's layout.

Backends: `reference` (F.embedding, or a view and permute, then the rotation as tensor ops: the
definition), `cpu` (csrc/cpu/rotary.cpp: one pass per row in the forward and in the backward,
where tensor ops make a gather or a head-split copy, four passes over strided channel slices and,
for the table, an index_add). Raw ops of the cpu backend:

    gather_rotary_forward(rows, index, cos, sin, dims) -> out[B, H, T, d]
    gather_rotary_backward(grad, index, cos, sin, dims, num_rows) -> grad_rows[num_rows, d]
    split_heads_rotary_forward(x, parts, heads, cos, sin, dims, rotated) -> out[P, B, H, T, d]
    split_heads_rotary_backward(grad, cos, sin, dims, rotated) -> grad_x[B, T, P·H·d]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dispatch
from . import _checks
from ._library import HALF_DTYPES, cpp_op, custom_op, register_autograd, register_backends, upcast_half

__all__ = ["gather_rows_rotary", "gather_rows_rotary_reference", "split_heads_rotary", "split_heads_rotary_reference",
           "rotate_pairs"]

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


def split_heads_rotary_reference(x, parts: int, heads: int, cos, sin, dims: int, rotated: int) -> torch.Tensor:
    B, T, C = x.shape
    split = x.view(B, T, parts, heads, C // (parts * heads)).permute(2, 0, 3, 1, 4)
    return torch.stack([rotate_pairs(split[p], cos, sin, dims if p < rotated else 0).to(x.dtype)
                        for p in range(parts)])


# ----------------------------------------------------------------------------------------------
# cpu backend: the extension's kernels, each forward with the autograd of its pair. The kernels
# read each angle row whole: the tables' layout is made here. Both ops are linear in their data,
# and a pair's backward is its forward's adjoint: the gradient of each is the other, so gradients
# of gradients come out right. The backwards are registered ops too, with fakes, for torch.compile.

@custom_op("pyaudiok::gather_rotary_cpu", device_types="cpu")
def _gather_cpu(rows: torch.Tensor, index: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                dims: int) -> torch.Tensor:
    return cpp_op("gather_rotary_forward")(rows.contiguous(), index, cos.contiguous(), sin.contiguous(), dims)


@torch.library.register_fake("pyaudiok::gather_rotary_cpu")
def _(rows, index, cos, sin, dims):
    return rows.new_empty((*index.shape, rows.shape[1]))


@custom_op("pyaudiok::gather_rotary_cpu_backward", device_types="cpu")
def _gather_cpu_backward(grad: torch.Tensor, index: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         dims: int, num_rows: int) -> torch.Tensor:
    return cpp_op("gather_rotary_backward")(grad.contiguous(), index, cos.contiguous(), sin.contiguous(), dims,
                                            num_rows)


@torch.library.register_fake("pyaudiok::gather_rotary_cpu_backward")
def _(grad, index, cos, sin, dims, num_rows):
    return grad.new_empty((num_rows, grad.shape[3]))


def _gather_setup_context(ctx, inputs, output):
    rows, index, cos, sin, dims = inputs
    ctx.save_for_backward(index, cos.contiguous(), sin.contiguous())
    ctx.dims, ctx.num_rows = dims, rows.shape[0]


def _gather_backward(ctx, grad):
    index, cos, sin = ctx.saved_tensors
    return _gather_cpu_backward(grad, index, cos, sin, ctx.dims, ctx.num_rows), None, None, None, None


def _gather_backward_setup_context(ctx, inputs, output):
    grad, index, cos, sin, dims, num_rows = inputs
    ctx.save_for_backward(index, cos, sin)
    ctx.dims = dims


def _gather_backward_backward(ctx, grad_rows):
    index, cos, sin = ctx.saved_tensors
    return _gather_cpu(grad_rows, index, cos, sin, ctx.dims), None, None, None, None, None


register_autograd("pyaudiok::gather_rotary_cpu", _gather_backward,
                  setup_context=_gather_setup_context)
register_autograd("pyaudiok::gather_rotary_cpu_backward", _gather_backward_backward,
                  setup_context=_gather_backward_setup_context)


@custom_op("pyaudiok::split_heads_rotary_cpu", device_types="cpu")
def _split_cpu(x: torch.Tensor, parts: int, heads: int, cos: torch.Tensor, sin: torch.Tensor, dims: int,
               rotated: int) -> torch.Tensor:
    return cpp_op("split_heads_rotary_forward")(x.contiguous(), parts, heads, cos.contiguous(), sin.contiguous(),
                                                dims, rotated)


@torch.library.register_fake("pyaudiok::split_heads_rotary_cpu")
def _(x, parts, heads, cos, sin, dims, rotated):
    B, T, C = x.shape
    return x.new_empty((parts, B, heads, T, C // (parts * heads)))


@custom_op("pyaudiok::split_heads_rotary_cpu_backward", device_types="cpu")
def _split_cpu_backward(grad: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dims: int,
                        rotated: int) -> torch.Tensor:
    return cpp_op("split_heads_rotary_backward")(grad.contiguous(), cos.contiguous(), sin.contiguous(), dims, rotated)


@torch.library.register_fake("pyaudiok::split_heads_rotary_cpu_backward")
def _(grad, cos, sin, dims, rotated):
    P, B, H, T, d = grad.shape
    return grad.new_empty((B, T, P * H * d))


def _split_setup_context(ctx, inputs, output):
    x, parts, heads, cos, sin, dims, rotated = inputs
    ctx.save_for_backward(cos.contiguous(), sin.contiguous())
    ctx.dims, ctx.rotated = dims, rotated


def _split_backward(ctx, grad):
    cos, sin = ctx.saved_tensors
    grad_x = _split_cpu_backward(grad, cos, sin, ctx.dims, ctx.rotated)
    return grad_x, None, None, None, None, None, None


def _split_backward_setup_context(ctx, inputs, output):
    grad, cos, sin, dims, rotated = inputs
    ctx.save_for_backward(cos, sin)
    ctx.parts, ctx.heads, ctx.dims, ctx.rotated = grad.shape[0], grad.shape[2], dims, rotated


def _split_backward_backward(ctx, grad_x):
    cos, sin = ctx.saved_tensors
    return _split_cpu(grad_x, ctx.parts, ctx.heads, cos, sin, ctx.dims, ctx.rotated), None, None, None, None


register_autograd("pyaudiok::split_heads_rotary_cpu", _split_backward,
                  setup_context=_split_setup_context)
register_autograd("pyaudiok::split_heads_rotary_cpu_backward", _split_backward_backward,
                  setup_context=_split_backward_setup_context)

GATHER_OP = dispatch.op("gather_rows_rotary")
register_backends(GATHER_OP, reference=gather_rows_rotary_reference, cpu=upcast_half(_gather_cpu),
                  cpu_dtypes=HALF_DTYPES + (torch.float32, torch.float64))
SPLIT_OP = dispatch.op("split_heads_rotary")
register_backends(SPLIT_OP, reference=split_heads_rotary_reference, cpu=upcast_half(_split_cpu),
                  cpu_dtypes=HALF_DTYPES + (torch.float32, torch.float64))


# ----------------------------------------------------------------------------------------------
# Public API.

def gather_rows_rotary(rows: torch.Tensor, index: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       dims: int) -> torch.Tensor:
    """Rows rows[index[b, h, t]] [B, H, T, d], their first `dims` channels rotary-encoded by (cos, sin)
    [T, dims/2] or [B, 1, T, dims/2] (see the module doc), in rows' dtype (half-precision rows are
    rotated in float32 and rounded once). Index values are checked where they lie on the host (on a
    GPU the gather's own bounds check applies: no wait)."""
    rows = _checks.float_tensor("rows", rows, ndim=2, layout="[R, d]")
    index = _checks.tensor("index", index, ndim=3, layout="[B, H, T]", dtypes=_INT_DTYPES)
    _checks.same_device("index", index, "rows", rows)
    R, d = rows.shape
    B, H, T = index.shape
    cos, sin, dims = _check_angles(cos, sin, dims, d, B, T, "rows", rows)
    if index.device.type == "cpu" and index.numel():
        _checks.ints_within(index, 0, R - 1, f"index values must lie in [0, R) = [0, {R})")
    return GATHER_OP(rows, index.long().contiguous(), cos, sin, dims, device=rows.device, dtype=rows.dtype)


def split_heads_rotary(x: torch.Tensor, parts: int, heads: int, cos: torch.Tensor, sin: torch.Tensor, dims: int,
                       rotated: int) -> torch.Tensor:
    """x[B, T, parts·heads·d] (a projection's output) as [parts, B, heads, T, d], contiguous, the
    first `rotated` parts' first `dims` channels rotary-encoded by (cos, sin) [T, dims/2] or
    [B, 1, T, dims/2] (see the module doc); half-precision x is rotated in float32."""
    x = _checks.float_tensor("x", x, ndim=3, layout="[B, T, parts·heads·d]")
    B, T, C = x.shape
    parts = _checks.int_in_range("parts", parts, 1, max(1, C))
    heads = _checks.int_in_range("heads", heads, 1, max(1, C))
    if C == 0 or C % (parts * heads):
        raise ValueError(f"x must have shape [B, T, parts·heads·d] with parts·heads = {parts * heads} dividing its "
                         f"last size; got {_checks.shape_str(x.shape)}")
    rotated = _checks.int_in_range("rotated", rotated, 0, parts)
    cos, sin, dims = _check_angles(cos, sin, dims, C // (parts * heads), B, T, "x", x)
    return SPLIT_OP(x, parts, heads, cos, sin, dims, rotated, device=x.device, dtype=x.dtype)


def _check_angles(cos, sin, dims, d: int, B: int, T: int, data_name: str, data: torch.Tensor):
    """(cos, sin, dims) checked against head dim d and positions [B, T]; the tables in the dtype the
    rotation runs in (float32 for half-precision data)."""
    dims = _checks.int_in_range("dims", dims, 0, d)
    if dims % 2:
        raise ValueError(f"dims must be even (channel pairs); got {dims}")
    angles = f"[T, dims/2] = [{T}, {dims // 2}] or [B, 1, T, dims/2] = [{B}, 1, {T}, {dims // 2}]"
    for name, table in (("cos", cos), ("sin", sin)):
        table = _checks.float_tensor(name, table, layout=angles)
        _checks.same_device(name, table, data_name, data)
        if tuple(table.shape) not in ((T, dims // 2), (B, 1, T, dims // 2)):
            raise ValueError(f"{name} must have shape {angles}; got {_checks.shape_str(table.shape)}")
        if table.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} takes no gradient (angles of fixed positions); detach it")
    if cos.shape != sin.shape:
        raise ValueError(f"sin must have the shape of cos {_checks.shape_str(cos.shape)}; "
                         f"got {_checks.shape_str(sin.shape)}")
    angle_dtype = torch.float64 if data.dtype == torch.float64 else torch.float32
    return cos.to(angle_dtype), sin.to(angle_dtype), dims
