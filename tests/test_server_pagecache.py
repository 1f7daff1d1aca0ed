"""server/pagecache.py: is a range in the page cache (never blocking), and pulling it in."""

from __future__ import annotations

import os

from server import pagecache


def _probes(monkeypatch) -> list[int]:
    seen: list[int] = []
    real = os.preadv

    def counting(fd, bufs, pos, flags=0):
        seen.append(pos)
        return real(fd, bufs, pos, flags)
    monkeypatch.setattr(pagecache.os, "preadv", counting)
    return seen


def test_a_range_on_one_page_is_probed_once_a_longer_one_at_both_ends(tmp_path, monkeypatch):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 3 * pagecache.PAGE)
    fd = os.open(f, os.O_RDONLY)
    try:
        os.pread(fd, 3 * pagecache.PAGE, 0)  # cached now
        seen = _probes(monkeypatch)
        assert pagecache.cached(fd, 4096, 4096)
        assert seen == [4096]
        seen.clear()
        assert pagecache.cached(fd, 4000, 200)  # crosses a page boundary
        assert seen == [4000, 4199]
        seen.clear()
        assert pagecache.cached(fd, 0, 0) and seen == []
    finally:
        os.close(fd)


def test_warm_brings_an_evicted_range_back(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(os.urandom(1 << 20))
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if pagecache.cached(fd, 512 << 10, 4096):
            return  # (this file system keeps it anyway, or has no RWF_NOWAIT: nothing to see)
        pagecache.warm(fd, 512 << 10, 4096)
        assert pagecache.cached(fd, 512 << 10, 4096)
    finally:
        os.close(fd)
