"""`pyaudiok train leaf` end to end at toy size: both frontends, results.json and checkpoints."""
from __future__ import annotations

import json

import pytest

from pyaudiok.train import leaf
from pyaudiok.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_task_has_at_least_ten_balanced_classes():
    x, y = leaf.audio_task(240, seed=0)
    assert x.shape == (240, leaf.CLIP) and len(leaf.CLASSES) >= 10
    counts = y.bincount(minlength=len(leaf.CLASSES))
    assert counts.min() > 5 and x.abs().amax(1).max() < 1.0


def _tiny_argv(out, *extra):
    return ["--epochs", "1", "--train-size", "16", "--test-size", "8", "--batch", "8", "--no-progress",
            "--out", str(out), *extra]


def test_main_trains_both_frontends(tmp_path, capsys):
    assert leaf.main(_tiny_argv(tmp_path)) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"leaf", "mel"}
    assert all(0.0 <= r["accuracy"] <= 1.0 and len(r["accuracy_per_epoch"]) == 1 for r in results.values())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["leaf_epoch1.pt", "mel_epoch1.pt"]
    assert "leaf  accuracy" in capsys.readouterr().out


def test_main_device_cpu(tmp_path):
    assert leaf.main(_tiny_argv(tmp_path, "--frontends", "mel", "--device", "cpu")) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mel"]["config"]["device"] == "cpu" and 0.0 <= results["mel"]["accuracy"] <= 1.0
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        leaf.main(_tiny_argv(tmp_path, "--device", "tpu"))


@pytest.mark.gpu
def test_cli_trains_on_cuda(tmp_path, capsys):
    assert leaf.main(_tiny_argv(tmp_path, "--device", "cuda")) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"leaf", "mel"}
    assert all(r["config"]["device"] == "cuda" and 0.0 <= r["accuracy"] <= 1.0 and len(r["accuracy_per_epoch"]) == 1
               for r in results.values())
    assert "leaf  accuracy" in capsys.readouterr().out
    for name in ("leaf_epoch1.pt", "mel_epoch1.pt"):
        path = tmp_path / "checkpoints" / name
        assert all(t.is_cuda for t in load_checkpoint(path, map_location=None)["model"].values())  # trained there
        assert all(t.device.type == "cpu" for t in load_checkpoint(path)["model"].values())  # loads without a GPU
