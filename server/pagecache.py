"""Keep disk waits off the event loop: make sure read data is in the page cache first.

`os.sendfile` (mx) and `os.preadv` into a bounce buffer (gm) block the whole server while
the kernel fetches uncached pages from disk. So before a read is served, `cached()` asks
the kernel, without waiting, whether the first and last pages of the range are in the
page cache (`preadv2(RWF_NOWAIT)` of one byte each: EAGAIN means "not cached"). If not,
`warm()` runs in a worker thread and pulls the range in with `sendfile` to /dev/null —
the kernel reads the pages, no byte is copied to user space — plus a POSIX_FADV_WILLNEED
hint for what follows, so sequential readers find the next range already there.
"""

from __future__ import annotations

import errno
import os

PAGE = 4096
AHEAD = 4 << 20  # extra range hinted after a cold read
_probe = bytearray(1)
_devnull: int | None = None


def cached(fd: int, off: int, n: int) -> bool:
    """Are the first and last pages of [off, off+n) in the page cache? (never blocks)"""
    if n <= 0:
        return True
    last = off + n - 1
    # (one probe when the range is on one page, as a 4 KiB read is: a syscall less per read)
    for pos in (off,) if off // PAGE == last // PAGE else (off, last):
        try:
            os.preadv(fd, [_probe], pos, os.RWF_NOWAIT)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
                return e.errno != errno.EAGAIN  # no RWF_NOWAIT support: don't warm
            raise
    return True


def warm(fd: int, off: int, n: int) -> None:
    """Read [off, off+n) into the page cache without copying it out (run in a thread)."""
    global _devnull
    if _devnull is None:
        _devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, off + n, AHEAD, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    done = 0
    while done < n:
        try:
            k = os.sendfile(_devnull, fd, off + done, n - done)
        except OSError:
            return  # the real read will report the error
        if k == 0:
            return
        done += k
