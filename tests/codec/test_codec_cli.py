"""`pyaudiok codec encode|decode` end to end with a (small, untrained) SoundStream checkpoint."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from pyaudiok.cli import main
from pyaudiok.codec.bitstream import HEADER_SIZE, read_ssc
from pyaudiok.models.soundstream.model import SoundStream, SoundStreamConfig
from pyaudiok.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = SoundStreamConfig.preset_tiny(quantizer_kwargs={"kmeans_init": False})
    model = SoundStream(config).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"model_config": config.to_dict(), "generator": model.state_dict()})
    return path, config


@pytest.fixture
def wav_file(tmp_path):
    sr, seconds = 22050, 1.3  # another rate than the model's: the codec resamples
    t = np.arange(int(sr * seconds)) / sr
    path = tmp_path / "in.wav"
    sf.write(path, 0.3 * np.sin(2 * np.pi * 330 * t), sr)
    return path


def test_encode_decode_round_trip_and_exact_payload_size(checkpoint, wav_file, tmp_path, capsys):
    ckpt, config = checkpoint
    ssc, out = tmp_path / "x.ssc", tmp_path / "out.wav"
    bitrate = 1600  # tiny preset: 8 bits/code at 50 Hz = 400 bit/s per quantizer -> 4 quantizers
    assert main(["codec", "encode", str(wav_file), str(ssc), "--bitrate", str(bitrate), "--checkpoint", str(ckpt)]) == 0
    header, codes = read_ssc(ssc)
    n_samples = round(1.3 * config.sample_rate)
    assert header.n_q == 4 and header.sample_rate == config.sample_rate and header.n_samples == n_samples
    assert codes.shape == (4, header.n_frames) and header.n_frames == math.ceil(n_samples / config.hop_length)
    assert ssc.stat().st_size == HEADER_SIZE + math.ceil(bitrate * header.n_frames / config.frame_rate / 8)
    assert main(["codec", "decode", str(ssc), str(out), "--checkpoint", str(ckpt)]) == 0
    audio, sr = sf.read(out)
    assert sr == config.sample_rate and audio.shape == (n_samples,)


def test_bitrate_words(checkpoint, wav_file, tmp_path):
    ckpt, _ = checkpoint
    assert main(["codec", "encode", str(wav_file), str(tmp_path / "a.ssc"), "--bitrate", "1.2k",
                 "--checkpoint", str(ckpt)]) == 0
    assert read_ssc(tmp_path / "a.ssc")[0].n_q == 3


@pytest.mark.parametrize("damage,words", [
    (lambda b: b[:-3], "truncated"),
    (lambda b: b[:HEADER_SIZE] + bytes([b[HEADER_SIZE] ^ 0xFF]) + b[HEADER_SIZE + 1:], "CRC"),
    (lambda b: b"RIFF" + b[4:], "not an .ssc"),
])
def test_damaged_files_are_rejected_with_a_reason(checkpoint, wav_file, tmp_path, capsys, damage, words):
    ckpt, _ = checkpoint
    ssc = tmp_path / "x.ssc"
    main(["codec", "encode", str(wav_file), str(ssc), "--bitrate", "1600", "--checkpoint", str(ckpt)])
    ssc.write_bytes(damage(ssc.read_bytes()))
    out = tmp_path / "out.wav"
    assert main(["codec", "decode", str(ssc), str(out), "--checkpoint", str(ckpt)]) == 2
    assert words.lower() in capsys.readouterr().err.lower()
    assert not out.exists()


def test_file_from_another_model_configuration_is_refused(checkpoint, wav_file, tmp_path, capsys):
    ckpt, _ = checkpoint
    other_config = SoundStreamConfig.preset_tiny(sample_rate=24000, quantizer_kwargs={"kmeans_init": False})
    other = tmp_path / "other.pt"
    save_checkpoint(other, {"model_config": other_config.to_dict(), "generator": SoundStream(other_config).state_dict()})
    ssc = tmp_path / "x.ssc"
    assert main(["codec", "encode", str(wav_file), str(ssc), "--bitrate", "1600", "--checkpoint", str(other)]) == 0
    assert main(["codec", "decode", str(ssc), str(tmp_path / "o.wav"), "--checkpoint", str(ckpt)]) == 2
    assert "sample_rate" in capsys.readouterr().err


def test_bad_bitrate_and_missing_checkpoint(checkpoint, wav_file, tmp_path, capsys):
    ckpt, _ = checkpoint
    assert main(["codec", "encode", str(wav_file), str(tmp_path / "a.ssc"), "--bitrate", "fast",
                 "--checkpoint", str(ckpt)]) == 2
    assert "bitrate" in capsys.readouterr().err
    assert main(["codec", "encode", str(wav_file), str(tmp_path / "a.ssc"), "--checkpoint",
                 str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_file_that_decodes_short_is_refused(checkpoint, tmp_path, capsys):
    # Valid .ssc (n_frames within one frame of n_samples), but the model's frames would give fewer
    # samples than the header promises: refuse rather than write shorter audio.
    from pyaudiok.codec.bitstream import CodecHeader, write_ssc
    ckpt, config = checkpoint
    n_frames = 5
    header = CodecHeader.create(config.sample_rate, config.frame_rate, 2, int(math.log2(config.codebook_size)),
                                n_frames, n_frames * config.hop_length + config.hop_length // 2)
    write_ssc(tmp_path / "x.ssc", header, np.zeros((2, n_frames), dtype=np.int64))
    assert main(["codec", "decode", str(tmp_path / "x.ssc"), str(tmp_path / "o.wav"), "--checkpoint", str(ckpt)]) == 2
    assert "fewer than its n_samples" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def test_empty_audio_round_trip_and_directory_input(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    assert main(["codec", "encode", str(tmp_path / "empty.wav"), str(tmp_path / "e.ssc"), "--bitrate", "1600",
                 "--checkpoint", str(ckpt)]) == 0
    assert main(["codec", "decode", str(tmp_path / "e.ssc"), str(tmp_path / "e.wav"), "--checkpoint", str(ckpt)]) == 0
    assert sf.info(tmp_path / "e.wav").frames == 0
    assert main(["codec", "decode", str(tmp_path), str(tmp_path / "o.wav"), "--checkpoint", str(ckpt)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_non_finite_audio_is_refused_before_encoding(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    samples = np.zeros(800, dtype=np.float32)
    samples[10] = np.nan
    sf.write(tmp_path / "nan.wav", samples, 16000, subtype="FLOAT")  # a float WAV can hold NaN
    status = main(["codec", "encode", str(tmp_path / "nan.wav"), str(tmp_path / "x.ssc"), "--checkpoint", str(ckpt)])
    assert status == 2 and "NaN or infinite samples" in capsys.readouterr().err
    assert not (tmp_path / "x.ssc").exists()


def test_clear_words_for_a_low_bitrate_a_directory_output_and_another_systems_run(checkpoint, wav_file, tmp_path,
                                                                                   capsys):
    ckpt, _ = checkpoint
    encode = ["codec", "encode", str(wav_file), str(tmp_path / "x.ssc"), "--checkpoint"]
    assert main([*encode, str(ckpt), "--bitrate", "1"]) == 2
    err = capsys.readouterr().err
    assert "bitrate 1 (1 bit/s) is below the rate of one quantizer" in err and "bitrate_bps" not in err
    assert main([*encode, str(ckpt)]) == 0
    assert main(["codec", "decode", str(tmp_path / "x.ssc"), str(tmp_path), "--checkpoint", str(ckpt)]) == 2
    assert "it is a directory" in capsys.readouterr().err
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", {"system": "wavesplit", "model": {}, "model_config": {}})
    assert main([*encode, str(tmp_path / "run")]) == 2
    assert "is a wavesplit checkpoint, not a SoundStream one" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert main([*encode, str(tmp_path / "notes.txt")]) == 2
    assert "cannot be read (truncated, or not a checkpoint file): no pickle data" in capsys.readouterr().err
