"""`pyaudiok train permutation`: data, a tiny end-to-end run through the CLI, the probe output."""
import json

import pytest
import torch

from pyaudiok import cli
from pyaudiok.train.checkpoint import load_checkpoint
from pyaudiok.train.permutation import FAMILIES, FRAMES, N_MELS, linear_probe, log_mel, synth_notes
from pyaudiok.train.runtime import read_run_checkpoint

from .device_runs import check_device_option, run_on

pytestmark = pytest.mark.usefixtures("one_thread")


def test_notes_and_log_mel_shapes_and_labels():
    audio, pitch, family = synth_notes(6, 12, torch.Generator().manual_seed(0))
    assert audio.shape[0] == 6 and torch.isfinite(audio).all() and audio.abs().max() <= 1.0
    assert pitch.max() < 12 and family.max() < FAMILIES
    assert log_mel(audio).shape == (6, N_MELS, FRAMES)


def test_linear_probe_separates_separable_features():
    x = torch.randn(200, 5)
    y = (x[:, 0] > 0).long()
    assert linear_probe(x[:150], y[:150], x[150:], y[150:], 2, 300) > 0.85


def _tiny_run(out) -> list[str]:
    return ["train", "permutation", "--steps", "3", "--batch", "4", "--dim", "16", "--probe-train", "32",
            "--probe-test", "16", "--probe-steps", "5", "--log-every", "1", "--out", str(out)]


def test_cli_runs_and_reports_both_encoders(tmp_path, capsys):
    assert cli.main(_tiny_run(tmp_path)) == 0
    printed = capsys.readouterr().out
    assert "pretext encoder" in printed and "random_init encoder" in printed
    result = json.loads((tmp_path / "results.json").read_text())
    for name in ("pretext", "random_init"):
        assert 0 <= result[name]["pitch_accuracy"] <= 1 and 0 <= result[name]["instrument_accuracy"] <= 1
    assert result["config"]["probe_features"] == "concat"
    assert (tmp_path / "log.csv").read_text().count("\n") == 4  # header + one row per step
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["model_config"]["freq_patches"] == 4 and "encoder.0.weight" in state["model"]


def test_cli_accepts_a_device(tmp_path):
    check_device_option(cli.main, _tiny_run(tmp_path), tmp_path)


@pytest.mark.gpu
def test_cli_trains_on_cuda(tmp_path):
    result = run_on(cli.main, _tiny_run(tmp_path), tmp_path, "cuda")
    assert result["log"]  # run_on checked every logged loss is finite
    for name in ("pretext", "random_init"):
        assert 0 <= result[name]["pitch_accuracy"] <= 1 and 0 <= result[name]["instrument_accuracy"] <= 1
    saved = load_checkpoint(tmp_path / "checkpoint.pt", map_location=None)["model"]["encoder.0.weight"]
    assert saved.is_cuda  # trained there
    assert read_run_checkpoint(tmp_path)["model"]["encoder.0.weight"].device.type == "cpu"  # loads without a GPU
