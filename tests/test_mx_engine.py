"""The sans-IO MX engine (mxnet.protocol.Engine): two engines wired together in memory."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mx_helpers import Link, rbytes

import mxnet
from mxnet import MASK_ALL, Config, MatchError, StatusCode
from mxnet.errors import ProtocolError
from mxnet.protocol import Engine
from mxnet.wire import Control, Data, Eager, Gm, Notify, PacketType, Pull, Rndv


def types(link: Link) -> list[str]:
    return [h.type.name for _, h in link.delivered]


@pytest.mark.parametrize("n", [0, 1, 32, 33, 128, 129, 32768])
def test_eager_posted(n):
    link = Link()
    data = rbytes(n)
    buf = bytearray(n)
    rx = link.irecv("B", buf, 0x42)
    tx = link.isend("A", data, 0x42)
    link.pump()
    assert types(link) == ["EAGER"]
    assert rx.status.code is StatusCode.SUCCESS and rx.status.xfer_length == n
    assert rx.status.source == "A" and rx.status.match == 0x42 and rx.status.msg_length == n
    assert tx.status.ok and tx.status.xfer_length == n
    assert buf == data
    assert link.b.stats.payload_bytes_copied == 0 == link.a.stats.payload_bytes_copied
    assert link.a.stats.eager_sends == 1


@pytest.mark.parametrize("n", [32769, 100_000, 1 << 20])
def test_rendezvous_posted(n):
    link = Link(Engine(Config(data_chunk=8192)), Engine())
    data = rbytes(n)
    buf = bytearray(n)
    rx = link.irecv("B", [mxnet.user(buf)], 7)
    tx = link.isend("A", data, 7)
    link.pump()
    t = types(link)
    assert t[:2] == ["RNDV", "PULL"] and t[-1] == "NOTIFY"
    assert t[2:-1] == ["DATA"] * (-(-n // 8192))
    assert rx.status.ok and tx.status.ok and buf == data
    assert tx.status.xfer_length == n
    assert link.a.stats.rendezvous_sends == 1
    assert link.b.stats.payload_bytes_copied == 0
    assert link.b.stats.msgs_received["large"] == 1


def test_rendezvous_into_file_and_pages(tmp_path):
    n = 3 * 4096 + 100
    data = rbytes(n)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        link = Link(Engine(Config(eager_max=64, data_chunk=5000)), Engine())
        pages = [bytearray(4096) for _ in range(2)]
        rx = link.irecv("B", [mxnet.pages(pages), mxnet.file(fd, 7, n - 8192)], 1)
        tx = link.isend("A", [data[:10], data[10:]], 1)
        link.pump()
        assert rx.status.ok and tx.status.ok
        assert b"".join(pages) + os.pread(fd, n, 7) == data
    finally:
        os.close(fd)


@pytest.mark.parametrize("n", [0, 20, 5000])
def test_unexpected_eager_then_posted(n):
    link = Link()
    data = rbytes(n)
    tx = link.isend("A", data, 9)
    link.pump()
    assert tx.status.ok
    st_ = link.b.probe(9, MASK_ALL)
    assert st_ is not None and st_.msg_length == n and st_.source == "A"
    assert link.b.stats.unexpected_high_water == 1
    buf = bytearray(n)
    rx = link.irecv("B", buf, 9)
    assert rx.status.ok and buf == data  # completes at once from the unexpected queue
    assert link.b.probe(9, MASK_ALL) is None
    assert link.b.stats.payload_bytes_copied == n
    assert link.b.stats.payload_copies == (1 if n else 0)


def test_unexpected_rendezvous_then_posted():
    n = 50_000
    link = Link()
    data = rbytes(n)
    tx = link.isend("A", data, 3)
    link.pump()
    assert types(link) == ["RNDV"] and not tx.done
    assert link.b.probe(0, 0).msg_length == n
    buf = bytearray(n)
    rx = link.irecv("B", buf, 3)
    link.pump()
    assert rx.status.ok and tx.status.ok and buf == data
    assert link.b.stats.payload_bytes_copied == 0  # rendezvous never buffers payload


def test_unexpected_eager_taken_while_arriving():
    """A receive posted between an unexpected EAGER's header and its payload gets it."""
    link = Link()
    link.isend("A", b"0123456789", 5)
    (src, f), = link.queue
    inbound = link.b.receive_header("A", Eager(length=10, match=5, msg_length=10))
    buf = bytearray(10)
    rx = link.irecv("B", buf, 5)
    assert not rx.done
    inbound.pieces[0][:] = b"0123456789"
    assert link.b.receive_done("A") == []
    assert rx.status.ok and buf == b"0123456789"


def test_peer_lost_while_unexpected_eager_taken_mid_arrival():
    link = Link()
    link.b.receive_header("A", Eager(length=10, match=5, msg_length=10))
    rx = link.irecv("B", bytearray(10), 5)
    link.b.peer_lost("A")
    assert rx.done and rx.status.code is StatusCode.PEER_LOST


@pytest.mark.parametrize("n", [100, 40_000])
def test_truncation(n):
    link = Link()
    data = rbytes(n)
    buf = bytearray(60)
    rx = link.irecv("B", buf, 1)
    tx = link.isend("A", data, 1)
    link.pump()
    assert rx.status.code is StatusCode.TRUNCATED
    assert rx.status.msg_length == n and rx.status.xfer_length == 60
    assert buf == data[:60]
    assert tx.status.ok
    # the stream is still in step: a following message arrives intact
    buf2 = bytearray(4)
    rx2 = link.irecv("B", buf2, 2)
    link.isend("A", b"next", 2)
    link.pump()
    assert rx2.status.ok and buf2 == b"next"


@pytest.mark.parametrize("n", [100, 40_000])
def test_truncation_unexpected(n):
    link = Link()
    data = rbytes(n)
    link.isend("A", data, 1)
    link.pump()
    buf = bytearray(10)
    rx = link.irecv("B", buf, 1)
    link.pump()
    assert rx.status.code is StatusCode.TRUNCATED and buf == data[:10]
    assert rx.status.xfer_length == 10 and rx.status.msg_length == n


def test_zero_length_receive_of_large_message():
    link = Link()
    rx = link.irecv("B", bytearray(0), 1)
    tx = link.isend("A", rbytes(40_000), 1)
    link.pump()
    assert rx.status.code is StatusCode.TRUNCATED and rx.status.xfer_length == 0
    assert tx.status.ok and tx.status.xfer_length == 0
    assert link.a.peers["B"].sends == {}


def test_cancel():
    link = Link()
    rx = link.irecv("B", bytearray(4), 1)
    assert rx.cancel()
    assert rx.status.code is StatusCode.CANCELLED
    assert not rx.cancel()
    link.isend("A", b"abcd", 1)
    link.pump()
    assert link.b.probe(1, MASK_ALL) is not None  # the cancelled receive did not take it
    rx2 = link.irecv("B", bytearray(4), 1)
    assert rx2.done and not rx2.cancel()  # completed: too late to cancel
    tx = link.isend("A", b"x", 1)
    assert not tx.cancel()  # sends cannot be cancelled


def test_cancel_after_match_while_pulling():
    link = Link(Engine(Config(data_chunk=1000)), Engine())
    rx = link.irecv("B", bytearray(40_000), 1)
    link.isend("A", rbytes(40_000), 1)
    link.step()  # RNDV matched: the receive is now being filled
    assert not rx.done and not rx.cancel()
    link.pump()
    assert rx.status.ok


def test_issend_completes_only_when_matched():
    link = Link()
    tx = link.isend("A", b"sync", 4, sync=True)
    link.pump()
    assert types(link) == ["RNDV"]
    assert not tx.done
    buf = bytearray(4)
    rx = link.irecv("B", buf, 4)
    link.pump()
    assert tx.status.ok and rx.status.ok and buf == b"sync"
    assert link.a.stats.rendezvous_sends == 1 and link.a.stats.eager_sends == 0


def test_issend_zero_bytes():
    link = Link()
    tx = link.isend("A", b"", 4, sync=True)
    link.pump()
    assert not tx.done
    rx = link.irecv("B", bytearray(0), 4)
    link.pump()
    assert tx.status.ok and rx.status.ok


def test_peer_lost_completes_everything():
    link = Link()
    only_a = link.irecv("B", bytearray(4), 1, peer="A")
    anyone = link.irecv("B", bytearray(4), 2)
    rndv = link.isend("A", rbytes(40_000), 3)
    pulled = link.irecv("A", bytearray(50_000), 8)
    link.isend("B", rbytes(50_000), 8)
    for _ in range(3):  # A's RNDV unexpected at B; B's RNDV at A, which PULLs; DATA queued
        link.step()
    assert types(link) == ["RNDV", "RNDV", "PULL"]
    while link.queue:  # drop B's DATA frames: they never arrive
        link.queue.pop()
    assert not pulled.done and not rndv.done
    eager = link.isend("A", b"abc", 3)  # queued, never on the wire
    link.a.peer_lost("B")
    link.b.peer_lost("A")
    for req in (only_a, rndv, eager, pulled):
        assert req.status.code is StatusCode.PEER_LOST, req
    assert not anyone.done  # another peer may still satisfy it
    assert link.b.probe(0, 0) is None  # A's unexpected messages are gone
    late = link.b.irecv(bytearray(1), 1, MASK_ALL, "A")[0]
    assert late.status.code is StatusCode.PEER_LOST
    with pytest.raises(ProtocolError):
        link.a.isend("B", b"x", 1)


def test_peer_lost_mid_data():
    link = Link(Engine(Config(data_chunk=10_000)), Engine())
    rx = link.irecv("B", bytearray(50_000), 1)
    tx = link.isend("A", rbytes(50_000), 1)
    link.step()
    link.step()
    link.step()  # one DATA chunk in
    assert types(link) == ["RNDV", "PULL", "DATA"]
    link.b.peer_lost("A")
    link.a.peer_lost("B")
    assert rx.status.code is StatusCode.PEER_LOST and rx.status.xfer_length == 10_000
    assert tx.status.code is StatusCode.PEER_LOST


def test_short_source():
    link = Link()
    tx, (frame,) = link.a.isend("B", b"abcd", 1)
    link.a.frame_sent(frame, short=2)
    assert tx.status.code is StatusCode.SHORT_SOURCE and tx.status.xfer_length == 2


def test_fail_current_local_error():
    link = Link()
    rx = link.irecv("B", bytearray(4), 1)
    link.b.receive_header("A", Eager(length=4, match=1, msg_length=4))
    link.b.fail_current("A", 28)
    link.b.receive_done("A")
    assert rx.status.code is StatusCode.LOCAL_ERROR and rx.status.error == 28


def test_unexpected_handler_may_post():
    link = Link()
    seen = []
    buf = bytearray(5)

    def handler(status):
        seen.append(status)
        seen.append(link.irecv("B", buf, status.match))

    link.b.on_unexpected = handler
    link.isend("A", b"hello", 0x77)
    link.pump()
    status, rx = seen
    assert status.match == 0x77 and status.msg_length == 5 and status.source == "A"
    assert rx.status.ok and buf == b"hello"
    assert link.b.stats.payload_bytes_copied == 0  # it went straight to the new receive
    link.b.on_unexpected = lambda s: None  # a handler that posts nothing: queued
    link.isend("A", b"x" * 40_000, 0x78)
    link.pump()
    assert link.b.probe(0x78, MASK_ALL).msg_length == 40_000


def test_unexpected_queue_full_pauses():
    link = Link(Engine(), Engine(Config(unexpected_max_count=2, unexpected_max_bytes=100)))
    for i in range(3):
        link.isend("A", bytes([i]) * 10, i)
    assert link.pump() == 2  # the third waits for room
    assert link.b.receive_header("A", Eager(length=10, match=2, msg_length=10)).paused
    buf = bytearray(10)
    link.b.events.room = False
    rx = link.irecv("B", buf, 0)
    assert rx.status.ok and buf == b"\0" * 10 and link.b.events.room  # the engine says: room
    assert link.pump() == 1
    assert link.b.probe(2, MASK_ALL) is not None
    # a rendezvous announcement needs room too (it costs a queue slot, no bytes)
    link.isend("A", bytes(50_000), 9)
    assert link.pump() == 0
    link.irecv("B", bytearray(10), 1)
    link.pump()
    assert link.b.probe(9, MASK_ALL).msg_length == 50_000


def test_ping_pong():
    link = Link()
    link.send("A", [link.a.isend("B", b"", 0)[1][0]])
    from mxnet.protocol import OutFrame

    link.send("A", [OutFrame(Control(PacketType.PING).pack())])
    link.pump()
    assert types(link)[-2:] == ["PING", "PONG"]


def test_bad_match_refused():
    link = Link()
    with pytest.raises(MatchError):
        link.b.irecv(bytearray(1), 0x100, 0xFF)
    with pytest.raises(MatchError):
        link.a.isend("B", b"x", 1 << 64)
    with pytest.raises(ValueError):
        link.b.irecv([b"read-only"], 0, 0)
    with pytest.raises(ValueError):
        link.a.isend("B", [b"x"] * 257, 0)


def test_send_larger_than_max_message_refused():
    link = Link(Engine(Config(max_message=1000)), Engine())
    with pytest.raises(ValueError):
        link.a.isend("B", bytes(1001), 0)


# -- protocol errors -------------------------------------------------------------------------
def feed(engine, h, peer="A"):
    """Present one frame (header + zeroed payload) to ``engine`` as if from ``peer``."""
    inbound = engine.receive_header(peer, h)
    for p in inbound.pieces:
        if isinstance(p, memoryview):
            p[:] = bytes(p.nbytes)
    return engine.receive_done(peer)


def pulling_link():
    """B has PULLed a 40 000-byte message from A (receive handle 1, send handle 1)."""
    link = Link(Engine(Config(data_chunk=1000)), Engine())
    link.irecv("B", bytearray(40_000), 1)
    link.isend("A", bytes(40_000), 1)
    link.step()
    return link


@pytest.mark.parametrize("make", [
    lambda e: feed(e, Data(length=10, recv_handle=99, offset=0)),  # unknown receive handle
    lambda e: feed(e, Pull(recv_handle=1, send_handle=99, want=10)),  # unknown send handle
    lambda e: feed(e, Notify(send_handle=99, delivered=10)),  # unknown send handle
    lambda e: feed(e, Eager(length=10, match=1, msg_length=11)),  # length != msg_length
    lambda e: feed(e, Eager(length=2000, match=1, msg_length=2000)),  # > max_message
    lambda e: feed(e, Rndv(match=1, msg_length=2000, send_handle=1)),  # > max_message
    lambda e: feed(e, Rndv(length=5, match=1, msg_length=5, send_handle=1)),  # payload on RNDV
    lambda e: feed(e, Gm(length=0, size_class=5, msg_length=0)),  # a GM frame on mx
    lambda e: feed(e, Control(PacketType.PING), peer="stranger"),  # unknown peer
])
def test_protocol_errors(make):
    e = Engine(Config(max_message=1000))
    e.add_peer("A")
    with pytest.raises(ProtocolError):
        make(e)


def test_pull_too_large():
    link = Link()
    link.isend("A", bytes(40_000), 1)
    link.pump()  # RNDV unexpected at B, send handle 1
    with pytest.raises(ProtocolError, match="more than"):
        feed(link.a, Pull(recv_handle=1, send_handle=1, want=40_001), peer="B")


def test_data_out_of_order_and_beyond_pull():
    link = pulling_link()
    with pytest.raises(ProtocolError):
        feed(link.b, Data(length=1000, recv_handle=1, offset=1000))  # offset 1000 before 0
    link = pulling_link()
    with pytest.raises(ProtocolError):
        feed(link.b, Data(length=40_001, recv_handle=1, offset=0))  # more than was pulled


def test_data_after_completion_is_an_error():
    link = pulling_link()
    link.pump()
    with pytest.raises(ProtocolError):
        feed(link.b, Data(length=10, recv_handle=1, offset=40_000))


# -- property: random traffic in both directions ---------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 5, 32, 33, 200, 40_000, 70_000]),
                          st.booleans(), st.booleans(), st.just(0)),
                min_size=1, max_size=12),
       st.randoms(use_true_random=False))
def test_random_traffic(msgs, rnd):
    """Sends and receives posted in random order, some before and some after arrival, eager
    and rendezvous, sync and not: each message reaches its receive intact, in send order."""
    link = Link(Engine(Config(data_chunk=16_384)), Engine(Config(data_chunk=16_384)))
    actions = []
    for i, (n, sync, post_first, _) in enumerate(msgs):
        tag = i
        src = "A" if i % 2 else "B"
        dst = "B" if src == "A" else "A"
        actions.append((0 if post_first else rnd.random(), "recv", i, dst, n, tag))
        actions.append((rnd.random(), "send", i, src, n, tag, sync))
    actions.sort(key=lambda a: a[0])
    sends, recvs, data = {}, {}, {}
    for a in actions:
        if a[1] == "send":
            _, _, i, src, n, tag, sync = a
            data[i] = rbytes(n, i)
            sends[i] = link.isend(src, data[i], tag, sync)
        else:
            _, _, i, dst, n, tag = a
            buf = bytearray(n)
            recvs[i] = (buf, link.irecv(dst, buf, tag))
        if rnd.random() < 0.5:
            link.pump()
    link.pump()
    assert not link.queue
    for i, (buf, rx) in recvs.items():
        assert sends[i].status is not None and sends[i].status.ok
        assert rx.status is not None and rx.status.ok
        assert rx.status.xfer_length == msgs[i][0] and bytes(buf) == data[i]
    for e in (link.a, link.b):
        assert e.matcher.posted_count() == 0 and e.matcher.unexpected_count() == 0
        assert all(not p.sends and not p.pulls for p in e.peers.values())
