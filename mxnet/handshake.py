"""Connection handshake: both sides prove they hold the key (HMAC), versions and transports agree.

The key never crosses the wire. Either side that finds a problem says why (a REJECT with a
reason code) and closes; the other side turns that into a ConnectError with the reason.
Once both agree, each tells the other its credit window (wire.WINDOW): how many messages
and bytes the peer may have sent it and not yet had matched (protocol.py, flow control).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket

import trio

from . import wire
from .config import Config
from .errors import ConnectError
from .sockio import PeerGone, recv_exact_into


def _mac(key: bytes, label: bytes, cn: bytes, sn: bytes) -> bytes:
    return hmac.new(key, label + cn + sn, hashlib.sha256).digest()


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view.nbytes:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        except OSError as e:
            raise ConnectError(f"connection lost during handshake: {e}") from None


class NoHandshake(ConnectError):
    """The connection closed before its first byte: a port probe (readiness checks), not an
    attack or a misconfigured client; the endpoint logs it quietly."""


async def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    try:
        await recv_exact_into(sock, memoryview(buf))
    except PeerGone as e:
        raise ConnectError(f"connection closed during handshake ({e})") from None
    return bytes(buf)


async def _reject(sock: socket.socket, reason: int) -> None:
    try:
        await _send_all(sock, wire.REPLY.pack(b"NOPE", reason))
    except ConnectError:
        pass


def _reason(code: int) -> str:
    return wire.REASON_TEXT.get(code, f"rejected (reason {code})")


def _window(window: tuple[int, int] | None) -> bytes:
    if window is None:
        cfg = Config()
        window = (cfg.unexpected_max_count, cfg.unexpected_max_bytes)
    return wire.WINDOW.pack(b"WNDW", *window)


async def _recv_window(sock: socket.socket) -> tuple[int, int]:
    magic, count, nbytes = wire.WINDOW.unpack(await _recv(sock, wire.WINDOW.size))
    if magic != b"WNDW" or count < 1 or nbytes < 1:
        raise ConnectError("malformed handshake (credit window)")
    return count, nbytes


async def client_side(sock: socket.socket, key: bytes, transport: str,
                      window: tuple[int, int] | None = None) -> tuple[int, int]:
    """Returns the credit window the server grants (``window``: the one we grant it)."""
    cn = os.urandom(wire.NONCE_LEN)
    tid = wire.TRANSPORT_IDS[transport]
    await _send_all(sock, wire.HELLO.pack(wire.MAGIC, wire.VERSION, tid, cn))
    head = await _recv(sock, 4)
    if head == b"NOPE":
        code = (await _recv(sock, 1))[0]
        raise ConnectError(f"server refused the connection: {_reason(code)}")
    rest = await _recv(sock, wire.CHALLENGE.size - 4)
    magic, version, stid, sn, smac = wire.CHALLENGE.unpack(head + rest)
    if magic != wire.MAGIC:
        await _reject(sock, 4)
        raise ConnectError("not an mxnet server (bad magic)")
    if version != wire.VERSION:
        await _reject(sock, 2)
        raise ConnectError(f"wire version mismatch: server {version}, client {wire.VERSION}")
    if stid != tid:
        await _reject(sock, 3)
        raise ConnectError("transport mismatch: server and client use different transports")
    if not hmac.compare_digest(smac, _mac(key, b"srv", cn, sn)):
        await _reject(sock, 1)
        raise ConnectError("wrong key: the server could not prove it holds the shared secret")
    await _send_all(sock, wire.AUTH.pack(b"AUTH", _mac(key, b"cli", cn, sn)) + _window(window))
    magic, code = wire.REPLY.unpack(await _recv(sock, wire.REPLY.size))
    if magic != b"OKAY":
        raise ConnectError(f"server refused the connection: {_reason(code)}")
    return await _recv_window(sock)


async def server_side(sock: socket.socket, key: bytes, transport: str,
                      window: tuple[int, int] | None = None) -> tuple[int, int]:
    """Returns the credit window the client grants (``window``: the one we grant it)."""
    await trio.lowlevel.wait_readable(sock)
    try:
        if sock.recv(1, socket.MSG_PEEK) == b"":
            raise NoHandshake("closed before saying anything (a port probe?)")
    except (BlockingIOError, InterruptedError):
        pass
    hello = await _recv(sock, wire.HELLO.size)
    magic, version, tid, cn = wire.HELLO.unpack(hello)
    if magic != wire.MAGIC:
        await _reject(sock, 4)
        raise ConnectError("not an mxnet client (bad magic)")
    if version != wire.VERSION:
        await _reject(sock, 2)
        raise ConnectError(f"wire version mismatch: client {version}, server {wire.VERSION}")
    if tid != wire.TRANSPORT_IDS[transport]:
        await _reject(sock, 3)
        raise ConnectError("transport mismatch: client and server use different transports")
    sn = os.urandom(wire.NONCE_LEN)
    await _send_all(sock, wire.CHALLENGE.pack(wire.MAGIC, wire.VERSION, tid, sn,
                                              _mac(key, b"srv", cn, sn)))
    head = await _recv(sock, 4)
    if head == b"NOPE":
        code = (await _recv(sock, 1))[0]
        raise ConnectError(f"client refused the connection: {_reason(code)}")
    rest = await _recv(sock, wire.AUTH.size - 4)
    _, cmac = wire.AUTH.unpack(head + rest)
    if head != b"AUTH" or not hmac.compare_digest(cmac, _mac(key, b"cli", cn, sn)):
        await _reject(sock, 1)
        raise ConnectError("wrong key: the client could not prove it holds the shared secret")
    try:
        theirs = await _recv_window(sock)
    except ConnectError:
        await _reject(sock, 4)
        raise
    await _send_all(sock, wire.REPLY.pack(b"OKAY", 0) + _window(window))
    return theirs
