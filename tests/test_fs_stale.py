"""End to end: after a reconnect an open file is the same file or ESTALE, never another one
(issue 12, item 2)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from conftest_fs import ServerProc, cluster, needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse]
TRANSPORTS = pytest.mark.parametrize("transport", ["mx", "gm"])


def _restart(server: ServerProc, export: Path | None = None) -> None:
    server.kill()
    ServerProc.__init__(server, export or server.export, server.secret_file, server.port)
    server.start()


def _reconnected(mnt: Path) -> None:
    """Wait until the client talks to the server again (without listing anything)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            os.stat(mnt / "no-such-name")
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EIO or time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def _errno(fn, *args) -> int | None:
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return None


def _write_synced(fd: int, data: bytes) -> None:
    """A write and its fsync (a small write is answered at once, sent later: fsync tells)."""
    os.pwrite(fd, data, 0)
    os.fsync(fd)


@TRANSPORTS
def test_name_reused_by_another_client_is_never_written(tmp_path, transport):
    """A holds victim open; B renames it away and creates a new victim; the server restarts.
    A's write lands in its own file (now victim.old) or fails with ESTALE, never in B's."""
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        fd = os.open(a.mnt / "victim", os.O_RDWR | os.O_CREAT, 0o644)
        err = None
        try:
            os.write(fd, b"first")
            os.fsync(fd)
            os.rename(b.mnt / "victim", b.mnt / "victim.old")
            (b.mnt / "victim").write_bytes(b"B's new file")
            _restart(server)
            _reconnected(a.mnt)
            err = _errno(_write_synced, fd, b"A's data")
            assert err in (None, errno.ESTALE)
            assert (server.export / "victim").read_bytes() == b"B's new file"
            old = (server.export / "victim.old").read_bytes()
            assert old == (b"A's data" if err is None else b"first")
        finally:
            assert _errno(os.close, fd) == err
        (a.mnt / "later").write_text("the mount goes on")
        assert (server.export / "later").read_text() == "the mount goes on"


@TRANSPORTS
def test_same_file_after_restart_works(tmp_path, transport):
    with cluster(tmp_path, transport) as (server, (m,)):
        fd = os.open(m.mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"before")
            os.fsync(fd)
            _restart(server)
            _reconnected(m.mnt)
            assert _errno(_write_synced, fd, b"AFTER!") is None
        finally:
            os.close(fd)
        assert (server.export / "f").read_bytes() == b"AFTER!"


@TRANSPORTS
def test_another_export_after_restart_is_stale(tmp_path, transport):
    """The server comes back exporting another tree with the same names: A's open file and
    open directory are stale, and nothing is written into the other tree through them."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_bytes(b"other tree")
    with cluster(tmp_path, transport) as (server, (m,)):
        (m.mnt / "f").write_bytes(b"first tree")
        fd = os.open(m.mnt / "f", os.O_RDWR)
        dfd = os.open(m.mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _restart(server, other)
            _reconnected(m.mnt)
            assert _errno(os.pread, fd, 64, 0) == errno.ESTALE
            assert _errno(_write_synced, fd, b"X") == errno.ESTALE
            assert _errno(os.listdir, dfd) == errno.ESTALE
        finally:
            assert _errno(os.close, fd) == errno.ESTALE  # (the failed write, kept for close)
            os.close(dfd)
        assert (other / "f").read_bytes() == b"other tree"
