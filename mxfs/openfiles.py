"""The mount's open files and directories: what each kernel file handle stands for.

How this works
--------------
`open`, `create` and `opendir` answer the kernel with a number (fh) that it sends with every
later request on that open file. Each stands for the server's handle (hid) of the connection
(epoch) it was opened in and the caller who opened it (reopen.py reopens it as that user
after a reconnect); a file also carries its write-behind state (writer.py: the run being
gathered, the runs on the wire) and what it has seen of its inode's write errors
(writeerrors.py), a directory its readdir buffer (readdir.py). Files and directories draw
their numbers from one counter. An inode's open files are found through the inode table,
which counts them as references (`InodeTable.opened`).
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from fsproto.rpc import Cred

from .fusereaders import QuickLock
from .inodes import InodeTable
from .readdir import DirBuffer
from .writeback import Run
from .writeerrors import Cursor


@dataclass
class OpenFile:
    ino: int
    flags: int
    hid: int
    epoch: int
    fh: int = 0  # the kernel's handle for it
    cred: Cred | None = None  # who opened it (reopened as that user after a reconnect)
    lock: trio.Lock = field(default_factory=trio.Lock)  # one reopen at a time
    wlock: QuickLock = field(default_factory=QuickLock)  # orders this file's writes
    seen: Cursor = field(default_factory=lambda: Cursor(0, 0, 0))  # of its inode's errors
    run: Run | None = None  # small writes answered but not yet sent (writeback.py)
    inflight: list[tuple[int, int]] = field(default_factory=list)  # runs on the wire
    writes: int = 0  # WRITEs sent so far (tells whether another one overlapped a write)
    changed: trio.Event = field(default_factory=trio.Event)  # set when one of them ends

    @property
    def pending(self) -> bool:
        """Has it written data that the server has not answered yet?"""
        return self.run is not None or bool(self.inflight)


@dataclass
class OpenDir:
    ino: int
    hid: int
    epoch: int
    cred: Cred | None = None
    buffer: DirBuffer = field(default_factory=DirBuffer)
    gen: int = -1  # the callback generation before its buffered entries were fetched
    # a whole listing being fetched, batch by batch from the first (leases.put_listing)
    collected: list[Any] | None = None
    mark: tuple[int, int] = (-1, -1)


class OpenFiles:
    def __init__(self, inodes: InodeTable) -> None:
        self.inodes = inodes
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, OpenDir] = {}
        self._fh = itertools.count(1)

    def __len__(self) -> int:
        """Open files (directories not counted)."""
        return len(self._files)

    # -- files ---------------------------------------------------------------------------------
    def add_file(self, ino: int, flags: int, hid: int, epoch: int, cred: Cred | None,
                 seen: Cursor) -> OpenFile:
        fh = next(self._fh)
        f = self._files[fh] = OpenFile(ino, flags, hid, epoch, fh, cred, seen=seen)
        self.inodes.opened(ino, fh)
        return f

    def get(self, fh: int) -> OpenFile | None:
        return self._files.get(fh)

    def file(self, fh: int) -> OpenFile:
        """The open file *fh* (EBADF if there is none)."""
        f = self._files.get(fh)
        if f is None:
            raise OSError(errno.EBADF, "no such open file")
        return f

    def remove_file(self, f: OpenFile) -> bool:
        """Forget the open file f; True if it was its inode's last."""
        self._files.pop(f.fh, None)
        self.inodes.closed(f.ino, f.fh)
        return not self.inodes.handles(f.ino)

    def of_inode(self, ino: int) -> Iterator[OpenFile]:
        """ino's open files, each looked up as it is reached (one closed meanwhile is not)."""
        for fh in self.inodes.handles(ino):
            f = self._files.get(fh)
            if f is not None:
                yield f

    def one_of(self, ino: int, epoch: int) -> OpenFile | None:
        """One of ino's open files, opened in connection *epoch* if one was: a change
        through an fd (fchmod, fsetxattr...) reaches the file itself through it, even
        unlinked."""
        found = None
        for f in self.of_inode(ino):
            if f.epoch == epoch:
                return f
            found = found or f
        return found

    def all(self) -> list[OpenFile]:
        return list(self._files.values())

    def pending(self, ino: int) -> bool:
        """Has an open file of ino written data the server has not answered yet?"""
        return any(f.pending for f in self.of_inode(ino))

    # -- directories ---------------------------------------------------------------------------
    def add_dir(self, ino: int, hid: int, epoch: int, cred: Cred | None) -> int:
        fh = next(self._fh)
        self._dirs[fh] = OpenDir(ino, hid, epoch, cred)
        return fh

    def dir(self, fh: int) -> OpenDir:
        """The open directory *fh* (EBADF if there is none)."""
        d = self._dirs.get(fh)
        if d is None:
            raise OSError(errno.EBADF, "no such open directory")
        return d

    def remove_dir(self, fh: int) -> OpenDir | None:
        return self._dirs.pop(fh, None)
