"""`pyaudiok train wavesplit`: a few steps on generated mixtures, held-out SI-SDRi, outputs."""
import json
import math

import pytest
import torch

from pyaudiok import cli
from pyaudiok.codec.audio import load_audio, save_audio
from pyaudiok.data import speakers
from pyaudiok.train import wavesplit

from .device_runs import assert_unknown_device_refused, run_on

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["train", "wavesplit", "--steps", "4", "--batch", "2", "--segment-seconds", "0.25", "--channels", "8",
        "--embed-dim", "4", "--speaker-layers", "1", "--separation-layers", "1", "--train-speakers", "4",
        "--eval-speakers", "3", "--eval-mixtures", "4", "--log-every", "2", "--source", "synthetic"]


def test_cli_trains_and_reports_si_sdr_improvement(tmp_path, capsys):
    argv = TINY + ["--out", str(tmp_path)]
    assert cli.main(argv) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    after = result["after"]
    assert after["si_sdri"] == pytest.approx(after["si_sdr"] - after["mixture_si_sdr"], abs=1e-4)
    assert result["speakers"] == "synthetic" and [r["step"] for r in result["log"]] == [2, 4]
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "log.csv").read_text().startswith("step,")
    assert "SI-SDRi" in capsys.readouterr().out

    # `pyaudiok separate` with that checkpoint: one file per source, as long as the input.
    mixture = 0.3 * torch.sin(torch.arange(3001) * 0.05) + 0.2 * torch.sin(torch.arange(3001) * 0.31)
    save_audio(tmp_path / "mix.wav", mixture, 8_000)
    assert cli.main(["separate", str(tmp_path / "mix.wav"), "--checkpoint", str(tmp_path), str(tmp_path / "sep")]) == 0
    outputs = sorted((tmp_path / "sep").glob("source_*.wav"))
    assert len(outputs) == 2
    for path in outputs:
        wav, rate = load_audio(path)
        assert rate == 8_000 and wav.shape == (1, 3001) and torch.isfinite(wav).all()
    assert cli.main(["separate", str(tmp_path / "mix.wav"), "--checkpoint", str(tmp_path / "none.pt"),
                     str(tmp_path / "sep2")]) == 2


def _run_on(out_dir, device: str) -> dict:
    """A tiny run on `device` (device_runs.run_on): finite SI-SDRs, SI-SDRi their difference, the log's steps."""
    result = run_on(cli.main, TINY + ["--out", str(out_dir)], out_dir, device)
    after = result["after"]
    assert all(math.isfinite(after[k]) for k in ("si_sdr", "mixture_si_sdr", "si_sdri"))
    assert after["si_sdri"] == pytest.approx(after["si_sdr"] - after["mixture_si_sdr"], abs=1e-4)
    assert [r["step"] for r in result["log"]] == [2, 4] and (out_dir / "checkpoint.pt").exists()
    return result


def test_cli_accepts_device_cpu(tmp_path, capsys):
    _run_on(tmp_path, "cpu")
    assert "parameters on cpu" in capsys.readouterr().out
    assert_unknown_device_refused(cli.main, TINY + ["--out", str(tmp_path)])


@pytest.mark.gpu
def test_cli_trains_on_cuda(tmp_path, capsys):
    # Evaluation runs k-means++ on the GPU: its generator must be a CUDA one.
    _run_on(tmp_path, "cuda")
    assert "parameters on cuda" in capsys.readouterr().out
    # The checkpoint of the GPU run loads on the CPU, for `pyaudiok separate`.
    model, rate = wavesplit.load_model(tmp_path)
    assert rate == 8_000 and all(p.device.type == "cpu" for p in model.parameters())
    save_audio(tmp_path / "mix.wav", 0.3 * torch.sin(torch.arange(2000) * 0.05), 8_000)
    assert cli.main(["separate", str(tmp_path / "mix.wav"), "--checkpoint", str(tmp_path), str(tmp_path / "sep")]) == 0
    assert len(list((tmp_path / "sep").glob("source_*.wav"))) == 2


def test_evaluation_does_not_depend_on_its_batch_size():
    # Each evaluation batch clusters with the same seed: an item's centres are those it gets in any batch.
    torch.manual_seed(0)
    bank = speakers.SpeakerBank(8_000, "valid", num_speakers=3, utterances_per_speaker=2, utterance_seconds=(0.3, 0.4),
                                source="synthetic")
    mixtures = speakers.SeparationMixtures(bank, 2, segment_seconds=0.25, dynamic=False, num_mixtures=6)
    model = wavesplit.Wavesplit(wavesplit.WavesplitConfig(num_sources=2, num_speakers=4, channels=8, embed_dim=4,
                                                          speaker_layers=1, separation_layers=1))
    whole, in_pairs = (wavesplit.evaluate(model, mixtures, 6, batch=b) for b in (6, 2))
    assert whole == pytest.approx(in_pairs, abs=1e-4)
