"""Write errors kept per file as Linux keeps them, and data the server has not made durable.

How this works
--------------
Write-behind answers a write(2) before the data reaches the server, so a run that fails later
cannot fail the write that made it. Linux has the same problem with its page cache and keeps
such errors per file in an `errseq_t`: a sequence number that grows with every error. Each
open file description samples it at open; fsync reports an error newer than its sample and
advances the sample; flush (every close(2), from any process sharing the description, as NFS
checks it) reports an error newer than the open's sample and advances nothing. So every open
file description learns of the error at its next fsync and at its close, and a forked child
closing its copy of the descriptor cannot swallow it. write(2) reports each error once per
description, so `dd` stops at ENOSPC.

Durability: the server answers a WRITE before the data is on disk. Each server run has a
random *write verifier* (NFS's name for it). Every acknowledged write leaves (epoch, verifier)
on its inode until an fsync succeeds; if the server answering later has another verifier, the
writes the old one acknowledged may be gone, and that becomes an EIO on the inode, reported as
above. The entries live while the inode has open files: bounded by the open files.

Pure bookkeeping (no I/O): writer.py records, asks and reports.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass


@dataclass
class Cursor:
    """What one open file description has seen of its inode's errors."""

    opened: int  # the error sequence at open: close reports anything newer
    fsynced: int  # advanced by each fsync that reports
    written: int  # advanced by each write that reports


@dataclass
class Unsynced:
    """Writes acknowledged since the inode's last successful fsync."""

    epoch: int  # the connection that acknowledged the latest of them
    verifier: object  # the server run that acknowledged them
    writes: int = 0


class WriteErrors:
    def __init__(self) -> None:
        self._seq = 0
        self._errors: dict[int, tuple[int, int]] = {}  # ino -> (sequence, errno)
        self._unsynced: dict[int, Unsynced] = {}
        self.recorded = 0  # errors recorded (for statistics)
        self.lost_by_restart = 0  # inodes whose unsynced data a server restart may have lost

    # -- errors --------------------------------------------------------------------------------
    def sample(self, ino: int) -> Cursor:
        seq = self._errors.get(ino, (0, 0))[0]
        return Cursor(seq, seq, seq)

    def record(self, ino: int, err: int) -> None:
        self._seq += 1
        self._errors[ino] = (self._seq, err or errno.EIO)
        self.recorded += 1

    def for_write(self, ino: int, cur: Cursor) -> int:
        return self._take(ino, cur, "written")

    def for_fsync(self, ino: int, cur: Cursor) -> int:
        return self._take(ino, cur, "fsynced")

    def _take(self, ino: int, cur: Cursor, which: str) -> int:
        """The inode's error if newer than the cursor's *which* sample, which then moves on."""
        seq, err = self._errors.get(ino, (0, 0))
        if seq > getattr(cur, which):
            setattr(cur, which, seq)
            return err
        return 0

    def for_close(self, ino: int, cur: Cursor) -> int:
        seq, err = self._errors.get(ino, (0, 0))
        return err if seq > cur.opened else 0

    # -- durability ----------------------------------------------------------------------------
    def acknowledged(self, ino: int, epoch: int, verifier: object) -> None:
        u = self._unsynced.get(ino)
        if u is None or u.verifier != verifier:
            if u is not None:  # acknowledged by two server runs: the older one's may be gone
                self._restarted(ino)
            u = self._unsynced[ino] = Unsynced(epoch, verifier)
        u.epoch = epoch
        u.writes += 1

    def unsynced_since(self, ino: int) -> int:
        """A token for fsync: how many writes were acknowledged when it started."""
        u = self._unsynced.get(ino)
        return -1 if u is None else u.writes

    def needs_check(self, ino: int, epoch: int) -> bool:
        """Were unsynced writes acknowledged on a connection other than the current one?"""
        u = self._unsynced.get(ino)
        return u is not None and u.epoch != epoch

    def check(self, ino: int, verifier: object, epoch: int | None = None) -> None:
        """The server now answering (on connection *epoch*) has this verifier: another one
        means a restart since."""
        u = self._unsynced.get(ino)
        if u is None:
            return
        if u.verifier != verifier:
            self._restarted(ino)
            del self._unsynced[ino]
        elif epoch is not None:
            u.epoch = epoch  # the same server run on a new connection: no need to ask again

    def synced(self, ino: int, token: int) -> None:
        """An fsync that started at *token* succeeded: what it covered is durable."""
        u = self._unsynced.get(ino)
        if u is not None and u.writes == token:
            del self._unsynced[ino]

    def _restarted(self, ino: int) -> None:
        self.lost_by_restart += 1
        self.record(ino, errno.EIO)

    def forget(self, ino: int) -> None:
        """The inode's last open file was released."""
        self._errors.pop(ino, None)
        self._unsynced.pop(ino, None)

    def __len__(self) -> int:
        return len(self._errors.keys() | self._unsynced.keys())
