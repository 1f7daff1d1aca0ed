"""The few Linux calls Python's os module lacks (renameat2), through ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
    _renameat2.restype = ctypes.c_int


def renameat2(olddirfd: int, oldname: bytes, newdirfd: int, newname: bytes, flags: int) -> None:
    if flags == 0:
        os.rename(oldname, newname, src_dir_fd=olddirfd, dst_dir_fd=newdirfd)
        return
    if _renameat2 is None:
        raise OSError(errno.EINVAL, "renameat2 not available")
    if _renameat2(olddirfd, oldname, newdirfd, newname, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
