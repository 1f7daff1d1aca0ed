"""Shared helpers for the mxnet test suite: an in-memory frame pump between two sans-IO
engines, and loopback endpoint pairs."""

from __future__ import annotations

import os
import random
import socket
from collections import deque
from contextlib import asynccontextmanager
from typing import Any

import trio

import mxnet
from mxnet import handshake
from mxnet.protocol import Engine, OutFrame
from mxnet.segments import FileRange
from mxnet.wire import unpack_header

KEY = b"test-key"


def rbytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


# -- sans-IO pump ----------------------------------------------------------------------------
def read_piece(p: Any) -> bytes:
    if isinstance(p, FileRange):
        data = os.pread(p.fd, p.length, p.offset)
        return data + bytes(p.length - len(data))
    return bytes(p)


def write_piece(p: Any, data: bytes) -> None:
    if isinstance(p, FileRange):
        assert os.pwrite(p.fd, data, p.offset) == len(data)
    else:
        p[:] = data


def _window(engine: Any) -> tuple[int, int]:
    return engine.config.unexpected_max_count, engine.config.unexpected_max_bytes


class Link:
    """Two engines connected by an in-memory FIFO. Engine ``a`` knows its peer as "B",
    engine ``b`` knows its peer as "A". Frames are delivered one at a time by ``step``;
    the pump copies bytes (the harness may, the engines may not)."""

    def __init__(self, a: Any = None, b: Any = None, credits: bool = False) -> None:
        self.a = a if a is not None else Engine()
        self.b = b if b is not None else Engine()
        if credits:  # as after a handshake: each side learns the window the other grants
            self.a.add_peer("B", _window(self.b))
            self.b.add_peer("A", _window(self.a))
        else:
            self.a.add_peer("B")
            self.b.add_peer("A")
        self.queue: deque[tuple[str, OutFrame]] = deque()  # (sender name, frame)
        self.delivered: list[tuple[str, Any]] = []  # (sender name, Header)
        # frames an engine let go when a frame was sent (gm: send tokens), kept for the
        # test to look at and send: (sender name, its peer, frame)
        self.released: list[tuple[str, Any, OutFrame]] = []

    def engine(self, name: str) -> Any:
        return self.a if name == "A" else self.b

    def send(self, src: str, frames: list[OutFrame]) -> None:
        for f in frames:
            self.queue.append((src, f))

    # the calls a test makes, with their frames queued
    def isend(self, src: str, segs: Any, match: int, sync: bool = False) -> Any:
        dst = "B" if src == "A" else "A"
        req, frames = self.engine(src).isend(dst, segs, match, sync)
        self.send(src, frames)
        return req

    def irecv(self, at: str, segs: Any, match: int, mask: int = mxnet.MASK_ALL,
              peer: Any = None) -> Any:
        req, frames = self.engine(at).irecv(segs, match, mask, peer)
        self.send(at, frames)
        return req

    def step(self) -> bool:
        """Deliver the next frame. False when the queue is empty or the receiver paused."""
        if not self.queue:
            return False
        src, f = self.queue[0]
        dst_engine = self.b if src == "A" else self.a
        h = unpack_header(f.header)
        assert h.length == f.length == sum(
            p.length if isinstance(p, FileRange) else p.nbytes for p in f.pieces
        )
        inbound = dst_engine.receive_header(src, h)
        if inbound.paused:
            return False
        self.queue.popleft()
        data = b"".join(read_piece(p) for p in f.pieces)
        self.released += [(src, peer, g) for peer, g in self.engine(src).frame_sent(f)]
        pos = 0
        for p in inbound.pieces:
            n = p.length if isinstance(p, FileRange) else p.nbytes
            write_piece(p, data[pos : pos + n])
            pos += n
        assert pos + inbound.discard == len(data)
        self.delivered.append((src, h))
        self.send("B" if src == "A" else "A", dst_engine.receive_done(src))
        return True

    def pump(self, limit: int = 100_000) -> int:
        n = 0
        while n < limit and self.step():
            n += 1
        return n


# -- loopback endpoints ----------------------------------------------------------------------
class Pair:
    """A server endpoint and a client endpoint, connected. ``c2s`` is the client's Peer for
    the server, ``s2c`` the server's Peer for the client."""

    def __init__(self, server: mxnet.Endpoint, client: mxnet.Endpoint,
                 c2s: mxnet.Peer, s2c: mxnet.Peer) -> None:
        self.server, self.client, self.c2s, self.s2c = server, client, c2s, s2c


async def accept_next(ep: mxnet.Endpoint, connect: Any) -> tuple[Any, mxnet.Peer]:
    """Run ``connect()`` and return its result and the server-side Peer it produced."""
    got: list[mxnet.Peer] = []
    ev = trio.Event()

    def on_accept(p: mxnet.Peer) -> None:
        got.append(p)
        ev.set()

    ep._accept_callbacks.append(on_accept)
    try:
        result = await connect()
        with trio.fail_after(10):
            await ev.wait()
    finally:
        ep._accept_callbacks.remove(on_accept)
    return result, got[0]


@asynccontextmanager
async def endpoint_pair(transport: str = "mx", config: mxnet.Config | None = None,
                        host: str = "127.0.0.1", client_config: mxnet.Config | None = None):
    async with mxnet.open_endpoint(host, 0, key=KEY, transport=transport,
                                   config=config) as server:
        async with mxnet.open_endpoint(host, 0, key=KEY, transport=transport,
                                       config=client_config or config) as client:
            c2s, s2c = await accept_next(
                server, lambda: client.connect(host, server.address[1]))
            yield Pair(server, client, c2s, s2c)


async def raw_client(ep: mxnet.Endpoint, transport: str = "mx", key: bytes = KEY,
                     host: str = "127.0.0.1") -> tuple[socket.socket, mxnet.Peer]:
    """A bare non-blocking TCP socket that did the real handshake with ``ep``; returns it and
    the endpoint's Peer for it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)

    async def connect() -> socket.socket:
        sock.connect((host, ep.address[1]))
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await handshake.client_side(sock, key, transport)
        return sock

    try:
        _, peer = await accept_next(ep, connect)
    except BaseException:
        sock.close()
        raise
    return sock, peer


async def send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view.nbytes:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


async def until(pred: Any, timeout: float = 10.0, interval: float = 0.005) -> None:
    """Poll ``pred()`` until true; fail (never hang) after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(interval)
