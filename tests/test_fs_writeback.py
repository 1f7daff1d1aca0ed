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


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_overlapping_writes_in_flight_keep_their_order(tmp_path: Path, transport: str) -> None:
    """Runs travel several at once; overlapping ones must still land in write order."""
    import random

    rng = random.Random(7)
    model = bytearray(3 << 20)
    end = 0
    with cluster(tmp_path, transport) as (server, (m,)):
        fd = os.open(m.mnt / "o", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for i in range(400):
                if i % 50 == 0:  # a long sequential stretch: several runs on the wire
                    off, n = rng.randrange(0, 1 << 20), 2 << 20
                else:
                    off, n = rng.randrange(0, (3 << 20) - 65536), rng.randrange(1, 65536)
                data = rng.randbytes(n)
                chunk = 128 << 10  # the kernel sends 128 KiB writes: mimic a writer's syscalls
                for k in range(0, n, chunk):
                    os.pwrite(fd, data[k:k + chunk], off + k)
                model[off:off + n] = data
                end = max(end, off + n)
        finally:
            os.close(fd)
        got = (server.export / "o").read_bytes()
        assert len(got) == end and got == bytes(model[:end])
