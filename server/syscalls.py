"""The few Linux calls Python's os module lacks (renameat2), through ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

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


_AT_EMPTY_PATH = 0x1000
_libc.fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                           ctypes.c_int]
_libc.readlinkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
_libc.readlinkat.restype = ctypes.c_ssize_t


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]


def _check(r: int) -> None:
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def chown_fd(fd: int, uid: int, gid: int) -> None:
    """fchownat(fd, "", AT_EMPTY_PATH): the object of an O_PATH fd (a symlink too)."""
    _check(_libc.fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, _AT_EMPTY_PATH))


def utime_fd(fd: int, ns: tuple[int, int] | None) -> None:
    """utimensat(fd, "", times, AT_EMPTY_PATH) (None: both now)."""
    if ns is None:
        _check(_libc.utimensat(fd, b"", None, _AT_EMPTY_PATH))
        return
    ts = (_Timespec * 2)(*((t // 1_000_000_000, t % 1_000_000_000) for t in ns))
    _check(_libc.utimensat(fd, b"", ctypes.byref(ts), _AT_EMPTY_PATH))


def readlink_fd(fd: int) -> bytes:
    """readlinkat(fd, ""): the target of the symlink an O_PATH fd refers to."""
    buf = ctypes.create_string_buffer(4097)
    n = _libc.readlinkat(fd, b"", buf, 4097)
    _check(n)
    if n > 4096:
        raise OSError(errno.ENAMETOOLONG, "symlink target too long")
    return buf.raw[:n]
