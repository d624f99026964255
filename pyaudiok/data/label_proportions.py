"""Data for learning from label proportions (DESIGN §10): an embedded image set split once into
train and test, and random bags with their class proportions.

The images are scikit-learn's handwritten digits (1797 grey 8 × 8 images, 10 classes), which ship
inside the scikit-learn package (`sklearn.datasets.load_digits`, no download).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Split", "Bags", "load_digits", "make_bags"]


class Split(NamedTuple):
    x_train: torch.Tensor  # [N, 64] float32 in [0, 1]
    y_train: torch.Tensor  # [N] int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int


class Bags(NamedTuple):
    bag_index: torch.Tensor    # [N] int64: the bag of each training instance
    proportions: torch.Tensor  # [n_bags, K] float32: each bag's class histogram / its size
    sizes: torch.Tensor        # [n_bags] int64


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's digits, pixels scaled to [0, 1], a stratified-by-chance random split."""
    try:
        from sklearn import datasets
    except ImportError as e:
        raise ImportError("the digits set ships with scikit-learn, which is not installed: "
                          "pip install scikit-learn (or pyaudiok[train])") from e
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train], x[test], y[test], int(y.max()) + 1)


def make_bags(labels: torch.Tensor, bag_size: int, n_classes: int, seed: int = 0) -> Bags:
    """Random bags of `bag_size` instances (the last one holds the remainder, so it may be smaller),
    drawn once from `seed`; the proportions are each bag's label histogram over its size."""
    if isinstance(bag_size, bool) or not isinstance(bag_size, int):
        raise TypeError(f"bag_size must be an int; got {type(bag_size).__name__} {bag_size!r}")
    if bag_size < 1:
        raise ValueError(f"bag_size must be >= 1; got {bag_size}")
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor [N]; got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < n_classes:
        # a negative label would silently count as class n_classes - 1
        raise ValueError(f"labels must lie in [0, {n_classes}) (n_classes); got min {int(labels.min())}, "
                         f"max {int(labels.max())}")
    n = labels.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    bag_index = torch.empty(n, dtype=torch.int64)
    bag_index[order] = torch.arange(n) // bag_size
    n_bags = -(-n // bag_size)
    counts = torch.zeros(n_bags, n_classes).index_put_((bag_index, labels), torch.ones(n), accumulate=True)
    sizes = torch.bincount(bag_index, minlength=n_bags)
    return Bags(bag_index, counts / sizes[:, None], sizes)
