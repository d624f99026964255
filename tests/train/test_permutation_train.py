"""`pyaudiok train permutation`: data, a tiny end-to-end run through the CLI, the probe output."""
import json

import pytest
import torch

from pyaudiok import cli
from pyaudiok.train.permutation import FRAMES, N_MELS, linear_probe, log_mel, synth_notes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_notes_and_log_mel_shapes_and_labels():
    audio, pitch, inst = synth_notes(6, 12, torch.Generator().manual_seed(0))
    assert audio.shape[0] == 6 and torch.isfinite(audio).all() and audio.abs().max() <= 1.0
    assert pitch.max() < 12 and inst.max() < 4
    assert log_mel(audio).shape == (6, N_MELS, FRAMES)


def test_linear_probe_separates_separable_features():
    x = torch.randn(200, 5)
    y = (x[:, 0] > 0).long()
    assert linear_probe(x[:150], y[:150], x[150:], y[150:], 2, 300) > 0.85


def test_cli_runs_and_reports_both_encoders(tmp_path, capsys):
    argv = ["train", "permutation", "--steps", "3", "--batch", "4", "--dim", "16", "--probe-train", "32",
            "--probe-test", "16", "--probe-steps", "5", "--out-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "pretext encoder" in printed and "random_init encoder" in printed
    result = json.loads((tmp_path / "probe.json").read_text())
    for name in ("pretext", "random_init"):
        assert 0 <= result[name]["pitch_accuracy"] <= 1 and 0 <= result[name]["instrument_accuracy"] <= 1
    assert (tmp_path / "train_log.csv").read_text().count("\n") == 4
    assert list((tmp_path / "checkpoints").glob("step_*.pt"))
