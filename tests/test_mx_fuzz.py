"""Fuzzing an endpoint over a raw socket that did the real handshake: bad frames end that
peer only, a well-behaved peer keeps being served, and memory stays bounded."""

from __future__ import annotations

import random
import resource
import socket

import pytest
import trio
from mx_helpers import endpoint_pair, raw_client, send_all, until

from mxnet import Config
from mxnet.gm_engine import CONV
from mxnet.wire import HEADER, PacketType

T = 30
CFG = Config(max_message=1 << 20, unexpected_max_bytes=4 << 20, keepalive=5, peer_timeout=20)


def frame(t, length=0, a=0, b=0, c=0, flags=0, payload=None):
    return HEADER.pack(t, flags, 0, length, a, b, c) + (
        payload if payload is not None else bytes(length))


MX_BAD = [
    frame(0),  # type 0
    frame(200),  # unknown type
    HEADER.pack(PacketType.PING, 0, 1, 0, 0, 0, 0),  # reserved bits
    HEADER.pack(PacketType.PING, 0, 0, 5, 0, 0, 0) + bytes(5),  # payload on PING
    frame(PacketType.EAGER, 10, 1, 11),  # length != msg_length
    HEADER.pack(PacketType.EAGER, 0, 0, 0x8000_0000, 1, 0x8000_0000, 0),  # claims 2 GiB
    HEADER.pack(PacketType.EAGER, 0, 0, 0xFFFF_FFFF, 1, 0xFFFF_FFFF, 0),  # claims 4 GiB
    frame(PacketType.RNDV, 0, 1, 1 << 40, 1),  # a 1 TiB rendezvous
    frame(PacketType.DATA, 10, 77, 0),  # DATA for an unknown receive
    frame(PacketType.PULL, 0, 1, 77, 10),  # PULL for an unknown send
    frame(PacketType.NOTIFY, 0, 77, 10),  # NOTIFY for an unknown send
    frame(PacketType.GM, 0, 5, 0),  # GM frame on mx
]

GM_BAD = [
    frame(200),
    frame(PacketType.RNDV, 0, 1, 10, 1),  # no rendezvous on gm
    frame(PacketType.DATA, 10, 1, 0),
    HEADER.pack(PacketType.GM, 0, 0, 0x8000_0000, 31, 0x8000_0000, 0),  # claims 2 GiB
    frame(PacketType.GM, 24, 27, 24, payload=CONV.pack(1, 0, 0, 0)),  # 128 MiB class, 24 B
    frame(PacketType.GM, 30, 5, 30, payload=CONV.pack(1, 99, 0, 0) + bytes(6)),  # lying header
    frame(PacketType.GM, 10, 5, 10),  # shorter than the convenience header
]


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def ping_pong(pair, k):
    buf = bytearray(8)
    rx = pair.server.irecv(buf, 0xF00D)
    pair.client.isend(pair.c2s, k.to_bytes(8, "little"), 0xF00D)
    with trio.fail_after(T):
        assert (await rx.wait()).ok
    assert buf == k.to_bytes(8, "little")


async def attack(pair, transport, payload):
    """One hostile connection: handshake, send ``payload``, half-close; the endpoint must
    drop it. Returns how many protocol errors the endpoint counted meanwhile."""
    before = pair.server.statistics().protocol_errors
    sock, peer = await raw_client(pair.server, transport)
    try:
        try:
            await send_all(sock, payload)
            sock.shutdown(socket.SHUT_WR)  # a frame left incomplete ends in EOF
        except (BrokenPipeError, ConnectionResetError):
            pass  # already dropped
        with trio.fail_after(T):
            await peer.lost_event.wait()
    finally:
        sock.close()
    return pair.server.statistics().protocol_errors - before


@pytest.mark.parametrize("transport", ["mx", "gm"])
async def test_crafted_bad_frames(transport):
    async with endpoint_pair(transport, CFG) as pair:
        rss = maxrss_mib()
        for i, bad in enumerate(MX_BAD if transport == "mx" else GM_BAD):
            assert await attack(pair, transport, bad) >= 1, bad[:32].hex()
            await ping_pong(pair, i)
        assert maxrss_mib() - rss < 256  # nothing claimed was allocated
        s = pair.server.statistics()
        assert s.unexpected_now == 0 and not pair.s2c.lost
        if transport == "gm":
            assert s.registered_now < 16 << 20
        assert pair.server.peers == {pair.s2c}


def mutate(rnd: random.Random, transport: str) -> bytes:
    kind = rnd.randrange(4)
    if kind == 0:  # noise
        return rnd.randbytes(rnd.randrange(1, 300))
    if transport == "mx":
        good = [frame(PacketType.EAGER, 16, rnd.getrandbits(64), 16, payload=rnd.randbytes(16)),
                frame(PacketType.RNDV, 0, rnd.getrandbits(64), 50_000, 1),
                frame(PacketType.PING)]
    else:
        good = [frame(PacketType.GM, 40, 6, 40, payload=CONV.pack(1, 16, 0, 0) + bytes(16)),
                frame(PacketType.PING)]
    raw = bytearray(b"".join(rnd.choice(good) for _ in range(rnd.randrange(1, 4))))
    if kind == 1:  # flip some bytes
        for _ in range(rnd.randrange(1, 4)):
            raw[rnd.randrange(len(raw))] ^= 1 << rnd.randrange(8)
    elif kind == 2:  # cut short
        raw = raw[: rnd.randrange(len(raw))]
    else:  # a random field
        pos = rnd.randrange(0, 32, 4)
        raw[pos : pos + 4] = rnd.randbytes(4)
    if transport == "gm" and len(raw) > 1:  # (a frame cut short may have no flags byte)
        raw[1] &= ~1  # no RAW flag: a raw GM frame waits (paused) for a posted buffer
    return bytes(raw)


@pytest.mark.parametrize("transport", ["mx", "gm"])
async def test_random_frames(transport):
    rnd = random.Random(20240601)
    async with endpoint_pair(transport, CFG) as pair:
        rss = maxrss_mib()
        for i in range(40):
            await attack(pair, transport, mutate(rnd, transport))
            if i % 5 == 0:
                await ping_pong(pair, i)
        await ping_pong(pair, 999)
        assert maxrss_mib() - rss < 256
        await until(lambda: pair.server.statistics().unexpected_now == 0, T)
        assert pair.server.peers == {pair.s2c}
        assert pair.server.statistics().protocol_errors > 0


async def test_unexpected_flood_is_bounded():
    """A peer sending valid eager messages nobody receives is paused at the bound, not
    buffered without limit; receiving some lets it go on."""
    cfg = Config(unexpected_max_count=10, unexpected_max_bytes=1 << 20)
    async with endpoint_pair("mx", cfg) as pair:
        sock, peer = await raw_client(pair.server)
        try:
            msgs = b"".join(frame(PacketType.EAGER, 1000, k, 1000) for k in range(30))
            async with trio.open_nursery() as n:
                n.start_soon(send_all, sock, msgs)
                await until(lambda: peer.paused, T)
                s = pair.server.statistics()
                assert s.unexpected_now == 10 and s.unexpected_high_water == 10
                for k in range(30):
                    rx = pair.server.irecv(bytearray(1000), k)
                    with trio.fail_after(T):
                        assert (await rx.wait()).ok
            assert pair.server.statistics().unexpected_high_water == 10
            await ping_pong(pair, 1)
        finally:
            sock.close()


async def test_paused_peer_that_disconnects_is_reaped():
    cfg = Config(unexpected_max_count=2, keepalive=0.1, peer_timeout=0.3)
    async with endpoint_pair("mx", cfg) as pair:
        sock, peer = await raw_client(pair.server)
        await send_all(sock, b"".join(frame(PacketType.EAGER, 10, k, 10) for k in range(5)))
        await until(lambda: peer.paused, T)
        sock.close()
        with trio.fail_after(5):  # >10x peer_timeout
            await peer.lost_event.wait()
        await ping_pong(pair, 1)  # the queue is free again for the good peer
