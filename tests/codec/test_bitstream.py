"""The `.ssc` format: bit packing, sizes, round trips, and rejection of every kind of bad file."""
import io
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest
import torch

from pyaudiok.codec.bitstream import (
    HEADER_SIZE, CodecFormatError, CodecHeader, pack_codes, payload_bytes, read_ssc,
    unpack_codes, write_ssc,
)

BITS = [1, 3, 8, 10, 13, 16]
SHAPES = [(1, 0), (4, 0), (1, 1), (1, 7), (3, 5), (8, 150), (5, 33)]


def random_codes(n_q: int, n_frames: int, bits: int) -> np.ndarray:
    return np.random.randint(0, 1 << bits, size=(n_q, n_frames), dtype=np.int64)


def make_header(n_q: int = 8, bits: int = 10, seconds: int = 2, sample_rate: int = 24000,
                frame_rate: Fraction = Fraction(75)) -> CodecHeader:
    n_samples = sample_rate * seconds
    n_frames = int(n_samples * frame_rate / sample_rate)
    return CodecHeader.create(sample_rate, frame_rate, n_q, bits, n_frames, n_samples)


def ssc_bytes(header: CodecHeader) -> bytes:
    buf = io.BytesIO()
    write_ssc(buf, header, random_codes(header.n_q, header.n_frames, header.bits))
    return buf.getvalue()


def read_bytes(data: bytes):
    return read_ssc(io.BytesIO(data))


# ----------------------------------------------------------------------------- packing

@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", SHAPES)
def test_pack_unpack_round_trip(bits, shape):
    codes = random_codes(*shape, bits)
    payload = pack_codes(codes, bits)
    assert len(payload) == payload_bytes(*shape, bits)
    out = unpack_codes(payload, *shape, bits)
    assert out.dtype == np.int64 and out.shape == shape
    np.testing.assert_array_equal(out, codes)


@pytest.mark.parametrize("bits", BITS)
def test_extreme_codes_round_trip(bits):
    codes = np.array([[0, (1 << bits) - 1, 0], [(1 << bits) - 1, 0, (1 << bits) - 1]])
    np.testing.assert_array_equal(unpack_codes(pack_codes(codes, bits), 2, 3, bits), codes)


def test_bit_layout_is_frame_major_lsb_first():
    # Payload as a little-endian integer == sum(code_i << (i * bits)), codes taken frame-major.
    codes = np.array([[1, 5], [2, 7]])  # q0 = (1, 5), q1 = (2, 7)
    payload = pack_codes(codes, 3)
    value = int.from_bytes(payload, "little")
    frame_major = [1, 2, 5, 7]
    assert value == sum(c << (3 * i) for i, c in enumerate(frame_major))
    assert len(payload) == 2  # 12 bits, padded with zeros to 2 bytes


def test_pack_accepts_tensor_and_unsigned():
    codes = random_codes(3, 9, 10)
    expected = pack_codes(codes, 10)
    assert pack_codes(torch.from_numpy(codes), 10) == expected
    assert pack_codes(codes.astype(np.uint16), 10) == expected


@pytest.mark.parametrize("bad", [-1, 1024, 5000])
def test_out_of_range_codes_rejected(bad):
    codes = random_codes(2, 4, 10)
    codes[1, 2] = bad
    with pytest.raises(ValueError, match="out of range"):
        pack_codes(codes, 10)


@pytest.mark.parametrize("codes, match", [
    (np.zeros(5, dtype=np.int64), "shape"),
    (np.zeros((2, 3), dtype=np.float32), "integers"),
])
def test_malformed_codes_rejected(codes, match):
    with pytest.raises(ValueError, match=match):
        pack_codes(codes, 10)


@pytest.mark.parametrize("bits", [0, 17])
def test_bits_out_of_range_rejected(bits):
    with pytest.raises(ValueError, match="bits"):
        pack_codes(np.zeros((1, 1), dtype=np.int64), bits)


def test_unpack_rejects_wrong_length_and_nonzero_padding():
    with pytest.raises(CodecFormatError, match="expected 2"):
        unpack_codes(b"\x00", 1, 1, 10)
    with pytest.raises(CodecFormatError, match="padding"):
        unpack_codes(b"\x00\xff", 1, 1, 10)


# ----------------------------------------------------------------------------- sizes

def test_payload_size_is_bitrate_times_duration():
    # 75 Hz, 8 quantizers, 10 bits -> 6000 bps; 2 s -> 12000 bits = 1500 bytes.
    header = make_header(n_q=8, bits=10, seconds=2)
    assert header.bitrate == 6000
    assert header.payload_bytes == 1500 == header.bitrate * header.duration / 8
    assert len(ssc_bytes(header)) == HEADER_SIZE + 1500


def test_payload_bytes_rounds_up():
    assert payload_bytes(1, 1, 10) == 2
    assert payload_bytes(4, 0, 10) == 0
    assert payload_bytes(3, 3, 3) == 4  # 27 bits


# ----------------------------------------------------------------------------- files

def test_round_trip_through_path(tmp_path):
    header = make_header(n_q=4, bits=10)
    codes = random_codes(4, header.n_frames, 10)
    path = tmp_path / "x.ssc"
    write_ssc(path, header, codes)
    got_header, got_codes = read_ssc(str(path))
    assert got_header == header
    np.testing.assert_array_equal(got_codes, codes)
    assert [p.name for p in tmp_path.iterdir()] == ["x.ssc"]  # no temporary file left behind


def test_round_trip_through_file_object():
    header = make_header(n_q=3, bits=13, sample_rate=16000, frame_rate=Fraction(50))
    codes = torch.from_numpy(random_codes(3, header.n_frames, 13))
    buf = io.BytesIO()
    write_ssc(buf, header, codes)
    buf.seek(0)
    got_header, got_codes = read_ssc(buf)
    assert got_header == header and got_header.frame_rate == 50
    np.testing.assert_array_equal(got_codes, codes.numpy())


def test_round_trip_fractional_frame_rate_and_empty_audio():
    rate = Fraction(44100, 512)  # not an integer: stored exactly as num/den
    header = CodecHeader.create(44100, rate, 2, 10, 87, 44100)
    data = io.BytesIO()
    write_ssc(data, header, random_codes(2, 87, 10))
    assert read_bytes(data.getvalue())[0].frame_rate == rate
    empty = CodecHeader.create(24000, 75, 8, 10, 0, 0)
    assert read_bytes(ssc_bytes(empty))[1].shape == (8, 0)


def test_write_rejects_codes_not_matching_header():
    header = make_header(n_q=4)
    with pytest.raises(ValueError, match="does not match"):
        write_ssc(io.BytesIO(), header, random_codes(3, header.n_frames, 10))


def test_failed_write_keeps_existing_file(tmp_path):
    path = tmp_path / "x.ssc"
    path.write_bytes(b"old")
    header = make_header()
    bad = random_codes(header.n_q, header.n_frames, 10) + 1024
    with pytest.raises(ValueError):
        write_ssc(path, header, bad)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.ssc"]


# ----------------------------------------------------------------------------- bad files

def test_flipped_payload_byte_fails_crc():
    data = bytearray(ssc_bytes(make_header()))
    data[HEADER_SIZE + 100] ^= 0x10
    with pytest.raises(CodecFormatError, match="CRC mismatch"):
        read_bytes(bytes(data))


def test_flipped_header_byte_fails_crc():
    data = bytearray(ssc_bytes(make_header()))
    data[6] ^= 0x01  # sample rate 24000 -> 24001: plausible, so only the CRC can tell
    with pytest.raises(CodecFormatError, match="CRC mismatch"):
        read_bytes(bytes(data))


@pytest.mark.parametrize("cut, match", [
    (0, "truncated header"), (3, "truncated header"), (10, "truncated header"),
    (HEADER_SIZE - 1, "truncated header"), (HEADER_SIZE, "truncated payload"),
    (HEADER_SIZE + 700, "truncated payload"), (-1, "truncated payload"),
])
def test_truncated_file_rejected(cut, match):
    data = ssc_bytes(make_header())
    with pytest.raises(CodecFormatError, match=match):
        read_bytes(data[:cut])


@pytest.mark.parametrize("extra", [b"\x00", b"trailing garbage" * 10])
def test_trailing_bytes_rejected(extra):
    data = ssc_bytes(make_header())
    with pytest.raises(CodecFormatError, match="oversized payload"):
        read_bytes(data + extra)


@pytest.mark.parametrize("data", [b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40), b"fLaC", b"X"])
def test_foreign_file_rejected(data):
    with pytest.raises(CodecFormatError, match="not an .ssc file"):
        read_bytes(data)


def test_changed_magic_rejected():
    data = bytearray(ssc_bytes(make_header()))
    data[0:4] = b"XSCF"
    with pytest.raises(CodecFormatError, match="magic"):
        read_bytes(bytes(data))


def test_unsupported_version_rejected():
    data = bytearray(ssc_bytes(make_header()))
    struct.pack_into("<H", data, 4, 99)
    with pytest.raises(CodecFormatError, match="unsupported .ssc version 99"):
        read_bytes(bytes(data))


# Field offsets and struct formats from the byte table in the module docstring.
@pytest.mark.parametrize("offset, fmt, value, match", [
    (6, "<I", 0, "sample_rate=0"),
    (10, "<I", 0, "frame_rate_num=0"),
    (14, "<I", 0, "frame_rate_den=0"),
    (18, "<H", 0, "n_q=0"),
    (20, "<B", 0, "bits=0"),
    (20, "<B", 17, "bits=17"),
    (21, "<I", 152, "n_frames=152 inconsistent"),
    (25, "<Q", 96000, "n_frames=150 inconsistent"),
])
def test_nonsense_header_values_rejected(offset, fmt, value, match):
    data = bytearray(ssc_bytes(make_header()))
    struct.pack_into(fmt, data, offset, value)
    with pytest.raises(CodecFormatError, match=match):
        read_bytes(bytes(data))


@pytest.mark.parametrize("n_frames", [149, 150, 151])
def test_frame_count_tolerates_one_frame(n_frames):
    CodecHeader.create(24000, 75, 8, 10, n_frames, 48000)


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_ssc(tmp_path / "missing.ssc")


def test_header_claiming_a_huge_payload_is_rejected_without_allocating_it(tmp_path):
    # A consistent, CRC-valid header may claim terabytes: reading must not allocate them first.
    from pyaudiok.codec import bitstream
    fields = bitstream._HEADER.pack(bitstream.MAGIC, 1, 1, 1, 1, 65535, 16, 2**32 - 1, 2**32 - 1, 0)[:HEADER_SIZE - 4]
    path = tmp_path / "huge.ssc"
    path.write_bytes(fields + struct.pack("<I", zlib.crc32(fields)) + bytes(10))
    with pytest.raises(CodecFormatError, match="truncated payload: 10 of"):
        read_ssc(path)


def test_numpy_integer_header_fields_and_bad_frame_rate():
    header = CodecHeader.create(np.int64(24000), 75, np.int32(2), np.uint8(10), np.int64(75), np.int64(24000))
    assert type(header.bits) is int and header.codebook_size == 1024  # 1 << np.uint8(10) overflows to 0
    buf = io.BytesIO()
    write_ssc(buf, header, random_codes(2, 75, 10))
    assert read_bytes(buf.getvalue())[0] == header
    with pytest.raises(CodecFormatError, match="frame_rate=inf"):
        CodecHeader.create(24000, float("inf"), 2, 10, 75, 24000)


def test_directory_and_missing_output_directory_are_named(tmp_path):
    with pytest.raises(CodecFormatError, match="is a directory"):
        read_ssc(tmp_path)
    header = make_header(n_q=1)
    with pytest.raises(FileNotFoundError, match="directory .*nope does not exist"):
        write_ssc(tmp_path / "nope" / "x.ssc", header, random_codes(1, header.n_frames, 10))
    with pytest.raises(ValueError, match="it is a directory"):
        write_ssc(tmp_path, header, random_codes(1, header.n_frames, 10))
