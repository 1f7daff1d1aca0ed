"""A large transfer must not hold up small messages for long (issue 2, Protocols).

Checked by ordering, not by time: small messages keep completing while a large message is
still on its way. Without the reader's yields (other peers) or the urgent queue that lets
small frames overtake bulk DATA between chunks (same peer), each small message would wait
for the whole large transfer and at most one would slip through first.
"""

from __future__ import annotations

import pytest
import trio
from mx_helpers import KEY, until

import mxnet

BIG = 48 << 20
T = 60  # only there so that a bug fails the test instead of hanging it


def pattern(n: int) -> bytearray:
    return bytearray(bytes(range(256)) * (n // 256))


async def small_round_trips_while(big_rx: mxnet.Request, server: mxnet.Endpoint,
                                  client: mxnet.Endpoint, peer: mxnet.Peer) -> int:
    """Ping-pong 8-byte messages client -> server until ``big_rx`` completes; return how
    many round trips finished while it was still pending."""
    done_meanwhile = 0
    k = 0
    buf = bytearray(8)
    while not big_rx.done:
        rx = server.irecv(buf, 2 << 32 | k)
        tx = client.isend(peer, k.to_bytes(8, "little"), 2 << 32 | k)
        await rx.wait()
        await tx.wait()
        assert int.from_bytes(buf, "little") == k
        if not big_rx.done:
            done_meanwhile += 1
        k += 1
    return done_meanwhile


@pytest.mark.parametrize("transport", ["mx", "gm"])
async def test_large_transfer_lets_other_peers_through(transport):
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as server, \
            mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as big_ep, \
            mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as small_ep:
        big_peer = await big_ep.connect(*server.address)
        small_peer = await small_ep.connect(*server.address)
        data = pattern(BIG)
        land = bytearray(BIG)
        big_rx = server.irecv(land, 1)
        big_tx = big_ep.isend(big_peer, data, 1)
        with trio.fail_after(T):
            meanwhile = await small_round_trips_while(big_rx, server, small_ep, small_peer)
            assert (await big_tx.wait()).ok and big_rx.status.ok
        assert land == data
        # one may slip in before the large data starts flowing; the rest prove interleaving
        assert meanwhile >= 5, f"only {meanwhile} small round trips during the transfer"


async def test_small_message_overtakes_bulk_data_from_the_same_peer():
    """mx only: a GM message is one frame, so nothing can pass it on its connection. Each
    small message still waits behind the DATA already in the kernel's socket buffers (a few
    MiB), hence the larger transfer here."""
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY) as server, \
            mxnet.open_endpoint("127.0.0.1", 0, key=KEY) as client:
        peer = await client.connect(*server.address)
        data = pattern(3 * BIG)
        land = bytearray(3 * BIG)
        big_rx = server.irecv(land, 1)
        big_tx = client.isend(peer, data, 1)
        with trio.fail_after(T):
            await until(lambda: client.statistics().frames_sent >= 4)  # DATA is going out
            meanwhile = await small_round_trips_while(big_rx, server, client, peer)
            assert (await big_tx.wait()).ok and big_rx.status.ok
        assert land == data
        assert meanwhile >= 3, f"only {meanwhile} small messages overtook the bulk data"
