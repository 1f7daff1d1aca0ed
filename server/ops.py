"""Operation handlers of the I/O server: plain synchronous functions, no sockets.

`FileServer.call(owner, op, args)` runs one metadata operation and returns its result (raising
OSError on failure; the service turns that into an errno reply). Data operations are split so
that the transport can move the payload itself: `read_plan` and `write_plan` say which fd and
range to hand to mxnet.file(...), `write_inline` writes data that arrived inside the request.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Hashable
from typing import Any

from mxfs.rpcproto import (
    PROTOCOL_VERSION,
    READDIR_MAX_BYTES,
    READDIR_MAX_ENTRIES,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Op,
    stat_tuple,
)

from .appends import AppendLocks
from .confine import Export, check_name, proc_path, split_path
from .handles import Handle, HandleTable
from .syscalls import renameat2

_OPEN_KEEP = os.O_ACCMODE | os.O_TRUNC | os.O_SYNC | os.O_DSYNC | os.O_EXCL | os.O_NOATIME
_ALLOWED_NODES = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK)


def written(fd: int, n: int) -> list[Any]:
    """A WRITE's answer: bytes written and the file's attributes right after (the client
    answers the kernel's next getattr with them, as NFS does with post-op attributes)."""
    return [n, stat_tuple(os.fstat(fd))]


def _dir_st(pfd: int) -> list[int]:
    """The parent directory's attributes right after a change in it (NFS's post-op
    attributes): the client answers the kernel's next getattr of that directory with them
    instead of another round trip."""
    return stat_tuple(os.fstat(pfd))


class FileServer:
    def __init__(self, export: Export, handles: HandleTable | None = None) -> None:
        self.export = export
        self.handles = handles if handles is not None else HandleTable()
        self.is_root = os.geteuid() == 0
        # the write verifier: new with every server run, so a client whose acknowledged but
        # unsynced writes went to an earlier run learns they may be lost (as NFS's)
        self.verifier = int.from_bytes(os.urandom(8), "little")
        self.appends = AppendLocks()  # shared by the services of every transport
        self._table: dict[int, Callable[..., Any]] = {
            Op.PING: self.ping,
            Op.STATFS: self.statfs,
            Op.GETATTR: self.getattr,
            Op.FGETATTR: self.fgetattr,
            Op.SETATTR: self.setattr,
            Op.READLINK: self.readlink,
            Op.MKNOD: self.mknod,
            Op.MKDIR: self.mkdir,
            Op.SYMLINK: self.symlink,
            Op.LINK: self.link,
            Op.UNLINK: self.unlink,
            Op.RMDIR: self.rmdir,
            Op.RENAME: self.rename,
            Op.OPEN: self.open,
            Op.CREATE: self.create,
            Op.RELEASE: self.release,
            Op.FSYNC: self.fsync,
            Op.OPENDIR: self.opendir,
            Op.READDIR: self.readdir,
            Op.GETXATTR: self.getxattr,
            Op.SETXATTR: self.setxattr,
            Op.LISTXATTR: self.listxattr,
            Op.REMOVEXATTR: self.removexattr,
            Op.ACCESS: self.access,
        }

    def call(self, owner: Hashable, op: int, args: list[Any]) -> Any:
        fn = self._table.get(op)
        if fn is None:
            raise OSError(errno.ENOSYS, f"unknown operation {op}")
        try:
            return fn(owner, *args)
        except (TypeError, ValueError, OverflowError) as e:
            # wrong argument count, types or ranges (a mode of -1, an offset past 2**63) from a
            # confused client
            raise OSError(errno.EINVAL, f"bad arguments: {e}") from None

    # -- helpers -------------------------------------------------------------------------------
    def _lstat(self, path: bytes) -> list[int]:
        parts = split_path(path)
        if not parts:
            return stat_tuple(os.stat(self.export.root_fd))
        with self.export.dir_fd(parts[:-1]) as pfd:
            return stat_tuple(os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False))

    def _chown_new(self, pfd: int, name: bytes, uid: int | None, gid: int | None) -> None:
        if self.is_root and uid is not None and gid is not None:
            os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)

    def _file(self, owner: Hashable, hid: int) -> Handle:
        return self.handles.get(owner, hid, is_dir=False)

    # -- metadata ------------------------------------------------------------------------------
    def ping(self, owner: Hashable) -> dict[str, Any]:
        return {"version": PROTOCOL_VERSION, "verifier": self.verifier}

    def statfs(self, owner: Hashable) -> list[int]:
        s = os.fstatvfs(self.export.root_fd)
        return [s.f_bsize, s.f_frsize, s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                s.f_favail, s.f_namemax]

    def getattr(self, owner: Hashable, path: bytes) -> list[int]:
        return self._lstat(path)

    def fgetattr(self, owner: Hashable, hid: int) -> list[int]:
        return stat_tuple(os.fstat(self.handles.get(owner, hid).fd))

    def access(self, owner: Hashable, path: bytes, mode: int) -> None:
        self._lstat(path)

    def setattr(self, owner: Hashable, path: bytes, hid: int | None, mode: int | None,
                uid: int | None, gid: int | None, size: int | None, atime_ns: int | None,
                mtime_ns: int | None) -> list[int]:
        if hid is not None:
            fd = self.handles.get(owner, hid).fd
            if mode is not None:
                os.chmod(fd, stat.S_IMODE(mode))
            if uid is not None or gid is not None:
                os.chown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            if size is not None:
                os.ftruncate(fd, size)
            if atime_ns is not None or mtime_ns is not None:
                st = os.fstat(fd)
                os.utime(fd, ns=(st.st_atime_ns if atime_ns is None else atime_ns,
                                 st.st_mtime_ns if mtime_ns is None else mtime_ns))
            return stat_tuple(os.fstat(fd))
        if size is not None:
            fd = self.export.open(path, os.O_WRONLY | os.O_NONBLOCK)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "truncate of a non-regular file")
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        with self.export.node_fd(path) as nfd:
            st = os.fstat(nfd)
            if mode is not None:
                if stat.S_ISLNK(st.st_mode):
                    raise OSError(errno.EOPNOTSUPP, "chmod of a symlink")
                os.chmod(proc_path(nfd), stat.S_IMODE(mode))
        if uid is not None or gid is not None or atime_ns is not None or mtime_ns is not None:
            parts = split_path(path)
            if not parts:
                with self.export.dir_fd([]) as rfd:
                    self._set_owner_times(proc_path(rfd), {}, st, uid, gid, atime_ns, mtime_ns)
            else:
                with self.export.dir_fd(parts[:-1]) as pfd:
                    kw = {"dir_fd": pfd, "follow_symlinks": False}
                    self._set_owner_times(parts[-1], kw, st, uid, gid, atime_ns, mtime_ns)
        return self._lstat(path)

    @staticmethod
    def _set_owner_times(target: Any, kw: dict[str, Any], st: os.stat_result, uid: int | None,
                         gid: int | None, atime_ns: int | None, mtime_ns: int | None) -> None:
        if uid is not None or gid is not None:
            os.chown(target, -1 if uid is None else uid, -1 if gid is None else gid, **kw)
        if atime_ns is not None or mtime_ns is not None:
            os.utime(target, ns=(st.st_atime_ns if atime_ns is None else atime_ns,
                                 st.st_mtime_ns if mtime_ns is None else mtime_ns), **kw)

    def readlink(self, owner: Hashable, path: bytes) -> bytes:
        with self.export.parent(path) as (pfd, name):
            return os.readlink(name, dir_fd=pfd)

    def mknod(self, owner: Hashable, path: bytes, mode: int, rdev: int, uid: int | None = None,
              gid: int | None = None) -> list[int]:
        if stat.S_IFMT(mode) not in _ALLOWED_NODES:
            raise OSError(errno.EPERM, "only regular files, FIFOs and sockets may be created")
        with self.export.parent(path) as (pfd, name):
            os.mknod(name, mode, 0, dir_fd=pfd)
            self._chown_new(pfd, name, uid, gid)
            return [stat_tuple(os.stat(name, dir_fd=pfd, follow_symlinks=False)), _dir_st(pfd)]

    def mkdir(self, owner: Hashable, path: bytes, mode: int, uid: int | None = None,
              gid: int | None = None) -> list[int]:
        with self.export.parent(path) as (pfd, name):
            os.mkdir(name, mode, dir_fd=pfd)
            self._chown_new(pfd, name, uid, gid)
            return [stat_tuple(os.stat(name, dir_fd=pfd, follow_symlinks=False)), _dir_st(pfd)]

    def symlink(self, owner: Hashable, path: bytes, target: bytes, uid: int | None = None,
                gid: int | None = None) -> list[int]:
        if not target or b"\0" in target:
            raise OSError(errno.EINVAL, "bad symlink target")
        with self.export.parent(path) as (pfd, name):
            os.symlink(target, name, dir_fd=pfd)
            self._chown_new(pfd, name, uid, gid)
            return [stat_tuple(os.stat(name, dir_fd=pfd, follow_symlinks=False)), _dir_st(pfd)]

    def link(self, owner: Hashable, src: bytes, dst: bytes) -> list[int]:
        with self.export.parent(src) as (spfd, sname), self.export.parent(dst) as (dpfd, dname):
            os.link(sname, dname, src_dir_fd=spfd, dst_dir_fd=dpfd, follow_symlinks=False)
            return [stat_tuple(os.stat(dname, dir_fd=dpfd, follow_symlinks=False)), _dir_st(dpfd)]

    def unlink(self, owner: Hashable, path: bytes) -> list[int]:
        with self.export.parent(path) as (pfd, name):
            os.unlink(name, dir_fd=pfd)
            return _dir_st(pfd)

    def rmdir(self, owner: Hashable, path: bytes) -> list[int]:
        with self.export.parent(path) as (pfd, name):
            os.rmdir(name, dir_fd=pfd)
            return _dir_st(pfd)

    def rename(self, owner: Hashable, src: bytes, dst: bytes, flags: int = 0) -> list[list[int]]:
        if type(flags) is not int or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise OSError(errno.EINVAL, f"unsupported rename flags {flags!r}")
        with self.export.parent(src) as (spfd, sname), self.export.parent(dst) as (dpfd, dname):
            renameat2(spfd, sname, dpfd, dname, flags)
            return [_dir_st(spfd), _dir_st(dpfd)]

    # -- files ---------------------------------------------------------------------------------
    def _register(self, owner: Hashable, fd: int, flags: int) -> list[Any]:
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory")
        except BaseException:
            os.close(fd)
            raise
        hid = self.handles.add(owner, fd, append=bool(flags & os.O_APPEND))
        return [hid, stat_tuple(st)]

    def open(self, owner: Hashable, path: bytes, flags: int) -> list[Any]:
        fd = self.export.open(path, flags & (_OPEN_KEEP & ~(os.O_EXCL)))
        return self._register(owner, fd, flags)

    def create(self, owner: Hashable, path: bytes, flags: int, mode: int,
               uid: int | None = None, gid: int | None = None) -> list[Any]:
        keep = flags & _OPEN_KEEP
        with self.export.parent(path) as (pfd, name):
            check_name(name)
            created = True
            try:
                fd = os.open(name, keep | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             stat.S_IMODE(mode), dir_fd=pfd)
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                fd = os.open(name, (keep & ~os.O_EXCL) | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                created = False
            else:
                try:
                    self._chown_new(pfd, name, uid, gid)
                except OSError:
                    os.close(fd)
                    raise
            parent_st = _dir_st(pfd)
        # created: the file is new (no xattrs yet), not one that existed under that name
        return [*self._register(owner, fd, flags), parent_st, created]

    def release(self, owner: Hashable, hid: int) -> None:
        self.handles.close(owner, hid)

    def fsync(self, owner: Hashable, hid: int, datasync: bool = False) -> None:
        fd = self.handles.get(owner, hid).fd
        (os.fdatasync if datasync else os.fsync)(fd)

    def fsync_fd(self, owner: Hashable, hid: int) -> int:
        """A dup of the handle's fd, for an fsync run in a worker thread."""
        return os.dup(self.handles.get(owner, hid).fd)

    def read_plan(self, owner: Hashable, hid: int, off: int, size: int) -> tuple[int, int]:
        """(fd, n): send n bytes of fd at off (n may be 0 at or past EOF)."""
        if off < 0 or size < 0:
            raise OSError(errno.EINVAL, "negative offset or size")
        h = self._file(owner, hid)
        st = os.fstat(h.fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return h.fd, max(0, min(size, st.st_size - off))

    def write_plan(self, owner: Hashable, hid: int, off: int) -> tuple[int, int]:
        """(fd, offset) where incoming write data must land (end of file for O_APPEND)."""
        if off < 0:
            raise OSError(errno.EINVAL, "negative offset")
        h = self._file(owner, hid)
        if h.append:
            off = os.fstat(h.fd).st_size
        return h.fd, off

    def append_key(self, owner: Hashable, hid: int) -> tuple[int, int] | None:
        """The file an O_APPEND handle writes to, as AppendLocks keys it; None otherwise."""
        h = self._file(owner, hid)
        if not h.append:
            return None
        st = os.fstat(h.fd)
        return st.st_dev, st.st_ino

    def write_inline(self, owner: Hashable, hid: int, off: int, data: memoryview) -> list[Any]:
        fd, off = self.write_plan(owner, hid, off)
        done = 0
        total = len(data)
        while done < total:
            n = os.pwrite(fd, data[done:], off + done)
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            done += n
        return written(fd, done)

    # -- directories ---------------------------------------------------------------------------
    def opendir(self, owner: Hashable, path: bytes) -> int:
        fd = self.export.open_dir(path)
        return self.handles.add(owner, fd, is_dir=True)

    def readdir(self, owner: Hashable, hid: int, off: int) -> list[Any]:
        """[[name, next_offset, stat], ...], eof. Offsets are entry ordinals (1 = after first).

        Listing continues the handle's scandir stream when *off* is where it stands (the normal
        sequential case, any directory size); otherwise it restarts and skips *off* entries.
        """
        h = self.handles.get(owner, hid, is_dir=True)
        cur = h.cursor
        if cur.it is None or cur.pos != off:
            cur.close()
            cur.it = os.scandir(h.fd)  # type: ignore[assignment]
            cur.pos = 0
            for _ in range(off):
                if next(cur.it, None) is None:  # type: ignore[arg-type]
                    return [[], True]
                cur.pos += 1
        out: list[Any] = []
        used = 0
        while len(out) < READDIR_MAX_ENTRIES and used < READDIR_MAX_BYTES:
            entry = next(cur.it, None)  # type: ignore[arg-type]
            if entry is None:
                cur.close()
                return [out, True]
            cur.pos += 1
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            name = os.fsencode(entry.name)
            out.append([name, cur.pos, stat_tuple(st)])
            used += len(name) + 120
        return [out, False]

    # -- extended attributes -------------------------------------------------------------------
    def _xattr_target(self, nfd: int, writing: bool) -> str | None:
        if stat.S_ISLNK(os.fstat(nfd).st_mode):
            if writing:
                raise OSError(errno.EPERM, "no user xattrs on symlinks")
            return None
        return proc_path(nfd)

    def getxattr(self, owner: Hashable, path: bytes, name: bytes) -> bytes:
        with self.export.node_fd(path) as nfd:
            target = self._xattr_target(nfd, False)
            if target is None:
                raise OSError(errno.ENODATA, "no such attribute")
            return os.getxattr(target, name)

    def setxattr(self, owner: Hashable, path: bytes, name: bytes, value: bytes,
                 flags: int = 0) -> None:
        with self.export.node_fd(path) as nfd:
            os.setxattr(self._xattr_target(nfd, True), name, value, flags)  # type: ignore[arg-type]

    def listxattr(self, owner: Hashable, path: bytes) -> list[bytes]:
        with self.export.node_fd(path) as nfd:
            target = self._xattr_target(nfd, False)
            if target is None:
                return []
            return [os.fsencode(n) for n in os.listxattr(target)]

    def removexattr(self, owner: Hashable, path: bytes, name: bytes) -> None:
        with self.export.node_fd(path) as nfd:
            os.removexattr(self._xattr_target(nfd, True), name)  # type: ignore[arg-type]
