"""`pyaudiok train wavesplit`: a few steps on generated mixtures, held-out SI-SDRi, outputs."""
import json

import pytest

from pyaudiok import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_trains_and_reports_si_sdr_improvement(tmp_path, capsys):
    argv = ["train", "wavesplit", "--steps", "4", "--batch", "2", "--segment-seconds", "0.25", "--channels", "8",
            "--embed-dim", "4", "--speaker-layers", "1", "--separation-layers", "1", "--train-speakers", "4",
            "--eval-speakers", "3", "--eval-mixtures", "4", "--log-every", "2", "--source", "synthetic",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    after = result["after"]
    assert after["si_sdri"] == pytest.approx(after["si_sdr"] - after["mixture_si_sdr"], abs=1e-4)
    assert result["speakers"] == "synthetic" and [r["step"] for r in result["log"]] == [2, 4]
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "log.csv").read_text().startswith("step,")
    assert "SI-SDRi" in capsys.readouterr().out
