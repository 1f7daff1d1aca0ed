"""mxfs/reopen.py over a real client and server, no FUSE: handles reopened after a
reconnect, the same object or ESTALE, and the one retry loop."""

from __future__ import annotations

import errno
import os

import pytest
from mxfs_units import units

from fsproto.rpc import Op, St
from mxfs.reopen import ATTEMPTS
from mxfs.rpc import RpcError, StaleEpoch


async def test_a_file_is_reopened_after_a_reconnect(tmp_path) -> None:
    async with units(tmp_path) as u:
        f = await u.create(b"f", os.O_RDWR | os.O_TRUNC)
        await u.rpc.write(f.hid, 0, b"hello", epoch=f.epoch)
        old = f.epoch
        await u.reconnect()
        with pytest.raises(StaleEpoch):  # the old handle is gone with its connection
            await u.rpc.call(Op.FGETATTR, f.hid, epoch=f.epoch)
        st = await u.reopen.call(f, Op.FGETATTR)
        assert f.epoch == u.rpc.epoch > old
        assert st[St.SIZE] == 5  # reopened without O_TRUNC
        data = await u.reopen.retry(f, lambda hid, epoch: u.rpc.read(hid, 0, 100, epoch=epoch))
        assert bytes(data) == b"hello"


async def test_reopened_by_handle_it_is_the_same_file_under_its_new_name(tmp_path) -> None:
    async with units(tmp_path) as u:
        f = await u.create(b"f")
        if u.inodes.get(f.ino).fh is None:
            pytest.skip("this server issues no file handles here")
        await u.rpc.write(f.hid, 0, b"mine", epoch=f.epoch)
        await u.reconnect()
        os.rename(tmp_path / "f", tmp_path / "g")  # (another client, meanwhile)
        (tmp_path / "f").write_bytes(b"another file")
        data = await u.reopen.retry(f, lambda hid, epoch: u.rpc.read(hid, 0, 100, epoch=epoch))
        assert bytes(data) == b"mine"


async def test_reopened_by_name_another_file_there_is_stale(tmp_path) -> None:
    async with units(tmp_path) as u:
        f = await u.create(b"f", by_path=True)
        await u.reconnect()
        os.rename(tmp_path / "f", tmp_path / "g")
        (tmp_path / "f").write_bytes(b"another file")
        with pytest.raises(OSError) as e:
            await u.reopen.fresh(f)
        assert e.value.errno == errno.ESTALE
        assert f.epoch != u.rpc.epoch  # not taken over


async def test_reopened_by_name_the_same_file_is_fine(tmp_path) -> None:
    async with units(tmp_path) as u:
        f = await u.create(b"f", by_path=True)
        await u.reconnect()
        hid, epoch = await u.reopen.fresh(f)
        assert (hid, epoch) == (f.hid, u.rpc.epoch)


async def test_a_directory_is_reopened_too(tmp_path) -> None:
    (tmp_path / "x").write_bytes(b"")
    async with units(tmp_path) as u:
        d = await u.opendir()
        await u.reconnect()
        entries, eof = await u.reopen.call(d, Op.READDIR, 0)
        assert [e[0] for e in entries] == [b"x"] and eof
        assert d.epoch == u.rpc.epoch


async def test_retry_gives_up_after_attempts_with_eio(tmp_path) -> None:
    async with units(tmp_path) as u:
        f = await u.create(b"f")
        calls = []

        async def always_stale(hid: int, epoch: int) -> None:
            calls.append((hid, epoch))
            raise StaleEpoch()

        with pytest.raises(RpcError) as e:
            await u.reopen.retry(f, always_stale)
        assert e.value.errno == errno.EIO and len(calls) == ATTEMPTS
