"""A file's first bytes, brought by its OPEN, answering the kernel's first READs (no I/O here).

How this works
--------------
Nearly every open for reading is followed by a READ from offset 0 (cat, cp, grep, a
compiler). When the kernel will not have the pages anyway, the client asks the OPEN for the
file's first OPEN_AHEAD_MAX bytes (rpc.open_ahead: one RDATA message after the answer, zero
copy on mx) and keeps them with the open file here, so that READ costs no round trip. They
are the file as it was at the open (close-to-open, like any READ right after it), so they go
as soon as anything could make them old: a write or truncate of the inode by this client, a
BREAK of its data from the server, a lost connection; and once a read has gone past them.

Bounded: `budget` bytes held over all open files (a pooled buffer each); an open beyond it
does not ask (`want`), nor one of a file known to be bigger than that. Whether the kernel already has the pages is `kernel_has` (inodes read
since their pages were last dropped): then asking would be waste.
"""

from __future__ import annotations

from dataclasses import dataclass

from fsproto.rpc import OPEN_AHEAD_MAX

AHEAD_BUDGET = 8 << 20  # bytes held at once, over all open files


@dataclass
class Ahead:
    data: memoryview  # the file's bytes [0, len(data)) at the open
    whole: bool  # the file ended there (a read past it is a short read, not a miss)


class OpenAhead:
    def __init__(self, budget: int = AHEAD_BUDGET) -> None:
        self.budget = budget
        self.held = 0
        self._by_fh: dict[int, tuple[int, Ahead]] = {}  # fh -> (inode, its bytes)
        self._fhs: dict[int, set[int]] = {}  # inode -> its fhs in _by_fh
        self._read: set[int] = set()  # inodes whose pages the kernel got since last dropped
        self.hits = 0  # READs answered from an OPEN's bytes
        self.asked = 0

    def want(self, ino: int, size: int) -> int:
        """How many bytes an OPEN of *ino* for reading should ask for (0: none). *size*: the
        file's size as last known (-1: not known). A bigger file is read in bigger READs,
        from offset 0 too: what the OPEN brought would not answer them."""
        if (ino in self._read or size > OPEN_AHEAD_MAX
                or self.held + OPEN_AHEAD_MAX > self.budget):
            return 0
        self.asked += 1
        return OPEN_AHEAD_MAX

    def keep(self, fh: int, ino: int, data: memoryview, asked: int, size: int) -> None:
        """The OPEN of open file *fh* brought *data* (*asked* wanted; the file's size then)."""
        self.drop(fh)
        self._by_fh[fh] = (ino, Ahead(data, whole=len(data) >= size or len(data) < asked))
        self._fhs.setdefault(ino, set()).add(fh)
        self.held += len(data)

    def take(self, fh: int, off: int, size: int) -> memoryview | None:
        """The answer to a READ of *fh* from the OPEN's bytes, or None (ask the server)."""
        got = self._by_fh.get(fh)
        if got is None:
            return None
        a = got[1]
        n = len(a.data)
        if off + size <= n or (a.whole and off <= n):
            self.hits += 1
            view = a.data[off:min(off + size, n)]
            if off + size >= n:  # the kernel has read past them: done with
                self.drop(fh)
            return view
        self.drop(fh)
        return None

    def drop(self, fh: int) -> None:
        got = self._by_fh.pop(fh, None)
        if got is not None:
            self.held -= len(got[1].data)
            fhs = self._fhs[got[0]]
            fhs.discard(fh)
            if not fhs:
                del self._fhs[got[0]]

    def changed(self, ino: int | None) -> None:
        """*ino* (None: every inode) changed, or the kernel dropped its pages: what OPENs
        brought of it is old, and the kernel has none of its pages now."""
        if ino is None:
            for fh in list(self._by_fh):
                self.drop(fh)
            self._read.clear()
            return
        for fh in list(self._fhs.get(ino, ())):
            self.drop(fh)
        self._read.discard(ino)

    def kernel_has(self, ino: int) -> None:
        """A READ of *ino* was answered: the kernel keeps its pages (while the open keeps
        them: `changed` when an open drops them)."""
        if len(self._read) > 1 << 16:
            self._read.clear()  # (bounded; forgetting only makes an OPEN ask again)
        self._read.add(ino)

    def statistics(self) -> dict[str, int]:
        return {"ahead_hits": self.hits, "ahead_asked": self.asked, "ahead_held": self.held}
