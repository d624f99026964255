"""`pyaudiok train dive`: a few steps on generated conversations, held-out DER, outputs."""
import json

import pytest

from pyaudiok import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_trains_and_reports_der(tmp_path, capsys):
    argv = ["train", "dive", "--steps", "4", "--batch", "2", "--duration", "2", "--channels", "8", "--embed-dim", "4",
            "--layers", "1", "--train-speakers", "4", "--eval-speakers", "3", "--eval-conversations", "2",
            "--log-every", "2", "--source", "synthetic", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    after = result["after"]
    assert after["der"] == pytest.approx((after["missed"] + after["false_alarm"] + after["confusion"]) / after["total"])
    assert [r["step"] for r in result["log"]] == [2, 4] and (tmp_path / "checkpoint.pt").exists()
    assert "DER" in capsys.readouterr().out
