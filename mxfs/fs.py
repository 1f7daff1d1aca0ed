"""The pyfuse3 Operations of mxfs: kernel requests -> RPCs to the I/O server.

How this works
--------------
Inodes map to the server's file handles through the InodeTable: every request on a file names
its handle, a lookup or a create names [directory handle, name] (the root, and everything on a
server that issues no handles, is named by path instead). Open files and directories map to
the server's open handles (hid) tagged with the connection epoch they were opened in. After a
reconnection a hid of an older epoch is reopened on first use by file handle (same flags less
O_CREAT/O_EXCL/O_TRUNC): the same file whatever its name is now, or ESTALE if it is gone or
the server exports another tree. Without a file handle it is reopened by name and must be the
same (st_dev, st_ino), or it is ESTALE.

Consistency: every EntryAttributes carries the short attr/entry timeouts of the mount options.
The kernel's writeback cache stays off; small writes are gathered by write-behind
(writeback.py) and reach the server before close, fsync, read, stat or readdir of the file
returns, so close-to-open holds for readers elsewhere. A failed run is kept per file
(writeerrors.py: Linux's errseq, plus the server's write verifier) and reported to every open
file at its next write, fsync and close. On open the file's fresh size/mtime come back
with the handle; the page cache is dropped (keep_cache=False) and, if they changed, the
kernel's cached attributes are invalidated so the new size is seen at once.

Credentials: every request that names a file or opens one carries the caller's uid, gid and
groups (callers.py), and the server performs it as that user: the client's kernel checks
(default_permissions) are only a first, cached check. An open file remembers its opener's
credentials for reopening it after a reconnect. A change through an open file (fchmod,
fchown, futimens, f*xattr: the kernel sends no handle with them) goes through one of the
inode's open handles when it has one, so it works on a file that was unlinked while open.

Every handler goes through `_guard`: whatever goes wrong becomes a FUSEError, because any other
exception escaping a handler would end pyfuse3.main and the mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError

from fsproto.rpc import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    STAT_FIELDS,
    TIME_NOW,
    Cred,
    Op,
    St,
    StatTuple,
)

from .attrcache import NoCapability, PostOpAttrs
from .callers import Callers
from .inodes import ROOT_INODE, InodeTable, StaleInode, stat_key
from .mounttab import STATS_XATTR
from .openfiles import OpenFiles
from .options import MountOptions
from .readdir import DOTS, dots, server_offset
from .reopen import Reopener
from .rpc import RpcClient, RpcError, StaleEpoch
from .stats import stats_json
from .writer import Writer

log = logging.getLogger("mxfs")

CAPABILITY = b"security.capability"
NOW_WINDOW_NS = 500_000_000  # pyfuse3 turns utimensat's UTIME_NOW into its clock's "now"
# what EntryAttributes takes from a stat tuple (st_dev and st_ino stay ours: the inode number)
_ENTRY_FIELDS = [(int(i), STAT_FIELDS[i]) for i in St if i >= St.MODE]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _guard(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except FUSEError:
            raise
        except StaleEpoch:
            raise FUSEError(errno.EIO) from None
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise FUSEError(errno.EIO) from None
    return wrapper  # type: ignore[return-value]


class MxfsOperations(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, rpc: RpcClient, opts: MountOptions) -> None:
        super().__init__()
        self.rpc = rpc
        self.opts = opts
        self.inodes = InodeTable()
        self.files = OpenFiles(self.inodes)
        self.reopen = Reopener(rpc, self.inodes)
        self.attrs = PostOpAttrs(opts.attr_timeout)
        self.no_cap = NoCapability(opts.attr_timeout)
        self.writer = Writer(rpc, self.files, self.reopen, self.attrs)
        self.callers = Callers()
        self.initialized = trio.Event()

    def init(self) -> None:
        self.initialized.set()

    # -- translation ---------------------------------------------------------------------------
    def _entry(self, ino: int, st: StatTuple) -> EntryAttributes:
        self.attrs.forget(ino)  # what the kernel is told now supersedes older post-op ones
        e = EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = self.opts.entry_timeout
        e.attr_timeout = self.opts.attr_timeout
        for i, name in _ENTRY_FIELDS:
            setattr(e, name, st[i])
        if ino in self.inodes:
            self.inodes.note_attrs(ino, st[St.SIZE], st[St.MTIME_NS])
        return e

    def _learn(self, parent: int, name: bytes, st: StatTuple, fh: Any = None) -> EntryAttributes:
        # a directory's st_nlink counts its subdirectories, not names: it has only one
        ino = self.inodes.lookup(parent, name, stat_key(st) if fh is None else fh,
                                 1 if stat.S_ISDIR(st[St.MODE]) else st[St.NLINK], fh)
        return self._entry(ino, st)

    def _forget_after(self, parent: int, name: bytes) -> None:
        """Drop the remembered post-op attributes of what *name* names: they are old now."""
        ino = self.inodes.child(parent, name)
        if ino is not None:
            self.attrs.forget(ino)

    def _cred(self, ctx: Any) -> Cred | None:
        """The caller's credentials (None: no context, the mount process's own are sent)."""
        return None if ctx is None else self.callers.cred(ctx)

    def _ref(self, ino: int) -> Any:
        """How a request names the inode: its server handle, or its path without one."""
        try:
            return self.inodes.ref(ino)
        except StaleInode:
            raise FUSEError(errno.ENOENT) from None

    def _child(self, parent: int, name: bytes) -> Any:
        """How a request names an entry: [directory handle, name], or a path."""
        if name in (b".", b"..") or b"/" in name:
            raise FUSEError(errno.EINVAL)
        try:
            return self.inodes.entry_ref(parent, name)
        except StaleInode:
            raise FUSEError(errno.ENOENT) from None

    # -- lifecycle -----------------------------------------------------------------------------
    async def prime(self) -> None:
        """Check the export answers and learn its root (before mounting)."""
        st = await self.rpc.call(Op.GETATTR, b"")
        if not stat.S_ISDIR(st[St.MODE]):
            raise RpcError(errno.ENOTDIR, "export root is not a directory")
        self.inodes.set_root_key(stat_key(st))

    # -- metadata ------------------------------------------------------------------------------
    @_guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> EntryAttributes:
        cred = self._cred(ctx)
        if name == b".":
            st = await self.rpc.call(Op.GETATTR, self._ref(parent_inode), cred=cred)
            self.inodes.get(parent_inode).nlookup += 1
            return self._entry(parent_inode, st)
        if name == b"..":
            node = self.inodes.get(parent_inode)
            target = node.parent if node.parent else ROOT_INODE
            st = await self.rpc.call(Op.GETATTR, self._ref(target), cred=cred)
            self.inodes.get(target).nlookup += 1
            return self._entry(target, st)
        st, fh = await self.rpc.call(Op.LOOKUP, self._child(parent_inode, name), cred=cred)
        entry = self._learn(parent_inode, name, st, fh)
        if self.files.pending(entry.st_ino):  # its size must include what we hold
            await self.writer.settle_inode(entry.st_ino)
            entry = self._entry(entry.st_ino, await self.rpc.call(
                Op.GETATTR, self._ref(entry.st_ino), cred=cred))
        return entry

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            try:
                self.inodes.forget(ino, n)
            except Exception:  # forget has no reply; never let it raise
                log.exception("forget")

    @_guard
    async def getattr(self, inode: int, ctx: Any = None) -> EntryAttributes:
        await self.writer.settle_inode(inode)  # (the answers to the writes it sends bring them)
        after = self.attrs.take(inode)
        if after is not None and not self.files.pending(inode):
            return self._entry(inode, after)
        self.inodes.get(inode)  # (one the table forgot: ESTALE)
        f = self.files.one_of(inode, self.rpc.epoch)
        if f is not None and f.epoch == self.rpc.epoch:
            try:
                return self._entry(inode, await self.rpc.call(Op.FGETATTR, f.hid,
                                                              epoch=f.epoch))
            except StaleEpoch:
                pass
        st = await self.rpc.call(Op.GETATTR, self._ref(inode), cred=self._cred(ctx))
        return self._entry(inode, st)

    @_guard
    async def setattr(self, inode: int, attr: EntryAttributes, fields: Any, fh: int | None,
                      ctx: Any) -> EntryAttributes:
        self.attrs.forget(inode)  # (a setattr that fails half-way leaves them old)
        await self.writer.settle_inode(inode)
        atime = attr.st_atime_ns if fields.update_atime else None
        mtime = attr.st_mtime_ns if fields.update_mtime else None
        if (atime is not None and atime == mtime
                and abs(time.time_ns() - atime) < NOW_WINDOW_NS):
            atime = mtime = TIME_NOW  # touch / utimensat(NULL): write permission suffices
        args = [
            attr.st_mode if fields.update_mode else None,
            attr.st_uid if fields.update_uid else None,
            attr.st_gid if fields.update_gid else None,
            attr.st_size if fields.update_size else None,
            atime,
            mtime,
        ]
        cred = self._cred(ctx)
        f = self.files.get(fh) if fh is not None else None
        if f is None and not fields.update_size:  # fchmod, fchown, futimens come without fh
            f = self.files.one_of(inode, self.rpc.epoch)
        if f is not None:
            st = await self.reopen.retry(f, lambda hid, epoch: self.rpc.call(
                Op.SETATTR, b"", hid, *args, epoch=epoch, cred=cred))
        else:
            st = await self.rpc.call(Op.SETATTR, self._ref(inode), None, *args, cred=cred)
        entry = self._entry(inode, st)
        self.attrs.changed(inode, st)  # the kernel often asks for them again right away
        return entry

    @_guard
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return await self.rpc.call(Op.READLINK, self._ref(inode), cred=self._cred(ctx))

    @_guard
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: Any) -> EntryAttributes:
        st, pst, fh = await self.rpc.call(Op.MKNOD, self._child(parent_inode, name), mode, rdev,
                                          cred=self._cred(ctx))
        self.attrs.changed(parent_inode, pst)
        return self._learn(parent_inode, name, st, fh)

    @_guard
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> EntryAttributes:
        st, pst, fh = await self.rpc.call(Op.MKDIR, self._child(parent_inode, name), mode,
                                          cred=self._cred(ctx))
        self.attrs.changed(parent_inode, pst)
        return self._learn(parent_inode, name, st, fh)

    @_guard
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: Any) -> EntryAttributes:
        st, pst, fh = await self.rpc.call(Op.SYMLINK, self._child(parent_inode, name), target,
                                          cred=self._cred(ctx))
        self.attrs.changed(parent_inode, pst)
        return self._learn(parent_inode, name, st, fh)

    @_guard
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: Any) -> EntryAttributes:
        st, pst, fh = await self.rpc.call(Op.LINK, self._ref(inode),
                                          self._child(new_parent_inode, new_name),
                                          cred=self._cred(ctx))
        self.attrs.changed(new_parent_inode, pst)
        return self._learn(new_parent_inode, new_name, st, fh)

    @_guard
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        pst = await self.rpc.call(Op.UNLINK, self._child(parent_inode, name),
                                  cred=self._cred(ctx))
        self.attrs.changed(parent_inode, pst)
        self._forget_after(parent_inode, name)  # its link count just dropped
        self.inodes.removed(parent_inode, name)

    @_guard
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        pst = await self.rpc.call(Op.RMDIR, self._child(parent_inode, name),
                                  cred=self._cred(ctx))
        self.attrs.changed(parent_inode, pst)
        self.inodes.removed(parent_inode, name)

    @_guard
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        wire = 0
        if flags & pyfuse3.RENAME_NOREPLACE:
            wire |= RENAME_NOREPLACE
        if flags & pyfuse3.RENAME_EXCHANGE:
            wire |= RENAME_EXCHANGE
        spst, dpst = await self.rpc.call(Op.RENAME, self._child(parent_inode_old, name_old),
                                         self._child(parent_inode_new, name_new), wire,
                                         cred=self._cred(ctx))
        self.attrs.changed(parent_inode_old, spst)
        self.attrs.changed(parent_inode_new, dpst)
        self._forget_after(parent_inode_new, name_new)  # a replaced file lost a link
        self.inodes.renamed(parent_inode_old, name_old, parent_inode_new, name_new,
                            exchange=bool(wire & RENAME_EXCHANGE))

    @_guard
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        r = await self.rpc.call(Op.STATFS)
        s = pyfuse3.StatvfsData()
        (s.f_bsize, s.f_frsize, s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
         s.f_favail, s.f_namemax) = r
        return s

    @_guard
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        await self.rpc.call(Op.ACCESS, self._ref(inode), mode, cred=self._cred(ctx))
        return True

    # -- files ---------------------------------------------------------------------------------
    def _opened(self, ino: int, flags: int, hid: int, st: StatTuple,
                cred: Cred | None) -> FileInfo:
        if self.inodes.note_attrs(ino, st[St.SIZE], st[St.MTIME_NS]):
            try:  # the file changed elsewhere: make the kernel fetch fresh attributes (size)
                pyfuse3.invalidate_inode(ino, attr_only=True)
            except OSError:
                pass
        self.attrs.changed(ino, st)  # fresh from the server: answers that fetch, drops older
        f = self.files.add_file(ino, flags, hid, self.rpc.epoch, cred,
                               self.writer.werr.sample(ino))
        return FileInfo(fh=f.fh, keep_cache=False)

    @_guard
    async def open(self, inode: int, flags: int, ctx: Any) -> FileInfo:
        cred = self._cred(ctx)
        hid, st = await self.rpc.call(Op.OPEN, self._ref(inode), flags, cred=cred)
        return self._opened(inode, flags, hid, st, cred)

    @_guard
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[FileInfo, EntryAttributes]:
        cred = self._cred(ctx)
        hid, st, pst, created, fh = await self.rpc.call(
            Op.CREATE, self._child(parent_inode, name), flags, mode, cred=cred)
        self.attrs.changed(parent_inode, pst)
        entry = self._learn(parent_inode, name, st, fh)
        if created:  # a new file has no capability xattr: the first write needn't ask
            self.no_cap.remember(entry.st_ino)
        return self._opened(entry.st_ino, flags, hid, st, cred), entry

    @_guard
    async def read(self, fh: int, off: int, size: int) -> Any:
        f = self.files.file(fh)
        await self.writer.settle_inode(f.ino)
        return await self.reopen.retry(
            f, lambda hid, epoch: self.rpc.read(hid, off, size, epoch=epoch))

    @_guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.writer.write(self.files.file(fh), off, buf)

    @_guard
    async def flush(self, fh: int) -> None:
        """Every close(2) of the file description, in any process: report its errors."""
        await self.writer.flush(self.files.file(fh))

    @_guard
    async def release(self, fh: int) -> None:
        f = self.files.get(fh)
        if f is None:
            return
        await self.writer.settle(f)
        self.writer.closed(f, last=self.files.remove_file(f))
        # no need to wait for the answer: the data went out with flush (close-to-open), and
        # the server drops a lost client's handles by itself
        self.rpc.post(Op.RELEASE, f.hid, epoch=f.epoch)

    @_guard
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.writer.fsync(self.files.file(fh), datasync)

    # -- directories ---------------------------------------------------------------------------
    @_guard
    async def opendir(self, inode: int, ctx: Any) -> int:
        cred = self._cred(ctx)
        hid = await self.rpc.call(Op.OPENDIR, self._ref(inode), cred=cred)
        return self.files.add_dir(inode, hid, self.rpc.epoch, cred)

    @_guard
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        await self.writer.settle_open_files()  # readdirplus carries sizes: include our writes
        d = self.files.dir(fh)
        buf = d.buffer
        buf.rewind(start_id)
        if start_id < DOTS:
            parent = self.inodes.get(d.ino).parent or ROOT_INODE
            for name, ino, nxt in dots(start_id, d.ino, parent):
                if not pyfuse3.readdir_reply(token, name, self._dot_entry(ino), nxt):
                    return
                start_id = nxt
        while True:
            if not buf.entries:
                if buf.eof:
                    return
                entries, eof = await self.reopen.call(d, Op.READDIR, server_offset(start_id))
                buf.add(start_id, entries, eof)
                if not buf.entries:
                    return
            while buf.entries:
                e = buf.entries[0]
                entry = self._learn(d.ino, e.name, e.st, e.fh)
                if not pyfuse3.readdir_reply(token, e.name, entry, e.next):
                    self.inodes.forget(entry.st_ino, 1)
                    return
                buf.entries.pop(0)
                start_id = e.next
            if buf.eof:
                return

    def _dot_entry(self, ino: int) -> EntryAttributes:
        """Attributes for "." / "..": the kernel takes only the inode number and type from
        these and counts no lookup for them."""
        e = EntryAttributes()
        e.st_ino = ino
        e.st_mode = stat.S_IFDIR | 0o755
        e.entry_timeout = 0
        e.attr_timeout = 0
        return e

    @_guard
    async def releasedir(self, fh: int) -> None:
        d = self.files.remove_dir(fh)
        if d is not None:
            self.rpc.post(Op.RELEASE, d.hid, epoch=d.epoch)

    @_guard
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.reopen.call(self.files.dir(fh), Op.FSYNC, bool(datasync))

    # -- extended attributes -------------------------------------------------------------------
    @_guard
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if inode == ROOT_INODE and name == STATS_XATTR:
            return (await stats_json(self.rpc, self.opts.host, len(self.files),
                                     self.writer.werr, len(self.inodes))).encode()
        if name == CAPABILITY and self.no_cap.known(inode):
            raise FUSEError(pyfuse3.ENOATTR)
        try:
            return await self._xattr_call(inode, ctx, Op.GETXATTR, Op.FGETXATTR, name)
        except RpcError as e:
            if e.errno == errno.ENODATA:
                if name == CAPABILITY:
                    self.no_cap.remember(inode)
                raise FUSEError(pyfuse3.ENOATTR) from None
            raise

    @_guard
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if inode == ROOT_INODE and name == STATS_XATTR:
            raise FUSEError(errno.EPERM)
        self.no_cap.forget(inode)
        await self._xattr_call(inode, ctx, Op.SETXATTR, Op.FSETXATTR, name, value, 0)

    @_guard
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return await self._xattr_call(inode, ctx, Op.LISTXATTR, Op.FLISTXATTR)

    @_guard
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self.no_cap.forget(inode)
        try:
            await self._xattr_call(inode, ctx, Op.REMOVEXATTR, Op.FREMOVEXATTR, name)
        except RpcError as e:
            if e.errno == errno.ENODATA:
                raise FUSEError(pyfuse3.ENOATTR) from None
            raise

    async def _xattr_call(self, inode: int, ctx: Any, by_path: Op, by_handle: Op,
                          *args: Any) -> Any:
        """An xattr op through an open file of the inode if it has one (the file itself,
        even unlinked), else by path; as the caller either way."""
        cred = self._cred(ctx)
        f = self.files.one_of(inode, self.rpc.epoch)
        if f is not None:
            return await self.reopen.call(f, by_handle, *args, cred=cred)
        return await self.rpc.call(by_path, self._ref(inode), *args, cred=cred)
