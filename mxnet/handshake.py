"""Connection handshake, the socket side: runs handshake_rules' decisions over a socket.

Both sides prove they hold the key (HMAC), versions and transports agree, and each tells the
other its credit window (wire.WINDOW: how many messages and bytes the peer may have sent it
and not yet had matched, protocol.py's flow control). What to send and what an answer means
is decided in handshake_rules.py, without sockets; this module only reads, writes and
waits. Either side that finds a problem says why (a REJECT with a reason code) and closes;
the other side turns that into a ConnectError with the reason.
"""

from __future__ import annotations

import socket

import trio

from .errors import ConnectError
from .handshake_rules import ClientHandshake, ServerHandshake
from .sockio import PeerGone, recv_exact_into


class NoHandshake(ConnectError):
    """The connection closed before its first byte: a port probe (readiness checks), not an
    attack or a misconfigured client; the endpoint logs it quietly."""


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view.nbytes:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        except OSError as e:
            raise ConnectError(f"connection lost during handshake: {e}") from None


async def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    try:
        await recv_exact_into(sock, memoryview(buf))
    except PeerGone as e:
        raise ConnectError(f"connection closed during handshake ({e})") from None
    return bytes(buf)


async def _run(sock: socket.socket, side: ClientHandshake | ServerHandshake) -> tuple[int, int]:
    step = side.start()
    while True:
        if step.error is not None:
            if step.send:  # the REJECT: best effort, the error is what counts
                try:
                    await _send_all(sock, step.send)
                except ConnectError:
                    pass
            raise step.error
        if step.send:
            await _send_all(sock, step.send)
        if step.window is not None:
            return step.window
        step = side.feed(await _recv(sock, side.want))


async def client_side(sock: socket.socket, key: bytes, transport: str,
                      window: tuple[int, int] | None = None) -> tuple[int, int]:
    """Returns the credit window the server grants (``window``: the one we grant it)."""
    return await _run(sock, ClientHandshake(key, transport, window))


async def server_side(sock: socket.socket, key: bytes, transport: str,
                      window: tuple[int, int] | None = None) -> tuple[int, int]:
    """Returns the credit window the client grants (``window``: the one we grant it)."""
    await trio.lowlevel.wait_readable(sock)
    try:
        if sock.recv(1, socket.MSG_PEEK) == b"":
            raise NoHandshake("closed before saying anything (a port probe?)")
    except (BlockingIOError, InterruptedError):
        pass
    return await _run(sock, ServerHandshake(key, transport, window))
