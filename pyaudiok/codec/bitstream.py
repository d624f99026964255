"""The `.ssc` file: integer codes of a neural audio codec, bit-packed behind a checked header.

Layout (all integers little-endian, header 37 bytes, no alignment padding)::

    offset  size  type  field
         0     4  4s    magic            b"SSCF"
         4     2  u16   version          1
         6     4  u32   sample_rate      Hz of the audio the codes describe (> 0)
        10     4  u32   frame_rate_num   frame rate as an exact fraction num/den Hz,
        14     4  u32   frame_rate_den   e.g. 24000/320 -> 75/1 (both > 0)
        18     2  u16   n_q              quantizers per frame (>= 1)
        20     1  u8    bits             bits per code, 1..16; codes lie in [0, 2**bits)
        21     4  u32   n_frames         T, number of code frames
        25     8  u64   n_samples        length of the original audio, so decoding trims exactly
        33     4  u32   crc32            zlib.crc32 of bytes 0..32 followed by the payload
        37     P  -     payload          P = ceil(n_q * T * bits / 8) bytes

Payload: the codes in frame-major order (frame 0: q0 .. q{n_q-1}, frame 1: ...), each `bits`
wide, least significant bit first, concatenated into one bit stream that fills each byte from
its least significant bit; the last byte is padded with zero bits. Equivalently, the payload read
as one little-endian integer is ``sum(code_i << (i * bits))``. The file ends right after the
payload.

The CRC also covers the header fields before it: a flipped bit in, say, the sample rate would
otherwise decode silently at the wrong speed. Reading checks, in order: magic, version, header
length, header values (ranges, and `n_frames` within one frame of
`n_samples * frame_rate / sample_rate`), payload length (exactly P), CRC, zero padding bits.
Each failure raises `CodecFormatError` with a message naming the problem.
"""
from __future__ import annotations

import os
import secrets
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import numpy as np
import torch

__all__ = [
    "MAGIC", "FORMAT_VERSION", "HEADER_SIZE", "MAX_BITS", "CodecFormatError", "CodecHeader",
    "payload_bytes", "pack_codes", "unpack_codes", "encode_ssc", "write_ssc", "read_ssc",
    "atomic_writer",
]

MAGIC = b"SSCF"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
MAX_BITS = 16

_HEADER = struct.Struct("<4sHIIIHBIQI")
HEADER_SIZE = _HEADER.size
_CRC_OFFSET = HEADER_SIZE - 4  # the CRC is the last header field
_VERSION = struct.Struct("<H")
_U16_MAX, _U32_MAX, _U64_MAX = 2**16 - 1, 2**32 - 1, 2**64 - 1

PathOrFile = Union[str, os.PathLike[str], BinaryIO]
Codes = Union[np.ndarray, torch.Tensor]


class CodecFormatError(ValueError):
    """An `.ssc` file (or a header about to be written) is invalid; the message says why."""


def payload_bytes(n_q: int, n_frames: int, bits: int) -> int:
    """Payload size in bytes: ceil(n_q * n_frames * bits / 8)."""
    return -(-(n_q * n_frames * bits) // 8)


@dataclass(frozen=True)
class CodecHeader:
    """Everything the header says about the codes; validated on construction."""

    sample_rate: int
    frame_rate_num: int
    frame_rate_den: int
    n_q: int
    bits: int
    n_frames: int
    n_samples: int

    def __post_init__(self) -> None:
        _check_ranges(self)
        # numpy integers would overflow in the arithmetic below (`1 << np.uint8(10)` is 0)
        for name in ("sample_rate", "frame_rate_num", "frame_rate_den", "n_q", "bits", "n_frames", "n_samples"):
            object.__setattr__(self, name, int(getattr(self, name)))
        _check_frame_count(self)

    @classmethod
    def create(cls, sample_rate: int, frame_rate: Union[Fraction, int, float, str], n_q: int,
               bits: int, n_frames: int, n_samples: int) -> "CodecHeader":
        """Build a header from a frame rate given as a number (e.g. `Fraction(24000, 320)`)."""
        try:
            rate = Fraction(frame_rate).limit_denominator(_U32_MAX)
        except (ValueError, OverflowError, TypeError, ZeroDivisionError):
            raise CodecFormatError(f"invalid header: frame_rate={frame_rate!r} is not a finite number") from None
        return cls(sample_rate, rate.numerator, rate.denominator, n_q, bits, n_frames, n_samples)

    @property
    def frame_rate(self) -> Fraction:
        return Fraction(self.frame_rate_num, self.frame_rate_den)

    @property
    def codebook_size(self) -> int:
        return 1 << self.bits

    @property
    def bitrate(self) -> Fraction:
        """Nominal bitrate in bits per second: n_q * bits * frame_rate."""
        return self.n_q * self.bits * self.frame_rate

    @property
    def payload_bytes(self) -> int:
        return payload_bytes(self.n_q, self.n_frames, self.bits)

    @property
    def duration(self) -> Fraction:
        """Duration of the original audio in seconds."""
        return Fraction(self.n_samples, self.sample_rate)


def _check_ranges(h: CodecHeader) -> None:
    limits = {
        "sample_rate": (1, _U32_MAX), "frame_rate_num": (1, _U32_MAX),
        "frame_rate_den": (1, _U32_MAX), "n_q": (1, _U16_MAX), "bits": (1, MAX_BITS),
        "n_frames": (0, _U32_MAX), "n_samples": (0, _U64_MAX),
    }
    for name, (lo, hi) in limits.items():
        value = getattr(h, name)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise CodecFormatError(f"invalid header: {name}={value!r} is not an integer")
        if not lo <= value <= hi:
            raise CodecFormatError(f"invalid header: {name}={value} not in {lo}..{hi}")


def _check_frame_count(h: CodecHeader) -> None:
    # Exact in integers: |n_frames - n_samples * num / (sr * den)| <= 1. A codec pads the last
    # partial frame, so the count may round either way, but never by more than one frame.
    scale = h.sample_rate * h.frame_rate_den
    if abs(h.n_frames * scale - h.n_samples * h.frame_rate_num) > scale:
        expected = Fraction(h.n_samples * h.frame_rate_num, scale)
        raise CodecFormatError(
            f"invalid header: n_frames={h.n_frames} inconsistent with n_samples={h.n_samples} at "
            f"{h.sample_rate} Hz and frame rate {h.frame_rate} Hz (expected ~{float(expected):.1f})")


# ----------------------------------------------------------------------------- bit packing

def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits={bits} not in 1..{MAX_BITS}")


def _as_code_array(codes: Codes, bits: int) -> np.ndarray:
    """Codes as a 2-D int64 array, after checking dtype, shape and range."""
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must have shape [n_q, T], got {codes.shape}")
    if codes.dtype == bool or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes out of range [0, {1 << bits}) for bits={bits}: "
                         f"min {codes.min()}, max {codes.max()}")
    return codes.astype(np.int64)


def pack_codes(codes: Codes, bits: int) -> bytes:
    """Bit-pack codes [n_q, T] frame-major, `bits` each, LSB first, zero-padded to a byte."""
    _check_bits(bits)
    flat = _as_code_array(codes, bits).T.reshape(-1)  # frame-major: [T, n_q] row by row
    # Each code as its 16 little-endian bits, keep the low `bits`, then one packed stream.
    as_bytes = flat.astype("<u2").view(np.uint8).reshape(-1, 2)
    code_bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits]
    return np.packbits(code_bits.reshape(-1), bitorder="little").tobytes()


def unpack_codes(payload: bytes, n_q: int, n_frames: int, bits: int) -> np.ndarray:
    """Inverse of `pack_codes`: int64 codes [n_q, n_frames]; the payload length must match."""
    _check_bits(bits)
    expected = payload_bytes(n_q, n_frames, bits)
    if len(payload) != expected:
        raise CodecFormatError(f"payload is {len(payload)} bytes, expected {expected} for "
                               f"n_q={n_q}, T={n_frames}, bits={bits}")
    n_codes = n_q * n_frames
    stream = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
    if stream[n_codes * bits:].any():
        raise CodecFormatError("payload padding bits are not zero")
    code_bits = np.zeros((n_codes, 16), dtype=np.uint8)
    code_bits[:, :bits] = stream[:n_codes * bits].reshape(n_codes, bits)
    values = np.packbits(code_bits, axis=1, bitorder="little").view("<u2").reshape(-1)
    return values.astype(np.int64).reshape(n_frames, n_q).T.copy()


# ----------------------------------------------------------------------------- header bytes

def _header_fields(h: CodecHeader) -> bytes:
    """The header bytes the CRC covers (everything but the CRC itself)."""
    return _HEADER.pack(MAGIC, FORMAT_VERSION, h.sample_rate, h.frame_rate_num,
                        h.frame_rate_den, h.n_q, h.bits, h.n_frames, h.n_samples, 0)[:_CRC_OFFSET]


def _crc(header_fields: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(header_fields))


def _parse_header(head: bytes) -> tuple[CodecHeader, int]:
    """Header and stored CRC from the first bytes of a file; raises on anything wrong."""
    if head[:len(MAGIC)] != MAGIC[:len(head)]:
        raise CodecFormatError(f"not an .ssc file: magic {head[:len(MAGIC)]!r}, expected {MAGIC!r}")
    version_end = len(MAGIC) + _VERSION.size
    if len(head) >= version_end:
        (version,) = _VERSION.unpack_from(head, len(MAGIC))
        if version not in SUPPORTED_VERSIONS:
            raise CodecFormatError(f"unsupported .ssc version {version} "
                                   f"(this reader supports {sorted(SUPPORTED_VERSIONS)})")
    if len(head) < HEADER_SIZE:
        raise CodecFormatError(f"truncated header: {len(head)} of {HEADER_SIZE} bytes")
    _, _, *fields, crc = _HEADER.unpack(head)
    return CodecHeader(*fields), crc


_READ_CHUNK = 1 << 24


def _read_payload(stream: BinaryIO, size: int) -> bytes:
    """Exactly `size` bytes and then end of file, else a truncated/oversized error."""
    # In bounded chunks: a damaged header can claim terabytes, and `read(n)` on a file allocates n
    # bytes up front. One extra byte reveals trailing data without reading it all.
    chunks, remaining = [], size + 1
    while remaining > 0:
        chunk = stream.read(min(remaining, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    data = b"".join(chunks)
    if len(data) < size:
        raise CodecFormatError(f"truncated payload: {len(data)} of {size} bytes")
    if len(data) > size:
        raise CodecFormatError(f"oversized payload: trailing data after the {size}-byte payload")
    return data


def _read_stream(stream: BinaryIO) -> tuple[CodecHeader, np.ndarray]:
    head = stream.read(HEADER_SIZE)
    header, stored_crc = _parse_header(head)
    payload = _read_payload(stream, header.payload_bytes)
    actual_crc = _crc(head[:_CRC_OFFSET], payload)
    if actual_crc != stored_crc:
        raise CodecFormatError(f"CRC mismatch: file corrupted (stored {stored_crc:#010x}, "
                               f"computed {actual_crc:#010x})")
    return header, unpack_codes(payload, header.n_q, header.n_frames, header.bits)


# ----------------------------------------------------------------------------- files

def _is_path(target: PathOrFile) -> bool:
    return isinstance(target, (str, os.PathLike))


@contextmanager
def atomic_writer(path: Union[str, os.PathLike[str]]) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` only once the block completes without error.

    Writes go to a hidden temporary file beside the target, which is fsynced and then moved
    over it with `os.replace`: readers never see a half-written file.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a directory")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # exclusive create; the umask applies as for any new file
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def encode_ssc(header: CodecHeader, codes: Codes) -> bytes:
    """The complete `.ssc` file contents for `codes` [header.n_q, header.n_frames]."""
    shape = tuple(np.shape(codes))
    if shape != (header.n_q, header.n_frames):
        raise ValueError(f"codes shape {shape} does not match the header "
                         f"(n_q={header.n_q}, n_frames={header.n_frames})")
    payload = pack_codes(codes, header.bits)
    fields = _header_fields(header)
    return fields + struct.pack("<I", _crc(fields, payload)) + payload


def write_ssc(target: PathOrFile, header: CodecHeader, codes: Codes) -> None:
    """Write an `.ssc` file to a path (atomically) or to a binary file object."""
    data = encode_ssc(header, codes)
    if _is_path(target):
        with atomic_writer(target) as f:
            f.write(data)
    else:
        target.write(data)


def read_ssc(source: PathOrFile) -> tuple[CodecHeader, np.ndarray]:
    """Read an `.ssc` file from a path or a binary file object: (header, int64 codes [n_q, T])."""
    if _is_path(source):
        if Path(source).is_dir():
            raise CodecFormatError(f"not an .ssc file: {source} is a directory")
        with open(source, "rb") as f:
            return _read_stream(f)
    return _read_stream(source)
