"""gather_rows_rotary: the CPU kernels against the reference (values and the rows' gradient) over
shared and per-item angles, plain gathers, repeated rows, odd and empty shapes, non-contiguous
inputs and every dtype; opcheck; bad inputs."""
from __future__ import annotations

import pytest
import torch

import pyaudiok
from pyaudiok.ops import gather_rows_rotary
from pyaudiok.ops.gather_rotary import OP, gather_rows_rotary_reference

from ..harness import assert_close, compare_with_reference, require_backend


def inputs(R, d, B, H, T, dims, per_item=False, dtype=torch.float32):
    rows = torch.randn(R, d, dtype=dtype).requires_grad_(True)
    index = torch.randint(0, R, (B, H, T))
    angles = torch.rand(*((B, 1, T) if per_item else (T,)), dims // 2, dtype=torch.float64) * 50
    return rows, index, angles.cos().to(dtype), angles.sin().to(dtype), dims


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("R,d,B,H,T,dims,per_item", [
    (7, 8, 2, 3, 5, 4, False),        # few rows: every row gathered many times (summed gradients)
    (300, 64, 3, 2, 2049, 32, True),  # several threads' tasks, per-item angles
    (5, 6, 1, 1, 13, 6, False),       # every channel rotated
    (9, 10, 2, 2, 7, 0, True),        # a plain gather
    (4, 4, 0, 2, 3, 2, False),        # empty batch
])
def test_cpu_matches_reference(dtype, R, d, B, H, T, dims, per_item):
    require_backend(OP, "cpu", dtype)
    compare_with_reference(gather_rows_rotary, inputs(R, d, B, H, T, dims, per_item, dtype), "cpu")


def test_non_contiguous_inputs_and_int32_index():
    require_backend(OP, "cpu")
    rows, index, cos, sin, dims = inputs(11, 16, 2, 3, 9, 8, per_item=True)
    rows_t = rows.detach().t().contiguous().t().requires_grad_(True)  # column-major rows
    index_t = index.transpose(1, 2).contiguous().transpose(1, 2).int()
    cos_t = torch.cat((cos, cos), dim=-1)[..., ::2]  # strided angle tables
    compare_with_reference(gather_rows_rotary, (rows_t, index_t, cos_t, sin, dims), "cpu")


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_half_rows_rotate_in_float32(dtype):
    require_backend(OP, "cpu", dtype)
    rows, index, cos, sin, dims = inputs(13, 8, 2, 2, 17, 4)
    with pyaudiok.use_backend("cpu"):
        got = gather_rows_rotary(rows.to(dtype), index, cos, sin, dims)
    want = gather_rows_rotary_reference(rows.double(), index, cos.double(), sin.double(), dims)
    assert got.dtype == dtype
    assert_close("out", got, want, dtype)


def test_rotation_moves_channel_pairs_by_the_angle():
    """Independent of the reference: at angle π/2 the pair (a, b) becomes (−b, a); dims < d copies
    the rest; the gradient of a row gathered twice at opposite angles is the sum of the two inverse
    rotations."""
    require_backend(OP, "cpu")
    rows = torch.arange(1.0, 7.0).view(1, 6).requires_grad_(True)
    index = torch.zeros(1, 1, 2, dtype=torch.long)
    cos = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    sin = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    with pyaudiok.use_backend("cpu"):
        out = gather_rows_rotary(rows, index, cos, sin, 4)
    assert torch.equal(out[0, 0, 0], torch.tensor([-3.0, -4.0, 1.0, 2.0, 5.0, 6.0]))
    assert torch.equal(out[0, 0, 1], torch.tensor([3.0, 4.0, -1.0, -2.0, 5.0, 6.0]))
    out.backward(torch.ones_like(out))
    assert torch.equal(rows.grad, torch.tensor([[0.0, 0.0, 0.0, 0.0, 2.0, 2.0]]))


def test_raw_op_passes_opcheck():
    require_backend(OP, "cpu")
    rows, index, cos, sin, dims = inputs(6, 8, 2, 2, 5, 4, per_item=True)
    op = torch.ops.pyaudiok.gather_rotary_cpu
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(op, (rows, index, cos, sin, dims), test_utils=tests)


def test_bad_inputs():
    rows, index, cos, sin, dims = inputs(5, 8, 2, 2, 3, 4)
    with pytest.raises(ValueError, match=r"rows must have shape \[R, d\]"):
        gather_rows_rotary(rows[None], index, cos, sin, dims)
    with pytest.raises(TypeError, match="index must have dtype int64, int32"):
        gather_rows_rotary(rows, index.float(), cos, sin, dims)
    with pytest.raises(ValueError, match=r"index must have shape \[B, H, T\]"):
        gather_rows_rotary(rows, index[0], cos, sin, dims)
    with pytest.raises(ValueError, match=r"index values must lie in \[0, R\) = \[0, 5\)"):
        gather_rows_rotary(rows, index + 5, cos, sin, dims)
    with pytest.raises(ValueError, match="dims must be even"):
        gather_rows_rotary(rows, index, cos, sin, 3)
    with pytest.raises(ValueError, match=r"dims must be .*\[0, 8\]"):
        gather_rows_rotary(rows, index, cos, sin, 10)
    with pytest.raises(ValueError, match=r"cos must have shape \[T, dims/2\] = \[3, 2\]"):
        gather_rows_rotary(rows, index, cos[:2], sin, dims)
    with pytest.raises(ValueError, match="sin must have shape"):
        gather_rows_rotary(rows, index, cos, sin[..., :1], dims)
    with pytest.raises(ValueError, match="cos takes no gradient"):
        gather_rows_rotary(rows, index, cos.clone().requires_grad_(True), sin, dims)
