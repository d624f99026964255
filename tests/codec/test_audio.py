"""Audio I/O: loading, downmix, resampling (length and pitch kept), saving, and clear errors."""
import numpy as np
import pytest
import soundfile as sf
import torch

from pyaudiok.codec.audio import load_audio, save_audio


def sine(freq: float, sample_rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(wav: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return np.fft.rfftfreq(len(wav), 1 / sample_rate)[np.argmax(spectrum)]


@pytest.fixture
def sine_file(tmp_path):
    path = tmp_path / "sine.wav"
    sf.write(path, sine(440.0, 16000, 1.0), 16000, subtype="FLOAT")
    return path


def test_load_native_rate(sine_file):
    wav, sr = load_audio(sine_file)
    assert sr == 16000 and wav.dtype == torch.float32 and wav.shape == (1, 16000)
    np.testing.assert_allclose(wav[0].numpy(), sine(440.0, 16000, 1.0), atol=1e-7)


@pytest.mark.parametrize("target", [24000, 8000, 44100])
def test_load_resampled_keeps_length_and_pitch(sine_file, target):
    wav, sr = load_audio(sine_file, sample_rate=target)
    assert sr == target and wav.dtype == torch.float32
    n_in = sf.info(sine_file).frames
    assert abs(wav.shape[1] - n_in * target / 16000) <= 1
    assert abs(peak_frequency(wav[0].numpy(), sr) - 440.0) <= 2.0  # FFT bin is 1 Hz


def test_same_rate_is_not_resampled(sine_file):
    a, _ = load_audio(sine_file)
    b, _ = load_audio(sine_file, sample_rate=16000)
    assert torch.equal(a, b)


def test_stereo_downmix_and_keep_channels(tmp_path):
    left, right = sine(300.0, 8000, 0.5), sine(700.0, 8000, 0.5, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    mono, _ = load_audio(path)
    np.testing.assert_allclose(mono[0].numpy(), (left + right) / 2, atol=1e-6)
    both, _ = load_audio(path, mono=False)
    assert both.shape == (2, 4000)
    np.testing.assert_allclose(both[1].numpy(), right, atol=1e-7)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")


def test_unreadable_file(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(ValueError, match="noise.wav"):
        load_audio(path)
    with pytest.raises(ValueError, match="not a regular file"):
        load_audio(tmp_path)


def test_save_round_trip_pcm16(tmp_path):
    wav = torch.from_numpy(sine(1000.0, 24000, 0.25))
    path = tmp_path / "out.wav"
    save_audio(path, wav, 24000)
    assert sf.info(path).subtype == "PCM_16"
    back, sr = load_audio(path)
    assert sr == 24000 and back.shape == (1, 6000)
    np.testing.assert_allclose(back[0].numpy(), wav.numpy(), atol=1 / 2**15)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temporary file left behind


def test_save_clips_instead_of_wrapping(tmp_path):
    path = tmp_path / "loud.wav"
    save_audio(path, np.array([[2.0, -3.0, 0.5]], dtype=np.float32), 8000)
    back, _ = load_audio(path)
    np.testing.assert_allclose(back[0].numpy(), [32767 / 32768, -1.0, 0.5], atol=1e-4)


def test_save_multichannel_and_flac(tmp_path):
    wav = np.stack([sine(200.0, 8000, 0.1), sine(400.0, 8000, 0.1)])
    path = tmp_path / "two.flac"
    save_audio(path, wav, 8000)
    back, _ = load_audio(path, mono=False)
    np.testing.assert_allclose(back.numpy(), wav, atol=1 / 2**15)


@pytest.mark.parametrize("name, wav, match", [
    ("x.wav", np.array([0.0, np.nan]), "NaN"),
    ("x.wav", np.zeros((1, 2, 3)), "shape"),
    ("x.xyz", np.zeros(4), "unknown audio format"),
])
def test_save_rejects_bad_input(tmp_path, name, wav, match):
    with pytest.raises(ValueError, match=match):
        save_audio(tmp_path / name, wav, 8000)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("wav", [np.array([1000, -1000, 0], dtype=np.int16), np.array([True, False]),
                                 np.array([0.5 + 1j]), torch.tensor([1, 2])])
def test_save_rejects_non_float_waveforms(tmp_path, wav):
    # int16 PCM would otherwise be clipped to a square wave of ±1
    with pytest.raises(TypeError, match="floating point"):
        save_audio(tmp_path / "x.wav", wav, 8000)


def test_save_errors_name_the_target_not_a_temporary_file(tmp_path):
    # [T, channels] instead of [channels, T]: 8000 channels, which WAV cannot hold
    with pytest.raises(ValueError, match=r"cannot write .*x\.wav \(8000 channels"):
        save_audio(tmp_path / "x.wav", np.zeros((8000, 2), dtype=np.float32), 8000)
    with pytest.raises(ValueError, match="sample rate"):
        save_audio(tmp_path / "x.wav", np.zeros(4, dtype=np.float32), True)
    with pytest.raises(FileNotFoundError, match="directory .*missing does not exist"):
        save_audio(tmp_path / "missing" / "x.wav", np.zeros(4, dtype=np.float32), 8000)
    assert not any(tmp_path.iterdir())


def test_resample_checks_its_arguments():
    from pyaudiok.codec.audio import resample
    with pytest.raises(ValueError, match=r"\[T, channels\]"):
        resample(np.zeros(10, dtype=np.float32), 8000, 16000)
    with pytest.raises(ValueError, match="sample rate"):
        resample(np.zeros((10, 1), dtype=np.float32), 0, 16000)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_load_refuses_non_finite_samples(tmp_path, bad):
    samples = np.zeros((100, 2), dtype=np.float32)
    samples[7, 1] = bad
    sf.write(tmp_path / "bad.wav", samples, 8000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"bad.wav holds NaN or infinite samples \(1 of 200\)"):
        load_audio(tmp_path / "bad.wav", 16000)


def test_save_into_a_directory_names_it(tmp_path):
    with pytest.raises(ValueError, match="it is a directory"):
        save_audio(tmp_path, np.zeros(10, dtype=np.float32), 8000)
