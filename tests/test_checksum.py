"""-o checksum: xxh3-64 of every READ and WRITE payload, over a proxy that flips bytes."""

from __future__ import annotations

import errno
import os

import pytest
import trio
from conftest_fs import SECRET, MountProc, ServerProc, needs_fuse
from corrupt_proxy import CorruptingProxy
from test_server_service import KEY, _serve

from fsproto.rpc import INLINE_MAX, Op
from mxfs.rpc import RpcError, open_client


@pytest.fixture(params=["mx", "gm"])
def transport(request):
    return request.param


SIZES = [8192, INLINE_MAX, 200_000, 3 << 20]  # inline, largest inline, WDATA/RDATA, chunked


async def _roundtrip(tmp_path, transport, *, checksum, to_client=0, to_server=0):
    data = os.urandom(max(SIZES))
    async with trio.open_nursery() as nursery:
        ep, svc = await _serve(nursery, tmp_path, transport)
        proxy = CorruptingProxy(ep.address[1], to_client=to_client, to_server=to_server)
        try:
            async with open_client("127.0.0.1", proxy.port, key=KEY, transport=transport,
                                   timeout=5, checksum=checksum) as rpc:
                outcome = []
                for size in SIZES:
                    hid, *_ = await rpc.call(Op.CREATE, b"f%d" % size, os.O_RDWR, 0o644)
                    try:
                        await rpc.write(hid, 0, data[:size], epoch=rpc.epoch)
                        view = await rpc.read(hid, 0, size, epoch=rpc.epoch)
                        got = bytes(view)
                        outcome.append(("ok", got == data[:size],
                                        (tmp_path / f"f{size}").read_bytes() == data[:size]))
                    except RpcError as e:
                        outcome.append(("error", e.errno, None))
                stats = rpc.statistics()
        finally:
            proxy.close()
        server_stats = svc.statistics()
        nursery.cancel_scope.cancel()
    return outcome, stats, server_stats, proxy.flipped


async def test_without_checksums_corruption_goes_unseen(tmp_path, transport):
    """The proxy really corrupts: without checksums, bad bytes arrive as good ones."""
    outcome, stats, _, flipped = await _roundtrip(tmp_path, transport, checksum=False,
                                                  to_client=2, to_server=2)
    assert flipped == {"s2c": 2, "c2s": 2}
    assert any(o[0] == "ok" and not (o[1] and o[2]) for o in outcome), outcome


async def test_one_flip_each_way_is_caught_and_retried(tmp_path, transport):
    outcome, stats, server_stats, flipped = await _roundtrip(
        tmp_path, transport, checksum=True, to_client=1, to_server=1)
    assert flipped == {"s2c": 1, "c2s": 1}
    assert outcome == [("ok", True, True)] * len(SIZES)
    assert stats["checksum_mismatches"] == 2 and stats["checksum_failures"] == 0
    assert server_stats["checksum_mismatches"] == 1
    assert stats["checksums_verified"] == 2 * len(SIZES)
    if transport == "mx":  # hashing read the page cache through a map: no payload copy
        assert server_stats["checksum_bytes_copied"] == 0
        assert server_stats["checksum_bytes_hashed"] >= sum(SIZES)  # (+ WDATA landed in files)


async def test_persistent_corruption_gives_eio(tmp_path, transport):
    outcome, stats, _, _ = await _roundtrip(tmp_path, transport, checksum=True,
                                            to_client=-1, to_server=-1)
    assert all(o == ("error", errno.EIO, None) for o in outcome), outcome
    assert stats["checksum_failures"] == len(SIZES)


@pytest.mark.fuse
@needs_fuse
def test_mount_with_checksum_catches_wire_corruption(tmp_path, transport):
    """A real mount through the corrupting proxy: one flip each way is caught and retried
    (the data is right on both ends), and a wire that always corrupts gives EIO."""
    export = tmp_path / "export"
    export.mkdir()
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    server = ServerProc(export, secret).start()
    target = server.port + (1 if transport == "gm" else 0)
    proxy = CorruptingProxy(target, to_client=1, to_server=1)
    m = None
    try:
        m = MountProc(proxy.port, tmp_path / "mnt", secret, transport, "checksum").start()
        data = os.urandom(4 << 20)
        (m.mnt / "f").write_bytes(data)
        assert (export / "f").read_bytes() == data
        assert (m.mnt / "f").read_bytes() == data
        assert proxy.flipped == {"s2c": 1, "c2s": 1}
        client = m.stats()["client"]
        assert client["checksum_mismatches"] == 2 and client["checksum_failures"] == 0
        proxy.budget["s2c"] = -1  # from now on every payload towards the client is damaged
        with open(m.mnt / "f", "rb") as f:  # (the pages are cached now: read from the wire)
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        with pytest.raises(OSError) as ei:
            (m.mnt / "f").read_bytes()
        assert ei.value.errno == errno.EIO
        proxy.budget["s2c"] = 0
        assert m.stats()["client"]["checksum_failures"] >= 1
    finally:
        if m is not None:
            m.stop()
        proxy.close()
        server.stop()
