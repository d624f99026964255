"""`pyaudiok train diffstride`: embedded data, a few steps of each run, results and checkpoints."""
import json

import pytest
import torch

from pyaudiok import cli
from pyaudiok.train import diffstride

pytestmark = pytest.mark.usefixtures("one_thread")


def test_embedded_sets_have_every_class():
    x, y = diffstride.image_set(60, seed=0)
    assert x.shape == (60, 3, 32, 32) and set(y.tolist()) == set(range(10))
    a, b = diffstride.audio_set(30, seed=0)
    assert a.shape == (30, 40, 63) and torch.isfinite(a).all() and b.max() < len(diffstride.AUDIO_CLASSES)
    x2, _ = diffstride.image_set(60, seed=0)
    assert torch.equal(x, x2)  # deterministic per seed


def test_cli_runs_baselines_and_poor_init_and_strides_move(tmp_path, capsys):
    argv = ["train", "diffstride", "--task", "audio", "--steps", "3", "--batch", "8", "--width", "4",
            "--train-size", "16", "--test-size", "8", "--runs", "conv,spectral,poor_init", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"conv", "spectral", "poor_init"}
    poor = results["poor_init"]
    assert poor["initial_strides"] == [[1.0], [1.0], [3.0], [2.0], [3.0]]
    assert poor["learned_strides"] != poor["initial_strides"] and min(min(s) for s in poor["learned_strides"]) >= 1
    assert results["spectral"]["learned_strides"] == [[1.0], [1.0], [2.0], [2.0], [2.0]]  # fixed
    assert 0 <= results["conv"]["accuracy"] <= 1
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 3
    assert "poor_init" in capsys.readouterr().out
