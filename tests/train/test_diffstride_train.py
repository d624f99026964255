"""`pyaudiok train diffstride`: embedded data, a few steps of each run, results and checkpoints."""
import json

import pytest
import torch

from pyaudiok import cli
from pyaudiok.train import diffstride
from pyaudiok.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_embedded_sets_have_every_class():
    x, y = diffstride.image_set(60, seed=0)
    assert x.shape == (60, 3, 32, 32) and set(y.tolist()) == set(range(10))
    a, b = diffstride.audio_set(30, seed=0)
    assert a.shape == (30, 40, 63) and torch.isfinite(a).all() and b.max() < len(diffstride.AUDIO_CLASSES)
    x2, _ = diffstride.image_set(60, seed=0)
    assert torch.equal(x, x2)  # deterministic per seed


def _tiny_argv(out, runs="conv,spectral,poor_init", *extra):
    return ["train", "diffstride", "--task", "audio", "--steps", "3", "--batch", "8", "--width", "4",
            "--train-size", "16", "--test-size", "8", "--runs", runs, "--out", str(out), *extra]


def test_cli_runs_baselines_and_poor_init_and_strides_move(tmp_path, capsys):
    assert cli.main(_tiny_argv(tmp_path)) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"conv", "spectral", "poor_init"}
    poor = results["poor_init"]
    assert poor["initial_strides"] == [[1.0], [1.0], [3.0], [2.0], [3.0]]
    assert poor["learned_strides"] != poor["initial_strides"] and min(min(s) for s in poor["learned_strides"]) >= 1
    assert results["spectral"]["learned_strides"] == [[1.0], [1.0], [2.0], [2.0], [2.0]]  # fixed
    assert 0 <= results["conv"]["accuracy"] <= 1
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 3
    assert "poor_init" in capsys.readouterr().out


def test_cli_device_cpu(tmp_path):
    assert cli.main(_tiny_argv(tmp_path, "conv,poor_init", "--device", "cpu")) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(r["config"]["device"] == "cpu" and 0 <= r["accuracy"] <= 1 for r in results.values())
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        cli.main(_tiny_argv(tmp_path, "conv", "--device", "tpu"))


@pytest.mark.gpu
def test_cli_trains_on_cuda(tmp_path):
    assert cli.main(_tiny_argv(tmp_path, "conv,spectral,poor_init", "--device", "cuda")) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"conv", "spectral", "poor_init"}
    assert all(r["config"]["device"] == "cuda" and 0 <= r["accuracy"] <= 1 for r in results.values())
    poor = results["poor_init"]
    assert poor["learned_strides"] != poor["initial_strides"] and min(min(s) for s in poor["learned_strides"]) >= 1
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.pt"))
    assert len(checkpoints) == 3
    for path in checkpoints:
        assert all(t.is_cuda for t in load_checkpoint(path, map_location=None)["model"].values())  # trained there
        assert all(t.device.type == "cpu" for t in load_checkpoint(path)["model"].values())  # loads without a GPU


def test_feature_size_leaves_the_model_untouched():
    """The shape probe runs in eval mode: the BatchNorm statistics saved with the model are the
    trained ones, and the model's mode comes back as it was."""
    cfg = diffstride.TrainConfig(task="audio", width=4)
    x, _ = diffstride.audio_set(4, seed=0)
    model = diffstride._model(cfg, x.shape[1], len(diffstride.AUDIO_CLASSES)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    size = diffstride._feature_size(model, x)
    assert len(size) == 1 and size[0] >= 1 and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
