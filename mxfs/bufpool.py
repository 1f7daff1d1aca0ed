"""Read buffers that are reused instead of allocated (and zeroed, and faulted in) per read.

A read lands in a bytearray that `read()` hands to pyfuse3 as a memoryview; pyfuse3 copies
it into the kernel's reply and drops the view right after our handler returns. So a pooled
buffer is free again exactly when the pool is its only owner. CPython counts references
deterministically: ``sys.getrefcount(buf) == _FREE_REFS`` (the pool's list, the loop
variable and getrefcount's own argument) means no memoryview or caller still holds it.
"""

from __future__ import annotations

import sys

_FREE_REFS = 3
PER_SIZE = 32  # buffers kept per read size
MAX_POOLED = 4 << 20  # larger reads get a fresh buffer


class BufferPool:
    def __init__(self) -> None:
        self._bufs: dict[int, list[bytearray]] = {}
        self.reused = 0
        self.allocated = 0

    def get(self, size: int) -> bytearray:
        if size > MAX_POOLED:
            self.allocated += 1
            return bytearray(size)
        bufs = self._bufs.setdefault(size, [])
        for buf in bufs:
            if sys.getrefcount(buf) == _FREE_REFS:
                self.reused += 1
                return buf
        buf = bytearray(size)
        self.allocated += 1
        if len(bufs) < PER_SIZE:
            bufs.append(buf)
        return buf
