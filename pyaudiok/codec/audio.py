"""Audio file I/O for the codec: `soundfile` to read and write, `soxr` to resample.

Waveforms are float32 tensors [channels, T] with samples nominally in [-1, 1].
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile as sf
import soxr
import torch

from .bitstream import atomic_writer

__all__ = ["load_audio", "save_audio", "resample"]

PathLike = Union[str, os.PathLike[str]]
RESAMPLE_QUALITY = "HQ"


def _read(path: Path) -> tuple[np.ndarray, int]:
    """Samples [T, channels] float32 and the file's rate; clear errors for bad files."""
    if not path.exists():
        raise FileNotFoundError(f"audio file not found: {path}")
    if not path.is_file():
        raise ValueError(f"not an audio file: {path} is not a regular file")
    try:
        return sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise ValueError(f"cannot read audio file {path}: {e}") from e


def _check_rate(sample_rate: int) -> None:
    # libsndfile stores the rate as a C int
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or not 0 < sample_rate < 2**31:
        raise ValueError(f"sample rate must be a positive integer, got {sample_rate!r}")


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample float32 samples [T, channels] with soxr (HQ); a no-op at equal rates."""
    _check_rate(from_rate)
    _check_rate(to_rate)
    if samples.ndim != 2:
        raise ValueError(f"samples must have shape [T, channels], got {samples.shape}")
    if from_rate == to_rate or len(samples) == 0:
        # soxr has nothing to do on an empty signal; keep the length arithmetic exact (0).
        return samples
    out = soxr.resample(samples, from_rate, to_rate, quality=RESAMPLE_QUALITY)
    return np.asarray(out, dtype=np.float32).reshape(-1, samples.shape[1])


def load_audio(path: PathLike, sample_rate: Optional[int] = None,
               mono: bool = True) -> tuple[torch.Tensor, int]:
    """Read an audio file as float32 [channels, T] and its rate.

    `mono` averages the channels into one; `sample_rate`, when given and different from the
    file's, resamples to it. Raises FileNotFoundError for a missing file and ValueError (naming
    the file) for one soundfile cannot read or one holding NaN or infinite samples (a float WAV can).
    """
    samples, rate = _read(Path(path))
    if not np.isfinite(samples).all():  # they would pass through resampling and the models silently
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise ValueError(f"audio file {path} holds NaN or infinite samples ({bad} of {samples.size})")
    if mono:
        samples = samples.mean(axis=1, keepdims=True)  # downmix first: less to resample
    if sample_rate is not None:
        samples, rate = resample(samples, rate, sample_rate), int(sample_rate)
    return torch.from_numpy(np.ascontiguousarray(samples.T)), rate


def _as_samples(wav: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """[T] or [channels, T] float waveform -> finite float32 [T, channels], clipped to [-1, 1]."""
    if isinstance(wav, torch.Tensor):
        if not wav.is_floating_point():
            raise TypeError(f"waveform must be floating point (samples in [-1, 1]), got dtype {wav.dtype}")
        wav = wav.detach().cpu().float().numpy()
    wav = np.asarray(wav)
    # Integer PCM (|x| up to 32767) would be clipped to a square wave, complex would lose a part.
    if not np.issubdtype(wav.dtype, np.floating):
        raise TypeError(f"waveform must be floating point (samples in [-1, 1]), got dtype {wav.dtype}")
    wav = wav.astype(np.float32, copy=False)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2 or wav.shape[0] == 0:
        raise ValueError(f"waveform must have shape [T] or [channels, T], got {wav.shape}")
    if not np.isfinite(wav).all():
        raise ValueError("waveform contains NaN or infinite samples")
    # Integer PCM cannot hold |x| > 1; clip rather than let the encoder wrap around.
    return np.clip(wav, -1.0, 1.0).T


def _format_for(path: Path, subtype: str) -> str:
    """soundfile's container format from the file extension, checked against `subtype`."""
    fmt = path.suffix[1:].upper()
    if fmt not in sf.available_formats():
        raise ValueError(f"cannot write {path}: unknown audio format {path.suffix!r}")
    if not sf.check_format(fmt, subtype):
        raise ValueError(f"cannot write {path}: format {fmt} does not support subtype {subtype}")
    return fmt


def save_audio(path: PathLike, wav: Union[torch.Tensor, np.ndarray], sample_rate: int,
               subtype: str = "PCM_16") -> None:
    """Write a float waveform [T] or [channels, T] to `path`, atomically.

    The format follows the extension (`.wav`, `.flac`, ...), 16-bit PCM by default. Samples
    outside [-1, 1] are clipped to it; NaN or infinite samples raise ValueError.
    """
    path = Path(path)
    _check_rate(sample_rate)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a directory (give a file name such as out.wav)")
    fmt = _format_for(path, subtype)
    samples = _as_samples(wav)
    try:
        with atomic_writer(path) as f:
            sf.write(f, samples, int(sample_rate), subtype=subtype, format=fmt)
    except sf.LibsndfileError as e:
        raise ValueError(f"cannot write {path} ({samples.shape[1]} channels [channels, T], {sample_rate} Hz, "
                         f"{fmt} {subtype}): {e.error_string}") from e
