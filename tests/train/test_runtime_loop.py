"""`fit_steps`, the single-file trainers' loop: rows of interval means at log_every and at the last
step, the logged lines, clipping, and a loss that goes down."""
from __future__ import annotations

import pytest
import torch

from pyaudiok.train.runtime import fit_steps


def test_rows_are_interval_means_logged_every_few_steps_and_at_the_end():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    seen, lines = [], []

    def step_loss(step):
        seen.append(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        return loss, {"double": 2 * float(loss.detach()), "triple": 3 * loss.detach()}  # a float and a tensor part

    rows, seconds = fit_steps(model, opt, 7, step_loss, log_every=3, log=lines.append,
                              describe=lambda row: f"step {row['step']} loss {row['loss']:.4f}")
    assert seen == list(range(7)) and seconds >= 0
    assert [row["step"] for row in rows] == [3, 6, 7]
    assert lines == [f"step {row['step']} loss {row['loss']:.4f}" for row in rows]
    for row in rows:
        assert abs(row["double"] - 2 * row["loss"]) < 1e-6 and abs(row["triple"] - 3 * row["loss"]) < 1e-6
        assert all(type(v) in (int, float) for v in row.values())  # tensor parts come back as numbers
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_gradient_norm_is_clipped_before_the_step():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)

    def step_loss(step):  # d loss / d w = −1000: one unclipped step would move w by 1000
        return -1000.0 * model.weight.sum(), {}

    fit_steps(model, opt, 1, step_loss, log_every=1, log=lambda line: None, describe=str, clip=0.5)
    assert abs(model.weight.item() - 0.5) < 1e-6


def test_pick_device_names_and_errors():
    from pyaudiok.train.runtime import pick_device
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            pick_device("cuda")


@pytest.mark.parametrize("training", [True, False])
def test_classification_accuracy_counts_over_uneven_batches_and_restores_the_mode(training):
    from pyaudiok.train.runtime import classification_accuracy
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.9)).train(training)
    x, y = torch.randn(23, 4), torch.randint(0, 3, (23,))
    with torch.no_grad():
        expected = (model[0](x).argmax(1) == y).sum().item() / 23  # eval mode: dropout off
    assert classification_accuracy(model, x, y, batch=5) == expected
    assert model.training == training
    assert classification_accuracy(model, x[:0], y[:0]) == 0.0
