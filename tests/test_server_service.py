"""The server's trio service and the client's RPC layer over loopback mxnet (no FUSE)."""

from __future__ import annotations

import errno
import os

import pytest
import trio

import mxnet
from fsproto.rpc import (
    INLINE_MAX,
    KIND_MASK,
    KIND_SHIFT,
    OPEN_AHEAD_MAX,
    PROTOCOL_VERSION,
    Kind,
    Op,
    St,
    encode_reply,
    make_match,
    split_match,
)
from mxfs.rpc import RpcError, StaleEpoch, open_client
from server.confine import Export
from server.exports import ExportOptions
from server.handles import HandleTable
from server.ops import FileServer
from server.service import Service

KEY = b"service-test-key"


@pytest.fixture(params=["mx", "gm"])
def transport(request):
    return request.param


async def _serve(nursery, export_dir, transport):
    ex = Export(export_dir)
    fs = FileServer(ex, HandleTable(), ExportOptions(squash="none"))  # tests act as root
    ep = await nursery.start(_endpoint, transport)
    svc = Service(ep, fs)
    nursery.start_soon(svc.run)
    return ep, svc


async def _endpoint(transport, task_status=trio.TASK_STATUS_IGNORED):
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as ep:
        task_status.started(ep)
        await trio.sleep_forever()


async def test_rpc_roundtrip(tmp_path, transport):
    async with trio.open_nursery() as nursery:
        ep, svc = await _serve(nursery, tmp_path, transport)
        async with open_client("127.0.0.1", ep.address[1], key=KEY, transport=transport,
                               timeout=5) as rpc:
            hid, st, *_ = await rpc.call(Op.CREATE, b"f", os.O_RDWR, 0o644)
            small = os.urandom(INLINE_MAX)
            big = os.urandom(3 * 1024 * 1024 + 17)
            n, after = await rpc.write(hid, 0, small, epoch=rpc.epoch)
            assert n == len(small) and after[7] == len(small)  # inline: attributes after it
            n, after = await rpc.write(hid, len(small), big, epoch=rpc.epoch)
            assert n == len(big) and after[7] == len(small) + len(big)  # WDATA path, same
            assert (tmp_path / "f").read_bytes() == small + big
            view = await rpc.read(hid, 0, len(small) + len(big) + 100, epoch=rpc.epoch)
            assert view == small + big
            assert len(await rpc.read(hid, 10**9, 4096, epoch=rpc.epoch)) == 0
            # concurrent calls multiplex over one connection
            results: dict[int, bytes] = {}

            async def reader(i: int) -> None:
                results[i] = bytes(await rpc.read(hid, i * 65536, 65536, epoch=rpc.epoch))

            async with trio.open_nursery() as n2:
                for i in range(16):
                    n2.start_soon(reader, i)
            data = small + big
            for i in range(16):
                assert results[i] == data[i * 65536:(i + 1) * 65536]
            with pytest.raises(StaleEpoch):
                await rpc.call(Op.FGETATTR, hid, epoch=rpc.epoch + 1)
            with pytest.raises(RpcError) as ei:
                await rpc.write(12345, 0, big, epoch=rpc.epoch)  # bad handle, WDATA drained
            assert ei.value.errno == errno.EBADF
            assert await rpc.call(Op.PING)  # connection still fine after that
            await rpc.call(Op.RELEASE, hid)
            stats = rpc.statistics()
            if transport == "mx":
                assert stats["payload_bytes_copied"] == 0
            srv = await rpc.call(Op.STATS)
            assert srv["open_handles"] == 0 and srv["requests"] > 20
        nursery.cancel_scope.cancel()


async def test_requests_are_served_inline_unless_they_must_wait(tmp_path, transport):
    """Metadata, small writes and cached reads are answered inside the completion callback;
    a read of cold pages, a large (WDATA) write and fsync run in a task — and all answer."""
    async with trio.open_nursery() as nursery:
        ep, svc = await _serve(nursery, tmp_path, transport)
        async with open_client("127.0.0.1", ep.address[1], key=KEY, transport=transport,
                               timeout=5) as rpc:
            hid, *_ = await rpc.call(Op.CREATE, b"g", os.O_RDWR, 0o644)
            data = os.urandom(1 << 20)
            before = (svc.served_inline, svc.served_in_task)
            assert (await rpc.write(hid, 0, data[:100], epoch=rpc.epoch))[0] == 100  # inline
            assert await rpc.call(Op.FGETATTR, hid, epoch=rpc.epoch)  # inline
            assert bytes(await rpc.read(hid, 0, 100, epoch=rpc.epoch)) == data[:100]  # cached
            assert (svc.served_inline - before[0], svc.served_in_task - before[1]) == (3, 0)
            assert (await rpc.write(hid, 0, data, epoch=rpc.epoch))[0] == len(data)  # WDATA: task
            await rpc.call(Op.FSYNC, hid, False, epoch=rpc.epoch)  # task
            assert svc.served_in_task - before[1] == 2
            fd = os.open(tmp_path / "g", os.O_RDONLY)
            try:  # push the file out of the page cache: the next read must wait for the disk
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            cold = await rpc.read(hid, 512 << 10, 4096, epoch=rpc.epoch)
            assert bytes(cold) == data[512 << 10:(512 << 10) + 4096]
            srv = await rpc.call(Op.STATS)
            assert srv["served_inline"] >= 4 and srv["served_in_task"] >= 2
            await rpc.call(Op.RELEASE, hid)
        nursery.cancel_scope.cancel()


async def test_a_posted_request_gets_no_answer_and_still_happens(tmp_path, transport):
    """RELEASE is posted (nobody waits): the server closes the handle and sends nothing back,
    so neither side spends a message on an answer nobody reads."""
    async with trio.open_nursery() as nursery:
        ep, svc = await _serve(nursery, tmp_path, transport)
        async with open_client("127.0.0.1", ep.address[1], key=KEY, transport=transport,
                               timeout=5) as rpc:
            hids = [(await rpc.call(Op.CREATE, b"p%d" % i, os.O_RDWR, 0o644))[0]
                    for i in range(20)]
            got = rpc.statistics()["messages_received"]
            for hid in hids:
                rpc.post(Op.RELEASE, hid, epoch=rpc.epoch)
            srv = await rpc.call(Op.STATS)  # answered after the RELEASEs (one connection)
            assert srv["open_handles"] == 0 and srv["posted"] == 20
            assert rpc.statistics()["messages_received"] == got + 1  # STATS's answer only
            assert svc.dropped == 0
        nursery.cancel_scope.cancel()


async def test_an_older_server_answering_a_posted_request_leaves_nothing_queued(
        tmp_path, transport, monkeypatch):
    """A server from before POSTED answers RELEASE anyway: the client takes that answer off
    the queue and drops it, so nothing piles up in its unexpected queue."""
    import server.service

    monkeypatch.setattr(server.service, "POSTED", 0)  # the old server: every request answered
    async with trio.open_nursery() as nursery:
        ep, svc = await _serve(nursery, tmp_path, transport)
        async with open_client("127.0.0.1", ep.address[1], key=KEY, transport=transport,
                               timeout=5) as rpc:
            hids = [(await rpc.call(Op.CREATE, b"q%d" % i, os.O_RDWR, 0o644))[0]
                    for i in range(20)]
            got = rpc.statistics()["messages_received"]
            for hid in hids:
                rpc.post(Op.RELEASE, hid, epoch=rpc.epoch)
            srv = await rpc.call(Op.STATS)
            assert srv["open_handles"] == 0 and srv["posted"] == 0
            assert rpc.statistics()["messages_received"] == got + 21  # the 20 stray answers
            assert rpc.ep.iprobe(0, 0) is None  # none of them waits in the queue
        nursery.cancel_scope.cancel()


async def _answers_once(version, task_status=trio.TASK_STATUS_IGNORED):
    """An endpoint that answers the client's version check (PING) and then nothing more."""
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY) as ep:
        task_status.started(ep)
        st = await ep.irecv(bytearray(4096), int(Kind.REQ) << KIND_SHIFT, KIND_MASK).wait()
        reply = encode_reply(0, {"version": version})
        await ep.isend(st.source, reply, make_match(Kind.REPLY, split_match(st.match)[1])).wait()
        await trio.sleep_forever()


async def test_unanswered_call_times_out_with_eio(tmp_path):
    async with trio.open_nursery() as nursery:
        ep = await nursery.start(_answers_once, PROTOCOL_VERSION)
        async with open_client("127.0.0.1", ep.address[1], key=KEY, timeout=0.5) as rpc:
            t0 = trio.current_time()
            with pytest.raises(RpcError) as ei:
                await rpc.call(Op.PING)
            assert ei.value.errno == errno.EIO
            assert trio.current_time() - t0 < 2.0
        nursery.cancel_scope.cancel()


async def test_connect_checks_the_protocol_version(tmp_path):
    async with trio.open_nursery() as nursery:
        old = await nursery.start(_answers_once, PROTOCOL_VERSION - 1)
        with pytest.raises(mxnet.ConnectError, match=f"speaks mxfs protocol {PROTOCOL_VERSION - 1}, "
                           f"this client {PROTOCOL_VERSION}"):
            async with open_client("127.0.0.1", old.address[1], key=KEY, timeout=2):
                pass
        mute = await nursery.start(_endpoint, "mx")  # accepts, never answers
        with pytest.raises(mxnet.ConnectError, match="did not answer the version check"):
            async with open_client("127.0.0.1", mute.address[1], key=KEY, timeout=0.5):
                pass
        nursery.cancel_scope.cancel()


async def test_connect_errors(tmp_path):
    async with trio.open_nursery() as nursery:
        ep = await nursery.start(_endpoint, "mx")
        with pytest.raises(mxnet.ConnectError, match="key"):
            async with open_client("127.0.0.1", ep.address[1], key=b"wrong", timeout=2):
                pass
        nursery.cancel_scope.cancel()


async def test_an_open_brings_the_files_first_bytes_when_they_are_cached(tmp_path, transport):
    """OPEN with a third argument: the answer says how many of the file's first bytes follow
    in one RDATA message, zero copy on mx; cold pages are not waited for (-1: READ them);
    a write-only or truncating open brings nothing."""
    data = os.urandom(50_000)
    (tmp_path / "warm").write_bytes(data)
    (tmp_path / "cold").write_bytes(data)
    fd = os.open(tmp_path / "cold", os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # (drops its clean pages)
    os.close(fd)
    (tmp_path / "big").write_bytes(os.urandom(OPEN_AHEAD_MAX + 1))
    async with trio.open_nursery() as nursery:
        ep, svc = await _serve(nursery, tmp_path, transport)
        async with open_client("127.0.0.1", ep.address[1], key=KEY, transport=transport,
                               timeout=5) as rpc:
            assert rpc.opens_ahead
            hid, st, got = await rpc.open_ahead(b"warm", os.O_RDONLY, OPEN_AHEAD_MAX, None)
            assert bytes(got) == data and st[St.SIZE] == len(data)
            hid2, _, got = await rpc.open_ahead(b"big", os.O_RDWR, 4096, None)
            assert len(got) == 4096 and bytes(got) == (tmp_path / "big").read_bytes()[:4096]
            hid3, _, got = await rpc.open_ahead(b"cold", os.O_RDONLY, OPEN_AHEAD_MAX, None)
            assert got is None
            assert bytes(await rpc.read(hid3, 0, 65536, epoch=rpc.epoch)) == data
            hid4, _, got = await rpc.open_ahead(b"warm", os.O_WRONLY, OPEN_AHEAD_MAX, None)
            assert got is None
            with pytest.raises(RpcError) as ei:
                await rpc.open_ahead(b"missing", os.O_RDONLY, 4096, None)
            assert ei.value.errno == errno.ENOENT
            for h in (hid, hid2, hid3, hid4):
                await rpc.call(Op.RELEASE, h)
            if transport == "mx":
                assert rpc.statistics()["payload_bytes_copied"] == 0
            assert svc.dropped == 0 and rpc.ep.iprobe(0, 0) is None  # nothing stray
        nursery.cancel_scope.cancel()
