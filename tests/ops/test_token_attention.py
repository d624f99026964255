"""Latent cross-attention over token-table keys and values (pyaudiok.ops.token_attention, Perceiver
AR's cross-attention on the CPU) against the same attention over the gathered keys and values."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyaudiok
from pyaudiok.ops.token_attention import OP, _backward, _forward, key_rows, token_attention, token_attention_reference

from ..harness import assert_close, compare_with_reference, forward_opcheck_tests, opcheck, require_backend, threads

pytest.importorskip("pyaudiok._C")

CASES = [  # B, H, N, M, d, V, rotated dims, threads: no rotation, all rotated, N = M, key splits
    (2, 3, 37, 300, 16, 11, 8, 2), (1, 1, 5, 5, 8, 3, 0, 1), (2, 2, 9, 40, 8, 7, 8, 2),
    (1, 2, 130, 1100, 32, 257, 16, 2), (3, 1, 4, 700, 8, 2, 4, 1), (2, 1, 6, 50, 8, 4, 8, 1)]


def _inputs(B, H, N, M, d, V, dims, dtype=torch.float64, batched_angles=True):
    gen = torch.Generator().manual_seed(B * 1000 + M + V)
    rows = torch.randn(2 * H * V, d, generator=gen, dtype=dtype).requires_grad_()
    tokens = torch.randint(0, V, (B, M), generator=gen)
    shape = (B, 1, M, dims // 2) if batched_angles else (M, dims // 2)  # per-row positions, or shared ones
    angles = 100 * torch.rand(shape, generator=gen, dtype=dtype)
    q = torch.randn(B, H, N, d, generator=gen, dtype=dtype).requires_grad_()
    return q, rows, tokens, angles.cos(), angles.sin()


@pytest.mark.parametrize("B,H,N,M,d,V,dims,threads_used", CASES)
def test_matches_attention_over_gathered_keys(B, H, N, M, d, V, dims, threads_used):
    """Output and the gradients to q and rows, float64, against the gathered route."""
    q, rows, tokens, cos, sin = _inputs(B, H, N, M, d, V, dims, batched_angles=B != 2)
    with pyaudiok.use_backend("cpu"), threads(threads_used):
        want = token_attention_reference(q, rows, tokens, cos, sin, dims, H)
        got = token_attention(q, rows, tokens, cos, sin, dims, H)
        grad = torch.randn_like(want)
        want_grads = torch.autograd.grad(want, (q, rows), grad)
        got_grads = torch.autograd.grad(got, (q, rows), grad)
    assert_close("out", got, want, torch.float64)
    for name, g, w in zip(("dq", "d rows"), got_grads, want_grads):
        assert_close(name, g, w, torch.float64)


@pytest.mark.parametrize("tile", [(0, 0), (16, 32)], ids=("tile by shape", "small tiles"))
@pytest.mark.parametrize("B,H,N,M,d,V,dims,threads_used", CASES)
def test_raw_kernels_equal_gathered_keys_kernels(B, H, N, M, d, V, dims, threads_used, tile):
    """The raw pair, latent_attention_tokens_forward / _backward, against the gathered keys' kernels
    in float64: out, lse, dq, the rotated keys' dk (zero on the other channels) and the tables'
    shares (zero on the rotated channels), the table rows' gradient once dk has gone through the
    gather's backward. Small tiles: many key and query blocks, so the forward's rescaling too."""
    ops = torch.ops.pyaudiok
    q, rows, tokens, cos, sin = _inputs(B, H, N, M, d, V, dims)
    index = key_rows(tokens, V, H)
    k_table, v_table = rows.detach()[:H * V].view(H, V, d), rows.detach()[H * V:].view(H, V, d)
    with pyaudiok.use_backend("cpu"), threads(threads_used):
        out = token_attention_reference(q, rows, tokens, cos, sin, dims, H)
        grad = torch.randn_like(out)
        want_dq, want_rows = torch.autograd.grad(out, (q, rows), grad)
        k = ops.gather_rotary_forward(rows.detach(), index, cos, sin, dims)
        v = ops.gather_rotary_forward(rows.detach(), index + H * V, cos[..., :0], sin[..., :0], 0)
        _, want_lse = ops.latent_attention_forward(q.detach(), k, v, None, d ** -0.5)
        got, lse = ops.latent_attention_tokens_forward(q.detach(), k, tokens, k_table, v_table, dims, d ** -0.5, *tile)
        dq, dk, dk_table, dv_table = ops.latent_attention_tokens_backward(
            grad, q.detach(), k, got, lse, tokens, k_table, v_table, dims, d ** -0.5, *tile)
        d_rows = ops.gather_rotary_backward(dk, index, cos, sin, dims, 2 * H * V)
    assert torch.count_nonzero(dk[..., dims:]) == 0 and torch.count_nonzero(dk_table[..., :dims]) == 0
    d_rows[:H * V].view(H, V, d)[..., dims:] += dk_table[..., dims:]
    d_rows[H * V:] += dv_table.view(H * V, d)
    assert_close("out", got, out, torch.float64)
    assert_close("lse", lse, want_lse, torch.float64)
    assert_close("dq", dq, want_dq, torch.float64)
    assert_close("table rows' gradient", d_rows, want_rows, torch.float64)


def test_float32_and_unused_tokens():
    """float32 within tolerance; a table row no token picks gets exactly zero gradient."""
    q, rows, tokens, cos, sin = _inputs(2, 2, 24, 200, 16, 9, 8, torch.float32)
    tokens = tokens.clamp_max(7)  # token 8 unused
    with pyaudiok.use_backend("cpu"):
        want = token_attention_reference(q.double(), rows.double(), tokens, cos.double(), sin.double(), 8, 2)
        got = token_attention(q, rows, tokens, cos, sin, 8, 2)
        got.sum().backward()
    assert_close("out", got, want, torch.float32)
    assert torch.count_nonzero(rows.grad.view(2, 2, 9, 16)[:, :, 8]) == 0


def test_registered_ops_pass_opcheck():
    q, rows, tokens, cos, sin = _inputs(2, 2, 6, 20, 8, 5, 4)
    args = (q, rows, tokens, cos, sin, 4, 2)
    opcheck(_forward, args, test_utils=forward_opcheck_tests("cpu", q.device))
    out, lse, k = _forward(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
    opcheck(_backward, (torch.randn_like(out), q.detach(), rows.detach(), tokens, cos, sin, k, out, lse, 4, 2),
            test_utils=("test_schema", "test_faketensor"))


def test_compiles_without_graph_break():
    q, rows, tokens, cos, sin = _inputs(1, 2, 8, 30, 8, 6, 4, torch.float32)
    compiled = torch.compile(lambda *a: token_attention(*a, 4, 2).square().sum(), fullgraph=True, backend="eager")
    loss = compiled(q, rows, tokens, cos, sin)
    loss.backward()
    want = token_attention(q.detach(), rows.detach(), tokens, cos, sin, 4, 2).square().sum()
    assert_close("loss", loss, want, torch.float32)
    assert q.grad is not None and rows.grad is not None


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16, torch.float16))
def test_cpu_backend_matches_reference(dtype):
    """Through the dispatcher: the cpu backend against the reference (float64), forward and the
    gradients to q and rows; half precision computed in float32."""
    require_backend(OP, "cpu", dtype)
    q, rows, tokens, cos, sin = _inputs(2, 2, 20, 90, 16, 6, 8, torch.float64)
    q, rows = (t.detach().to(dtype).requires_grad_() for t in (q, rows))
    compare_with_reference(lambda q, rows: token_attention(q, rows, tokens, cos.to(dtype), sin.to(dtype), 8, 2),
                           (q, rows), "cpu")


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_generated_shapes_match_reference(data):
    """Drawn shapes through the dispatcher, the cpu backend against the reference in float64: output and
    the gradients to q and rows. Odd and even head dims, any even count of rotated channels (none, all),
    vocabularies from two tokens, N latents of M >= N inputs, angles per item or shared, an empty batch,
    float32 and float64, q and rows laid out transposed in memory now and then, one thread or two."""
    dtype = data.draw(st.sampled_from((torch.float32, torch.float64)), label="dtype")
    require_backend(OP, "cpu", dtype)
    B, H, V, N, d = (data.draw(st.integers(*bounds), label=name)
                     for name, bounds in zip("BHVNd", ((0, 3), (1, 3), (2, 20), (1, 150), (1, 40))))
    M = N + data.draw(st.integers(1 if N == 1 else 0, 300), label="M - N")
    dims = 2 * data.draw(st.integers(0, d // 2), label="dims / 2")
    per_item = data.draw(st.booleans(), label="angles per item")
    q, rows, tokens, cos, sin = _inputs(B, H, N, M, d, V, dims, dtype, per_item)
    # dq is 0 where all the keys a query sees have one value row (one token id, or M = 1), and no relative error
    # measures a gradient that is 0 as a whole: the last query sees two token ids.
    tokens[:, -1] = (tokens[:, 0] + 1) % V
    if data.draw(st.booleans(), label="transposed"):
        q = q.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        rows = rows.detach().T.contiguous().T.requires_grad_()
    with threads(data.draw(st.integers(1, 2), label="threads")):
        compare_with_reference(lambda q, rows: token_attention(q, rows, tokens, cos, sin, dims, H), (q, rows), "cpu")


def test_nan_rows_give_nan_where_the_reference_does():
    q, rows, tokens, cos, sin = (t.detach() for t in _inputs(2, 2, 6, 30, 8, 5, 4, torch.float32))
    rows[1, 5] = float("nan")  # head 0's key row of token 1 (an unrotated channel)
    q[1, 1, 2, 0] = float("nan")
    with pyaudiok.use_backend("cpu"):
        out = token_attention(q, rows, tokens, cos, sin, 4, 2)
    want = token_attention_reference(q, rows, tokens, cos, sin, 4, 2)
    assert torch.equal(out.isnan(), want.isnan()) and want.isnan().any() and not want.isnan().all()
    torch.testing.assert_close(out.nan_to_num(), want.nan_to_num(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("token_dtype", (torch.int32, torch.int16, torch.uint8))
def test_narrow_non_contiguous_token_ids_and_angle_views(token_dtype):
    """Token ids in any integer dtype and strided, and cos/sin sliced from wider tables: the result
    and gradients of int64 ids in contiguous tensors."""
    q, rows, tokens, cos, sin = _inputs(2, 2, 7, 30, 8, 5, 4)
    wide = torch.stack([tokens, tokens], dim=-1).to(token_dtype)[..., 0]
    assert not wide.is_contiguous()
    cos_view, sin_view = (torch.cat([t, t], dim=-1)[..., :2] for t in (cos, sin))
    assert not cos_view.is_contiguous()
    compare_with_reference(lambda q, rows: token_attention(q, rows, wide, cos_view, sin_view, 4, 2), (q, rows), "cpu")
    with pyaudiok.use_backend("cpu"):
        got = token_attention(q, rows, wide, cos_view, sin_view, 4, 2)
        want = token_attention(q, rows, tokens, cos, sin, 4, 2)
    torch.testing.assert_close(got, want)


def test_empty_batch_and_queries():
    q, rows, tokens, cos, sin = _inputs(1, 2, 4, 10, 8, 3, 4)
    out = token_attention(q[:0], rows, tokens[:0], cos[:0], sin[:0], 4, 2)
    assert out.shape == (0, 2, 4, 8)
    out = token_attention(q[:, :, :0], rows, tokens, cos, sin, 4, 2)
    out.sum().backward()
    assert out.shape == (1, 2, 0, 8) and torch.count_nonzero(rows.grad) == 0


def _bad(**change):
    q, rows, tokens, cos, sin = _inputs(2, 2, 4, 10, 8, 3, 4)
    args = dict(q=q, rows=rows, tokens=tokens, cos=cos, sin=sin, dims=4, heads=2)
    args.update({k: (v(args) if callable(v) else v) for k, v in change.items()})
    return args


@pytest.mark.parametrize("change,exc,words", [
    (dict(q=lambda a: a["q"][0]), ValueError, "q must have shape [B, H, N, d]"),
    (dict(heads=3), ValueError, "q must have H = heads = 3 heads"),
    (dict(rows=lambda a: a["rows"][:-1]), ValueError, "rows must have shape [2·H·V, d] = [4·V, 8]"),
    (dict(rows=lambda a: a["rows"][:, :4]), ValueError, "rows must have shape [2·H·V, d]"),
    (dict(rows=lambda a: a["rows"].float()), TypeError, "rows must have the dtype of q"),
    (dict(tokens=lambda a: a["tokens"][:, :3]), ValueError, "tokens must have shape [B, M] = [2, M >= N = 4]"),
    (dict(tokens=lambda a: a["tokens"] + 3), ValueError, "tokens must hold token ids in [0, V) = [0, 3)"),
    (dict(tokens=lambda a: a["tokens"] - 3), ValueError, "tokens must hold token ids in [0, V) = [0, 3)"),
    (dict(cos=lambda a: a["cos"].clone().requires_grad_()), ValueError, "cos"),
    (dict(cos=lambda a: a["cos"].long()), TypeError, "cos"),
    (dict(dims=10), ValueError, "dims"),
    (dict(tokens=lambda a: a["tokens"].float()), TypeError, "tokens must have dtype"),
    (dict(dims=3), ValueError, "dims must be even"),
    (dict(cos=lambda a: a["cos"][..., :1]), ValueError, "cos must have shape"),
    (dict(q=lambda a: a["q"].long()), TypeError, "q must have dtype"),
])
def test_bad_input_raises_named_error(change, exc, words):
    with pytest.raises(exc) as info:
        token_attention(**_bad(**change))
    assert words in str(info.value)


@pytest.mark.parametrize("heads", [0, 5])
def test_raw_op_names_rows_that_do_not_split_into_heads(heads):
    args = _bad()
    with pytest.raises(ValueError, match=r"rows must have shape \[2·H·V, d\] with heads = H >= 1"):
        torch.ops.pyaudiok.token_attention_cpu(*(args[k].detach() if isinstance(args[k], torch.Tensor) else args[k]
                                                 for k in ("q", "rows", "tokens", "cos", "sin", "dims")), heads)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_gpu_route_matches_cpu_float64(dtype):
    """On a GPU the op takes the reference route, the gathered keys and values on the fused gather
    and Triton attention: output and gradients against the CPU kernels in float64."""
    q, rows, tokens, cos, sin = _inputs(2, 2, 64, 500, 64, 40, 32)
    want = token_attention(q, rows, tokens, cos, sin, 32, 2)
    grad = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, (q, rows), grad)
    cuda = [t.detach().to("cuda", dtype if t.is_floating_point() else t.dtype) for t in (q, rows, tokens, cos, sin)]
    cuda[0].requires_grad_(), cuda[1].requires_grad_()
    got = token_attention(*cuda, 32, 2)
    got_grads = torch.autograd.grad(got, cuda[:2], grad.to("cuda", dtype))
    assert_close("out", got, want, dtype)
    for name, g, w in zip(("dq", "d rows"), got_grads, want_grads):
        assert_close(name, g, w, dtype, scale=4.0 if dtype == torch.bfloat16 else 1.0)
