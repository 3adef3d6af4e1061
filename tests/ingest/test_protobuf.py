"""The small protobuf decoder and CRC-32C shared by the TensorBoard and W&B readers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analyzer.ingest import _protobuf as pb

try:
    from binary_writers import f_bytes, f_double, f_float, f_varint, varint
except ImportError:  # tests/ingest collected as a package
    from .binary_writers import f_bytes, f_double, f_float, f_varint, varint


def test_fields_of_each_wire_type_in_order():
    message = f_varint(1, 300) + f_bytes(2, "hi") + f_double(3, 2.5) + f_float(4, -1.0) + f_varint(2000, 7)
    assert list(pb.fields(message)) == [
        (1, pb.VARINT, 300), (2, pb.LEN, b"hi"), (3, pb.I64, struct.pack("<d", 2.5)),
        (4, pb.I32, struct.pack("<f", -1.0)), (2000, pb.VARINT, 7)]


def test_parse_keeps_repeated_fields_and_last_wins():
    message = pb.parse(f_varint(1, 1) + f_varint(1, 2) + f_bytes(3, b"x"))
    assert message == {1: [1, 2], 3: [b"x"]} and pb.last(message, 1) == 2 and pb.last(message, 9, "d") == "d"


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_int64_round_trip(value):
    decoded, end = pb.read_varint(varint(value), 0)
    assert pb.as_int64(decoded) == value and end == len(varint(value))


def test_packed_values():
    assert pb.packed_varints(varint(1) + varint(300) + varint(2**40)) == [1, 300, 2**40]
    assert pb.packed_fixed(struct.pack("<2d", 1.5, -2.0), "d") == (1.5, -2.0)
    with pytest.raises(pb.DecodeError):
        pb.packed_fixed(b"\x00" * 5, "f")


@pytest.mark.parametrize("broken", [
    b"\x0a\x05ab",  # length runs past the end
    b"\x08",  # varint missing
    b"\x08" + b"\xff" * 11,  # overlong varint
    b"\x19\x00\x00",  # truncated double
    b"\x1d\x00",  # truncated float
    b"\x0b",  # start-group wire type
    b"\x00\x01",  # field number 0
])
def test_malformed_messages_raise_decode_error(broken):
    with pytest.raises(pb.DecodeError):
        list(pb.fields(broken))


def test_decode_error_is_a_value_error():
    assert issubclass(pb.DecodeError, ValueError)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    try:
        list(pb.fields(data))
    except pb.DecodeError:
        pass


def test_crc32c_check_value():
    assert pb.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_crc32c_many_matches_one_at_a_time(chunks):
    buffer = b"".join(chunks)
    offsets = [sum(len(c) for c in chunks[:i]) for i in range(len(chunks))]
    many = pb.crc32c_many(buffer, offsets, [len(c) for c in chunks])
    assert [int(x) for x in many] == [pb.crc32c(c) for c in chunks]


def test_masked_crc_of_tfrecord_length():
    # TFRecord stores mask(crc32c(length bytes)); this pair is the first header of a file written by torch's
    # SummaryWriter (tests/fixtures/frameworks/tensorboard_scalars/).
    assert pb.mask(pb.crc32c(struct.pack("<Q", 72))) == 0x9D4892FE
