"""The speaker-based trainers (DIVE, Wavesplit) decide their speakers before the run: `--source tts`
with too few synthesiser voices is refused, `auto` falls back to synthetic speakers."""
import json

import pytest

from pyaudiok import cli
from pyaudiok.data import speakers
from pyaudiok.train import dive, wavesplit
from pyaudiok.train.runtime import ConfigError
from pyaudiok.train.speaker_runs import speaker_source

from . import test_dive_train, test_wavesplit_train

pytestmark = pytest.mark.usefixtures("one_thread")

# (trainer module, its tiny CLI arguments ending in "--source synthetic"); both tiny runs ask for 4
# training and 3 held-out speakers.
TRAINERS = [pytest.param(dive, test_dive_train.TINY, id="dive"),
            pytest.param(wavesplit, test_wavesplit_train.TINY, id="wavesplit")]


def _installed_voices(monkeypatch, train: int, valid: int):
    """Voice discovery answering `train` and `valid` synthesiser speakers, whatever is installed."""
    monkeypatch.setattr(speakers, "tts_speaker_counts", lambda sample_rate, cache_dir=None:
                        {"train": train, "valid": valid})


def _with_source(tiny: list[str], source: str) -> list[str]:
    assert tiny[-2:] == ["--source", "synthetic"]
    return tiny[:-1] + [source]


@pytest.mark.parametrize("trainer, tiny", TRAINERS)
@pytest.mark.parametrize("train, valid, words", [
    (3, 3, "give 3 training voices; --train-speakers needs 4"),
    (27, 2, "give 2 held-out voices; --eval-speakers needs 3"),
    (0, 0, "give 0 training voices; --train-speakers needs 4")])
def test_too_few_tts_voices_are_refused_before_the_run(monkeypatch, tmp_path, capsys, trainer, tiny, train, valid,
                                                       words):
    _installed_voices(monkeypatch, train, valid)
    with pytest.raises(SystemExit) as exit_:
        cli.main(_with_source(tiny, "tts") + ["--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"--source tts: the installed synthesisers (espeak-ng, flite) {words}" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    # Called directly, train() refuses before it picks a device or builds the data.
    monkeypatch.setattr(trainer, "pick_device", None)
    with pytest.raises(ConfigError, match="--source tts"):
        trainer.train(trainer.TrainConfig(source="tts", train_speakers=4, eval_speakers=3))


@pytest.mark.parametrize("trainer, tiny", TRAINERS)
def test_auto_source_takes_synthetic_speakers_when_the_voices_are_too_few(monkeypatch, tmp_path, capsys, trainer,
                                                                          tiny):
    _installed_voices(monkeypatch, 3, 1)
    assert cli.main(_with_source(tiny, "auto") + ["--steps", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "--source auto: the installed synthesisers (espeak-ng, flite) give 3 training voices" in out
    assert "synthetic" in json.dumps(json.loads((tmp_path / "results.json").read_text()))


def test_speaker_source_takes_voices_only_when_they_are_enough(monkeypatch):
    _installed_voices(monkeypatch, 4, 3)
    for source in ("auto", "tts"):
        assert speaker_source(source, 8_000, train_speakers=4, eval_speakers=3) == ("tts", None)
    assert speaker_source("synthetic", 8_000, train_speakers=4, eval_speakers=3) == ("synthetic", None)
    # No voice at all: auto takes synthetic speakers without a word.
    _installed_voices(monkeypatch, 0, 0)
    assert speaker_source("auto", 8_000, train_speakers=16, eval_speakers=6) == ("synthetic", None)
    with pytest.raises(ConfigError, match="--source must be one of auto, synthetic, tts"):
        speaker_source("voices", 8_000, 4, 3)
