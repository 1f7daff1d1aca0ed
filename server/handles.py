"""Handle table: the server's open files and directories, per client.

A handle is an integer the client names in later requests. It keeps an fd, so it keeps working
when the file is renamed or unlinked (as a local fd would). Each client (owner) may hold at most
`max_per_owner` handles; when its connection is lost, all of its handles are closed.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field


@dataclass
class DirCursor:
    """Where a directory listing stands: a scandir iterator and the ordinal of its next entry."""

    it: Iterator[os.DirEntry[bytes]] | None = None
    pos: int = 0

    def close(self) -> None:
        if self.it is not None:
            self.it.close()  # type: ignore[attr-defined]
            self.it = None
        self.pos = 0


@dataclass
class Handle:
    hid: int
    fd: int
    owner: Hashable
    is_dir: bool = False
    append: bool = False
    kill_privs: bool = False  # opened by a caller other than root: writes clear setuid bits
    cursor: DirCursor = field(default_factory=DirCursor)


class HandleTable:
    def __init__(self, max_per_owner: int = 4096) -> None:
        self.max_per_owner = max_per_owner
        self._ids = itertools.count(1)
        self._handles: dict[int, Handle] = {}
        self._by_owner: dict[Hashable, set[int]] = {}

    def __len__(self) -> int:
        return len(self._handles)

    def add(self, owner: Hashable, fd: int, *, is_dir: bool = False, append: bool = False,
            kill_privs: bool = False) -> int:
        mine = self._by_owner.setdefault(owner, set())
        if len(mine) >= self.max_per_owner:
            os.close(fd)
            raise OSError(errno.EMFILE, "too many open handles")
        hid = next(self._ids)
        self._handles[hid] = Handle(hid, fd, owner, is_dir=is_dir, append=append,
                                    kill_privs=kill_privs)
        mine.add(hid)
        return hid

    def get(self, owner: Hashable, hid: int, *, is_dir: bool | None = None) -> Handle:
        h = self._handles.get(hid)
        if h is None or h.owner != owner:
            raise OSError(errno.EBADF, "unknown handle")
        if is_dir is not None and h.is_dir != is_dir:
            raise OSError(errno.EISDIR if h.is_dir else errno.ENOTDIR, "wrong handle kind")
        return h

    def close(self, owner: Hashable, hid: int) -> None:
        h = self.get(owner, hid)
        self._drop(h)

    def _drop(self, h: Handle) -> None:
        del self._handles[h.hid]
        mine = self._by_owner.get(h.owner)
        if mine is not None:
            mine.discard(h.hid)
            if not mine:
                del self._by_owner[h.owner]
        h.cursor.close()
        os.close(h.fd)

    def close_owner(self, owner: Hashable) -> int:
        """Close every handle of *owner* (its connection is gone). Returns how many."""
        hids = list(self._by_owner.get(owner, ()))
        for hid in hids:
            self._drop(self._handles[hid])
        return len(hids)

    def owned_by(self, owner: Hashable) -> int:
        return len(self._by_owner.get(owner, ()))

    def close_all(self) -> None:
        for h in list(self._handles.values()):
            self._drop(h)
