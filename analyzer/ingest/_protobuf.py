"""A small read-only protobuf wire-format decoder and CRC-32C, shared by the TensorBoard and W&B readers.

Why not the `protobuf` package (with tensorboard's or wandb's generated classes): reading the handful of fields we
need takes about a hundred lines, whereas the generated classes pull in tensorflow/tensorboard or wandb and a
protobuf runtime whose major versions conflict with what users have installed. Decoding is read-only and tested
against files written by the real libraries (tests/fixtures/frameworks/). The CRC-32C (Castagnoli) checksums here
are the ones both record framings put around their messages (TFRecord, LevelDB log); numpy checks many records at
once, because the standard library has only the other CRC-32 (zlib's).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
MAX_VARINT_BYTES = 10

_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_INT64 = struct.Struct("<q")


class DecodeError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the unsigned varint at `pos`."""
    result = shift = 0
    for index in range(pos, min(len(data), pos + MAX_VARINT_BYTES)):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, index + 1
        shift += 7
    raise DecodeError("truncated or overlong varint")


def fields(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of one message, in order.

    VARINT values are unsigned ints; I64 and I32 values are their raw 8 or 4 bytes; LEN values are bytes.
    Groups (wire types 3 and 4, deprecated since proto2) are not used by the formats we read and are an error.
    """
    end = len(data) if end is None else min(end, len(data))
    pos = start
    while pos < end:
        key = data[pos]  # one-byte varints (field numbers < 16, small values) are read inline: the common case
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire == LEN:
            if pos >= end:
                raise DecodeError("truncated length")
            size = data[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = read_varint(data, pos)
            if pos + size > end:
                raise DecodeError("length-delimited field runs past the end of the message")
            value, pos = data[pos:pos + size], pos + size
        elif wire == VARINT:
            value, pos = read_varint(data, pos)
        elif wire == I64:
            if pos + 8 > end:
                raise DecodeError("truncated 64-bit field")
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == I32:
            if pos + 4 > end:
                raise DecodeError("truncated 32-bit field")
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        if pos > end:
            raise DecodeError("message ends inside a field")
        yield number, wire, value


def parse(data: bytes) -> dict[int, list]:
    """All fields of one message: {field number: [values in order]} (repeated fields keep every value)."""
    out: dict[int, list] = {}
    for number, _, value in fields(data):
        out.setdefault(number, []).append(value)
    return out


def last(message: dict[int, list], number: int, default=None):
    """The value of a singular field: protobuf says the last occurrence wins."""
    values = message.get(number)
    return values[-1] if values else default


def as_double(raw: bytes) -> float:
    return _DOUBLE.unpack(raw)[0]


def as_float(raw: bytes) -> float:
    return _FLOAT.unpack(raw)[0]


def as_int64(value: int) -> int:
    """A varint read as a signed int64 (two's complement; negative values take 10 bytes on the wire)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def as_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def packed_varints(raw: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(raw):
        value, pos = read_varint(raw, pos)
        out.append(value)
    return out


def packed_fixed(raw: bytes, fmt: str) -> tuple:
    """Packed fixed-width values: fmt "f" (float), "d" (double), "q" (int64)."""
    size = struct.calcsize(fmt)
    if len(raw) % size:
        raise DecodeError("packed field size is not a multiple of its element size")
    return struct.unpack(f"<{len(raw) // size}{fmt}", raw)


# --- CRC-32C ----------------------------------------------------------------------------------------------------------

_CRC_POLY = 0x82F63B78  # Castagnoli, reflected
_CRC_TABLE: list[int] = []
_MASK_DELTA = 0xA282EAD8
_BATCH_BYTES = 1 << 22  # bytes per vectorised batch: bounded memory


def _table() -> list[int]:
    if not _CRC_TABLE:
        for byte in range(256):
            crc = byte
            for _ in range(8):
                crc = (crc >> 1) ^ _CRC_POLY if crc & 1 else crc >> 1
            _CRC_TABLE.append(crc)
    return _CRC_TABLE


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of `data`, continuing from `crc` (pure Python; for a few bytes at a time)."""
    table = _table()
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask(crc: int):
    """The masked CRC that TFRecord and LevelDB store (works on ints and on numpy uint32 arrays)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def crc32c_many(buffer: bytes, offsets, lengths):
    """CRC-32C of many slices buffer[offset:offset+length] at once; a numpy uint32 array.

    Slices of equal length are stacked into a matrix and reduced column by column, so the Python loop runs once
    per byte position of each distinct length, not once per byte of the file.
    """
    import numpy as np

    table = np.asarray(_table(), dtype=np.uint32)
    data = np.frombuffer(buffer, dtype=np.uint8)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.full(len(offsets), 0xFFFFFFFF, dtype=np.uint32)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        per_batch = max(1, _BATCH_BYTES // max(int(length), 1))
        for first in range(0, len(rows), per_batch):
            batch = rows[first:first + per_batch]
            crc = np.full(len(batch), 0xFFFFFFFF, dtype=np.uint32)
            for column in range(int(length)):
                byte = data[offsets[batch] + column]
                crc = table[(crc ^ byte) & 0xFF] ^ (crc >> np.uint32(8))
            out[batch] = crc
    return out ^ np.uint32(0xFFFFFFFF)
