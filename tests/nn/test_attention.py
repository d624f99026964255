"""Partial rotary encoding and the attention module over latent_cross_attention."""
import pytest
import torch

from pyaudiok.nn import LatentAttention, PartialRotary
from pyaudiok.ops.latent_attention import latent_attention_reference


def test_partial_rotary_depends_on_relative_position_only():
    rotary = PartialRotary(16, fraction=0.5)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(p, s):
        return (rotary(q, torch.tensor([p])) * rotary(k, torch.tensor([s]))).sum()
    torch.testing.assert_close(score(7, 3), score(104, 100))
    assert not torch.allclose(score(7, 3), score(7, 4))
    # Only the first half of the channels move; norms are kept.
    out = rotary(q, torch.tensor([5]))
    assert torch.equal(out[..., 8:], q[..., 8:]) and not torch.equal(out[..., :8], q[..., :8])
    torch.testing.assert_close(out.norm(), q.norm())
    # Per-row positions [B, T] equal separate calls.
    x = torch.randn(2, 3, 4, 16, dtype=torch.float64)
    pos = torch.tensor([[0, 2, 5, 9], [1, 3, 4, 8]])
    torch.testing.assert_close(rotary(x, pos), torch.cat([rotary(x[b:b + 1], pos[b]) for b in range(2)]))


def test_latent_attention_module_matches_explicit_attention():
    attn = LatentAttention(32, 2).double()
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    tables_k = attn.rotary.tables(torch.arange(20), x.dtype)
    tables_q = attn.rotary.tables(torch.arange(14, 20), x.dtype)
    q = attn.queries(x[:, -6:], tables_q)
    k, v = attn.keys_values(x, tables_k)
    out = attn.attend(q, k, v)
    want = attn.out(latent_attention_reference(q, k, v).transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(out, want)


def test_head_split_without_gradient_equals_the_autograd_path():
    """Under no_grad the heads are split and rotated without the autograd node (sampling's path):
    the same values, small (few-ops route) and large (head-by-head route) alike."""
    attn = LatentAttention(128, 2).double()
    for T in (3, 8192):
        x = torch.randn(1, T, 128, dtype=torch.float64)
        rope = attn.rotary.tables(torch.arange(T), x.dtype, T)
        with_grad = attn.queries_keys_values(x, rope)
        assert with_grad[0].grad_fn is not None
        with torch.no_grad():
            without = attn.queries_keys_values(x, rope)
        assert without[0].grad_fn is None
        for a, b in zip(with_grad, without):
            assert b.is_contiguous() and torch.equal(a.detach(), b)


def test_bad_construction_is_named():
    for kwargs, match in ((dict(width=8, heads=0), "heads"), (dict(width=0, heads=1), "width"),
                          (dict(width=8, heads=3), "multiple of heads"),
                          (dict(width=8, heads=2, rotary_fraction=1.5), "fraction")):
        with pytest.raises(ValueError, match=match):
            LatentAttention(**kwargs)
    with pytest.raises(ValueError, match="fraction"):
        PartialRotary(8, -0.5)
    with pytest.raises(ValueError, match="base"):
        PartialRotary(8, 0.5, base=0.0)


def test_partial_rotary_refuses_other_head_dims_and_positions():
    rotary, x = PartialRotary(8), torch.randn(2, 3, 5, 8)
    assert rotary(x, torch.arange(5)).shape == x.shape and rotary(x, torch.arange(5).expand(2, 5)).shape == x.shape
    for args, error, match in (((torch.randn(2, 3, 5, 6), torch.arange(5)), ValueError, "head_dim = 8"),
                               ((x, torch.arange(4)), ValueError, r"positions must have shape \[T\] = \[5\]"),
                               ((x, torch.arange(5.0)), TypeError, "positions must have dtype"),
                               ((x[0], torch.arange(5)), ValueError, r"x must have shape \[B, H, T, d\]")):
        with pytest.raises(error, match=match):
            rotary(*args)
