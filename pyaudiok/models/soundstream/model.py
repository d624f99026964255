"""SoundStream: SEANet encoder → residual vector quantizer → SEANet decoder (DESIGN.md §2).

Shapes: wav[B, 1, T] at `sample_rate`; frames F = ceil(T / hop) at `frame_rate` = sample_rate / hop;
codes[B, n_q, F] int64 (the codec's layout; the quantizer itself is channels-last).

Length convention: `encode` zero-pads the input on the right to a whole number of hops, so a
trailing partial hop becomes one more frame; `decode` returns F · hop samples and `forward` crops
the reconstruction back to T. The streaming encoder reproduces this: `flush()` pads the last
partial hop with the same zeros.

Streaming (codes identical to offline `encode`, audio equal to offline `decode` to float rounding):

    with model.encode_stream(n_q=8) as enc:
        codes = [enc(chunk) for chunk in chunks] + [enc.flush()]     # each [B, n_q, frames]
    with model.decode_stream() as dec:
        audio = [dec(c) for c in codes]                               # each [B, 1, frames · hop]
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pyaudiok.models._inputs import check_model_dtype
from pyaudiok.ops import _checks

from .seanet import SEANetDecoder, SEANetEncoder

__all__ = ["SoundStreamConfig", "SoundStream", "SoundStreamOutput", "Quantizer", "StreamingEncoder",
           "StreamingDecoder"]

Condition = torch.Tensor | int | None


class Quantizer(Protocol):
    """What SoundStream needs of its quantizer (channels-last, like `pyaudiok.nn.quantization.ResidualVQ`)."""

    def __call__(self, x: torch.Tensor, n_q: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x[B, T, D] -> (quantized[B, T, D], codes[B, T, n_q], commit_loss scalar)."""

    def encode(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        """x[B, T, D] -> codes[B, T, n_q]."""

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes[B, T, n_q] -> [B, T, D]."""


@dataclass
class SoundStreamConfig:
    """Hyper-parameters of a SoundStream model. Defaults = `preset_24khz()`.

    Presets:
    - `preset_24khz`: C = 32, D = 128, strides (2, 4, 5, 8) → hop 320 → 75 Hz, 24 quantizers of
      1024 codes: 750 bit/s per quantizer, 3–18 kbps with 4–24 quantizers as in the paper. D = 128
      (the low end of DESIGN's 128…512): ample for 10-bit codebooks, and the quantizer's distance
      cost grows with D, which matters for real time on a CPU.
    - `preset_16khz`: the same network at 16 kHz → 50 Hz frames, 16 quantizers (up to 8 kbps).
    - `preset_tiny`: C = 8, D = 64, 16 kHz / 50 Hz, 8 quantizers of 256 codes: trains on a CPU in
      minutes (a smoke-test and demo size, not a quality setting).
    """
    sample_rate: int = 24_000
    channels: int = 32
    dim: int = 128
    strides: tuple[int, ...] = (2, 4, 5, 8)
    dilations: tuple[int, ...] = (1, 3, 9)
    num_quantizers: int = 24
    codebook_size: int = 1024
    film_conditioning: bool = False
    num_conditions: int = 2
    quantizer_kwargs: dict[str, Any] = field(default_factory=dict)  # extra ResidualVQ arguments

    def __post_init__(self) -> None:
        for name in ("sample_rate", "channels", "dim", "num_quantizers", "codebook_size", "num_conditions"):
            _checks.int_in_range(name, getattr(self, name), 1, 1 << 31)
        for name, least in (("strides", 1), ("dilations", 0)):
            values = getattr(self, name)
            if not isinstance(values, (tuple, list)) or len(values) < least or \
                    any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                kind = "a non-empty" if least else "a"
                raise ValueError(f"{name} must be {kind} sequence of positive ints; got {values!r}")

    @classmethod
    def preset_24khz(cls, **overrides: Any) -> "SoundStreamConfig":
        return cls(**overrides)

    @classmethod
    def preset_16khz(cls, **overrides: Any) -> "SoundStreamConfig":
        return cls(**{"sample_rate": 16_000, "num_quantizers": 16, **overrides})

    @classmethod
    def preset_tiny(cls, **overrides: Any) -> "SoundStreamConfig":
        return cls(**{"sample_rate": 16_000, "channels": 8, "dim": 64, "num_quantizers": 8,
                      "codebook_size": 256, **overrides})

    @property
    def hop_length(self) -> int:
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bits_per_code(self) -> float:
        return math.log2(self.codebook_size)

    def bitrate(self, n_q: int) -> float:
        """Bits per second with n_q quantizers: n_q · log2(K) · frame_rate (the inverse, bitrate →
        n_q, is `ResidualVQ.num_quantizers_for_bitrate`)."""
        return n_q * self.bits_per_code * self.frame_rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SoundStreamConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SoundStreamConfig fields: {sorted(unknown)}")
        data = {k: tuple(v) if k in ("strides", "dilations") else v for k, v in data.items()}
        return cls(**data)


class SoundStreamOutput(NamedTuple):
    reconstruction: torch.Tensor  # [B, 1, T]
    codes: torch.Tensor           # [B, n_q, F]
    commit_loss: torch.Tensor     # scalar


def _default_quantizer(config: SoundStreamConfig) -> nn.Module:
    from pyaudiok.nn.quantization import ResidualVQ  # lazy: the model is usable with any quantizer
    return ResidualVQ(config.dim, config.num_quantizers, config.codebook_size, **config.quantizer_kwargs)


def _check_wav(wav: torch.Tensor, model: nn.Module) -> None:
    _checks.float_tensor("wav", wav, layout="[B, 1, T]")
    if wav.ndim != 3 or wav.shape[1] != 1:
        raise ValueError(f"wav must have shape [B, 1, T]; got {tuple(wav.shape)}")
    check_model_dtype("wav", wav, model)


class SoundStream(nn.Module):
    """The codec. `quantizer`: any module with the `Quantizer` interface; default
    `pyaudiok.nn.quantization.ResidualVQ(dim, num_quantizers, codebook_size)`.

    `condition` (FiLM, only with `config.film_conditioning`): int or LongTensor[B], e.g. 0/1 for
    denoising off/on; applied at the encoder output and at the decoder input.
    See the module docstring for shapes, the length convention and streaming.
    """

    def __init__(self, config: SoundStreamConfig | None = None, quantizer: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else SoundStreamConfig()
        net = dict(channels=config.channels, dim=config.dim, strides=config.strides, dilations=config.dilations,
                   film_conditioning=config.film_conditioning, num_conditions=config.num_conditions)
        self.encoder = SEANetEncoder(**net)
        self.decoder = SEANetDecoder(**net)
        self.quantizer = quantizer if quantizer is not None else _default_quantizer(config)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def num_frames(self, num_samples: int) -> int:
        return -(-num_samples // self.hop_length)

    def embed(self, wav: torch.Tensor, condition: Condition = None) -> torch.Tensor:
        """wav[B, 1, T] -> continuous embeddings z[B, D, ceil(T / hop)] (right zero-padding)."""
        _check_wav(wav, self.encoder)
        return self.encoder(F.pad(wav, (0, -wav.shape[-1] % self.hop_length)), condition)

    def encode(self, wav: torch.Tensor, n_q: int | None = None, condition: Condition = None) -> torch.Tensor:
        """wav[B, 1, T] -> codes[B, n_q, ceil(T / hop)] (n_q default: all quantizers)."""
        return self._codes(self.embed(wav, condition), n_q)

    def decode(self, codes: torch.Tensor, condition: Condition = None) -> torch.Tensor:
        """codes[B, n_q, F] -> wav[B, 1, F · hop]."""
        if codes.ndim != 3:
            raise ValueError(f"codes must have shape [B, n_q, frames]; got {tuple(codes.shape)}")
        if codes.shape[-1] == 0:
            z = codes.new_zeros(codes.shape[0], self.config.dim, 0, dtype=self._dtype())
        else:
            z = self.quantizer.decode(codes.transpose(1, 2)).transpose(1, 2)
        return self.decoder(z, condition)

    def forward(self, wav: torch.Tensor, n_q: int | None = None, condition: Condition = None) -> SoundStreamOutput:
        """Reconstruct wav[B, 1, T] through the quantizer (straight-through gradients). n_q = None
        lets the quantizer choose (all, or per-example quantizer dropout in training mode)."""
        z = self.embed(wav, condition)
        quantized, codes, commit_loss = self.quantizer(z.transpose(1, 2), n_q)
        reconstruction = self.decoder(quantized.transpose(1, 2), condition)[..., :wav.shape[-1]]
        return SoundStreamOutput(reconstruction, codes.transpose(1, 2), commit_loss)

    @contextmanager
    def encode_stream(self, n_q: int | None = None, condition: Condition = None) -> Iterator["StreamingEncoder"]:
        """Context yielding a `StreamingEncoder`: chunks of any length in, codes of completed frames out."""
        with self.encoder.stream():
            yield StreamingEncoder(self, n_q, condition)

    @contextmanager
    def decode_stream(self, condition: Condition = None) -> Iterator["StreamingDecoder"]:
        """Context yielding a `StreamingDecoder`: codes of any number of frames in, their audio out."""
        with self.decoder.stream():
            yield StreamingDecoder(self, condition)

    def _codes(self, z: torch.Tensor, n_q: int | None) -> torch.Tensor:
        """z[B, D, F] -> codes[B, n_q, F]; no quantizer call for zero frames (a chunk may complete none)."""
        n_q = self.config.num_quantizers if n_q is None else n_q
        if z.shape[-1] == 0:  # no quantizer call to check n_q: check it here
            _checks.int_in_range("n_q", n_q, 1, self.config.num_quantizers)
            return torch.zeros(z.shape[0], n_q, 0, dtype=torch.long, device=z.device)
        return self.quantizer.encode(z.transpose(1, 2), n_q).transpose(1, 2)

    def _dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype


class StreamingEncoder:
    """Chunked encoding inside `SoundStream.encode_stream()`. `enc(chunk[B, 1, t])` returns the codes
    [B, n_q, f] of the frames the chunk completes (f may be 0); `enc.flush()` completes a final
    partial frame with zeros, exactly as offline `encode` pads, and returns its codes."""

    def __init__(self, model: SoundStream, n_q: int | None, condition: Condition) -> None:
        self.model, self.n_q, self.condition = model, n_q, condition
        self._pending = 0      # samples received past the last completed frame
        self._template: torch.Tensor | None = None  # batch size, device and dtype for flush()

    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        _check_wav(chunk, self.model.encoder)
        _check_same_stream("chunk", chunk, self._template)
        self._template = chunk
        self._pending = (self._pending + chunk.shape[-1]) % self.model.hop_length
        return self.model._codes(self.model.encoder(chunk, self.condition), self.n_q)

    def flush(self) -> torch.Tensor:
        if self._template is None:
            raise RuntimeError("flush() before any chunk: the batch size is unknown")
        padding = -self._pending % self.model.hop_length
        t = self._template
        return self(t.new_zeros(t.shape[0], 1, padding))


class StreamingDecoder:
    """Chunked decoding inside `SoundStream.decode_stream()`: `dec(codes[B, n_q, f])` returns the
    f · hop samples [B, 1, f · hop] of those frames."""

    def __init__(self, model: SoundStream, condition: Condition) -> None:
        self.model, self.condition = model, condition
        self._template: torch.Tensor | None = None

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        if isinstance(codes, torch.Tensor):
            _check_same_stream("codes", codes, self._template)
            self._template = codes
        return self.model.decode(codes, self.condition)


def _check_same_stream(name: str, value: torch.Tensor, earlier: torch.Tensor | None) -> None:
    """A stream carries each item's state from chunk to chunk: every chunk must hold the same items
    (batch size) on the same device as the first."""
    if earlier is None:
        return
    if value.shape[0] != earlier.shape[0]:
        raise ValueError(f"{name} must hold the stream's batch of B = {earlier.shape[0]} items (its first chunk's); "
                         f"got {value.shape[0]}: start a new stream for another batch")
    if value.device != earlier.device:
        raise ValueError(f"{name} must be on the stream's device ({earlier.device}); got {value.device}")
