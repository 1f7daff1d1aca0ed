"""Completion callbacks (Request.add_done_callback), on both transports: when they run, with
what status, and that a failing or chained callback cannot hurt the endpoint."""

from __future__ import annotations

import logging

import pytest
import trio
from mx_helpers import endpoint_pair, rbytes, until

from mxnet import MASK_ALL, StatusCode

pytestmark = pytest.mark.parametrize("transport", ["mx", "gm"])

T = 30


@pytest.mark.parametrize("n", [8, 32769, 1 << 20])
async def test_receive_and_send_callbacks_run_once(transport, n):
    data = rbytes(n)
    buf = bytearray(n)
    seen: list[tuple[str, object]] = []
    async with endpoint_pair(transport) as pair:
        rx = pair.server.irecv(buf, 7)
        rx.add_done_callback(lambda r: seen.append(("rx", r.status)))
        tx = pair.client.isend(pair.c2s, data, 7)
        tx.add_done_callback(lambda r: seen.append(("tx", r.status)))
        with trio.fail_after(T):
            rs, ts = await rx.wait(), await tx.wait()
        await until(lambda: len(seen) == 2)
        assert sorted(seen, key=lambda x: x[0]) == [("rx", rs), ("tx", ts)]
        assert rs.ok and rs.xfer_length == n and bytes(buf) == data
        # added after completion: runs at once, exactly once
        late: list[object] = []
        rx.add_done_callback(late.append)
        assert late == [rx]
        await trio.sleep(0.05)
        assert len(seen) == 2 and late == [rx]


async def test_callback_on_cancel_and_peer_lost(transport):
    codes: list[StatusCode] = []
    async with endpoint_pair(transport) as pair:
        r1 = pair.server.irecv(bytearray(4), 1)
        r1.add_done_callback(lambda r: codes.append(r.status.code))
        assert r1.cancel()
        r2 = pair.server.irecv(bytearray(4), 2, peer=pair.s2c)
        r2.add_done_callback(lambda r: codes.append(r.status.code))
        await pair.client.disconnect(pair.c2s)
        await until(lambda: len(codes) == 2, timeout=T)
    assert codes == [StatusCode.CANCELLED, StatusCode.PEER_LOST]


async def test_failing_callback_is_logged_and_endpoint_keeps_working(transport, caplog):
    def boom(_r):
        raise RuntimeError("callback bug")

    async with endpoint_pair(transport) as pair:
        with caplog.at_level(logging.ERROR, logger="mxnet"):
            rx = pair.server.irecv(bytearray(8), 3)
            rx.add_done_callback(boom)
            pair.client.isend(pair.c2s, b"12345678", 3)
            with trio.fail_after(T):
                assert (await rx.wait()).ok
            await until(lambda: "completion callback" in caplog.text)
        # the same connection still carries messages both ways
        buf = bytearray(8)
        rx = pair.client.irecv(buf, 4)
        pair.server.isend(pair.s2c, b"abcdefgh", 4)
        with trio.fail_after(T):
            assert (await rx.wait()).ok
        assert buf == b"abcdefgh" and not pair.c2s.lost


async def test_callback_chain_over_a_deep_unexpected_queue(transport):
    """An echo-style chain (each callback posts the next receive) over 3000 messages that
    already wait in the unexpected queue: every receive completes inside irecv, so without
    the trampoline this would recurse 3000 deep."""
    count = 3000
    got: list[int] = []
    done = trio.Event()
    async with endpoint_pair(transport) as pair:
        for i in range(count):
            pair.client.isend(pair.c2s, i.to_bytes(4, "little"), 0x100 | (i & 0xF))
        await until(lambda: pair.server.statistics().unexpected_now == count, timeout=T)

        def take(r):
            got.append(int.from_bytes(r.vec[0].views[0], "little"))
            if len(got) == count:
                done.set()
                return
            pair.server.irecv(bytearray(4), 0x100, MASK_ALL & ~0xF).add_done_callback(take)

        pair.server.irecv(bytearray(4), 0x100, MASK_ALL & ~0xF).add_done_callback(take)
        with trio.fail_after(T):
            await done.wait()
    assert got == list(range(count))  # messages from one peer match in send order
