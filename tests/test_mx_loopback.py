"""mxnet over real sockets on 127.0.0.1 (and ::1): every call, on both transports."""

from __future__ import annotations

import os
import socket

import pytest
import trio
from mx_helpers import KEY, endpoint_pair, rbytes, until

import mxnet
from mxnet import MASK_ALL, Config, StatusCode

pytestmark = pytest.mark.parametrize("transport", ["mx", "gm"])

T = 30  # generous: only there so that a bug fails the test instead of hanging it

SIZES = [0, 1, 32, 33, 128, 129, 32768, 32769, 1 << 20,
         pytest.param(64 << 20, marks=pytest.mark.slow)]


async def exchange(pair, data, recv_segs, match=0x42, send_segs=None):
    rx = pair.server.irecv(recv_segs, match)
    tx = pair.client.isend(pair.c2s, send_segs if send_segs is not None else data, match)
    with trio.fail_after(T):
        rs = await rx.wait()
        ts = await tx.wait()
    return rs, ts


@pytest.mark.parametrize("n", SIZES)
async def test_sizes(transport, n):
    data = rbytes(n)
    buf = bytearray(n)
    async with endpoint_pair(transport) as pair:
        rs, ts = await exchange(pair, data, [mxnet.user(buf)])
        assert rs.code is StatusCode.SUCCESS and ts.code is StatusCode.SUCCESS
        assert rs.msg_length == rs.xfer_length == n and rs.match == 0x42
        assert rs.source is pair.s2c and ts.source is pair.c2s
        assert buf == data
        # and back the other way
        buf2 = bytearray(n)
        rx = pair.client.irecv(buf2, 7)
        tx = pair.server.isend(pair.s2c, data, 7)
        with trio.fail_after(T):
            assert (await rx.wait()).ok and (await tx.wait()).ok
        assert buf2 == data


async def test_ipv6(transport):
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    async with endpoint_pair(transport, host="::1") as pair:
        data = rbytes(40_000)
        buf = bytearray(40_000)
        rs, _ = await exchange(pair, data, buf)
        assert rs.ok and buf == data
        assert ":" in pair.s2c.address[0]


async def test_many_small_segments(transport):
    rnd = __import__("random").Random(1)
    sizes = [rnd.randint(0, 100) for _ in range(256)]
    data = rbytes(sum(sizes))
    send, pos = [], 0
    for k in sizes:
        send.append(mxnet.user(data[pos : pos + k]))
        pos += k
    rsizes = [rnd.randint(0, 150) for _ in range(255)]
    rbufs = [bytearray(k) for k in rsizes]
    rbufs.append(bytearray(max(0, len(data) - sum(rsizes))))
    async with endpoint_pair(transport) as pair:
        rs, ts = await exchange(pair, data, [mxnet.user(b) for b in rbufs], send_segs=send)
        assert rs.ok and ts.ok and rs.xfer_length == len(data)
        assert b"".join(rbufs)[: len(data)] == data
        with pytest.raises(ValueError):
            pair.client.isend(pair.c2s, [b"x"] * 257, 1)
        with pytest.raises(ValueError):
            pair.server.irecv([bytearray(1)] * 257, 1)


@pytest.mark.parametrize("npages", [1, 3, 40])
async def test_pages(transport, npages):
    data = rbytes(npages * 4096)
    src = [data[i * 4096 : (i + 1) * 4096] for i in range(npages)]
    dst = [bytearray(4096) for _ in range(npages)]
    async with endpoint_pair(transport) as pair:
        rs, ts = await exchange(pair, data, [mxnet.pages(dst)], send_segs=[mxnet.pages(src)])
        assert rs.ok and ts.ok and b"".join(dst) == data


@pytest.mark.parametrize("n", [0, 100, 32768, 200_000, 3 << 20])
async def test_file_segments(transport, tmp_path, n):
    data = rbytes(n)
    (tmp_path / "src").write_bytes(b"junk" * 10 + data)
    sfd = os.open(tmp_path / "src", os.O_RDONLY)
    dfd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        async with endpoint_pair(transport) as pair:
            # file -> memory
            buf = bytearray(n)
            rs, ts = await exchange(pair, data, buf, send_segs=[mxnet.file(sfd, 40, n)])
            assert rs.ok and ts.ok and buf == data
            # memory -> file (at an offset)
            rs, ts = await exchange(pair, data, [mxnet.file(dfd, 5, n)], match=2)
            assert rs.ok and ts.ok
            assert os.pread(dfd, n, 5) == data
            # file -> file, mixed with a memory segment on each side
            head = bytearray(3)
            rs, ts = await exchange(
                pair, None, [mxnet.user(head), mxnet.file(dfd, 0, n)], match=3,
                send_segs=[mxnet.user(b"hdr"), mxnet.file(sfd, 40, n)])
            assert rs.ok and ts.ok and head == b"hdr"
            assert os.pread(dfd, n, 0) == data
    finally:
        os.close(sfd)
        os.close(dfd)


async def test_file_send_short_source(transport, tmp_path):
    (tmp_path / "src").write_bytes(b"abc")
    fd = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        async with endpoint_pair(transport) as pair:
            buf = bytearray(10)
            rs, ts = await exchange(pair, None, buf, send_segs=[mxnet.file(fd, 0, 10)])
            assert ts.code is StatusCode.SHORT_SOURCE
            assert rs.xfer_length == 10 and buf == b"abc" + bytes(7)
            # the stream stays framed
            buf2 = bytearray(2)
            rs, _ = await exchange(pair, b"ok", buf2, match=9)
            assert rs.ok and buf2 == b"ok"
    finally:
        os.close(fd)


@pytest.mark.parametrize("n", [100, 100_000])
async def test_truncation(transport, n):
    data = rbytes(n)
    async with endpoint_pair(transport) as pair:
        buf = bytearray(50)
        rs, ts = await exchange(pair, data, buf)
        assert rs.code is StatusCode.TRUNCATED
        assert rs.msg_length == n and rs.xfer_length == 50 and buf == data[:50]
        assert ts.ok
        buf = bytearray(3)
        rs, _ = await exchange(pair, b"abc", buf, match=1)
        assert rs.ok and buf == b"abc"


async def test_cancel_and_timeout(transport):
    async with endpoint_pair(transport) as pair:
        rx = pair.server.irecv(bytearray(4), 5)
        with pytest.raises(mxnet.Timeout):
            await rx.wait(timeout=0.05)
        assert not rx.done  # still pending after a timeout
        assert rx.cancel()
        with trio.fail_after(T):
            st = await rx.wait()
        assert st.code is StatusCode.CANCELLED
        assert not rx.cancel()
        # a later message is not taken by the cancelled receive
        pair.client.isend(pair.c2s, b"late", 5)
        await until(lambda: pair.server.iprobe(5, MASK_ALL) is not None, T)
        assert pair.server.iprobe(5, MASK_ALL).msg_length == 4


@pytest.mark.parametrize("n", [10, 100_000])
async def test_unexpected_then_posted(transport, n):
    data = rbytes(n)
    async with endpoint_pair(transport) as pair:
        tx = pair.client.isend(pair.c2s, data, 0xAB)
        await until(lambda: pair.server.iprobe(0xAB, MASK_ALL) is not None, T)
        st = pair.server.iprobe(0xA0, 0xF0)
        assert st.msg_length == n and st.match == 0xAB and st.source is pair.s2c
        assert pair.server.iprobe(0xAB, MASK_ALL, peer=pair.s2c) is not None
        assert pair.server.iprobe(0xAC, MASK_ALL) is None
        buf = bytearray(n)
        rx = pair.server.irecv(buf, 0xAB)
        with trio.fail_after(T):
            assert (await rx.wait()).ok
            assert (await tx.wait()).ok
        assert buf == data
        assert pair.server.iprobe(0, 0) is None


async def test_probe_returns_queued_message(transport):
    async with endpoint_pair(transport) as pair:
        pair.client.isend(pair.c2s, b"x" * 7, 0x1234)
        await until(lambda: pair.server.iprobe() is not None, T)
        st = await pair.server.probe(0x1200, 0xFF00, timeout=T)
        assert st.match == 0x1234 and st.msg_length == 7
        with pytest.raises(mxnet.Timeout):
            await pair.server.probe(0x9999, MASK_ALL, timeout=0.05)


async def test_probe_wakes_on_arrival(transport):
    async with endpoint_pair(transport) as pair:
        async with trio.open_nursery() as n:
            got = []

            async def prober():
                got.append(await pair.server.probe(0x77, MASK_ALL, timeout=2))

            n.start_soon(prober)
            await trio.sleep(0)
            tx = pair.client.isend(pair.c2s, b"hello", 0x77)
            await tx.wait(timeout=T)
        assert got and got[0].msg_length == 5


async def test_wait_any(transport):
    async with endpoint_pair(transport) as pair:
        bufs = {m: bytearray(1) for m in (0x10, 0x20, 0x21)}
        reqs = {m: pair.server.irecv(b, m) for m, b in bufs.items()}
        with pytest.raises(mxnet.Timeout):
            await pair.server.wait_any(timeout=0.05)
        pair.client.isend(pair.c2s, b"b", 0x20)
        with trio.fail_after(T):
            r = await pair.server.wait_any(0x20, 0xF0)
        assert r is reqs[0x20] and r.status.ok and bufs[0x20] == b"b"
        pair.client.isend(pair.c2s, b"c", 0x21)
        pair.client.isend(pair.c2s, b"a", 0x10)
        with trio.fail_after(T):
            r1 = await pair.server.wait_any(0x10, 0xF0)  # only the 0x1? one fits
            r2 = await pair.server.wait_any()
        assert r1 is reqs[0x10] and r2 is reqs[0x21]
        with pytest.raises(mxnet.Timeout):  # each completion is reported once
            await pair.server.wait_any(timeout=0.05)


@pytest.mark.parametrize("n", [0, 5, 100_000])
async def test_issend_completes_only_once_matched(transport, n):
    data = rbytes(n)
    async with endpoint_pair(transport) as pair:
        tx = pair.client.issend(pair.c2s, data, 0x5)
        # a full round trip after the issend: its message has arrived, unmatched
        echo = pair.client.irecv(bytearray(4), 0x6)
        pong = pair.server.irecv(bytearray(4), 0x6)
        pair.client.isend(pair.c2s, b"ping", 0x6)
        with trio.fail_after(T):
            await pong.wait()
        assert pair.server.iprobe(0x5, MASK_ALL).msg_length == n
        pair.server.isend(pair.s2c, b"pong", 0x6)
        with trio.fail_after(T):
            await echo.wait()
        assert not tx.done
        buf = bytearray(n)
        rx = pair.server.irecv(buf, 0x5)
        with trio.fail_after(T):
            assert (await tx.wait()).ok
            assert (await rx.wait()).ok
        assert buf == data


async def test_masks(transport):
    async with endpoint_pair(transport) as pair:
        with pytest.raises(mxnet.MatchError):
            pair.server.irecv(bytearray(1), 0x1FF, 0xF0)
        b1, b2, b3 = bytearray(1), bytearray(1), bytearray(1)
        hi = pair.server.irecv(b1, 0xAB00_0000_0000_0000, 0xFF00_0000_0000_0000)
        lo = pair.server.irecv(b2, 0x3, 0xF)
        anything = pair.server.irecv(b3, 0, 0)
        pair.client.isend(pair.c2s, b"L", 0x1234_0000_0000_0013)
        pair.client.isend(pair.c2s, b"H", 0xAB12_3456_789A_BCD3)  # fits hi and lo: hi first
        pair.client.isend(pair.c2s, b"A", 0x55)
        with trio.fail_after(T):
            for r in (hi, lo, anything):
                await r.wait()
        assert (b1, b2, b3) == (b"H", b"L", b"A")
        assert hi.status.match == 0xAB12_3456_789A_BCD3


async def test_peer_filter(transport):
    async with endpoint_pair(transport) as pair:
        async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as other:
            peer2 = await other.connect(*pair.server.address)
            await until(lambda: len(pair.server.peers) == 2, T)
            buf = bytearray(1)
            rx = pair.server.irecv(buf, 1, peer=pair.s2c)
            other.isend(peer2, b"o", 1)
            await until(lambda: pair.server.iprobe(1, MASK_ALL) is not None, T)
            assert not rx.done
            pair.client.isend(pair.c2s, b"c", 1)
            with trio.fail_after(T):
                assert (await rx.wait()).source is pair.s2c
            assert buf == b"c"


async def test_several_peers_at_once(transport):
    nclients, nmsgs = 4, 25
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as server:
        recvs = {c: [] for c in range(nclients)}
        for c in range(nclients):
            for _ in range(nmsgs):
                buf = bytearray(3000)
                recvs[c].append((buf, server.irecv(buf, c << 32, 0xFFFF_FFFF_0000_0000)))

        async def client(c):
            async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as ep:
                peer = await ep.connect(*server.address)
                txs = [ep.isend(peer, rbytes(1000 + k * 80, c * 100 + k), c << 32 | k)
                       for k in range(nmsgs)]
                for tx in txs:
                    assert (await tx.wait(timeout=T)).ok
                await until(lambda: all(r.done for _, r in recvs[c]), T)

        async with trio.open_nursery() as n:
            for c in range(nclients):
                n.start_soon(client, c)
        for c in range(nclients):
            for k, (buf, r) in enumerate(recvs[c]):  # one peer's messages match in order
                assert r.status.ok and r.status.match == c << 32 | k
                assert bytes(buf[: r.status.xfer_length]) == rbytes(1000 + k * 80, c * 100 + k)


async def test_send_to_lost_peer(transport):
    async with endpoint_pair(transport) as pair:
        await pair.client.disconnect(pair.c2s)
        assert pair.c2s.lost
        tx = pair.client.isend(pair.c2s, b"x", 1)
        assert tx.status.code is StatusCode.PEER_LOST
        rx = pair.client.irecv(bytearray(1), 1, peer=pair.c2s)
        assert rx.status.code is StatusCode.PEER_LOST


async def test_peer_lost(transport):
    """The other side drops the connection: pending requests complete PEER_LOST and
    on_peer_lost fires; receives not tied to that peer stay posted."""
    lost = []
    async with endpoint_pair(transport) as pair:
        client, peer = pair.client, pair.c2s
        client.on_peer_lost(lost.append)
        rx = client.irecv(bytearray(10), 1, peer=peer)
        open_rx = client.irecv(bytearray(10), 2)  # not tied to the peer: stays posted
        big = client.issend(peer, rbytes(100_000), 3)  # never matched over there
        small = client.issend(peer, b"s", 4)
        pong = pair.server.irecv(bytearray(1), 5)
        client.isend(peer, b"p", 5)
        with trio.fail_after(T):
            await pong.wait()  # the server has seen everything
        assert not lost
        await pair.server.disconnect(pair.s2c)
        with trio.fail_after(T):
            for r in (rx, big, small):
                assert (await r.wait()).code is StatusCode.PEER_LOST
        await until(lambda: lost == [peer], T)
        assert peer.lost and not open_rx.done
        assert client.statistics().peers_lost == 1 and client.statistics().peers_connected == 0
        assert client.isend(peer, b"x", 1).status.code is StatusCode.PEER_LOST
        assert open_rx.cancel()
        assert pair.server.statistics().protocol_errors == 0


async def test_raw_peer_closes(transport):
    from mx_helpers import raw_client

    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as ep:
        lost = []
        ep.on_peer_lost(lost.append)
        sock, peer = await raw_client(ep, transport)
        rx = ep.irecv(bytearray(10), 1, peer=peer)
        sock.close()
        with trio.fail_after(T):
            assert (await rx.wait()).code is StatusCode.PEER_LOST
        assert lost == [peer]
        assert ep.statistics().protocol_errors == 0


async def test_endpoint_close_is_seen_by_remote(transport):
    slow = Config(keepalive=30, peer_timeout=60)
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport,
                                   config=slow) as client:
        async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as server:
            peer = await client.connect(*server.address)
            rx = server.irecv(bytearray(1), 1)
            client.isend(peer, b"x", 1)
            with trio.fail_after(T):
                await rx.wait()  # the server's peer tasks are running now
            s2c = rx.status.source
            pending = client.irecv(bytearray(1), 2, peer=peer)
        assert s2c._sock.fileno() == -1, "the closed endpoint still holds the peer socket"
        with trio.fail_after(5):  # far below peer_timeout: the FIN must be noticed
            assert (await pending.wait()).code is StatusCode.PEER_LOST


async def test_close_completes_local_requests(transport):
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as server:
        async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as client:
            peer = await client.connect(*server.address)
            rx = client.irecv(bytearray(1), 1, peer=peer)
        assert rx.status.code is StatusCode.PEER_LOST
        await until(lambda: server.statistics().peers_lost == 1, T)


async def test_unexpected_handler_posts_receive(transport):
    async with endpoint_pair(transport) as pair:
        seen, bufs = [], []

        def handler(status):
            buf = bytearray(status.msg_length)
            bufs.append(buf)
            seen.append(pair.server.irecv(buf, status.match))

        pair.server.set_unexpected_handler(handler)
        data = [rbytes(n, 3) for n in (5, 40_000)]
        txs = [pair.client.isend(pair.c2s, d, 0x100 + i) for i, d in enumerate(data)]
        await until(lambda: len(seen) == 2, T)
        with trio.fail_after(T):
            for r in seen + txs:
                assert (await r.wait()).ok
        assert [bytes(b) for b in bufs] == data
        assert pair.server.iprobe() is None
        if transport == "mx":
            assert pair.server.statistics().payload_bytes_copied == 0
        pair.server.set_unexpected_handler(None)
        pair.client.isend(pair.c2s, b"q", 0x200)
        await until(lambda: pair.server.iprobe(0x200, MASK_ALL) is not None, T)


async def test_keepalive_keeps_idle_peers(transport):
    cfg = Config(keepalive=0.05, peer_timeout=0.5)
    async with endpoint_pair(transport, cfg) as pair:
        for _ in range(3):  # idle well past peer_timeout; pings keep both sides alive
            await trio.sleep(0.3)
        assert not pair.c2s.lost and not pair.s2c.lost
        buf = bytearray(2)
        rs, _ = await exchange(pair, b"hi", buf)
        assert rs.ok and buf == b"hi"


async def test_statistics_count_messages(transport):
    async with endpoint_pair(transport) as pair:
        for n in (10, 100, 1000, 50_000):
            await exchange(pair, rbytes(n), bytearray(n))
        s, c = pair.server.statistics(), pair.client.statistics()
        assert dict(c.msgs_sent) == {"tiny": 1, "small": 1, "medium": 1, "large": 1}
        assert dict(s.msgs_received) == {"tiny": 1, "small": 1, "medium": 1, "large": 1}
        assert s.payload_bytes_delivered == 51_110
        d = c.as_dict()
        assert d["messages_sent"] == 4 and d["payload_bytes_sent"] == 51_110
        assert s.peers_connected == 1 and c.transport == transport


async def test_vector_goes_out_in_one_sendmsg_chunked_by_iov_max(transport):
    """mx puts a whole vector on the wire with one sendmsg (header + every piece), and
    splits only where the kernel's IOV_MAX forces it; gm sends one contiguous bounce
    buffer, so one sendmsg either way."""
    from mxnet.sockio import IOV_MAX

    async with endpoint_pair(transport) as pair:
        await exchange(pair, b"warm", bytearray(4))
        for npieces in (256, IOV_MAX + 100):
            data = rbytes(npieces, 3)
            if npieces <= 256:  # 256 user segments of one byte
                segs = [mxnet.user(data[i : i + 1]) for i in range(npieces)]
            else:  # one segment of many small pages (not full pages)
                segs = [mxnet.pages([data[i : i + 1] for i in range(npieces)], full=False)]
            before = pair.client.statistics().sendmsg_calls
            buf = bytearray(npieces)
            rs, ts = await exchange(pair, data, buf, send_segs=segs)
            assert rs.ok and ts.ok and buf == data
            calls = pair.client.statistics().sendmsg_calls - before
            if transport == "gm" or npieces + 1 <= IOV_MAX:
                assert calls == 1
            else:  # header + pieces, IOV_MAX per call
                assert calls == -(-(npieces + 1) // IOV_MAX)
