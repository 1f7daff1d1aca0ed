"""O_APPEND made atomic: one append at a time per file, from taking the end of file to the
last byte written.

How this works
--------------
An append writes where the file ends *when it is written*. A small WRITE carries its data and
is served at once inside one completion callback, so taking the size (fstat) and writing
(pwrite) cannot be split by another request. A large one names the offset first and receives
its data (WDATA) later, straight into the file: two appends taking the end of file before
either has written would land on top of each other. So every append to a file (keyed by
device and inode, whichever client and handle it comes from) holds that file's lock from
fstat to the last byte; a small append that finds the lock taken waits in a task like a
large one. Locks exist only while someone holds or waits for one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

Key = tuple[int, int]  # (st_dev, st_ino)


class AppendLocks:
    def __init__(self) -> None:
        self._locks: dict[Key, tuple[trio.Lock, int]] = {}  # key -> (lock, users)

    def busy(self, key: Key) -> bool:
        return key in self._locks

    @asynccontextmanager
    async def hold(self, key: Key) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
