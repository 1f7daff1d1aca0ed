"""The raw GM API on gm endpoints: registration, size-class receive buffers, gm_send."""

from __future__ import annotations

import pytest
import trio
from mx_helpers import Link, endpoint_pair, rbytes, until

import mxnet
from mxnet import Config, RegistrationError, StatusCode
from mxnet.errors import MxError, ProtocolError
from mxnet.gm import ReceivePool, RegistrationTable, SendTokens, size_class
from mxnet.gm_engine import GMEngine
from mxnet.stats import Statistics
from mxnet.wire import Gm, Rndv

T = 30


def test_size_class():
    assert [size_class(n) for n in (0, 1, 32, 33, 64, 65, 4096, 4097)] == [
        5, 5, 5, 6, 6, 7, 12, 13]


def test_registration_table():
    stats = Statistics(transport="gm")
    table = RegistrationTable(stats)
    buf = bytearray(8192)
    r = table.register(buf)
    assert stats.registrations == 1 and stats.registered_now == 8192
    assert table.check(r) is r
    assert bytes(r.span(10, 5)) == bytes(5)
    with pytest.raises(RegistrationError):
        r.span(8000, 200)  # outside the region
    with pytest.raises(RegistrationError):
        table.register(b"read-only")
    table.deregister(r)
    assert stats.registered_now == 0 and stats.registered_bytes == 8192
    with pytest.raises(RegistrationError):
        table.deregister(r)
    with pytest.raises(RegistrationError):
        table.check(r)
    with pytest.raises(RegistrationError):
        r.span(0, 1)
    with pytest.raises(RegistrationError):
        table.check(buf)  # plain memory was never registered


def test_tokens_and_pool():
    t = SendTokens(2)
    assert t.take() and t.take() and not t.take()
    t.give()
    t.give()
    t.give()
    assert t.free == 2
    stats = Statistics()
    table = RegistrationTable(stats)
    pool = ReceivePool()
    with pytest.raises(RegistrationError):
        pool.provide(table.register(bytearray(100)), 7)  # class 7 needs 128 bytes
    r = table.register(bytearray(128))
    pool.provide(r, 7)
    assert pool.count(7) == 1 and pool.take(7) is r and pool.take(7) is None


def test_gm_engine_in_memory():
    """The GM engine in memory: eager bounce copies in and out, sync ACK, send tokens."""
    link = Link(GMEngine(Config(gm_send_tokens=1)), GMEngine())
    buf = bytearray(100)
    rx = link.irecv("B", buf, 1)
    data = rbytes(100)
    tx1 = link.isend("A", data, 1)
    tx2 = link.isend("A", b"second", 2)  # waits for a send token
    assert len(link.queue) == 1
    link.pump()
    assert rx.status.ok and buf == data and tx1.status.ok
    sent = [(peer, [f]) for src, peer, f in link.released if src == "A"]  # tx1's token freed
    assert sent and sent[0][0] == "B"
    link.send("A", sent[0][1])
    link.pump()
    assert tx2.status.ok and link.b.probe(2, mxnet.MASK_ALL).msg_length == 6
    assert link.a.stats.payload_bytes_copied >= 100 and link.b.stats.payload_bytes_copied == 100
    sync = link.isend("A", b"sync", 3, sync=True)
    link.pump()
    assert not sync.done
    link.irecv("B", bytearray(4), 3)
    link.pump()
    assert sync.status.ok


@pytest.mark.parametrize("h", [
    Rndv(match=1, msg_length=10, send_handle=1),  # no rendezvous on gm
    Gm(length=24, size_class=28, msg_length=24),  # class above gm_max_size_class
    Gm(length=24, size_class=27, msg_length=24),  # class far too big for the length
    Gm(length=100, size_class=5, msg_length=100),  # length does not fit the class
    Gm(length=24, size_class=5, msg_length=25),  # length != msg_length
    Gm(length=10, size_class=5, msg_length=10),  # shorter than the convenience header
])
def test_gm_engine_protocol_errors(h):
    e = GMEngine()
    e.add_peer("A")
    with pytest.raises(ProtocolError):
        e.receive_header("A", h)
    assert e.stats.registered_now == 0


async def test_raw_api_refused_on_mx():
    async with endpoint_pair("mx") as pair:
        with pytest.raises(MxError):
            pair.client.register(bytearray(64))
        with pytest.raises(MxError):
            pair.client.gm_send(pair.c2s, None, 0, 0)


@pytest.mark.parametrize("n", [0, 1, 32, 33, 4096, 100_000])
async def test_raw_round_trip(n):
    async with endpoint_pair("gm") as pair:
        s0 = pair.server.statistics().registrations
        c0 = pair.client.statistics().registrations
        klass = size_class(n)
        rregion = pair.server.register(bytearray(1 << klass))
        rx = pair.server.provide_receive_buffer(rregion, klass)
        data = rbytes(n)
        sbuf = bytearray(b"xx" + data + b"yy")
        sregion = pair.client.register(sbuf)
        tx = pair.client.gm_send(pair.c2s, sregion, 2, n)
        with trio.fail_after(T):
            st = await rx.wait()
            assert (await tx.wait()).ok
        assert st.ok and st.xfer_length == n and st.source is pair.s2c
        assert bytes(rregion.view[:n]) == data
        assert pair.server.statistics().registrations == s0 + 1
        assert pair.client.statistics().registrations == c0 + 1
        pair.client.deregister(sregion)
        pair.server.deregister(rregion)
        assert pair.client.statistics().registered_now <= pair.client.statistics().registered_bytes


async def test_raw_send_waits_for_a_buffer_of_its_class():
    async with endpoint_pair("gm") as pair:
        sregion = pair.client.register(bytearray(b"a" * 40 + b"b" * 10))
        tx1 = pair.client.gm_send(pair.c2s, sregion, 0, 40)  # class 6
        tx2 = pair.client.gm_send(pair.c2s, sregion, 40, 10)  # class 5: behind tx1
        with trio.fail_after(T):
            await tx1.wait()
            await tx2.wait()  # on the wire; the receiver has no buffer yet
        small = pair.server.register(bytearray(32))
        rx_small = pair.server.provide_receive_buffer(small, 5)
        big = pair.server.register(bytearray(64))
        rx_big = pair.server.provide_receive_buffer(big, 6)
        with trio.fail_after(T):
            assert (await rx_big.wait()).xfer_length == 40
            assert (await rx_small.wait()).xfer_length == 10
        assert bytes(big.view[:40]) == b"a" * 40 and bytes(small.view[:10]) == b"b" * 10


async def test_raw_registration_errors():
    async with endpoint_pair("gm") as pair:
        with pytest.raises(RegistrationError):
            pair.client.gm_send(pair.c2s, bytearray(10), 0, 10)  # never registered
        region = pair.client.register(bytearray(100))
        with pytest.raises(RegistrationError):
            pair.client.gm_send(pair.c2s, region, 90, 20)  # past its end
        pair.client.deregister(region)
        with pytest.raises(RegistrationError):
            pair.client.gm_send(pair.c2s, region, 0, 10)  # deregistered
        with pytest.raises(RegistrationError):
            pair.client.deregister(region)
        foreign = pair.server.register(bytearray(100))
        with pytest.raises(RegistrationError):
            pair.client.gm_send(pair.c2s, foreign, 0, 10)  # another endpoint's table
        with pytest.raises(RegistrationError):
            pair.server.provide_receive_buffer(pair.server.register(bytearray(16)), 5)
        with pytest.raises(RegistrationError):
            pair.server.provide_receive_buffer(region, 5)
        with pytest.raises(RegistrationError):
            pair.client.register(b"immutable")


async def test_convenience_layer_registers_and_copies():
    async with endpoint_pair("gm") as pair:
        rx = pair.server.irecv(bytearray(5000), 1)
        pair.client.isend(pair.c2s, rbytes(5000), 1)
        with trio.fail_after(T):
            assert (await rx.wait()).ok
        c, s = pair.client.statistics(), pair.server.statistics()
        assert c.registrations > 0 and s.registrations > 0
        assert c.payload_bytes_copied >= 5000 and s.payload_bytes_copied >= 5000
        # the registration cache: repeating the transfer registers nothing new
        regs = (c.registrations, s.registrations)
        for _ in range(5):
            rx = pair.server.irecv(bytearray(5000), 1)
            pair.client.isend(pair.c2s, rbytes(5000), 1)
            with trio.fail_after(T):
                assert (await rx.wait()).ok
        assert (c.registrations, s.registrations) == regs


def test_peer_lost_returns_send_tokens():
    """Frames handed to a peer that is then lost never reach frame_sent: their send tokens
    (and bounce buffers) must come back, or the endpoint runs out of tokens for good."""
    e = GMEngine(Config(gm_send_tokens=2))
    e.add_peer("A")
    e.add_peer("B")
    reqs = [e.isend("A", b"x" * 100, 1)[0] for _ in range(3)]  # 2 take tokens, 1 waits
    assert e.tokens.free == 0
    assert e.peer_lost("A") == []  # (no frame of another peer waited for those tokens)
    assert all(r.status.code is StatusCode.PEER_LOST for r in reqs)
    assert e.tokens.free == 2
    # and another peer can still send
    req, frames = e.isend("B", b"y", 1)
    assert frames and e.tokens.free == 1
    e.frame_sent(frames[0])
    assert req.status.ok and e.tokens.free == 2


def test_tokens_of_a_lost_peer_go_to_waiting_frames_in_order():
    """The send tokens a lost peer's frames held are returned to the shell as the frames of
    other peers that waited for them (the engine pushes nothing), oldest first; a frame a
    PEER_LOST completion's callback sends waits behind them."""
    e = GMEngine(Config(gm_send_tokens=2))
    e.add_peer("A")
    e.add_peer("B")
    lost = [e.isend("A", b"x", 1)[0] for _ in range(2)]  # both tokens
    first, frames = e.isend("B", b"first", 1)
    assert frames == []  # waits for a token
    late = []
    lost[0].add_done_callback(lambda r: late.append(e.isend("B", b"late", 2)))
    released = e.peer_lost("A")
    assert late and late[0][1] == []  # no token was free when the callback sent
    assert [(peer, f.request) for peer, f in released] == [("B", first), ("B", late[0][0])]
    assert e.tokens.free == 0


async def test_peer_lost_completes_raw_sends():
    async with endpoint_pair("gm") as pair:
        region = pair.client.register(bytearray(64))
        tx = pair.client.gm_send(pair.c2s, region, 0, 64)  # no buffer posted over there
        with trio.fail_after(T):
            assert (await tx.wait()).ok  # on the wire
        rx = pair.client.provide_receive_buffer(pair.client.register(bytearray(64)), 6)
        await pair.server.disconnect(pair.s2c)
        await until(lambda: pair.c2s.lost, T)
        assert not rx.done  # raw receive buffers belong to no peer
        tx = pair.client.gm_send(pair.c2s, region, 0, 64)
        assert tx.status.code is StatusCode.PEER_LOST
