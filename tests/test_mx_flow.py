"""mxnet flow control and local receive errors (issue 11, items 4 and 5), over loopback.

* A full unexpected queue must not stall a message the application did post a receive for:
  one 64 KiB (rendezvous) message, then more tiny ones than the queue holds, nothing posted;
  the receive posted later for the large one completes.
* A sender's queue to one peer never holds more than ``send_buffer_max`` messages: isend
  refuses (QueueFull) and ``await ep.send`` waits for room.
* A receive whose file segment cannot be written (ENOSPC on a small tmpfs, EBADF) completes
  with LOCAL_ERROR and that errno, on both transports; the connection lives on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest
import trio
from mx_helpers import Link, endpoint_pair, raw_client, rbytes, until

import mxnet
from mxnet import Config, StatusCode, wire
from mxnet.protocol import Engine
from mxnet.wire import PacketType

T = 30  # generous: only there so that a bug fails the test instead of hanging it
TRANSPORTS = pytest.mark.parametrize("transport", ["mx", "gm"])
BIG = 0xB16


async def ping_pong(pair, k: int) -> None:
    """One message each way on the same connection."""
    for src, dst, peer in ((pair.client, pair.server, pair.c2s),
                           (pair.server, pair.client, pair.s2c)):
        buf = bytearray(8)
        rx = dst.irecv(buf, 0xF00D + k)
        src.isend(peer, k.to_bytes(8, "little"), 0xF00D + k)
        with trio.fail_after(T):
            assert (await rx.wait()).ok
        assert buf == k.to_bytes(8, "little")


def queued(ep, peer) -> int:
    """Messages waiting in ``ep``'s send queue to ``peer`` (not yet on the wire)."""
    return ep.send_queue_length(peer)


def credit_frames(link: Link) -> int:
    return sum(1 for _, h in link.delivered if h.type is PacketType.CREDIT)


# -- the engine alone (sans-IO) --------------------------------------------------------------
def test_engine_holds_what_the_window_cannot_take_and_keeps_order():
    link = Link(Engine(), Engine(Config(unexpected_max_count=4)), credits=True)
    txs = [link.isend("A", bytes([k]) * 10, k) for k in range(10)]
    assert len(link.queue) == 4 and link.a.send_queue_length("B") == 10
    link.pump()
    assert link.b.matcher.unexpected_count() == 4  # its share, never more: no pause
    assert link.a.send_queue_length("B") == 6 and link.a.stats.credit_waits == 6
    bufs = [bytearray(10) for _ in range(10)]
    rxs = []
    for k in range(10):
        rxs.append(link.irecv("B", bufs[k], k))
        link.pump()
    assert all(r.status.ok for r in rxs + txs)
    assert bufs == [bytearray([k]) * 10 for k in range(10)]
    assert link.a.send_queue_length("B") == 0


def test_engine_returns_credits_in_batches_when_the_receiver_keeps_up():
    link = Link(Engine(), Engine(Config(unexpected_max_count=8)), credits=True)
    rxs = [link.irecv("B", bytearray(4), k) for k in range(40)]
    for k in range(40):
        link.isend("A", b"abcd", k)
        link.pump()
    assert all(r.status.ok for r in rxs)
    assert credit_frames(link) == 10  # one per half window (4 messages), not one each
    assert link.b.matcher.unexpected_count() == 0


def test_engine_never_sits_on_credits_while_the_queue_is_backed_up():
    """Window 4. m0 is matched on arrival (its credit is owed, below the batch size), m1..m3
    wait unexpected, and the receiver wants m4 next. m4 needs the credit m0 freed: it must
    be handed back now that messages wait, or m4 never comes although there is room."""
    link = Link(Engine(), Engine(Config(unexpected_max_count=4)), credits=True)
    rx0 = link.irecv("B", bytearray(1), 0)
    rx4 = link.irecv("B", bytearray(1), 4)
    for k in range(5):
        link.isend("A", b"x", k)
    link.pump()
    assert rx0.status.ok and rx4.status is not None and rx4.status.ok
    assert link.b.matcher.unexpected_count() == 3


def test_engine_send_queue_bound():
    link = Link(Engine(Config(send_buffer_max=3)), Engine())
    for k in range(3):
        link.isend("A", b"x", k)
    with pytest.raises(mxnet.QueueFull):
        link.isend("A", b"x", 3)
    assert link.a.send_queue_length("B") == 3 and len(link.queue) == 3  # nothing was queued
    link.step()  # one frame written: room for one more
    assert link.a.events.send_room == ["B"] and link.a.send_queue_length("B") == 2
    link.isend("A", b"x", 3)
    with pytest.raises(mxnet.QueueFull):
        link.isend("A", bytes(100_000), 4)  # rendezvous sends count too
    link.pump()
    assert link.a.send_queue_length("B") == 0
    assert link.a.stats.send_queue_high_water == 3


def test_engine_unexpected_message_into_a_bad_file_segment(tmp_path):
    """mx: a message kept in the unexpected queue, copied into a file segment that cannot
    be written (read-only fd): LOCAL_ERROR with EBADF, not an exception from irecv."""
    (tmp_path / "ro").write_bytes(b"")
    fd = os.open(tmp_path / "ro", os.O_RDONLY)
    try:
        link = Link()
        link.isend("A", b"y" * 100, 1)
        link.pump()
        rx = link.irecv("B", [mxnet.file(fd, 0, 100)], 1)
        assert rx.status.code is StatusCode.LOCAL_ERROR and rx.status.error == errno.EBADF
        assert link.b.matcher.unexpected_count() == 0
    finally:
        os.close(fd)


# -- item 5: a full unexpected queue ---------------------------------------------------------
@TRANSPORTS
async def test_large_message_behind_a_full_unexpected_queue(transport):
    """The issue's shape, default Config: 64 KiB, then 4200 tiny messages, no receive posted.
    A receive posted afterwards for the 64 KiB message completes (it used to wait forever:
    its DATA sat behind tiny frames the paused reader would not read), and so does the send;
    receiving the tiny ones lets every other send through, in order."""
    cfg = Config()
    n_tiny = cfg.unexpected_max_count + 104
    big = rbytes(64 << 10, 5)
    async with endpoint_pair(transport, cfg) as pair:
        tx_big = pair.client.isend(pair.c2s, big, BIG)
        txs = [pair.client.isend(pair.c2s, k.to_bytes(4, "little"), k) for k in range(n_tiny)]
        await until(lambda: pair.server.statistics().unexpected_now == cfg.unexpected_max_count,
                    T)
        buf = bytearray(len(big))
        rx = pair.server.irecv(buf, BIG)
        with trio.fail_after(T):
            st = await rx.wait()
            assert (await tx_big.wait()).ok
        assert st.ok and st.xfer_length == len(big) and buf == big
        # every tiny one arrives, in send order, once receives are posted
        bufs = [bytearray(4) for _ in range(n_tiny)]
        rxs = [pair.server.irecv(bufs[k], k) for k in range(n_tiny)]
        with trio.fail_after(T):
            for k in range(n_tiny):
                assert (await rxs[k].wait()).ok and (await txs[k].wait()).ok
        assert all(bufs[k] == k.to_bytes(4, "little") for k in range(n_tiny))
        assert pair.server.statistics().unexpected_high_water <= cfg.unexpected_max_count
        assert not pair.s2c.lost and not pair.c2s.lost
        await ping_pong(pair, 1)


async def test_credits_keep_an_honest_peer_from_being_paused():
    """mx: the sender never sends more than the receiver's queue holds for it, so the reader
    never has to stop reading (stats.pauses stays 0) and the rest waits at the sender."""
    cfg = Config(unexpected_max_count=16)
    async with endpoint_pair("mx", cfg) as pair:
        txs = [pair.client.isend(pair.c2s, bytes(100), k) for k in range(40)]
        await until(lambda: pair.server.statistics().unexpected_now == 16, T)
        await trio.sleep(0.05)
        assert pair.server.statistics().unexpected_now == 16
        assert queued(pair.client, pair.c2s) == 24
        assert pair.server.statistics().pauses == 0
        rxs = [pair.server.irecv(bytearray(100), k) for k in range(40)]
        with trio.fail_after(T):
            for r in rxs + txs:
                assert (await r.wait()).ok
        assert queued(pair.client, pair.c2s) == 0
        assert pair.server.statistics().pauses == 0
        assert pair.client.statistics().credit_waits == 24


async def test_a_full_queue_from_other_peers_does_not_pause_this_one():
    """The unexpected queue is bounded per peer: another peer filling its share does not
    stop a large message of this one."""
    cfg = Config(unexpected_max_count=32)
    async with endpoint_pair("mx", cfg) as pair:
        async with mxnet.open_endpoint("127.0.0.1", 0, key=b"test-key", config=cfg) as other:
            o2s = await other.connect(*pair.server.address)
            for k in range(100):
                other.isend(o2s, b"x", 0x1000 + k)
            await until(lambda: pair.server.statistics().unexpected_now == 32, T)
            big = rbytes(1 << 20, 9)
            tx = pair.client.isend(pair.c2s, big, BIG)
            for k in range(40):
                pair.client.isend(pair.c2s, b"y", 0x2000 + k)
            await until(lambda: pair.server.statistics().unexpected_now == 64, T)
            buf = bytearray(len(big))
            rx = pair.server.irecv(buf, BIG)
            with trio.fail_after(T):
                assert (await rx.wait()).ok and (await tx.wait()).ok
            assert buf == big


# -- item 5: the send queue is bounded -------------------------------------------------------
@TRANSPORTS
async def test_send_queue_is_bounded_by_send_buffer_max(transport):
    """A receiver that takes nothing: the sender's queue to it stops at send_buffer_max
    (isend raises QueueFull beyond it) instead of growing with every isend; ``await send``
    waits for room and goes on once the receiver takes messages."""
    limit = 32
    server_cfg = Config(unexpected_max_count=8)
    client_cfg = Config(send_buffer_max=limit)
    payload = bytes(16 << 10)
    async with endpoint_pair(transport, server_cfg, client_config=client_cfg) as pair:
        ep, peer = pair.client, pair.c2s
        accepted, refused, worst = [], 0, 0
        for k in range(2000):  # 32 MiB: more than the socket buffers of both ends hold
            try:
                accepted.append(ep.isend(peer, payload, k))
            except getattr(mxnet, "QueueFull", ()):
                refused += 1
            worst = max(worst, len(peer._urgent) + len(peer._bulk), queued(ep, peer))
            if k % 64 == 0:
                await trio.sleep(0)  # let the writer and the other side run
        assert worst <= limit
        assert refused > 0
        assert ep.statistics().send_queue_high_water <= limit
        assert queued(ep, peer) == limit

        sent_late = []

        async def blocked_send() -> None:
            sent_late.append(await ep.send(peer, payload, 5000))

        async with trio.open_nursery() as n:
            n.start_soon(blocked_send)
            await trio.sleep(0.1)
            assert not sent_late  # no room: it waits
            rxs = [pair.server.irecv(bytearray(len(payload)), k) for k in range(len(accepted))]
            rxs.append(pair.server.irecv(bytearray(len(payload)), 5000))
            with trio.fail_after(T):
                for r in rxs + accepted:
                    assert (await r.wait()).ok
        with trio.fail_after(T):
            assert (await sent_late[0].wait()).ok
        assert ep.statistics().send_queue_high_water <= limit


# -- item 4: a local error while receiving into a file segment ---------------------------------
@contextlib.contextmanager
def tiny_tmpfs(tmp_path: Path, size: str = "1m"):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "mxnet-test", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> None:
    """Write until the file system is full."""
    with open(path, "wb", buffering=0) as f:
        block = bytes(64 << 10)
        with contextlib.suppress(OSError):
            while True:
                f.write(block)


@TRANSPORTS
@pytest.mark.parametrize("n", [16 << 10, 2 << 20], ids=["eager", "large"])
@pytest.mark.parametrize("posted_first", [True, False], ids=["posted", "unexpected"])
async def test_enospc_into_a_file_segment_fails_only_that_receive(tmp_path, transport, n,
                                                                  posted_first):
    with tiny_tmpfs(tmp_path) as mnt:
        fill(mnt / "filler")
        fd = os.open(mnt / "dst", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            async with endpoint_pair(transport) as pair:
                data = rbytes(n, 3)
                if posted_first:
                    rx = pair.server.irecv([mxnet.file(fd, 0, n)], 7)
                tx = pair.client.isend(pair.c2s, data, 7)
                if not posted_first:
                    await until(lambda: pair.server.iprobe(7, mxnet.MASK_ALL) is not None, T)
                    rx = pair.server.irecv([mxnet.file(fd, 0, n)], 7)
                with trio.fail_after(T):
                    st = await rx.wait()
                    await tx.wait()
                assert st.code is StatusCode.LOCAL_ERROR, st
                assert st.error == errno.ENOSPC
                # the connection lives on: the next messages, both ways, still work
                await ping_pong(pair, 2)
                os.unlink(mnt / "filler")
                m = 64 << 10  # there is room again, and the same file segment kind works
                rx = pair.server.irecv([mxnet.file(fd, 0, m)], 8)
                pair.client.isend(pair.c2s, data[:m], 8)
                with trio.fail_after(T):
                    assert (await rx.wait()).ok
                assert os.pread(fd, m, 0) == data[:m]
                assert not pair.s2c.lost and pair.server.statistics().peers_lost == 0
        finally:
            os.close(fd)


@TRANSPORTS
async def test_read_only_file_segment_gives_ebadf(tmp_path, transport):
    (tmp_path / "ro").write_bytes(b"")
    fd = os.open(tmp_path / "ro", os.O_RDONLY)
    try:
        async with endpoint_pair(transport) as pair:
            rx = pair.server.irecv([mxnet.user(bytearray(4)), mxnet.file(fd, 0, 100)], 3)
            pair.client.isend(pair.c2s, rbytes(104), 3)
            with trio.fail_after(T):
                st = await rx.wait()
            assert st.code is StatusCode.LOCAL_ERROR and st.error == errno.EBADF, st
            await ping_pong(pair, 3)
            assert not pair.s2c.lost
    finally:
        os.close(fd)


@pytest.mark.parametrize("transport", ["mx", "gm"])
async def test_a_peer_that_pings_and_never_reads_cannot_grow_our_queue(transport):
    """Every PING makes a PONG: a peer that sends them and reads nothing must not make the
    endpoint queue answers without bound (it stops reading that peer instead)."""
    cfg = Config(send_buffer_max=64)
    async with endpoint_pair(transport, cfg) as pair:
        sock, peer = await raw_client(pair.server, transport)
        try:
            pings = wire.HEADER.pack(PacketType.PING, 0, 0, 0, 0, 0, 0) * 256
            high, sent, stuck_since = 0, 0, None
            with trio.move_on_after(8):
                while sent < 400_000:
                    try:
                        sent += sock.send(pings) // wire.HEADER_LEN
                        stuck_since = None
                    except BlockingIOError:  # the endpoint stopped reading us: good
                        now = trio.current_time()
                        stuck_since = stuck_since or now
                        if now - stuck_since > 1.0:
                            break
                    high = max(high, peer.backlog())
                    await trio.sleep(0)
            high = max(high, peer.backlog())
            assert high <= 2 * cfg.send_buffer_max + 256, (high, sent)
        finally:
            sock.close()
        with trio.fail_after(10):  # the endpoint still serves its other peer
            rx = pair.server.irecv([mxnet.user(bytearray(8))], 7)
            pair.client.isend(pair.c2s, [mxnet.user(b"still ok")], 7)
            assert (await rx.wait()).ok
