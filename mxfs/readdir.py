"""An open directory's readdir buffer: entries fetched from the server, not yet taken.

How this works
--------------
The kernel reads a directory in pieces: each readdir names the offset to go on from and
takes entries until its buffer is full. The server answers a READDIR with a batch of
entries, so what the kernel did not take stays here, each entry with its own offset and the
offset of the one after it. A readdir that goes on from the first entry kept is served from
here; any other offset (a seek, a rewind) drops what does not follow from it, and all of it
when nothing does. Once the server said the directory ends, a readdir from where it ends
(the kernel always asks once more, to see the end) is answered from here too: no round trip. Offsets 1 and 2 are "." and ".." (`dots`), so the server's offsets are
shifted by DOTS. A directory listed whole before can be put here from the client's memory
(`add_listing`, leases.py): its offsets are the same ordinals the server uses. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from fsproto.rpc import StatTuple

DOTS = 2  # readdir offsets 1 and 2 are "." and ".."


class Entry(NamedTuple):
    own: int  # its offset
    name: bytes
    next: int  # the offset of the entry after it
    st: StatTuple
    fh: Any  # the server's handle of it (None: named by path)
    left: float | None = None  # from memory: seconds left of the promise it rests on


def dots(start: int, ino: int, parent: int) -> list[tuple[bytes, int, int]]:
    """The "." and ".." entries a readdir from offset *start* still owes, as
    (name, inode, offset after it)."""
    return [(name, i, nxt) for name, i, nxt in ((b".", ino, 1), (b"..", parent, 2))
            if start < nxt]


def server_offset(start: int) -> int:
    """Where the server's READDIR goes on for a readdir from offset *start*."""
    return start - DOTS


class DirBuffer:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.eof = False  # the server has no entries after these
        self.end = -1  # with eof: the offset after the last entry (where the directory ends)

    def rewind(self, start: int) -> None:
        """A readdir from offset *start* begins: keep only what follows from it."""
        if not self.entries or self.entries[0].own != start:
            self.entries = [e for e in self.entries if e.own >= start]
            if not self.entries and self.eof and start == self.end:
                return  # at the end already: nothing more to fetch
            if not self.entries or self.entries[0].own != start:
                self.entries, self.eof = [], False

    def add(self, start: int, batch: list[Any], eof: Any) -> None:
        """A READDIR answer for offset *start*: [name, server offset after it, stat,
        handle] per entry, and whether the directory ends there."""
        own = start
        for name, nxt, st, fh in batch:
            self.entries.append(Entry(own, name, nxt + DOTS, st, fh))
            own = nxt + DOTS
        self.eof = bool(eof)
        self.end = own

    def add_listing(self, listing: list[tuple[bytes, Any, Any, float]]) -> None:
        """A whole directory from memory, from its first entry: (name, stat, handle, seconds
        left) each."""
        self.entries = [Entry(DOTS + i, name, DOTS + i + 1, st, fh, left)
                        for i, (name, st, fh, left) in enumerate(listing)]
        self.eof = True
        self.end = DOTS + len(listing)
