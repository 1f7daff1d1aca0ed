"""The floor of mxfs's stack: a pass-through file system in pyfuse3 + trio, and nothing else.

`python -m bench.passfs SRC MNT` mounts the local directory SRC at MNT (root; foreground).
Every FUSE request becomes the one system call it names on SRC, in the daemon's only thread:
no network, no server, no caching of its own, no credential switching (the kernel checks
permissions: `default_permissions`). The kernel keeps attributes and names for 60 s and
pages across opens (`keep_cache`), which is at least what mxfs's callbacks let it keep.

So a workload on it costs what pyfuse3 and trio cost per request plus the local disk: no
file system built on them, mxfs included, can do better on this machine. `make bench` runs
it as the peer `pyfuse3-floor`, beside the others, so each of mxfs's per-request targets can
be read against what the stack can reach at all.

Inode numbers are the backing files' own (the root is 1); each remembers the last path it
was seen at, which is all a benchmark's single writer needs (hard links and renames by
other processes under SRC are not its business).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .peers import Peer

TIMEOUT = 60.0  # the kernel's attribute and name cache, s
# open flags passed on to the backing file: not O_CREAT (create says it), not O_DIRECT (the
# kernel already bypasses its own cache for the caller; our buffers are not aligned for it)
_PASS_FLAGS = ~(os.O_CREAT | os.O_DIRECT)


class PassFs(Peer):
    name = "pyfuse3-floor"
    kind = "pyfuse3 + trio passing each request to a local directory (no network): the floor"
    network = False

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.src = self.dir / "src"
        self.src.mkdir(exist_ok=True)

    @property
    def backing(self) -> Path:
        return self.src

    def _mount(self) -> None:
        self._spawn_daemon([sys.executable, "-m", "bench.passfs", str(self.src), str(self.mnt)])

    def version(self) -> str:
        import pyfuse3
        import trio
        return f"pyfuse3 {pyfuse3.__version__}, trio {trio.__version__}"


def _errno(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """An OSError of the system call is the request's answer."""
    import pyfuse3

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> Any:
        try:
            return await fn(*args)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
    return wrapper


def serve(src: str, mnt: str) -> None:
    import pyfuse3
    import trio

    root_ino = os.lstat(src).st_ino

    class Pass(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.paths: dict[int, bytes] = {pyfuse3.ROOT_INODE: os.fsencode(src)}

        def _path(self, ino: int) -> bytes:
            try:
                return self.paths[ino]
            except KeyError:
                raise pyfuse3.FUSEError(errno.ESTALE) from None

        def _child(self, parent: int, name: bytes) -> bytes:
            return os.path.join(self._path(parent), name)

        def _entry(self, st: os.stat_result, path: bytes | None = None) -> Any:
            ino = pyfuse3.ROOT_INODE if st.st_ino == root_ino else st.st_ino
            if path is not None and ino != pyfuse3.ROOT_INODE:
                self.paths[ino] = path
            e = pyfuse3.EntryAttributes()
            e.st_ino = ino
            e.st_mode, e.st_nlink, e.st_uid, e.st_gid = (st.st_mode, st.st_nlink, st.st_uid,
                                                         st.st_gid)
            e.st_rdev, e.st_size, e.st_blksize, e.st_blocks = (st.st_rdev, st.st_size,
                                                               st.st_blksize, st.st_blocks)
            e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = (st.st_atime_ns, st.st_mtime_ns,
                                                           st.st_ctime_ns)
            e.attr_timeout = e.entry_timeout = TIMEOUT
            return e

        def _made(self, path: bytes) -> Any:
            return self._entry(os.lstat(path), path)

        @_errno
        async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> Any:
            return self._made(self._child(parent, name))

        @_errno
        async def getattr(self, ino: int, ctx: Any = None) -> Any:
            return self._entry(os.lstat(self._path(ino)))

        @_errno
        async def setattr(self, ino: int, attr: Any, fields: Any, fh: int | None,
                          ctx: Any) -> Any:
            p = self._path(ino)
            if fields.update_size:
                os.truncate(fh if fh is not None else p, attr.st_size)
            if fields.update_mode:
                os.chmod(p, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(p, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1, follow_symlinks=False)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(p)
                os.utime(p, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                         follow_symlinks=False)
            return self._entry(os.lstat(p))

        @_errno
        async def readlink(self, ino: int, ctx: Any) -> bytes:
            return os.readlink(self._path(ino))

        @_errno
        async def symlink(self, parent: int, name: bytes, target: bytes, ctx: Any) -> Any:
            p = self._child(parent, name)
            os.symlink(target, p)
            return self._made(p)

        @_errno
        async def mkdir(self, parent: int, name: bytes, mode: int, ctx: Any) -> Any:
            p = self._child(parent, name)
            os.mkdir(p, mode)
            return self._made(p)

        @_errno
        async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
            p = self._child(parent, name)
            os.mknod(p, mode, rdev)
            return self._made(p)

        @_errno
        async def link(self, ino: int, new_parent: int, new_name: bytes, ctx: Any) -> Any:
            p = self._child(new_parent, new_name)
            os.link(self._path(ino), p)
            return self._made(p)

        @_errno
        async def unlink(self, parent: int, name: bytes, ctx: Any) -> None:
            os.unlink(self._child(parent, name))

        @_errno
        async def rmdir(self, parent: int, name: bytes, ctx: Any) -> None:
            os.rmdir(self._child(parent, name))

        @_errno
        async def rename(self, old_parent: int, old_name: bytes, new_parent: int,
                         new_name: bytes, flags: int, ctx: Any) -> None:
            if flags:
                raise pyfuse3.FUSEError(errno.EINVAL)
            new = self._child(new_parent, new_name)
            os.rename(self._child(old_parent, old_name), new)
            self._entry(os.lstat(new), new)

        async def forget(self, inode_list: Any) -> None:
            pass  # inodes stay known: a benchmark's tree is small

        @_errno
        async def opendir(self, ino: int, ctx: Any) -> int:
            return ino

        @_errno
        async def readdir(self, fh: int, start_id: int, token: Any) -> None:
            d = self._path(fh)
            with os.scandir(d) as it:
                names = sorted(e.name for e in it)
            for i in range(start_id, len(names)):
                p = os.path.join(d, names[i])
                if not pyfuse3.readdir_reply(token, names[i], self._made(p), i + 1):
                    break

        async def releasedir(self, fh: int) -> None:
            pass

        @_errno
        async def open(self, ino: int, flags: int, ctx: Any) -> Any:
            fd = os.open(self._path(ino), flags & _PASS_FLAGS)
            return pyfuse3.FileInfo(fh=fd, keep_cache=True)

        @_errno
        async def create(self, parent: int, name: bytes, mode: int, flags: int,
                         ctx: Any) -> Any:
            p = self._child(parent, name)
            fd = os.open(p, (flags & _PASS_FLAGS) | os.O_CREAT, mode)
            return pyfuse3.FileInfo(fh=fd, keep_cache=True), self._entry(os.fstat(fd), p)

        @_errno
        async def read(self, fh: int, off: int, size: int) -> bytes:
            return os.pread(fh, size, off)

        @_errno
        async def write(self, fh: int, off: int, buf: bytes) -> int:
            return os.pwrite(fh, buf, off)

        async def flush(self, fh: int) -> None:
            pass

        @_errno
        async def release(self, fh: int) -> None:
            os.close(fh)

        @_errno
        async def fsync(self, fh: int, datasync: bool) -> None:
            (os.fdatasync if datasync else os.fsync)(fh)

        @_errno
        async def getxattr(self, ino: int, name: bytes, ctx: Any) -> bytes:
            return os.getxattr(self._path(ino), name, follow_symlinks=False)

        @_errno
        async def listxattr(self, ino: int, ctx: Any) -> list[bytes]:
            return [os.fsencode(n) for n in os.listxattr(self._path(ino),
                                                         follow_symlinks=False)]

        @_errno
        async def statfs(self, ctx: Any) -> Any:
            v = os.statvfs(src)
            s = pyfuse3.StatvfsData()
            for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                      "f_ffree", "f_favail", "f_namemax"):
                setattr(s, f, getattr(v, f))
            return s

    opts = set(pyfuse3.default_options) | {"fsname=pyfuse3-floor"}
    pyfuse3.init(Pass(), mnt, opts)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.passfs SRC MNT")
    serve(sys.argv[1], sys.argv[2])
