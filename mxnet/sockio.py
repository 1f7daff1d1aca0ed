"""Non-blocking socket primitives for trio, with no payload copies.

Each helper tries the system call first and only parks in trio when the kernel says
EAGAIN, which keeps the common case at one syscall. Receives land in the caller's
memoryview (``recv_into``) or, for file ranges, go socket → pipe → file with ``os.splice``
so the payload never enters Python memory.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable

import trio

from .errors import PeerGone
from .segments import FileRange

F_SETPIPE_SZ = 1031
IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)
SPLICE_F_MOVE = getattr(os, "SPLICE_F_MOVE", 1)
SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)


async def recv_exact_into(sock: socket.socket, view: memoryview,
                          idle: Callable[[], None] | None = None) -> int:
    """Fill ``view`` from the socket. ``idle`` runs whenever the socket has nothing to give
    (the reader flushes the replies it batched up) before we sleep. Returns how many times
    it slept (0: the data was all there, and no other task got to run meanwhile)."""
    got, n, slept = 0, view.nbytes, 0
    while got < n:
        try:
            try:
                k = sock.recv_into(view[got:] if got else view)
            except BlockingIOError:
                if idle is not None:
                    idle()
                k = -1
        except OSError as e:
            raise PeerGone(str(e)) from None
        if k < 0:
            await trio.lowlevel.wait_readable(sock)
            slept += 1
            continue
        if k == 0:
            raise PeerGone("connection closed by peer")
        got += k
    return slept


async def recv_vector_into(sock: socket.socket, views: list[memoryview],
                           idle: Callable[[], None] | None = None) -> None:
    """Fill several buffers in order with as few ``recvmsg_into`` calls as the data allows
    (a vector of many small segments lands with one system call)."""
    i = 0
    while i < len(views):
        batch = views[i : i + IOV_MAX]
        try:
            n = sock.recvmsg_into(batch)[0]
        except BlockingIOError:
            if idle is not None:
                idle()
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError as e:
            raise PeerGone(str(e)) from None
        if n == 0:
            raise PeerGone("connection closed by peer")
        while n:
            v = views[i]
            if v.nbytes <= n:
                n -= v.nbytes
                i += 1
            else:
                views[i] = v[n:]
                n = 0
        while i < len(views) and views[i].nbytes == 0:
            i += 1


async def discard(sock: socket.socket, n: int) -> None:
    scratch = memoryview(bytearray(min(n, 1 << 16)))
    while n > 0:
        k = min(n, scratch.nbytes)
        await recv_exact_into(sock, scratch[:k])
        n -= k


class Splicer:
    """Moves bytes from a socket into a file range through a private pipe (no user copy)."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.w, F_SETPIPE_SZ, size)
        except OSError:
            pass
        self.size = fcntl.fcntl(self.w, 1032)  # F_GETPIPE_SZ
        self.calls = 0
        self.copied = 0  # bytes that had to go through a bounce buffer (file refused splice)
        self.error: OSError | None = None  # the destination failed (ENOSPC, EBADF…): bytes dropped

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass

    async def into_file(self, sock: socket.socket, fr: FileRange) -> None:
        remaining, off = fr.length, fr.offset
        sfd = sock.fileno()
        while remaining:
            try:
                n = os.splice(sfd, self.w, min(remaining, self.size),
                              flags=SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as e:
                raise PeerGone(str(e)) from None
            if n == 0:
                raise PeerGone("connection closed by peer")
            self.calls += 1
            self._drain(n, fr.fd, off)
            off += n
            remaining -= n

    def _drain(self, n: int, fd: int, off: int) -> None:
        while n:
            try:
                m = os.splice(self.r, fd, n, offset_dst=off, flags=SPLICE_F_MOVE)
            except OSError as e:
                if self.error is None and e.errno in (errno.EINVAL, errno.ESPIPE):
                    try:
                        m = self._bounce(n, fd, off)
                    except OSError as e2:
                        self.error = e2
                        m = len(os.read(self.r, n))
                else:
                    self.error = self.error or e
                    m = len(os.read(self.r, n))  # keep the stream in step; the request fails
            self.calls += 1
            n -= m
            off += m

    def _bounce(self, n: int, fd: int, off: int) -> int:
        """The destination cannot be spliced into (O_APPEND, special file): copy, counted."""
        data = os.read(self.r, n)
        done = 0
        while done < len(data):
            done += os.pwrite(fd, memoryview(data)[done:], off + done)
        self.copied += len(data)
        return len(data)
