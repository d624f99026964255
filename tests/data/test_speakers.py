"""Multi-speaker data: synthetic speakers, synthesiser voices (a fake binary), mixtures, conversations."""
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyaudiok.data import speakers as spk
from pyaudiok.metrics import diarization_error_rate, read_rttm, write_rttm

SR = 8_000


def _bank(split="train", **kw):
    kw = {"num_speakers": 6, "utterances_per_speaker": 3, "utterance_seconds": (0.6, 1.0), "source": "synthetic", **kw}
    return spk.SpeakerBank(SR, split, seed=0, **kw)


def _periodicity(wav: np.ndarray, f0: float) -> float:
    """Peak normalised autocorrelation at lags within ±30 % of the period 1/f0."""
    ac = np.correlate(wav, wav, "full")[len(wav) - 1:]
    lags = np.arange(int(SR / (1.3 * f0)), int(SR / (0.7 * f0)) + 1)
    return float(ac[lags].max() / ac[0])


def test_synthetic_speakers_have_distinct_stable_voices():
    bank = _bank()
    assert bank.kind == "synthetic" and len(bank) == 6
    valid = _bank("valid")
    assert not set(bank.identities) & set(valid.identities)  # held-out speakers
    voices = [spk.synthetic_voice(0, i) for i in bank.identities]
    assert len({round(v.f0) for v in voices}) == 6
    # Every utterance of a speaker is periodic at its own pitch.
    for s in range(6):
        for u in (0, 1):
            wav = bank.utterance(s, u)
            assert np.isfinite(wav).all() and np.abs(wav).max() == pytest.approx(1.0)
            assert _periodicity(wav[:4000], voices[s].f0) > 0.3, (s, u)
    assert np.array_equal(bank.utterance(2, 1), _bank().utterance(2, 1))  # pure function of the seed
    assert not np.array_equal(bank.utterance(2, 1)[:1000], bank.utterance(2, 2)[:1000])


def test_separation_mixtures_sum_their_sources_and_remix_dynamically():
    bank = _bank()
    mixtures = spk.SeparationMixtures(bank, num_sources=(2, 3), segment_seconds=0.5, dynamic=True)
    for i in range(6):
        mix, src, who = mixtures.item(i)
        assert src.shape[1] == mix.shape[0] == 4000 and src.shape[0] in (2, 3)
        assert torch.allclose(src.sum(0), mix, atol=1e-5) and mix.abs().max() == pytest.approx(0.9, rel=1e-4)
        assert len(set(who.tolist())) == len(who) and who.max() < len(bank)
    assert {mixtures.num_sources(i) for i in range(20)} == {2, 3}
    mix, src, who = mixtures.batch([0, 1, 2, 3])
    assert mix.shape == (4, 4000) and src.shape[:2] == who.shape and src.shape[1] == mixtures.num_sources(0)
    # Dynamic: every index a new mixture; static: the set repeats.
    static = spk.SeparationMixtures(bank, num_sources=2, segment_seconds=0.5, dynamic=False, num_mixtures=4)
    assert torch.equal(static.item(1)[0], static.item(5)[0]) and not torch.equal(static.item(1)[0], static.item(2)[0])
    assert not torch.equal(mixtures.item(1, 2)[0], mixtures.item(5, 2)[0])
    assert torch.equal(mixtures.item(3)[0], mixtures.item(3)[0])
    with pytest.raises(ValueError, match="num_sources"):
        spk.SeparationMixtures(bank, num_sources=7)


def test_conversations_take_turns_with_overlap_and_round_trip_rttm(tmp_path):
    conv = spk.Conversations(_bank(), num_speakers=3, duration=6.0, overlap_prob=0.5, seed=1)
    overlapped = 0
    for i in range(3):
        wav, segments = conv.item(i)
        assert wav.shape == (6 * SR,) and torch.isfinite(wav).all()
        assert len({s.speaker for s in segments}) >= 2
        for a, b in zip(segments, segments[1:]):
            overlapped += b.start < a.end
        by_speaker = {}
        for s in segments:
            assert 0 <= s.start < s.end <= 6.0
            # Reference speech is where the waveform is loud; no speaker overlaps itself.
            assert wav[int(s.start * SR):int(s.end * SR)].abs().max() > 0.01
            by_speaker.setdefault(s.speaker, []).append(s)
        for turns in by_speaker.values():
            assert all(a.end <= b.start for a, b in zip(turns, turns[1:]))
        write_rttm(tmp_path / f"{i}.rttm", segments, file_id=f"conv{i}")
        back = read_rttm(tmp_path / f"{i}.rttm")[f"conv{i}"]
        assert len(back) == len(segments) and all(abs(a.start - b.start) <= 6e-4 and abs(a.end - b.end) <= 1.2e-3
                                                  and a.speaker == b.speaker for a, b in zip(segments, back))
        assert diarization_error_rate(segments, back).der < 5e-3  # millisecond rounding only
    assert overlapped > 0
    silent = spk.Conversations(_bank(), num_speakers=2, duration=4.0, overlap_prob=0.0)
    _, segs = silent.item(0)
    assert all(b.start >= a.end for a, b in zip(segs, segs[1:]))


def _fake_synth(bin_dir: Path, name: str, flag: str, freq: int) -> None:
    """A synthesiser that writes a 0.5 s tone (with 0.1 s of silence either side) to the file after `flag`."""
    script = bin_dir / name
    script.write_text(f"#!{sys.executable}\n"
                      "import sys, numpy as np, soundfile as sf\n"
                      f"path = sys.argv[sys.argv.index('{flag}') + 1]\n"
                      f"tone = 0.5 * np.sin(2 * np.pi * {freq} * np.arange(8000) / 16000)\n"
                      "sf.write(path, np.concatenate([np.zeros(1600), tone, np.zeros(1600)]), 16000)\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_synthesiser_voices_are_used_when_installed(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_synth(bin_dir, "espeak-ng", "-w", 300)
    _fake_synth(bin_dir, "flite", "-o", 500)
    monkeypatch.setenv("PATH", str(bin_dir))
    counts = spk.tts_speaker_counts(SR, tmp_path / "cache")
    assert counts == {"train": 27, "valid": 9}  # 12 voices × 3 pitches; every fourth voice held out
    bank = spk.SpeakerBank(SR, "train", num_speakers=27, utterances_per_speaker=2, cache_dir=tmp_path / "cache")
    valid = spk.SpeakerBank(SR, "valid", num_speakers=9, cache_dir=tmp_path / "cache")
    assert bank.kind == "tts" and len(bank.tts) == 3 * (len(spk.ESPEAK_VOICES) + len(spk.FLITE_VOICES))
    assert not set(bank.identities) & set(valid.identities) and len(valid) > 0
    wav = bank.utterance(0, 0)
    assert len(wav) == pytest.approx(0.5 * SR, abs=20)  # silence trimmed, resampled to 8 kHz
    engines = {bank.tts.identities[i][0] for i in bank.identities}
    assert engines == {"espeak-ng", "flite"}
    assert list((tmp_path / "cache" / "speakers").glob("*.wav")) and not list((tmp_path / "cache").rglob("*.tmp*"))
    mix, src, _ = spk.SeparationMixtures(bank, 2, segment_seconds=0.5).item(0)
    assert torch.allclose(src.sum(0), mix, atol=1e-5)

    # A bank always holds num_speakers: too few voices give synthetic speakers (auto) or an error (tts).
    assert spk.SpeakerBank(SR, "valid", num_speakers=10, cache_dir=tmp_path / "cache").kind == "synthetic"
    with pytest.raises(ValueError, match="give 9 valid speakers; num_speakers is 10"):
        spk.SpeakerBank(SR, "valid", num_speakers=10, source="tts", cache_dir=tmp_path / "cache")

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert spk.SpeakerBank(SR, "train", num_speakers=2, cache_dir=tmp_path / "c2").kind == "synthetic"
    with pytest.raises(ValueError, match="espeak-ng nor flite"):
        spk.SpeakerBank(SR, "train", source="tts", cache_dir=tmp_path / "c3")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split"):
        spk.SpeakerBank(SR, "test")
    with pytest.raises(ValueError, match="source"):
        spk.SpeakerBank(SR, source="wav")
    with pytest.raises(ValueError, match="overlap_prob"):
        spk.Conversations(_bank(), overlap_prob=1.5)


@pytest.mark.parametrize("engine", ["espeak-ng", "flite"])
def test_real_synthesiser_voices(engine, tmp_path):
    """With the Debian synthesiser installed (CI installs both), its voices speak: audible,
    trimmed utterances, a different signal per voice."""
    import shutil

    if shutil.which(engine) is None:
        pytest.skip(f"{engine} is not installed")
    available = spk.tts_speaker_counts(SR, tmp_path / "cache")["train"]
    bank = spk.SpeakerBank(SR, "train", num_speakers=available, utterances_per_speaker=1, source="tts",
                           cache_dir=tmp_path / "cache")
    mine = [s for s in range(len(bank)) if bank.tts.identities[bank.identity(s)][0] == engine][:2]
    assert len(mine) == 2
    first, second = (bank.utterance(s, 0) for s in mine)
    for wav in (first, second):
        assert 0.3 * SR < len(wav) < 10 * SR and np.isfinite(wav).all()
        assert np.sqrt(np.mean(wav ** 2)) > 0.05  # speech, not silence (peak-normalised)
    assert len(first) != len(second) or not np.allclose(first, second)


@pytest.mark.parametrize("make, match", [
    (lambda: _bank(utterance_seconds=(1.0, 0.5)), "utterance_seconds"),
    (lambda: spk.SpeakerBank(100, source="synthetic"), "sample_rate"),
    (lambda: spk.SeparationMixtures(_bank(), gain_db=-1), "gain_db"),
    (lambda: spk.SeparationMixtures(_bank(), dynamic=False, num_mixtures=0), "num_mixtures"),
    (lambda: spk.SeparationMixtures(_bank(), segment_seconds=float("nan")), "segment_seconds"),
    (lambda: spk.SeparationMixtures(_bank()).item(0, num_sources=9), "num_sources"),
    (lambda: spk.SeparationMixtures(_bank()).item(-1), "indices must be >= 0"),
    (lambda: spk.Conversations(_bank(), duration=0), "duration"),
    (lambda: spk.Conversations(_bank(), gap_seconds=(0.8, 0.1)), "gap_seconds"),
    (lambda: spk.Conversations(_bank(), max_overlap=0.05), "max_overlap"),
])
def test_more_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_an_empty_batch_of_mixtures_has_the_shapes_of_a_batch():
    data = spk.SeparationMixtures(_bank(), 3, segment_seconds=0.25)
    mix, sources, speakers = data.batch([])
    full = data.batch([0])
    assert (mix.shape, sources.shape, speakers.shape) == ((0, 2000), (0, 3, 2000), (0, 3))
    assert (mix.dtype, sources.dtype, speakers.dtype) == tuple(t.dtype for t in full)


@pytest.mark.parametrize("speaker", [-1, 6, 99])
def test_speakers_outside_the_bank_are_named(speaker):
    """-1 used to pick the last speaker silently, and 99 to end in a bare IndexError."""
    with pytest.raises(ValueError, match=rf"speaker {speaker} is out of range: this bank's speakers are 0..5"):
        _bank().utterance(speaker, 0)
    with pytest.raises(ValueError, match="out of range"):
        _bank().identity(speaker)


@pytest.mark.parametrize("count", [True, 2.0, (2, False), "2"])
def test_speaker_counts_must_be_ints(count):
    with pytest.raises(TypeError, match="num_sources must be an int or a tuple of ints"):
        spk.SeparationMixtures(_bank(), count)
    with pytest.raises(TypeError, match="num_speakers must be an int or a tuple of ints"):
        spk.Conversations(_bank(), count)
