"""Learning from label proportions (DESIGN §10): instances x_i in bags, bag_index[i] = b, and per
bag only the class proportions π_b ∈ Δ_K are known.

* proportion_loss: −Σ_c π_bc log clamp(mean_{i∈b} P_ic), averaged over the non-empty bags (the
  mean-of-probabilities cross-entropy of DLLP). Cheap and plain PyTorch: no kernel of its own.
* ot_pseudo_labels: per bag, the entropic OT plan Q between the instances (mass 1/k_b each) and
  the classes (mass π_b) with cost −log P, by the batched Sinkhorn op (pyaudiok.ops.sinkhorn, so
  every Sinkhorn backend serves it); the labels are k_b·Q (rows sum to 1, class totals k_b·π_b),
  without gradient, or one-hot argmax rows of Q (hard=True).

Bags of different sizes are packed into one [n_bags, max_bag, K] batch: the padding rows carry
zero mass, which the Sinkhorn op supports, so all bags run in one call. The problem is solved
transposed (classes as rows, see _classes_as_rows): the last Sinkhorn half-step then makes the
instance rows exact and the class totals hold within tol (bags beyond the Triton kernel's column
limit: the reverse).
"""
from __future__ import annotations

import math

import torch

from . import _checks
from ._library import eager_under_compile
from .sinkhorn import _check_options, sinkhorn

__all__ = ["proportion_loss", "ot_pseudo_labels", "check_bags"]

SUM_ATOL = 1e-3  # how far a row of proportions or probabilities may sum from 1 (at least)
REDUCTIONS = ("mean", "sum", "none")


def sum_atol(dtype: torch.dtype) -> float:
    """How far a row of values stored in `dtype` may sum from 1: SUM_ATOL, or the dtype's epsilon
    where that is larger (a softmax row rounded to bf16 sums to 1 only within ~2^-8)."""
    return max(SUM_ATOL, torch.finfo(dtype).eps)


def check_bags(name: str, x, bag_index, proportions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check x[B, K] (float), bag_index[B] (int64, in [0, n_bags)) and proportions[n_bags, K]
    (finite, non-negative, rows summing to 1 within sum_atol of their dtype); all on one device."""
    x = _checks.float_tensor(name, x, ndim=2, layout="[B, K]")
    bag_index = _checks.tensor("bag_index", bag_index, ndim=1, layout="[B]", dtypes=(torch.int64,))
    proportions = _checks.float_tensor("proportions", proportions, ndim=2, layout="[n_bags, K]")
    _checks.dim_size("bag_index", bag_index, 0, x.shape[0], f"B of {name} {_checks.shape_str(x.shape)}")
    _checks.dim_size("proportions", proportions, 1, x.shape[1], f"K of {name} {_checks.shape_str(x.shape)}")
    _checks.same_device("bag_index", bag_index, name, x)
    _checks.same_device("proportions", proportions, name, x)
    n_bags, K = proportions.shape
    if K == 0:
        raise ValueError(f"{name} must have K >= 1 classes; got shape {_checks.shape_str(x.shape)}")
    _checks.ints_within(bag_index, 0, n_bags - 1,
                        f"bag_index must be in [0, n_bags) = [0, {n_bags}) (n_bags = proportions.shape[0])")
    _checks.values_hold(torch.isfinite(proportions) & (proportions >= 0), "proportions must be finite and non-negative")
    sums = proportions.double().sum(1)
    atol = sum_atol(proportions.dtype)
    off = (sums - 1).abs() > atol

    def rows_off() -> str:
        bad = off.nonzero()[:, 0][:4]
        return f"rows {bad.tolist()} summing to {sums[bad].tolist()}"
    _checks.values_hold(~off, f"every row of proportions [n_bags, K] must sum to 1 (±{atol:g})", rows_off)
    return x, bag_index, proportions


def proportion_loss(probs_or_logits: torch.Tensor, bag_index: torch.Tensor, proportions: torch.Tensor, *,
                    from_logits: bool = True, clamp: float = 1e-7, reduction: str = "mean") -> torch.Tensor:
    """Bag-level cross-entropy −Σ_c π_bc log clamp(p̄_bc, clamp, 1) of the mean prediction p̄_b of
    each bag's instances. probs_or_logits[B, K] (logits, softmaxed here, or probabilities with
    from_logits=False), bag_index[B] int64, proportions[n_bags, K]. reduction "mean" averages over
    the non-empty bags (0 when there are none), "sum" sums, "none" returns [n_bags] (0 for empty
    bags). Differentiable in probs_or_logits."""
    if not isinstance(from_logits, bool):
        raise TypeError(f"from_logits must be a bool; got {type(from_logits)!r}")
    name = "logits" if from_logits else "probs"  # what the caller passed, for the messages
    x, bag_index, proportions = check_bags(name, probs_or_logits, bag_index, proportions)
    clamp = _checks.positive_float("clamp", clamp)
    if clamp >= 1:  # clamp(p̄, clamp, 1) would be 1 everywhere: a loss of 0 whatever the predictions
        raise ValueError(f"clamp must be in (0, 1); got {clamp}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    work = torch.promote_types(x.dtype, torch.float32)  # half inputs accumulate in fp32
    if from_logits:
        probs = torch.softmax(x.to(work), dim=1)
    else:
        probs = x.to(work)
        _checks.values_hold((probs >= 0).all(1) & ((probs.sum(1) - 1).abs() <= sum_atol(x.dtype)),
                            "probs with from_logits=False must hold probabilities: non-negative rows "
                            "summing to 1 (pass logits with from_logits=True)")
    n_bags = proportions.shape[0]
    counts = torch.bincount(bag_index, minlength=n_bags)
    sums = probs.new_zeros(n_bags, probs.shape[1]).index_add(0, bag_index, probs)
    mean = sums / counts.clamp_min(1)[:, None].to(work)
    per_bag = -(proportions.to(work) * mean.clamp(min=clamp, max=1.0).log()).sum(1)
    per_bag = torch.where(counts > 0, per_bag, torch.zeros_like(per_bag))
    if reduction == "none":
        return per_bag.to(x.dtype)
    total = per_bag.sum()
    if reduction == "mean":
        total = total / (counts > 0).sum().clamp_min(1)
    return total.to(x.dtype)


def _pack(bag_index: torch.Tensor, n_bags: int):
    """Where each instance goes in the packed batch: (bag row among the non-empty bags, position
    in its bag), the bag sizes, and the non-empty bags."""
    counts = torch.bincount(bag_index, minlength=n_bags)
    live = counts > 0
    row_of_bag = torch.cumsum(live.long(), 0) - 1
    order = torch.argsort(bag_index, stable=True)
    start = torch.cumsum(counts, 0) - counts
    pos = torch.empty_like(bag_index)
    pos[order] = torch.arange(bag_index.numel(), device=bag_index.device) - start[bag_index[order]]
    return row_of_bag[bag_index], pos, counts, live


def _classes_as_rows(max_bag: int) -> bool:
    """Solve the transposed problem (classes × instances; the same plan, transposed)? Sinkhorn's
    last half-step makes the column marginal exact, so with instances as columns every soft label
    row sums to 1 exactly (class totals within tol). Only bags longer than the Triton kernel's
    limit on m keep instances as rows."""
    try:
        from pyaudiok.kernels.sinkhorn import MAX_M
    except ImportError:  # no Triton: no limit to respect
        MAX_M = max_bag
    return max_bag <= MAX_M


@eager_under_compile  # the packed bags' size follows bag_index
def ot_pseudo_labels(log_probs: torch.Tensor, bag_index: torch.Tensor, proportions: torch.Tensor, *,
                     eps: float = 1.0, n_iters: int | None = 100, tol: float | None = 1e-6,
                     hard: bool = False, from_logits: bool = False) -> torch.Tensor:
    """Pseudo-labels [B, K] (no gradient) from the per-bag entropic OT plan Q_b between the bag's
    k_b instances (mass 1/k_b each) and the K classes (mass π_b), cost −log P (log_probs[B, K];
    logits work too, a per-row constant does not change the plan, but from_logits=True takes their
    log-softmax first and names them "logits" in errors). Soft: k_b·Q (each row sums to 1, the
    labels of bag b sum to k_b·π_b per class); hard=True: one-hot argmax of each row of Q.
    eps, n_iters, tol as in pyaudiok.ops.sinkhorn (log-probabilities are clamped at log of the
    dtype's smallest normal number, so a zero probability is a large, finite cost)."""
    if not isinstance(from_logits, bool):
        raise TypeError(f"from_logits must be a bool; got {type(from_logits)!r}")
    name = "logits" if from_logits else "log_probs"
    log_probs, bag_index, proportions = check_bags(name, log_probs, bag_index, proportions)
    _check_options(eps, n_iters, tol, "implicit")  # here too, not only in sinkhorn: B = 0 returns early
    if not isinstance(hard, bool):
        raise TypeError(f"hard must be a bool; got {type(hard)!r}")
    if from_logits:  # +inf logits, or a row of only −inf, give NaN log-probabilities: refused below
        log_probs = torch.log_softmax(log_probs.detach(), dim=1)
    _checks.values_hold(~torch.isnan(log_probs) & (log_probs != math.inf),
                        f"{name} must not hold NaN or +inf" + (" (nor rows of only -inf)" if from_logits else ""))
    B, K = log_probs.shape
    if B == 0:
        return log_probs.new_zeros(0, K)
    # Half-precision log-probabilities (autocast) are transported in float32: the marginals 1/k_b
    # and π_b rounded to bf16 would not balance. The labels come back in the input's dtype.
    out_dtype, log_probs = log_probs.dtype, log_probs.to(torch.promote_types(log_probs.dtype, torch.float32))
    row, pos, counts, live = _pack(bag_index, proportions.shape[0])
    n_live, max_bag = int(live.sum()), int(counts.max())
    floor = math.log(torch.finfo(log_probs.dtype).tiny)
    transpose = _classes_as_rows(max_bag)
    with torch.no_grad():
        a = log_probs.new_zeros(n_live, max_bag)
        a[row, pos] = 1.0 / counts[bag_index].to(log_probs.dtype)
        b = proportions[live].to(log_probs.dtype)
        b = b / b.sum(1, keepdim=True)  # exactly balanced with a (rows checked to sum to 1 ± atol)
        cost_rows = -log_probs.detach().clamp_min(floor)
        # "implicit" keeps no per-iteration history: no gradient flows through the labels.
        if transpose:
            cost = log_probs.new_zeros(n_live, K, max_bag)
            cost[row, :, pos] = cost_rows
            q = sinkhorn(cost, b, a, eps=eps, n_iters=n_iters, tol=tol, backward="implicit")[row, :, pos]
        else:
            cost = log_probs.new_zeros(n_live, max_bag, K)
            cost[row, pos] = cost_rows
            q = sinkhorn(cost, a, b, eps=eps, n_iters=n_iters, tol=tol, backward="implicit")[row, pos]
    if hard:
        return torch.nn.functional.one_hot(q.argmax(1), K).to(out_dtype)
    return (q * counts[bag_index, None].to(q.dtype)).to(out_dtype)
