"""End to end: write-behind of small writes (mxfs/writeback.py) on a real mount."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest_fs import cluster, needs_fuse

pytestmark = needs_fuse


def _requests(m) -> int:
    return m.stats()["server_side"]["requests"]


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_small_writes_are_gathered_and_visible(tmp_path: Path, transport: str) -> None:
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        chunk = os.urandom(4096)
        before = _requests(a)
        fd = os.open(a.mnt / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for _ in range(1000):
                assert os.write(fd, chunk) == 4096
            # the same client sees its own writes at once, size included
            assert os.stat(a.mnt / "f").st_size == 4096 * 1000
            with open(a.mnt / "f", "rb") as r:
                r.seek(4096 * 999)
                assert r.read() == chunk
            for _ in range(24):
                os.write(fd, chunk)
        finally:
            os.close(fd)  # close sends what is left: close-to-open for the other client
        sent = _requests(a) - before
        assert sent < 100, f"{sent} requests for 1024 small writes: not gathered"
        assert (b.mnt / "f").read_bytes() == chunk * 1024
        assert (server.export / "f").stat().st_size == 4096 * 1024


def test_truncate_and_overwrite_see_pending_writes(tmp_path: Path) -> None:
    with cluster(tmp_path, "mx") as (server, (m,)):
        p = m.mnt / "g"
        with open(p, "wb", buffering=0) as f:
            f.write(b"a" * 10000)
            os.truncate(p, 5000)  # setattr must not be overtaken by the pending run
            f.seek(100)
            f.write(b"B" * 10)  # not contiguous: the run goes out first
        data = (server.export / "g").read_bytes()
        assert data == b"a" * 100 + b"B" * 10 + b"a" * 4890


def test_deferred_write_error_is_reported_at_close(tmp_path: Path) -> None:
    with cluster(tmp_path, "mx", extra="timeout=2") as (server, (m,)):
        fd = os.open(m.mnt / "h", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x" * 4096)  # answered at once, held by the client
        server.kill()
        with pytest.raises(OSError):
            os.close(fd)  # the run cannot reach the server: close reports EIO
