"""Tiny writers for the binary formats the readers decode (protobuf, TFRecord, W&B's log), to craft test inputs.

Independent of the readers' code on purpose (own CRC implementations), so a test checks the reader against the
format, not against itself. Real files written by the frameworks are in tests/fixtures/frameworks/.
"""

from __future__ import annotations

import struct
import zlib


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values are written as 10-byte two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def f_varint(number: int, value: int) -> bytes:
    return key(number, 0) + varint(value)


def f_bytes(number: int, data: bytes | str) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return key(number, 2) + varint(len(data)) + data


def f_float(number: int, value: float) -> bytes:
    return key(number, 5) + struct.pack("<f", value)


def f_double(number: int, value: float) -> bytes:
    return key(number, 1) + struct.pack("<d", value)


# --- TensorBoard ------------------------------------------------------------------------------------------------------

def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc32c(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tf_record(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", _masked_crc32c(length)) + payload + struct.pack("<I", _masked_crc32c(payload))


def tb_event(step: int, *values: bytes, wall_time: float = 1.7e9) -> bytes:
    """An Event with a Summary holding the given Summary.Value messages."""
    summary = b"".join(f_bytes(1, v) for v in values)
    return f_double(1, wall_time) + f_varint(2, step) + f_bytes(5, summary)


def tb_file_version() -> bytes:
    return f_double(1, 1.7e9) + f_bytes(3, "brain.Event:2")


def tb_simple(tag: str, value: float) -> bytes:
    return f_bytes(1, tag) + f_float(2, value)


def tb_tensor(tag: str, dtype: int, *, content: bytes = b"", typed: bytes = b"", dims: tuple[int, ...] = (),
              plugin: str | None = "scalars") -> bytes:
    shape = b"".join(f_bytes(2, f_varint(1, d)) for d in dims)
    tensor = f_varint(1, dtype) + f_bytes(2, shape) + (f_bytes(4, content) if content else b"") + typed
    metadata = f_bytes(9, f_bytes(1, f_bytes(1, plugin))) if plugin is not None else b""
    return f_bytes(1, tag) + f_bytes(8, tensor) + metadata


def tb_file(*events: bytes) -> bytes:
    return b"".join(tf_record(e) for e in (tb_file_version(), *events))


# --- W&B --------------------------------------------------------------------------------------------------------------

WANDB_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_log(*records: bytes, header: bytes = WANDB_HEADER) -> bytes:
    """W&B's LevelDB-style log: 32 KiB blocks of (crc32, length, type) + data chunks; records span blocks."""
    out = bytearray(header)
    for record in records:
        data, first = record, True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < 7:
                out += bytes(left)
                continue
            take = min(len(data), left - 7)
            last = take == len(data)
            kind = FULL if first and last else FIRST if first else LAST if last else MIDDLE
            chunk = data[:take]
            crc = zlib.crc32(chunk, zlib.crc32(bytes([kind])))
            out += struct.pack("<IHB", crc, len(chunk), kind) + chunk
            data, first = data[take:], False
            if last:
                break
    return bytes(out)


def wandb_history(items: dict[str, str], step: int | None = None) -> bytes:
    """Record{history=2: HistoryRecord{item=1: HistoryItem{key=1, value_json=16}, step=2: {num=1}}}."""
    body = b"".join(f_bytes(1, f_bytes(1, k) + f_bytes(16, v)) for k, v in items.items())
    if step is not None:
        body += f_bytes(2, f_varint(1, step))
    return f_bytes(2, body)


def wandb_run_config(items: dict[str, str]) -> bytes:
    """Record{run=17: RunRecord{config=4: ConfigRecord{update=1: ConfigItem{key=1, value_json=16}}}}."""
    config = b"".join(f_bytes(1, f_bytes(1, k) + f_bytes(16, v)) for k, v in items.items())
    return f_bytes(17, f_bytes(1, "abc123") + f_bytes(4, config))


def wandb_config(items: dict[str, str]) -> bytes:
    """Record{config=5: ConfigRecord{update=1: ...}} (written by wandb.config updates after init)."""
    return f_bytes(5, b"".join(f_bytes(1, f_bytes(1, k) + f_bytes(16, v)) for k, v in items.items()))


def wandb_output(line: str, raw: bool = True) -> bytes:
    """Record{output_raw=13 | output=4: {output_type=1, line=3}}."""
    return f_bytes(13 if raw else 4, f_varint(1, 0) + f_bytes(3, line))
