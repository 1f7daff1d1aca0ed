"""mxfs/writer.py over a real client and server, no FUSE: small writes gathered into runs,
runs sent in the background and before what must see them, appends in order, errors kept
for close and fsync, post-op attributes of a lone write."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from mxfs_units import Units, units

from fsproto.rpc import Op, St
from mxfs.writeback import MAX_AGE, RUN_MAX

CHUNK = 4096


@asynccontextmanager
async def background(u: Units) -> AsyncIterator[None]:
    """The writer's task running, as the mount runs it."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(u.writer.run)
        await trio.sleep(0)
        yield
        nursery.cancel_scope.cancel()


async def test_small_writes_gather_into_one_request(tmp_path) -> None:
    async with units(tmp_path) as u:
        f = await u.create(b"f", os.O_WRONLY)
        data = os.urandom(CHUNK * 100)
        before = u.svc.requests
        for i in range(100):
            assert await u.writer.write(f, i * CHUNK, data[i * CHUNK:(i + 1) * CHUNK]) == CHUNK
        assert u.svc.requests == before and f.pending  # answered, held
        await u.writer.settle(f)
        assert u.svc.requests == before + 1 and not f.pending
        assert (tmp_path / "f").read_bytes() == data


async def test_a_run_that_ages_goes_out_by_itself(tmp_path) -> None:
    async with units(tmp_path) as u, background(u):
        f = await u.create(b"f", os.O_WRONLY)
        await u.writer.write(f, 0, b"x" * CHUNK)
        assert (tmp_path / "f").read_bytes() == b""
        with trio.fail_after(MAX_AGE * 10):
            while (tmp_path / "f").read_bytes() != b"x" * CHUNK:
                await trio.sleep(MAX_AGE / 4)
        assert not u.writer.dirty


async def test_what_must_see_the_data_settles_the_inode(tmp_path) -> None:
    async with units(tmp_path) as u, background(u):
        f = await u.create(b"f", os.O_WRONLY)
        await u.writer.write(f, 0, b"y" * CHUNK)
        assert u.files.pending(f.ino)
        await u.writer.settle_inode(f.ino)
        assert not u.files.pending(f.ino) and (tmp_path / "f").stat().st_size == CHUNK
        await u.writer.write(f, CHUNK, b"z")
        await u.writer.settle_open_files()
        assert (tmp_path / "f").stat().st_size == CHUNK + 1


async def test_a_failed_run_is_reported_at_close_not_at_its_write(tmp_path) -> None:
    async with units(tmp_path) as u, background(u):
        f = await u.create(b"f", os.O_RDONLY)  # the server refuses writes through it
        assert await u.writer.write(f, 0, b"lost") == 4  # answered before it failed
        with pytest.raises(OSError) as e:
            await u.writer.flush(f)
        assert e.value.errno == errno.EBADF and u.writer.werr.recorded == 1
        with pytest.raises(OSError):  # the next write learns of it too
            await u.writer.write(f, 4, b"more")


async def test_appends_of_two_open_files_reach_the_server_in_order(tmp_path) -> None:
    async with units(tmp_path) as u, background(u):
        a = await u.create(b"log", os.O_WRONLY | os.O_APPEND)
        b = await u.create(b"log", os.O_WRONLY | os.O_APPEND)
        assert a.ino == b.ino
        end = 0
        for i in range(6):
            line = f"line {i} from {'ab'[i % 2]}\n".encode()
            await u.writer.write(a if i % 2 == 0 else b, end, line)
            end += len(line)
        await u.writer.settle(b)  # b's last run first: a's went before b's run began
        await u.writer.settle(a)
        lines = (tmp_path / "log").read_bytes().decode().splitlines()
        assert lines == [f"line {i} from {'ab'[i % 2]}" for i in range(6)]


async def test_fsync_makes_the_writes_durable(tmp_path) -> None:
    async with units(tmp_path) as u, background(u):
        f = await u.create(b"f", os.O_WRONLY)
        await u.writer.write(f, 0, b"x" * CHUNK)
        await u.writer.fsync(f, datasync=False)
        assert (tmp_path / "f").stat().st_size == CHUNK
        assert u.writer.werr.unsynced_since(f.ino) == -1  # nothing left unsynced
        await u.writer.flush(f)


async def test_a_lone_direct_write_leaves_its_attributes(tmp_path) -> None:
    async with units(tmp_path) as u:
        f = await u.create(b"f", os.O_WRONLY)
        big = os.urandom(RUN_MAX)  # too large to gather: written at once
        assert await u.writer.write(f, 0, big) == len(big)
        assert not f.pending
        st = u.attrs.take(f.ino)
        assert st is not None and st[St.SIZE] == len(big)


async def test_a_run_held_across_a_reconnect_goes_out_on_the_new_one(tmp_path) -> None:
    async with units(tmp_path) as u:
        f = await u.create(b"f", os.O_WRONLY)
        await u.writer.write(f, 0, b"kept" * 100)
        await u.reconnect()
        await u.writer.flush(f)  # settles through a reopened handle
        assert f.epoch == u.rpc.epoch
        assert (tmp_path / "f").read_bytes() == b"kept" * 100
        await u.rpc.call(Op.PING)
        u.writer.closed(f, last=u.files.remove_file(f))
        assert len(u.writer.werr) == 0
