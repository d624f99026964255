"""`pyaudiok train leaf` end to end at toy size: both frontends, results.json and checkpoints."""
from __future__ import annotations

import json

import pytest

from pyaudiok.train import leaf

pytestmark = pytest.mark.usefixtures("one_thread")


def test_task_has_at_least_ten_balanced_classes():
    x, y = leaf.audio_task(240, seed=0)
    assert x.shape == (240, leaf.CLIP) and len(leaf.CLASSES) >= 10
    counts = y.bincount(minlength=len(leaf.CLASSES))
    assert counts.min() > 5 and x.abs().amax(1).max() < 1.0


def test_main_trains_both_frontends(tmp_path, capsys):
    assert leaf.main(["--epochs", "1", "--train-size", "16", "--test-size", "8", "--batch", "8", "--no-progress",
                      "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"leaf", "mel"}
    assert all(0.0 <= r["accuracy"] <= 1.0 and len(r["accuracy_per_epoch"]) == 1 for r in results.values())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["leaf_epoch1.pt", "mel_epoch1.pt"]
    assert "leaf  accuracy" in capsys.readouterr().out
