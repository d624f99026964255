"""Audio file ↔ `.ssc` file through a trained SoundStream model: what `pyaudiok codec encode` and
`pyaudiok codec decode` run."""
from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import torch

from .audio import load_audio, save_audio
from .bitstream import CodecFormatError, CodecHeader, read_ssc, write_ssc


def parse_bitrate(text: str | float | int) -> float:
    """'6k', '6kbps', '1.5k', '6000' -> bits per second."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(k?)(?:bps|b/s)?\s*", text.lower())
        if match is None:
            raise ValueError(f"bitrate must look like '6k', '6kbps' or '6000'; got {text!r}")
        value = float(match.group(1)) * (1000 if match.group(2) else 1)
    if not value > 0:
        raise ValueError(f"bitrate must be positive; got {text!r}")
    return value


def _codebook_bits(model) -> int:
    bits = math.log2(model.config.codebook_size)
    if bits != int(bits):
        raise ValueError(f"the .ssc format packs whole bits: codebook_size {model.config.codebook_size} "
                         "is not a power of two")
    return int(bits)


def encode_file(model, in_path: str | Path, out_path: str | Path, bitrate: str | float) -> CodecHeader:
    """Encode an audio file (any rate: resampled to the model's) at the largest number of
    quantizers whose bitrate fits `bitrate`."""
    bps, one = parse_bitrate(bitrate), _codebook_bits(model) * model.frame_rate
    if bps < one:
        raise ValueError(f"bitrate {bitrate} ({bps:g} bit/s) is below the rate of one quantizer ({one:g} bit/s: "
                         f"{_codebook_bits(model)} bits at {model.frame_rate:g} frames/s)")
    n_q = model.quantizer.num_quantizers_for_bitrate(bps, model.frame_rate)
    wav, _ = load_audio(in_path, sample_rate=model.sample_rate, mono=True)
    with torch.no_grad():
        codes = model.encode(wav[None].to(model._dtype()), n_q=n_q)[0]  # [n_q, F]
    header = CodecHeader.create(sample_rate=model.sample_rate, frame_rate=Fraction(model.sample_rate, model.hop_length),
                                n_q=n_q, bits=_codebook_bits(model), n_frames=codes.shape[1],
                                n_samples=wav.shape[1])
    write_ssc(out_path, header, codes.cpu())
    return header


def check_compatible(header: CodecHeader, model) -> None:
    """A file made by another model configuration would decode to garbage: refuse it."""
    expected = {"sample_rate": model.sample_rate, "frame_rate": Fraction(model.sample_rate, model.hop_length),
                "bits": _codebook_bits(model)}
    for name, value in expected.items():
        if getattr(header, name) != value:
            raise CodecFormatError(f"file was encoded with {name} = {getattr(header, name)}, but the model uses {value}")
    if header.n_q > model.config.num_quantizers:
        raise CodecFormatError(f"file uses {header.n_q} quantizers; the model has {model.config.num_quantizers}")
    if header.n_frames * model.hop_length < header.n_samples:  # the decoded audio would come out short
        decoded = header.n_frames * model.hop_length
        raise CodecFormatError(f"file has {header.n_frames} frames, which decode to {decoded} samples, fewer than "
                               f"its n_samples = {header.n_samples}")


def decode_file(model, in_path: str | Path, out_path: str | Path) -> CodecHeader:
    header, codes = read_ssc(in_path)
    check_compatible(header, model)
    with torch.no_grad():
        wav = model.decode(torch.from_numpy(codes)[None])[0, 0, :header.n_samples]
    save_audio(out_path, wav.float().cpu(), header.sample_rate)
    return header


def load_model(checkpoint: str | Path):
    """The SoundStream model of a training checkpoint (a file, or a training output directory:
    its latest checkpoint), in eval mode."""
    from ..models.soundstream.model import SoundStream, SoundStreamConfig
    from ..train.checkpoint import load_checkpoint, resolve_checkpoint

    run_file = Path(checkpoint) / "checkpoint.pt"  # the single checkpoint other trainers' runs hold
    path = run_file if run_file.is_file() and not (Path(checkpoint) / "checkpoints").is_dir() else \
        resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    system = state.get("system", "soundstream")
    if system != "soundstream":
        raise ValueError(f"{path} is a {system} checkpoint, not a SoundStream one")
    if "model_config" not in state or "generator" not in state:
        raise ValueError(f"{path} is not a SoundStream training checkpoint (no model_config/generator)")
    model = SoundStream(SoundStreamConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["generator"])
    return model.eval()
