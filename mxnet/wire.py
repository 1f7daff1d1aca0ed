"""Wire formats: every packet mxnet puts on a socket. Data only, no logic.

After the handshake a connection carries frames. A frame is a fixed 32-byte header,
followed by ``length`` payload bytes for the packet types that carry data:

    offset size field
    0      1    type     (PacketType)
    1      1    flags
    2      2    reserved (zero)
    4      4    length   payload bytes that follow the header
    8      8    a        match info (EAGER, RNDV, GM) or a handle (PULL, DATA, NOTIFY)
    16     8    b        second field, by type
    24     8    c        third field, by type

    EAGER   a=match  b=msg_length (== length)
    RNDV    a=match  b=msg_length   c=sender handle
    PULL    a=receiver handle  b=sender handle  c=bytes wanted (<= msg_length)
    DATA    a=receiver handle  b=offset in message  (payload: length bytes)
    NOTIFY  a=sender handle    b=bytes delivered
    CREDIT  a=messages b=bytes  credits handed back to the sender (mx flow control)
    PING / PONG / BYE  no fields
    GM      a=size class b=msg_length (payload: length bytes; GM has no match info)

The handshake (before any frame):
    client → HELLO      magic "MXNT", version, transport, client nonce
    server → CHALLENGE  magic, version, transport, server nonce, HMAC(key, "srv"|cn|sn)
    client → AUTH       HMAC(key, "cli"|cn|sn)      (or REJECT with a reason)
    client → WINDOW     the credit window the client grants: messages, bytes
    server → WELCOME    (or REJECT with a reason)
    server → WINDOW     the credit window the server grants
The key never crosses the wire; each side proves it holds it.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from .errors import ProtocolError

MAGIC = b"MXNT"
VERSION = 2  # 2: WINDOW in the handshake, CREDIT frames
NONCE_LEN = 16
MAC_LEN = 32

HEADER = struct.Struct("<BBHIQQQ")
HEADER_LEN = HEADER.size  # 32


class PacketType(enum.IntEnum):
    EAGER = 1
    RNDV = 2
    PULL = 3
    DATA = 4
    NOTIFY = 5
    PING = 6
    PONG = 7
    BYE = 8
    GM = 9
    CREDIT = 10


CARRIES_PAYLOAD = frozenset({PacketType.EAGER, PacketType.DATA, PacketType.GM})


class Header(NamedTuple):
    type: PacketType
    length: int = 0
    a: int = 0
    b: int = 0
    c: int = 0
    flags: int = 0

    def pack(self) -> bytes:
        return HEADER.pack(self.type, self.flags, 0, self.length, self.a, self.b, self.c)


class FrameError(ProtocolError, ValueError):
    """A header that is not a valid frame."""


_TYPES = {int(t): t for t in PacketType}
_unpack = HEADER.unpack
_new_header = tuple.__new__


def unpack_header(buf: bytes | bytearray | memoryview) -> Header:
    try:
        typ, flags, reserved, length, a, b, c = _unpack(buf)
    except struct.error as e:
        raise FrameError(f"short header: {e}") from None
    ptype = _TYPES.get(typ)
    if ptype is None:
        raise FrameError(f"unknown packet type {typ}")
    if reserved:
        raise FrameError("reserved header bits set")
    if length and ptype not in CARRIES_PAYLOAD:
        raise FrameError(f"{ptype.name} carries no payload but says length={length}")
    return _new_header(Header, (ptype, length, a, b, c, flags))


def pack_header(ptype: int, length: int = 0, a: int = 0, b: int = 0, c: int = 0,
                flags: int = 0) -> bytes:
    """Pack a header without building a Header first (the send fast path)."""
    return HEADER.pack(ptype, flags, 0, length, a, b, c)


# ---- handshake ---------------------------------------------------------------------------

HELLO = struct.Struct("<4sHB16s")  # magic, version, transport id, client nonce
CHALLENGE = struct.Struct("<4sHB16s32s")  # magic, version, transport id, server nonce, server mac
AUTH = struct.Struct("<4s32s")  # b"AUTH", client mac
REPLY = struct.Struct("<4sB")  # b"OKAY" / b"NOPE", reason code
WINDOW = struct.Struct("<4sIQ")  # b"WNDW", messages, bytes a peer may have unmatched here
REASON_TEXT = {
    0: "ok",
    1: "wrong key (HMAC check failed)",
    2: "wire version mismatch",
    3: "transport mismatch (mx vs gm)",
    4: "malformed handshake",
}
TRANSPORT_IDS = {"mx": 1, "gm": 2}
