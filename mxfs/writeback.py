"""Write-behind for small writes: gather a contiguous run, send it as one vector, no copy.

How this works
--------------
Without the kernel's writeback cache (which would break close-to-open between clients, see
fs.py), every write(2) reaches us as its own FUSE request: `dd bs=4k` would cost one network
round trip per 4 KiB. Instead a write that continues the file's pending run is answered at
once and kept — the very `bytes` object pyfuse3 handed us, never copied. The run goes to the
server as ONE message whose segments are those objects (MX vectors: up to 256 segments)
when it reaches RUN_MAX bytes or MAX_PARTS pieces, when a write does not continue it, and
before anything that must see the data: flush (close), fsync, release, read, getattr,
setattr and lookup of the same inode; a background task also sends runs older than MAX_AGE.

A failed run is kept for the file (writeerrors.py) and reported to every open file of it at
its next write, fsync and close.

O_APPEND: the server writes each WRITE where the file ends (server/appends.py), so one
write(2) stays whole only if it reaches the server in one WRITE. The kernel cuts a write(2)
into FUSE writes at the end of an unaligned first page and every max_write bytes: an append
run is therefore sent only after a piece that ends a write(2) for sure (`may_continue` says
when that is unknown), and may grow to APPEND_MAX for it. All appends of one inode from this
mount go out in the kernel's order (the kernel holds the inode's lock for a whole write(2)):
before one file's new append run starts, the other files' runs of that inode are sent and
answered. So appends are whole at any size from one mount, and up to APPEND_MAX bytes per
write(2) between mounts.

Up to MAX_INFLIGHT runs of one file travel at once (a sequential writer streams rather than
paying a round trip per run); a run that overlaps one still travelling waits for it, and a
write too large to gather waits for all of them, so the server sees overlapping data in order.

This module is pure bookkeeping; writer.py does the sending.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RUN_MAX = 1 << 20  # bytes gathered before a run is sent
MAX_PARTS = 250  # pieces per run (an mxnet message holds 256 segments)
MAX_AGE = 0.5  # seconds a run may wait for more data
MAX_INFLIGHT = 4  # runs of one file on the wire at once
APPEND_MAX = 16 << 20  # bytes an append run may hold while a write(2) may go on
PAGE = 4096
SPLIT_MIN = (128 << 10) - PAGE  # the smallest FUSE max_write, less a misaligned user page


@dataclass
class Run:
    off: int
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    born: float = 0.0
    open: bool = False  # (appends) the last piece may be followed by more of its write(2)

    @property
    def end(self) -> int:
        return self.off + self.size

    def continues(self, off: int, n: int) -> bool:
        """Would a write of n bytes at off extend this run within its limits?"""
        return off == self.end and self.size + n <= RUN_MAX and len(self.parts) < MAX_PARTS

    def continues_append(self, off: int, n: int) -> bool:
        return off == self.end and self.size + n <= APPEND_MAX and len(self.parts) < MAX_PARTS

    def add(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)


def worth_buffering(n: int) -> bool:
    """Large writes go out directly: gathering only pays for small ones."""
    return 0 < n < RUN_MAX // 2


def may_continue(off: int, n: int) -> bool:
    """Could the kernel's next FUSE write be the rest of the same write(2)? It ends a piece
    early only at the end of an unaligned first page or after max_write bytes, both at a page
    boundary; the last piece of a write(2) ends anywhere."""
    if (off + n) % PAGE:
        return False
    return (off % PAGE != 0 and n < PAGE) or n >= SPLIT_MIN
