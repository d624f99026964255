"""Learning from label proportions: the proportion loss against a hand-computed case and its
gradients; OT pseudo-labels on every Sinkhorn backend against the reference, with their row sums
1 and class totals k·π_b, bags of unequal sizes, empty bags and batches; bad inputs."""
from __future__ import annotations

import math

import pytest
import torch

import pyaudiok
from pyaudiok.nn import OTPseudoLabelLoss, ProportionLoss
from pyaudiok.ops import ot_pseudo_labels, proportion_loss, sinkhorn
from pyaudiok.ops.sinkhorn import SINKHORN

from ..harness import FUSED_BACKENDS, compare_with_reference, require_backend


def random_bags(sizes, K, device="cpu", zero_class=False):
    """bag_index for bags of the given sizes (shuffled), random proportions [n_bags, K]."""
    bag_index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    bag_index = bag_index[torch.randperm(len(bag_index))]
    props = torch.rand(len(sizes), K) + 0.1
    if zero_class:
        props[:, 0] = 0
    return bag_index.to(device), (props / props.sum(1, keepdim=True)).to(device)


# ----------------------------------------------------------------------------------------------
# proportion_loss

def test_proportion_loss_hand_computed():
    # Bag 0 holds instances 0 and 2, bag 1 instance 1.
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], dtype=torch.float64)
    bag_index = torch.tensor([0, 1, 0])
    props = torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=torch.float64)
    bag0 = -(0.5 * math.log(0.7) + 0.5 * math.log(0.3))  # mean prediction (0.7, 0.3)
    bag1 = -math.log(0.8)
    per_bag = proportion_loss(probs, bag_index, props, from_logits=False, reduction="none")
    torch.testing.assert_close(per_bag, torch.tensor([bag0, bag1], dtype=torch.float64))
    loss = proportion_loss(probs, bag_index, props, from_logits=False)
    assert loss.item() == pytest.approx((bag0 + bag1) / 2, rel=1e-12)
    assert proportion_loss(probs, bag_index, props, from_logits=False, reduction="sum").item() == pytest.approx(
        bag0 + bag1, rel=1e-12)
    # Logits: softmax first (log-probabilities are logits whose softmax is the probabilities).
    assert proportion_loss(probs.log(), bag_index, props).item() == pytest.approx((bag0 + bag1) / 2, rel=1e-12)


def test_proportion_loss_clamps_zero_mean_probability():
    probs = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    props = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    loss = proportion_loss(probs, torch.tensor([0]), props, from_logits=False, clamp=1e-4)
    assert loss.item() == pytest.approx(-0.5 * math.log(1e-4), rel=1e-12)


def test_proportion_loss_gradcheck_and_empty_bags():
    logits = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    bag_index = torch.tensor([0, 2, 2, 0, 3, 3, 3])  # bag 1 is empty
    _, props = random_bags([1, 1, 1, 1], 4)
    props = props.double()
    torch.autograd.gradcheck(lambda x: proportion_loss(x, bag_index, props), (logits,))
    per_bag = proportion_loss(logits, bag_index, props, reduction="none")
    assert per_bag[1] == 0 and (per_bag[[0, 2, 3]] > 0).all()
    # The mean runs over the three non-empty bags only.
    torch.testing.assert_close(proportion_loss(logits, bag_index, props), per_bag.sum() / 3)


def test_proportion_loss_takes_bfloat16_probabilities():
    """Probabilities rounded to bf16 sum to 1 only within bf16's rounding: still probabilities."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(16, 10, generator=gen), 1)
    bag_index, props = torch.arange(16) % 2, torch.full((2, 10), 0.1)
    assert (probs.bfloat16().float().sum(1) - 1).abs().max() > 1e-3  # beyond a float32 tolerance
    loss = proportion_loss(probs.bfloat16(), bag_index, props, from_logits=False)
    want = proportion_loss(probs, bag_index, props, from_logits=False)
    assert loss.dtype == torch.bfloat16 and loss.item() == pytest.approx(want.item(), rel=1e-2)


def test_proportion_loss_empty_batch_is_zero_with_a_gradient():
    logits = torch.randn(0, 3, requires_grad=True)
    loss = proportion_loss(logits, torch.zeros(0, dtype=torch.int64), torch.full((2, 3), 1 / 3))
    assert loss.item() == 0
    loss.backward()
    assert logits.grad.shape == (0, 3)


def test_proportion_loss_non_contiguous_and_float32():
    logits = torch.randn(4, 9, dtype=torch.float64)[:, ::3]  # [4, 3], strided
    bag_index, props = torch.tensor([1, 0, 1, 1]), torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    ref = proportion_loss(logits.contiguous(), bag_index, props.double())
    out = proportion_loss(logits.float(), bag_index, props)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# ot_pseudo_labels

def _labels(**kw):
    def fn(log_probs, bag_index, props):
        return ot_pseudo_labels(log_probs, bag_index, props, **kw)
    return fn


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("sizes,K", [([5, 1, 9], 3), ([8, 8, 8, 8], 10), ([2, 17], 4)])
def test_pseudo_labels_match_reference(backend, sizes, K):
    device = require_backend(SINKHORN, backend)
    bag_index, props = random_bags(sizes, K, device)
    log_probs = torch.log_softmax(2 * torch.randn(len(bag_index), K, device=device), 1)
    compare_with_reference(_labels(eps=1.0, n_iters=30, tol=None), (log_probs, bag_index, props), backend, scale=5)


@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_pseudo_label_marginals(backend):
    device = require_backend(SINKHORN, backend) if backend != "reference" else torch.device("cpu")
    sizes, K = [6, 1, 13, 4], 5
    bag_index, props = random_bags(sizes, K, device, zero_class=True)
    log_probs = torch.log_softmax(torch.randn(len(bag_index), K, device=device), 1)
    tol = 1e-5
    with pyaudiok.use_backend(backend):
        labels = ot_pseudo_labels(log_probs, bag_index, props, eps=0.5, n_iters=2000, tol=tol)
    assert labels.shape == log_probs.shape and not labels.requires_grad
    # One marginal is exact after the last half-step, the other within tol (in plan units, so k·tol
    # in label units): rows sum to 1, the labels of bag b sum to k_b·π_b.
    k = torch.tensor(sizes, device=device, dtype=torch.float32)
    row_err = torch.zeros(len(sizes), device=device).index_add(0, bag_index, (labels.sum(1) - 1).abs())
    totals = torch.zeros(len(sizes), K, device=device).index_add(0, bag_index, labels)
    col_err = (totals - k[:, None] * props).abs().sum(1)
    assert (row_err <= k * tol * 1.01 + 1e-5).all() and (col_err <= k * tol * 1.01 + 1e-5).all(), (row_err, col_err)
    assert (labels[:, 0] == 0).all()  # a class absent from every bag gets no label mass


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_precision_log_probs_are_transported_in_float32(dtype):
    """Half-precision log-probabilities (a classifier under autocast): the marginals 1/k_b and π_b
    would not balance in half precision; the labels are the float32 ones, rounded."""
    sizes, K = [6, 1, 13, 4], 5
    bag_index, props = random_bags(sizes, K, torch.device("cpu"))
    log_probs = torch.log_softmax(torch.randn(len(bag_index), K), 1).to(dtype)
    labels = ot_pseudo_labels(log_probs, bag_index, props, eps=0.5, n_iters=200)
    assert labels.dtype == dtype
    assert torch.equal(labels, ot_pseudo_labels(log_probs.float(), bag_index, props, eps=0.5, n_iters=200).to(dtype))
    hard = ot_pseudo_labels(log_probs, bag_index, props, eps=0.5, n_iters=200, hard=True)
    assert hard.dtype == dtype and torch.equal(hard.sum(1), torch.ones(len(bag_index), dtype=dtype))


@pytest.mark.parametrize("k,K", [(7, 3), (3, 7)])  # bags longer and shorter than the class count
def test_pseudo_labels_are_one_bag_of_sinkhorn(k, K):
    """A single bag, converged: k·Q of the op on cost −log P with masses 1/k and π."""
    log_probs = torch.log_softmax(torch.randn(k, K, dtype=torch.float64), 1)
    props = torch.rand(1, K, dtype=torch.float64) + 0.1
    props = props / props.sum()
    labels = ot_pseudo_labels(log_probs, torch.zeros(k, dtype=torch.int64), props, eps=0.7, n_iters=500, tol=None)
    plan = sinkhorn(-log_probs[None], torch.full((1, k), 1 / k, dtype=torch.float64), props, eps=0.7, n_iters=500,
                    tol=None)
    torch.testing.assert_close(labels, k * plan[0], atol=1e-10, rtol=1e-8)


def test_pseudo_labels_ignore_a_per_row_constant_and_follow_the_proportions():
    log_probs = torch.log_softmax(torch.randn(12, 4, dtype=torch.float64), 1)
    bag_index, props = random_bags([5, 7], 4)
    props = props.double()
    a = ot_pseudo_labels(log_probs, bag_index, props, n_iters=200, tol=None)
    b = ot_pseudo_labels(log_probs + torch.randn(12, 1, dtype=torch.float64), bag_index, props, n_iters=200, tol=None)
    torch.testing.assert_close(a, b)


def test_hard_pseudo_labels_are_the_plan_argmax():
    log_probs = torch.log_softmax(torch.randn(20, 4), 1)
    bag_index, props = random_bags([12, 8], 4)
    soft = ot_pseudo_labels(log_probs, bag_index, props, n_iters=100)
    hard = ot_pseudo_labels(log_probs, bag_index, props, n_iters=100, hard=True)
    assert torch.equal(hard.sum(1), torch.ones(20)) and torch.equal(hard.argmax(1), soft.argmax(1))


def test_pseudo_labels_confident_predictions_respect_proportions():
    """Every instance predicts class 0, but the bag is 3/4 class 1: the plan moves the least
    confident three quarters (largest −log P_0 − (−log P_1)) to class 1."""
    margin = torch.linspace(0.5, 4.0, 8, dtype=torch.float64)  # how strongly each one prefers class 0
    log_probs = torch.log_softmax(torch.stack([margin, torch.zeros(8, dtype=torch.float64)], 1), 1)
    labels = ot_pseudo_labels(log_probs, torch.zeros(8, dtype=torch.int64),
                              torch.tensor([[0.25, 0.75]], dtype=torch.float64), eps=0.05, n_iters=3000, tol=1e-9,
                              hard=True)
    assert labels[:, 1].tolist() == [1.0] * 6 + [0.0] * 2


def test_pseudo_labels_empty_batch_and_empty_bags():
    props = torch.full((3, 2), 0.5)
    assert ot_pseudo_labels(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64), props).shape == (0, 2)
    log_probs = torch.log_softmax(torch.randn(4, 2), 1)
    labels = ot_pseudo_labels(log_probs, torch.tensor([2, 0, 2, 0]), props)  # bag 1 empty
    torch.testing.assert_close(labels.sum(1), torch.ones(4), atol=1e-4, rtol=0)


def test_pseudo_labels_zero_probability_stays_finite():
    log_probs = torch.log_softmax(torch.randn(6, 3), 1)
    log_probs[:, 2] = -math.inf  # class 2 impossible to the model, but present in the bag
    labels = ot_pseudo_labels(log_probs, torch.zeros(6, dtype=torch.int64), torch.tensor([[0.5, 0.0, 0.5]]))
    assert torch.isfinite(labels).all()
    torch.testing.assert_close(labels.sum(0), torch.tensor([3.0, 0.0, 3.0]), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------
# Loss modules

def test_loss_modules_learn_a_linear_model():
    """A few steps of either loss on bags of separable points raise the instance accuracy."""
    torch.manual_seed(0)
    centres = 3 * torch.randn(3, 5)
    y = torch.randint(0, 3, (240,))
    x = centres[y] + torch.randn(240, 5)
    bag_index = torch.arange(240) // 8
    props = torch.zeros(30, 3).index_put_((bag_index, y), torch.ones(240), accumulate=True) / 8
    for loss_fn in (ProportionLoss(), OTPseudoLabelLoss(n_iters=30), OTPseudoLabelLoss(n_iters=30, hard=True)):
        torch.manual_seed(1)
        model = torch.nn.Linear(5, 3)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        before = (model(x).argmax(1) == y).float().mean()
        for _ in range(60):
            loss = loss_fn(model(x), bag_index, props)
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = (model(x).argmax(1) == y).float().mean()
        assert after > 0.9 and after > before, (loss_fn, before, after)


def test_ot_loss_empty_batch():
    logits = torch.zeros(0, 3, requires_grad=True)
    loss = OTPseudoLabelLoss()(logits, torch.zeros(0, dtype=torch.int64), torch.full((1, 3), 1 / 3))
    loss.backward()
    assert loss.item() == 0


# ----------------------------------------------------------------------------------------------
# Bad inputs

@pytest.mark.parametrize("op", [proportion_loss, ot_pseudo_labels])
def test_bad_inputs(op):
    x, bags, props = torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"proportions \[n_bags, K\] must sum to 1"):
        op(x, bags, torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        op(x, bags, torch.tensor([[1.5, -0.5, 0.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"bag_index must be in \[0, n_bags\) = \[0, 2\).*\[0, 2\]"):
        op(x, torch.tensor([0, 1, 2, 0]), props)
    with pytest.raises(ValueError, match=r"bag_index must be in \[0, n_bags\)"):
        op(x, torch.tensor([0, -1, 1, 0]), props)
    with pytest.raises(ValueError, match=r"bag_index has size 3 .*expected 4 to match B"):
        op(x, torch.tensor([0, 1, 1]), props)
    with pytest.raises(ValueError, match=r"proportions has size 2 in dim 1 .*expected 3 to match K"):
        op(x, bags, torch.full((2, 2), 0.5))
    with pytest.raises(TypeError, match="bag_index must have dtype int64"):
        op(x, bags.int(), props)
    with pytest.raises(TypeError, match="must have dtype"):
        op(x.long(), bags, props)
    with pytest.raises(ValueError, match=r"must have shape \[B, K\]"):
        op(x[None], bags, props)
    with pytest.raises(ValueError, match=r"bag_index must have shape \[B\]"):
        op(x, bags[None], props)
    with pytest.raises(TypeError, match="proportions must be a torch.Tensor"):
        op(x, bags, [[0.5, 0.5]])


def test_bad_options():
    x, bags, props = torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="from_logits=False must hold probabilities"):
        proportion_loss(x, bags, props, from_logits=False)
    with pytest.raises(ValueError, match="reduction"):
        proportion_loss(x, bags, props, reduction="max")
    with pytest.raises(ValueError, match="eps"):
        ot_pseudo_labels(x, bags, props, eps=0.0)
    with pytest.raises(ValueError, match="NaN"):
        ot_pseudo_labels(torch.full((4, 3), math.nan), bags, props)
    for clamp in (1.0, 2.0):  # clamp(p̄, clamp, 1) = 1: a loss of 0 whatever the predictions
        with pytest.raises(ValueError, match=r"clamp must be in \(0, 1\)"):
            proportion_loss(x, bags, props, clamp=clamp)
    with pytest.raises(TypeError, match="from_logits must be a bool"):
        proportion_loss(x, bags, props, from_logits=None)
    with pytest.raises(TypeError, match="hard must be a bool"):
        ot_pseudo_labels(x, bags, props, hard=1)
    # An empty batch returns before the transport: its options are checked all the same.
    empty, no_bags = torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64)
    with pytest.raises(ValueError, match="eps"):
        ot_pseudo_labels(empty, no_bags, props, eps=-1.0)
    with pytest.raises(ValueError, match="n_iters"):
        ot_pseudo_labels(empty, no_bags, props, n_iters=0)


@pytest.mark.parametrize("backend", ("cpu", pytest.param("triton", marks=pytest.mark.gpu)))
def test_bags_longer_than_the_triton_row_limit_match_reference(backend):
    """A bag past MAX_M instances is solved with its instances as rows (the other orientation): the
    labels and their gradients are still the reference's."""
    device = require_backend(SINKHORN, backend)
    bag_index, props = random_bags([1100, 7], 3, device)
    log_probs = torch.log_softmax(2 * torch.randn(len(bag_index), 3, device=device), 1)
    compare_with_reference(_labels(eps=1.0, n_iters=20, tol=None), (log_probs, bag_index, props), backend, scale=5)


def test_orientation_puts_instances_along_m_within_the_triton_limit():
    from pyaudiok.ops.label_proportions import _classes_as_rows
    assert _classes_as_rows(64) and _classes_as_rows(8) and _classes_as_rows(10)
    try:
        from pyaudiok.kernels.sinkhorn import MAX_M
    except ImportError:
        pytest.skip("no Triton: no limit on m")
    assert _classes_as_rows(MAX_M) and not _classes_as_rows(MAX_M + 1)


def test_soft_label_rows_sum_to_one_exactly_with_short_bags():
    """Bags shorter than the class count: still instances along m, so rows are exact distributions."""
    gen = torch.Generator().manual_seed(3)
    log_probs = torch.log_softmax(torch.randn(12, 10, generator=gen), 1)
    bags = torch.arange(12) // 4
    props = torch.softmax(torch.randn(3, 10, generator=gen), 1)
    labels = ot_pseudo_labels(log_probs, bags, props, n_iters=5, tol=None)
    torch.testing.assert_close(labels.sum(1), torch.ones(12), atol=1e-5, rtol=0)


def _bf16_softmax_bags():
    torch.manual_seed(0)
    logits, bags = torch.randn(10, 3), torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    props = torch.softmax(torch.randn(3, 3), -1).bfloat16()
    assert (props.double().sum(1) - 1).abs().max() > 1e-3  # beyond the float32 tolerance
    return logits, bags, props


def test_bf16_proportions_are_accepted_within_their_rounding():
    """Softmax rows rounded to bf16 sum to 1 only within ~2^-8: accepted (the losses of the same
    values in float32); a row off by more than bf16's epsilon is still refused."""
    logits, bags, props = _bf16_softmax_bags()
    mean = torch.zeros(3, 3).index_add(0, bags, torch.softmax(logits, 1)) / torch.bincount(bags)[:, None]
    torch.testing.assert_close(ProportionLoss()(logits, bags, props), -(props.float() * mean.log()).sum(1).mean())
    normalised = props.float() / props.float().sum(1, keepdim=True)  # the transport balances the marginals
    torch.testing.assert_close(OTPseudoLabelLoss(n_iters=30)(logits, bags, props),
                               OTPseudoLabelLoss(n_iters=30)(logits, bags, normalised))
    for loss_fn in (ProportionLoss(), OTPseudoLabelLoss(n_iters=30)):
        with pytest.raises(ValueError, match=r"must sum to 1 \(±0.0078125\)"):
            loss_fn(logits, bags, props * 1.02)


@pytest.mark.parametrize("loss_fn", [ProportionLoss(), OTPseudoLabelLoss(n_iters=30)], ids=type)
def test_loss_modules_name_the_logits_they_were_given(loss_fn):
    x, bags, props = torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"^logits must have shape \[B, K\]"):
        loss_fn(x[None], bags, props)
    with pytest.raises(TypeError, match="^logits must have dtype"):
        loss_fn(x.long(), bags, props)
    with pytest.raises(ValueError, match=r"^bag_index has size 3 .*to match B of logits \[4, 3\]"):
        loss_fn(x, bags[:3], props)


def test_ot_labels_from_logits_equal_those_of_their_log_softmax():
    x, bags, props = 3 * torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0]), torch.full((2, 3), 1 / 3)
    torch.testing.assert_close(ot_pseudo_labels(x, bags, props, from_logits=True),
                               ot_pseudo_labels(torch.log_softmax(x, 1), bags, props))
    x[2, 1] = math.inf
    with pytest.raises(ValueError, match="^logits must not hold NaN or"):
        OTPseudoLabelLoss()(x, bags, props)
