"""xxh3-64 of file data where it lies: the page cache, seen through a memory map (no copy).

`-o checksum` mounts ask for a hash with every READ (computed here, checked by the client on
the bytes that landed in its buffer) and send one with every WRITE (checked here on the bytes
that landed in the file). Reading the page cache through mmap keeps the mx path free of
payload copies; a descriptor that cannot be mapped for reading (opened write-only) is
reopened read-only through /proc/self/fd, and a file that cannot be mapped at all (not a
regular file) is read in pieces into a small scratch buffer (counted as a copy).

The map covers only bytes below the file's size at the moment of mapping; the server does
nothing else while hashing, so no mxfs request can truncate the file meanwhile.
"""

from __future__ import annotations

import mmap
import os

import xxhash

_SCRATCH = 1 << 16


class Hasher:
    def __init__(self) -> None:
        self.hashed_bytes = 0
        self.copied_bytes = 0  # hashed through a scratch buffer (files that can't be mapped)

    def file_hash(self, fd: int, off: int, n: int) -> int:
        if n <= 0:
            return xxhash.xxh3_64_intdigest(b"")
        self.hashed_bytes += n
        try:
            return self._mapped(fd, off, n)
        except PermissionError:  # write-only descriptor: map the same file read-only
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                return self._mapped(rfd, off, n)
            finally:
                os.close(rfd)
        except (OSError, ValueError):
            return self._read(fd, off, n)

    def _mapped(self, fd: int, off: int, n: int) -> int:
        size = os.fstat(fd).st_size
        n = max(0, min(n, size - off))  # never map past the end (SIGBUS)
        if n == 0:
            return xxhash.xxh3_64_intdigest(b"")
        start = off - off % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(fd, off + n - start, mmap.MAP_SHARED, mmap.PROT_READ,
                       offset=start) as m:
            with memoryview(m) as whole, whole[off - start:] as view:
                return xxhash.xxh3_64_intdigest(view)

    def _read(self, fd: int, off: int, n: int) -> int:
        h = xxhash.xxh3_64()
        buf = bytearray(min(n, _SCRATCH))
        view = memoryview(buf)
        while n > 0:
            got = os.preadv(fd, [view[:min(n, len(buf))]], off)
            if got <= 0:
                break
            h.update(view[:got])
            self.copied_bytes += got
            off += got
            n -= got
        return h.intdigest()
