"""mxnet.wire: header pack/unpack round trips and rejection of bad frames (no sockets)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxnet.wire import (
    CARRIES_PAYLOAD,
    HEADER,
    HEADER_LEN,
    KINDS,
    Eager,
    FrameError,
    PacketType,
    Rndv,
    unpack_header,
)

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)


@st.composite
def valid_headers(draw):
    t = draw(st.sampled_from(list(PacketType)))
    length = draw(u32) if t in CARRIES_PAYLOAD else 0
    return KINDS[t](t, length, draw(u64), draw(u64), draw(u64), draw(u8))


def test_header_is_32_bytes():
    assert HEADER_LEN == 32 == len(KINDS[PacketType.PING](PacketType.PING).pack())


@given(valid_headers())
def test_roundtrip(h):
    raw = h.pack()
    assert len(raw) == HEADER_LEN
    assert unpack_header(raw) == h
    assert unpack_header(bytearray(raw)) == h
    assert unpack_header(memoryview(raw)) == h
    assert type(unpack_header(raw)) is KINDS[h.type]  # one named type per packet kind


@given(st.binary(max_size=HEADER_LEN - 1) | st.binary(min_size=HEADER_LEN + 1, max_size=64))
def test_wrong_size_rejected(raw):
    with pytest.raises(FrameError):
        unpack_header(raw)


@given(st.integers(0, 255).filter(lambda t: t not in {int(p) for p in PacketType}),
       u32, u64, u64, u64)
def test_unknown_type_rejected(t, length, a, b, c):
    with pytest.raises(FrameError, match="unknown packet type"):
        unpack_header(HEADER.pack(t, 0, 0, length, a, b, c))


@given(st.sampled_from(list(PacketType)), st.integers(1, 0xFFFF))
def test_reserved_bits_rejected(t, reserved):
    with pytest.raises(FrameError, match="reserved"):
        unpack_header(HEADER.pack(t, 0, reserved, 0, 0, 0, 0))


@given(st.sampled_from([t for t in PacketType if t not in CARRIES_PAYLOAD]),
       st.integers(1, 0xFFFF_FFFF))
def test_payload_on_control_frame_rejected(t, length):
    with pytest.raises(FrameError, match="carries no payload"):
        unpack_header(HEADER.pack(t, 0, 0, length, 0, 0, 0))


@given(st.binary(min_size=HEADER_LEN, max_size=HEADER_LEN))
def test_random_bytes_either_parse_or_raise_frameerror(raw):
    try:
        h = unpack_header(raw)
    except FrameError:
        return
    assert h.pack() == raw  # whatever parses, re-packs to the same bytes


def test_out_of_range_fields_do_not_pack():
    with pytest.raises(struct.error):
        Eager(length=1 << 32).pack()
    with pytest.raises(struct.error):
        Rndv(match=1 << 64).pack()
