"""gather_rows_rotary and split_heads_rotary: the CPU kernels against the reference (values and
gradients) over shared and per-item angles, unrotated parts, repeated rows, odd and empty shapes,
non-contiguous inputs and every dtype, and over generated cases; layouts and angles checked by hand;
opcheck; bad inputs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops import gather_rows_rotary, split_heads_rotary
from pyaudiok.ops.rotary import GATHER_OP as OP, SPLIT_OP, gather_rows_rotary_reference, split_heads_rotary_reference

from ..harness import assert_close, compare_with_reference, require_backend


def angle_tables(B, T, dims, per_item, dtype):
    angles = torch.rand(*((B, 1, T) if per_item else (T,)), dims // 2, dtype=torch.float64) * 50
    return angles.cos().to(dtype), angles.sin().to(dtype)


def inputs(R, d, B, H, T, dims, per_item=False, dtype=torch.float32):
    rows = torch.randn(R, d, dtype=dtype).requires_grad_(True)
    index = torch.randint(0, R, (B, H, T))
    return (rows, index, *angle_tables(B, T, dims, per_item, dtype), dims)


def split_inputs(B, T, P, H, d, dims, rotated, per_item=False, dtype=torch.float32):
    x = torch.randn(B, T, P * H * d, dtype=dtype).requires_grad_(True)
    return (x, P, H, *angle_tables(B, T, dims, per_item, dtype), dims, rotated)


# Layouts an input may come in (the view taken inside the call): name -> (stored, the view giving it back).
VIEWS = {"contiguous": (lambda t: t, lambda t: t),
         "last two dims swapped": (lambda t: t.transpose(-1, -2).contiguous(), lambda t: t.transpose(-1, -2)),
         "first two dims swapped": (lambda t: t.transpose(0, 1).contiguous(), lambda t: t.transpose(0, 1)),
         "every other channel": (lambda t: t.repeat_interleave(2, dim=-1), lambda t: t[..., ::2])}


def draw_case(data):
    """Seeds torch from a drawn integer; draws the dtype and whether the angles are per item."""
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    dtype = data.draw(st.sampled_from((torch.float32, torch.float64)), label="dtype")
    return dtype, data.draw(st.booleans(), label="per-item angles")


def draw_head_dims(data, max_d):
    """Head dim d and rotary dims: none, part (DESIGN §1: half of each head's channels) or all of them."""
    d = data.draw(st.integers(1, max_d), label="d")
    dims = data.draw(st.sampled_from((2 * (d // 4), 2 * (d // 2), 0)) | st.integers(0, d // 2).map(lambda n: 2 * n),
                     label="dims")  # about half, all (but an odd last channel), none, or any even count
    return d, dims


def stored(data, t, name):
    """t stored in a drawn layout, and the view that gives it back."""
    store, view = VIEWS[data.draw(st.sampled_from(sorted(VIEWS)), label=f"{name} layout")]
    return store(t.detach()).requires_grad_(t.requires_grad), view


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


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_generated_gathers_match_reference(data):
    """Drawn tables (R rows of d channels), index patterns (random with repeats, every row, one row
    only), B, H and T from 1, rotary dims 0, partial or full, shared or per-item angles, int64 or
    int32 index, float32 or float64, every input maybe in another layout: values and the gradient
    to the rows against the float64 reference."""
    dtype, per_item = draw_case(data)
    require_backend(OP, "cpu", dtype)
    R, (d, dims) = data.draw(st.integers(1, 40), label="R"), draw_head_dims(data, 24)
    # T up to 400: B·H·T then crosses the kernels' task boundaries (2048 rows) at arbitrary positions.
    B, H, T = (data.draw(st.integers(1, hi), label=n) for n, hi in (("B", 3), ("H", 4), ("T", 400)))
    rows, index, cos, sin, dims = inputs(R, d, B, H, T, dims, per_item, dtype)
    pattern = data.draw(st.sampled_from(("random", "every row", "one row")), label="index pattern")
    if pattern == "every row":  # each row at least once where there are enough positions
        index = torch.randperm(B * H * T).remainder(R).view(B, H, T)
    elif pattern == "one row":
        index = torch.full_like(index, data.draw(st.integers(0, R - 1), label="row"))
    index = index.to(data.draw(st.sampled_from((torch.int64, torch.int32)), label="index dtype"))
    (rows, rows_view), (index, index_view) = stored(data, rows, "rows"), stored(data, index, "index")
    (cos, cos_view), (sin, sin_view) = stored(data, cos, "cos"), stored(data, sin, "sin")
    compare_with_reference(
        lambda r, i, c, s: gather_rows_rotary(rows_view(r), index_view(i), cos_view(c), sin_view(s), dims),
        (rows, index, cos, sin), "cpu")


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
    half_rows = rows.detach().to(dtype).requires_grad_()
    compare_with_reference(lambda r: gather_rows_rotary(r, index, cos, sin, dims), (half_rows,), "cpu")


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_split_heads_half_precision_forward_and_backward(dtype):
    require_backend(SPLIT_OP, "cpu", dtype)
    x, P, H, cos, sin, dims, rotated = split_inputs(2, 7, 3, 2, 8, 4, 2, per_item=True, dtype=dtype)
    compare_with_reference(lambda x, c, s: split_heads_rotary(x, P, H, c, s, dims, rotated), (x, cos, sin), "cpu")


@pytest.mark.parametrize("shape", [(0, 3, 5), (2, 0, 5), (2, 3, 0)], ids=("B = 0", "H = 0", "T = 0"))
def test_empty_index_gives_empty_rows_and_a_zero_gradient(shape):
    require_backend(OP, "cpu")
    rows, _, cos, sin, dims = inputs(6, 8, shape[0], shape[1], shape[2], 4, per_item=True)
    index = torch.zeros(shape, dtype=torch.long)
    out, _ = compare_with_reference(lambda r: gather_rows_rotary(r, index, cos, sin, dims), (rows,), "cpu")
    assert out[0].shape == (*shape, 8)
    with pyaudiok.use_backend("cpu"):
        gather_rows_rotary(rows, index, cos, sin, dims).sum().backward()
    assert rows.grad.shape == rows.shape and not rows.grad.any()


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


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("B,T,P,H,d,dims,rotated,per_item", [
    (2, 5, 3, 2, 8, 4, 2, False),      # queries and keys rotated, values not (a self-attention block)
    (3, 257, 1, 4, 16, 8, 1, True),    # one part, per-item angles, several tasks
    (1, 7, 2, 3, 6, 6, 2, False),      # every channel rotated
    (2, 3, 2, 1, 4, 0, 0, True),       # nothing rotated: the head split alone
    (0, 4, 3, 2, 4, 2, 1, False),      # empty batch
])
def test_split_heads_cpu_matches_reference(dtype, B, T, P, H, d, dims, rotated, per_item):
    require_backend(SPLIT_OP, "cpu", dtype)
    compare_with_reference(split_heads_rotary, split_inputs(B, T, P, H, d, dims, rotated, per_item, dtype), "cpu")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_generated_head_splits_match_reference(data):
    """Drawn B, T (from 1), parts, heads, head dims, rotary dims 0, partial or full, any number of
    rotated parts, shared or per-item angles, float32 or float64, x and the angles maybe in another
    layout: values and the gradient to x against the float64 reference."""
    dtype, per_item = draw_case(data)
    require_backend(SPLIT_OP, "cpu", dtype)
    # T up to 400: B·T then crosses the kernels' task boundaries (2048 / (parts·heads) positions).
    B, T, P, H = (data.draw(st.integers(1, hi), label=n) for n, hi in (("B", 3), ("T", 400), ("parts", 3), ("H", 4)))
    d, dims = draw_head_dims(data, 16)
    rotated = data.draw(st.integers(0, P), label="rotated")
    x, P, H, cos, sin, dims, rotated = split_inputs(B, T, P, H, d, dims, rotated, per_item, dtype)
    (x, x_view), (cos, cos_view) = stored(data, x, "x"), stored(data, cos, "cos")
    sin, sin_view = stored(data, sin, "sin")
    compare_with_reference(lambda x, c, s: split_heads_rotary(x_view(x), P, H, cos_view(c), sin_view(s), dims, rotated),
                           (x, cos, sin), "cpu")


def test_split_heads_non_contiguous_input_and_half_precision():
    require_backend(SPLIT_OP, "cpu")
    x, P, H, cos, sin, dims, rotated = split_inputs(3, 9, 3, 2, 8, 4, 2, per_item=True)
    x_t = x.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True)
    compare_with_reference(split_heads_rotary, (x_t, P, H, cos, sin, dims, rotated), "cpu")
    with pyaudiok.use_backend("cpu"):
        got = split_heads_rotary(x.detach().bfloat16(), P, H, cos, sin, dims, rotated)
    want = split_heads_rotary_reference(x.detach().bfloat16().double(), P, H, cos.double(), sin.double(), dims,
                                        rotated)
    assert got.dtype == torch.bfloat16 and got.is_contiguous()
    assert_close("out", got, want, torch.bfloat16)


def test_split_heads_layout_and_angle():
    """By hand: part p, head h of position t is x[b, t, (p·H + h)·d:...]; at angle π/2 a rotated
    pair (a, b) becomes (−b, a), the unrotated part is copied, and the gradient goes back in place."""
    require_backend(SPLIT_OP, "cpu")
    x = torch.arange(1.0, 1 + 2 * 2 * 4).view(1, 1, 16).requires_grad_(True)  # P 2, H 2, d 4
    cos, sin = torch.zeros(1, 1), torch.ones(1, 1)
    with pyaudiok.use_backend("cpu"):
        out = split_heads_rotary(x, 2, 2, cos, sin, 2, 1)
    assert out.shape == (2, 1, 2, 1, 4)
    assert torch.equal(out[0, 0, 1, 0], torch.tensor([-6.0, 5.0, 7.0, 8.0]))   # part 0, head 1: rotated
    assert torch.equal(out[1, 0, 0, 0], torch.tensor([9.0, 10.0, 11.0, 12.0]))  # part 1, head 0: copied
    weight = torch.zeros_like(out)
    weight[0, 0, 1, 0, 1] = 1.0  # d out[0,0,1,0,1] / d x = [.., x[4] (sin = 1) ..]
    out.backward(weight)
    expected = torch.zeros(1, 1, 16)
    expected[0, 0, 4] = 1.0
    assert torch.equal(x.grad, expected)


def test_split_heads_raw_op_passes_opcheck():
    require_backend(SPLIT_OP, "cpu")
    args = split_inputs(2, 5, 3, 2, 8, 4, 2, per_item=True)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.pyaudiok.split_heads_rotary_cpu, args, test_utils=tests)


def test_split_heads_bad_inputs():
    x, P, H, cos, sin, dims, rotated = split_inputs(2, 3, 3, 2, 8, 4, 2)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, parts·heads·d\]"):
        split_heads_rotary(x[0], P, H, cos, sin, dims, rotated)
    with pytest.raises(ValueError, match="parts·heads = 10 dividing"):
        split_heads_rotary(x, 5, H, cos, sin, dims, rotated)
    with pytest.raises(ValueError, match=r"rotated must be in \[0, 3\]"):
        split_heads_rotary(x, P, H, cos, sin, dims, 4)
    with pytest.raises(TypeError, match="heads must be an int"):
        split_heads_rotary(x, P, 2.0, cos, sin, dims, rotated)
    with pytest.raises(ValueError, match=r"cos must have shape \[T, dims/2\] = \[3, 2\]"):
        split_heads_rotary(x, P, H, cos[:, :1], sin, dims, rotated)


def test_cpu_backwards_are_registered_and_differentiable():
    """The backward ops pass opcheck (fakes, so torch.compile traces them), and gradients of
    gradients match the reference: each op's backward is differentiable through its forward."""
    require_backend(OP, "cpu")
    rows, index, cos, sin, dims = inputs(6, 8, 2, 2, 5, 4, per_item=True, dtype=torch.float64)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    grad = torch.randn(2, 2, 5, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.pyaudiok.gather_rotary_cpu_backward, (grad, index, cos, sin, dims, 6),
                          test_utils=tests)
    x, P, H, cos2, sin2, dims2, rotated = split_inputs(2, 5, 3, 2, 8, 4, 2, per_item=True, dtype=torch.float64)
    grad = torch.randn(P, 2, H, 5, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.pyaudiok.split_heads_rotary_cpu_backward, (grad, cos2, sin2, dims2, rotated),
                          test_utils=tests)
    with pyaudiok.use_backend("cpu"):
        assert torch.autograd.gradgradcheck(lambda r: gather_rows_rotary(r, index, cos, sin, dims), (rows,))
        assert torch.autograd.gradgradcheck(lambda x: split_heads_rotary(x, P, H, cos2, sin2, dims2, rotated), (x,))


def test_cpu_backend_compiles_forward_and_backward():
    require_backend(OP, "cpu")
    rows, index, cos, sin, dims = inputs(7, 8, 2, 2, 5, 4, per_item=True)
    x, P, H, _, _, _, rotated = split_inputs(2, 5, 3, 2, 8, 4, 2)

    def loss(rows, x):
        with pyaudiok.use_backend("cpu"):
            out = gather_rows_rotary(rows, index, cos, sin, dims)
            parts = split_heads_rotary(x, P, H, cos, sin, dims, rotated)
        return out.square().sum() + (parts * parts.sin()).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")(rows, x)
    got = torch.autograd.grad(compiled, (rows, x))
    want = torch.autograd.grad(loss(rows, x), (rows, x))
    for name, g, w in zip(("rows", "x"), got, want):
        assert_close(f"d {name}", g, w, torch.float32)
