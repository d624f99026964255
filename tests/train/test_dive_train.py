"""`pyaudiok train dive`: a few steps on generated conversations, held-out DER, outputs."""
import json

import pytest

from pyaudiok import cli
from pyaudiok.codec.audio import save_audio
from pyaudiok.data.speakers import Conversations, SpeakerBank
from pyaudiok.metrics import read_rttm
from pyaudiok.train import dive

from .device_runs import assert_unknown_device_refused, run_on

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["train", "dive", "--steps", "4", "--batch", "2", "--duration", "2", "--channels", "8", "--embed-dim", "4",
        "--layers", "1", "--train-speakers", "4", "--eval-speakers", "3", "--eval-conversations", "2",
        "--log-every", "2", "--source", "synthetic"]


def test_cli_trains_and_reports_der(tmp_path, capsys):
    argv = TINY + ["--out", str(tmp_path)]
    assert cli.main(argv) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    after = result["after"]
    assert after["der"] == pytest.approx((after["missed"] + after["false_alarm"] + after["confusion"]) / after["total"])
    assert [r["step"] for r in result["log"]] == [2, 4] and (tmp_path / "checkpoint.pt").exists()
    assert "DER" in capsys.readouterr().out

    # `pyaudiok diarize` with that checkpoint: RTTM lines for the file on stdout.
    wav, _ = Conversations(SpeakerBank(8_000, "valid", num_speakers=3, source="synthetic"), 2, duration=2.0).item(0)
    save_audio(tmp_path / "talk.wav", wav, 8_000)
    assert cli.main(["diarize", str(tmp_path / "talk.wav"), "--checkpoint", str(tmp_path), "--threshold", "0.0"]) == 0
    rttm = capsys.readouterr().out
    (tmp_path / "talk.rttm").write_text(rttm)
    segments = read_rttm(tmp_path / "talk.rttm")["talk"]
    assert segments and all(0 <= s.start < s.end <= 2.0 for s in segments)  # threshold 0: the first slot is active
    assert cli.main(["diarize", str(tmp_path / "talk.wav"), "--checkpoint", str(tmp_path / "none.pt")]) == 2


def _run_on(out_dir, device: str) -> dict:
    """A tiny run on `device` (device_runs.run_on): DER from its parts, the log's steps, the checkpoint."""
    result = run_on(cli.main, TINY + ["--out", str(out_dir)], out_dir, device)
    after = result["after"]
    assert after["der"] == pytest.approx((after["missed"] + after["false_alarm"] + after["confusion"]) / after["total"])
    assert [r["step"] for r in result["log"]] == [2, 4] and (out_dir / "checkpoint.pt").exists()
    return result


def test_cli_accepts_device_cpu(tmp_path, capsys):
    _run_on(tmp_path, "cpu")
    assert "parameters on cpu" in capsys.readouterr().out
    assert_unknown_device_refused(cli.main, TINY + ["--out", str(tmp_path)])


@pytest.mark.gpu
def test_cli_trains_on_cuda(tmp_path, capsys):
    _run_on(tmp_path, "cuda")
    assert "parameters on cuda" in capsys.readouterr().out
    # The checkpoint of the GPU run loads on the CPU, for `pyaudiok diarize`.
    assert all(p.device.type == "cpu" for p in dive.load_model(tmp_path).parameters())
    wav, _ = Conversations(SpeakerBank(8_000, "valid", num_speakers=3, source="synthetic"), 2, duration=2.0).item(0)
    save_audio(tmp_path / "talk.wav", wav, 8_000)
    assert cli.main(["diarize", str(tmp_path / "talk.wav"), "--checkpoint", str(tmp_path), "--threshold", "0.0"]) == 0
    assert "SPEAKER talk" in capsys.readouterr().out
