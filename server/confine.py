"""Confinement: every path a client names is resolved beneath the export root, never outside.

How this works
--------------
The export root is held open as an O_PATH directory fd. A client path is a bytes string of
"/"-separated components relative to the root (b"" names the root). Every component is
checked (no empty name, ".", "..", NUL) and the walk opens one directory at a time with
openat(dirfd, component, O_PATH | O_DIRECTORY | O_NOFOLLOW). A symlink anywhere on the way
makes that open fail instead of being followed, so neither a planted symlink nor a swap of a
directory for a symlink *during* a request can lead outside: each step is relative to an fd
we already hold. The last component is then used with *at() calls relative to its parent's fd
and is never followed either. Symlink targets are only ever returned as text (readlink): the
client's kernel resolves them on the client, as with NFS.

An attempt to leave the export raises EscapeError (EACCES) and logs one line.

File handles (protocol 5, fhandle.py): wherever a path is accepted, a handle is too (a
msgpack ext value, resolved by the export's HandleCodec into an O_PATH fd of the object
itself), and a directory entry may be named [directory handle or path, name]. FileServer
resolves the handles of a request before it acts as the caller (``resolve_args``: resolving
needs a capability that the caller's ids drop) and passes the fds down as ``Resolved``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fsproto.rpc import is_handle

from .fhandle import HandleCodec

log = logging.getLogger("mxfs.server")

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 4096


class EscapeError(PermissionError):
    """A request tried to reach outside the export."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.EACCES, f"outside the export: {why}")


def split_path(path: bytes) -> list[bytes]:
    """Validate a client path and return its components (empty list = the root)."""
    if not isinstance(path, bytes | bytearray):
        raise OSError(errno.EINVAL, "path is not bytes")  # a confused client, not an escape
    if path == b"":
        return []
    parts = bytes(path).split(b"/")
    if len(parts) > MAX_DEPTH:
        raise OSError(errno.ENAMETOOLONG, "path too deep")
    for part in parts:
        check_name(part)
    return parts


def check_name(name: bytes) -> None:
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise EscapeError(f"bad path component {name!r}")
    if len(name) > 255:
        raise OSError(errno.ENAMETOOLONG, "name too long")


class Resolved:
    """A request's file handle, resolved: an O_PATH fd of the object (FileServer closes it)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd


class Export:
    """The exported directory tree. All file system access of the server goes through here.

    *secret* keys the file handles (the same secret: handles survive a restart); without one
    a random key is used. ``codec`` is None when handles cannot be used (``no_handles``
    says why): the server then works by path only."""

    def __init__(self, root: str | os.PathLike[str], secret: bytes | None = None,
                 handles: bool = True) -> None:
        self.root = os.path.realpath(root)
        self.root_fd = os.open(self.root, _DIR_FLAGS)
        self.codec: HandleCodec | None = None
        self.no_handles = "turned off"
        if handles:
            self.codec, self.no_handles = HandleCodec.create(self.root_fd, secret)

    # -- handles -------------------------------------------------------------------------------
    def handle_of_fd(self, fd: int) -> bytes | None:
        return None if self.codec is None else self.codec.of_fd(fd)

    def handle_of(self, dirfd: int, name: bytes) -> bytes | None:
        return None if self.codec is None else self.codec.of_name(dirfd, name)

    def resolve(self, ref: Any) -> Resolved:
        """The object a handle names (ESTALE when this server issues no handles)."""
        if self.codec is None:
            raise OSError(errno.ESTALE, "this server issues no file handles")
        return Resolved(self.codec.open(ref.data))

    def resolve_args(self, args: list[Any]) -> tuple[list[Any], list[Resolved]]:
        """A request's arguments with every handle (alone or as [handle, name]) resolved."""
        opened: list[Resolved] = []
        out = list(args)
        try:
            for i, a in enumerate(out):
                if is_handle(a):
                    out[i] = r = self.resolve(a)
                    opened.append(r)
                elif type(a) is list and len(a) == 2 and is_handle(a[0]):
                    r = self.resolve(a[0])
                    opened.append(r)
                    out[i] = [r, a[1]]
        except BaseException:
            self.release(opened)
            raise
        return out, opened

    @staticmethod
    def release(opened: list[Resolved]) -> None:
        for r in opened:
            if r.fd >= 0:
                os.close(r.fd)
                r.fd = -1

    def close(self) -> None:
        if self.codec is not None:
            self.codec.close()
            self.codec = None
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    # -- walking -----------------------------------------------------------------------------
    def _step(self, dirfd: int, name: bytes) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dirfd)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    raise e from None
                if stat.S_ISLNK(st.st_mode):
                    log.warning("refused: symlink %r in the middle of a path", name)
                    raise EscapeError(f"symlink {name!r} inside a path") from None
            raise

    @contextmanager
    def dir_fd(self, parts: list[bytes]) -> Iterator[int]:
        """An O_PATH fd of the directory named by *parts* (confined walk)."""
        fd = os.dup(self.root_fd)
        try:
            for name in parts:
                nfd = self._step(fd, name)
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def ref_fd(self, ref: Any) -> Iterator[int]:
        """The O_PATH fd of a handle (resolved already, or resolved now)."""
        if isinstance(ref, Resolved):
            yield ref.fd
            return
        r = self.resolve(ref)
        try:
            yield r.fd
        finally:
            self.release([r])

    @contextmanager
    def dir_ref(self, ref: Any) -> Iterator[int]:
        """An O_PATH fd of the directory a handle or a path names."""
        if isinstance(ref, Resolved) or is_handle(ref):
            with self.ref_fd(ref) as fd:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory")
                yield fd
            return
        with self.dir_fd(split_path(ref)) as fd:
            yield fd

    @contextmanager
    def parent(self, path: Any) -> Iterator[tuple[int, bytes]]:
        """(parent dir fd, last name) of an entry: a path that is not the root, or
        [directory handle or path, name]."""
        if type(path) is list:
            if len(path) != 2 or not isinstance(path[1], bytes):
                raise OSError(errno.EINVAL, "malformed directory entry")
            check_name(path[1])
            with self.dir_ref(path[0]) as fd:
                yield fd, path[1]
            return
        parts = split_path(path)
        if not parts:
            raise EscapeError("the root has no parent")
        with self.dir_fd(parts[:-1]) as fd:
            yield fd, parts[-1]

    @contextmanager
    def node_fd(self, path: Any) -> Iterator[int]:
        """An O_PATH | O_NOFOLLOW fd of the object named by *path* (or a handle, or an
        entry [directory, name]) itself (may be a symlink)."""
        if isinstance(path, Resolved) or is_handle(path):
            with self.ref_fd(path) as fd:
                yield fd
            return
        if type(path) is list:
            with self.parent(path) as (pfd, name):
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                yield fd
            finally:
                os.close(fd)
            return
        parts = split_path(path)
        if not parts:
            with self.dir_fd([]) as fd:
                yield fd
            return
        with self.dir_fd(parts[:-1]) as pfd:
            fd = os.open(parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            yield fd
        finally:
            os.close(fd)

    def open(self, path: bytes, flags: int, mode: int = 0o644) -> int:
        """open() a non-directory object beneath the root; the last component is not followed."""
        parts = split_path(path)
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "the root is a directory")
        with self.dir_fd(parts[:-1]) as pfd:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=pfd)

    def open_dir(self, path: Any) -> int:
        """A readable fd of a directory beneath the root (for listing and fsync)."""
        with self.node_fd(path) as fd:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            return os.open(proc_path(fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def proc_path(fd: int) -> str:
    """The /proc magic link of an fd we hold: it names exactly that object, nothing else."""
    return f"/proc/self/fd/{fd}"
