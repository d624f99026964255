"""ChannelReorder (CHARM, DESIGN §7): permutation recovery by construction and by a short fit,
masked channels, order invariance, gradients through both normalizations, input checks."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pyaudiok.nn import ChannelReorder, reordering_loss

pytestmark = pytest.mark.usefixtures("one_thread")

NORMS = ("softmax", "sinkhorn")
T = 64


def signatures(batch: int, K: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """x[batch, K, T]: canonical channel k is a tone on FFT bin 2k + 3 (random phase, amplitude) plus noise."""
    t = torch.arange(T)
    phase = 2 * math.pi * torch.rand(batch, K, 1, generator=gen)
    amp = 0.7 + 0.6 * torch.rand(batch, K, 1, generator=gen)
    bins = 2 * torch.arange(K)[None, :, None] + 3
    return amp * torch.sin(2 * math.pi * bins * t / T + phase) + 0.1 * torch.randn(batch, K, T, generator=gen)


def shuffle(x: torch.Tensor, gen: torch.Generator | None = None):
    """x_in[b, j] = x[b, perm[b, j]]; `where[b, k]` = the input position of canonical channel k."""
    perm = torch.argsort(torch.rand(x.shape[:2], generator=gen), dim=1)
    return x.gather(1, perm[:, :, None].expand_as(x)), perm, torch.argsort(perm, dim=1)


class ToneEncoder(nn.Module):
    """Known keys: the normalised magnitude at the K signature bins."""

    def __init__(self, K: int) -> None:
        super().__init__()
        self.bins = 2 * torch.arange(K) + 3

    def forward(self, x):
        mag = torch.fft.rfft(x, dim=-1).abs()[:, self.bins]
        return mag / mag.norm(dim=-1, keepdim=True).clamp_min(1e-6)


@pytest.mark.parametrize("normalization", NORMS)
def test_recovers_a_known_permutation_by_construction(normalization):
    K, B = 6, 5
    module = ChannelReorder(K, d=K, encoder=ToneEncoder(K), normalization=normalization, eps=0.05, n_iters=50)
    with torch.no_grad():
        module.queries.copy_(torch.eye(K) * 40 * math.sqrt(K))  # slot k asks for the tone on bin 2k + 3
    canonical = signatures(B, K)
    x, perm, where = shuffle(canonical)
    out = module(x)
    assert out.x.shape == (B, K, T) and out.A.shape == (B, K, K)
    assert torch.equal(out.A.argmax(-1), where)
    torch.testing.assert_close(out.A.sum(-1), torch.ones(B, K), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.x, canonical, atol=0.05, rtol=0)


@pytest.mark.parametrize("normalization", NORMS)
def test_masked_channels_get_zero_weight(normalization):
    K, B = 6, 4
    module = ChannelReorder(K, d=K, encoder=ToneEncoder(K), normalization=normalization, eps=0.05, n_iters=50)
    with torch.no_grad():
        module.queries.copy_(torch.eye(K) * 40 * math.sqrt(K))
    x, perm, where = shuffle(signatures(B, K))
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[:, :2] = False                      # the first two inputs are absent ...
    mask[1, 4] = False                       # ... and one more in one example
    poisoned = x.masked_fill(~mask[:, :, None], float("nan"))  # absent channels may hold anything
    out = module(poisoned, mask)
    assert torch.isfinite(out.x).all()
    assert torch.equal(out.A * ~mask[:, None, :], torch.zeros_like(out.A))
    torch.testing.assert_close(out.A.sum(-1), torch.ones(B, K), atol=1e-4, rtol=0)
    present = mask.gather(1, where)          # slots whose electrode is present still find it
    assert torch.equal(out.A.argmax(-1)[present], where[present])
    torch.testing.assert_close(out.x, module(x.masked_fill(~mask[:, :, None], 0.0), mask).x)


@pytest.mark.parametrize("normalization", NORMS)
def test_short_fit_learns_the_permutation(normalization):
    """Default encoder and random queries, trained to reconstruct the canonical order from shuffled
    inputs: afterwards the argmax of every row of A is the true input position."""
    torch.manual_seed(0)
    K = 5
    module = ChannelReorder(K, d=16, normalization=normalization, eps=0.3, n_iters=10)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):
        canonical = signatures(16, K, gen)
        x, _, _ = shuffle(canonical, gen)
        loss = (module(x).x - canonical).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x, _, where = shuffle(signatures(64, K, gen), gen)
        A = module(x).A
    assert torch.equal(A.argmax(-1), where)


@pytest.mark.parametrize("normalization", NORMS)
def test_output_ignores_the_input_order_and_gradients_flow(normalization):
    K, B, C = 4, 3, 7                        # more inputs than canonical channels
    module = ChannelReorder(K, d=8, normalization=normalization)
    x = torch.randn(B, C, 50, requires_grad=True)
    mask = torch.rand(B, C) > 0.3
    mask[:, 0] = True
    out = module(x, mask)
    perm = torch.randperm(C)
    shuffled = module(x[:, perm], mask[:, perm])
    torch.testing.assert_close(shuffled.x, out.x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled.A, out.A[:, :, perm], atol=1e-5, rtol=1e-5)
    out.x.square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad * ~mask[:, :, None], torch.zeros_like(x.grad))
    for p in module.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert module.queries.grad.abs().sum() > 0


def test_empty_batch_and_single_channel():
    module = ChannelReorder(3, d=4)
    out = module(torch.randn(0, 5, 20))
    assert out.x.shape == (0, 3, 20) and out.A.shape == (0, 3, 5)
    out = module(torch.randn(2, 1, 20))
    torch.testing.assert_close(out.A, torch.ones(2, 3, 1))


class BadEncoder(nn.Module):
    def forward(self, x):
        return x[:, :3]


@pytest.mark.parametrize("call, error, words", [
    (lambda m: m([[1.0]]), TypeError, ["x", "[B, C_in, T]"]),
    (lambda m: m(torch.randn(4, 10)), ValueError, ["x", "[B, C_in, T]", "[4, 10]"]),
    (lambda m: m(torch.ones(2, 3, 10, dtype=torch.int64)), TypeError, ["x", "dtype"]),
    (lambda m: m(torch.randn(2, 0, 10)), ValueError, ["x", "C_in, T >= 1"]),
    (lambda m: m(torch.randn(2, 3, 10), torch.ones(2, 4, dtype=torch.bool)), ValueError,
     ["mask", "[B, C_in] = [2, 3]", "[2, 4]"]),
    (lambda m: m(torch.randn(2, 3, 10), torch.ones(2, 3)), TypeError, ["mask", "bool"]),
    (lambda m: m(torch.randn(2, 3, 10), torch.tensor([[True, False, True], [False] * 3])), ValueError,
     ["mask", "at least one channel"]),
])
def test_bad_inputs(call, error, words):
    with pytest.raises(error) as info:
        call(ChannelReorder(4, d=8))
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(n_canonical=0), ValueError, ["n_canonical"]),
    (dict(n_canonical=2.5), TypeError, ["n_canonical"]),
    (dict(d=0), ValueError, ["d must be"]),
    (dict(normalization="l1"), ValueError, ["normalization", "softmax", "sinkhorn"]),
    (dict(encoder=lambda x: x), TypeError, ["encoder", "[N, T] -> [N, d=8]"]),
    (dict(eps=0.0), ValueError, ["eps"]),
])
def test_bad_arguments(kwargs, error, words):
    with pytest.raises(error) as info:
        ChannelReorder(**{"n_canonical": 4, "d": 8, **kwargs})
    assert all(w in str(info.value) for w in words), str(info.value)


def test_encoder_with_the_wrong_output_shape_is_named():
    with pytest.raises(ValueError, match=r"encoder must map \[N, T\] = \[6, 10\] to \[N, d\] = \[6, 8\]; got \[6, 3\]"):
        ChannelReorder(4, d=8, encoder=BadEncoder())(torch.randn(2, 3, 10))


def test_reordering_loss():
    A = torch.softmax(torch.randn(2, 3, 4), -1)
    where = torch.tensor([[0, 3, 1], [2, 2, 0]])
    present = torch.tensor([[True, False, True], [True, True, True]])
    picked = A.gather(2, where[:, :, None])[:, :, 0].log()
    torch.testing.assert_close(reordering_loss(A, where), -picked.mean())
    torch.testing.assert_close(reordering_loss(A, where, present), -picked[present].mean())
    with pytest.raises(ValueError, match=r"where must have shape \[B, K\] = \[2, 3\]; got \[2, 4\]"):
        reordering_loss(A, torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="where must have dtype int64"):
        reordering_loss(A, where.float())


def test_single_sample_signals_and_bad_reordering_targets_are_named():
    with pytest.raises(ValueError, match="T >= 2"):
        ChannelReorder(4, d=8)(torch.randn(2, 3, 1))
    A = torch.softmax(torch.randn(2, 3, 4), -1)
    for bad in (4, -1):
        with pytest.raises(ValueError, match=r"where must lie in \[0, C_in\) = \[0, 4\)"):
            reordering_loss(A, torch.full((2, 3), bad))
    where = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"present must have shape \[B, K\] = \[2, 3\]"):
        reordering_loss(A, where, torch.ones(3, 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="present must have dtype bool"):
        reordering_loss(A, where, torch.ones(2, 3))
