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

import contextvars
import errno
import functools
import itertools
import json
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError

from fsproto.rpc import RENAME_EXCHANGE, RENAME_NOREPLACE, TIME_NOW, Cred, Op, StatTuple

from .callers import Callers
from .inodes import ROOT_INODE, InodeTable, StaleInode
from .invalidator import Invalidator
from .leases import ABSENT, Drop, Key, Leases, key_of
from .mounttab import STATS_XATTR
from .options import MountOptions
from .rpc import RpcClient, RpcError, StaleEpoch
from .writeback import (
    APPEND_MAX,
    MAX_AGE,
    MAX_INFLIGHT,
    MAX_PARTS,
    RUN_MAX,
    Run,
    may_continue,
    worth_buffering,
)
from .writeerrors import Cursor, WriteErrors

log = logging.getLogger("mxfs")

CAPABILITY = b"security.capability"
DOTS = 2  # readdir offsets 1 and 2 are "." and ".."
_REOPEN_DROP = os.O_CREAT | os.O_EXCL | os.O_TRUNC
NOW_WINDOW_NS = 500_000_000  # pyfuse3 turns utimensat's UTIME_NOW into its clock's "now"

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# the callback generation when the kernel request being handled began (leases.py: an answer
# is trusted, cached and given a long timeout only if no BREAK came since)
_UNKNOWN = object()
_began_at: contextvars.ContextVar[int] = contextvars.ContextVar("mxfs_generation", default=-1)


def _guard(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        _began_at.set(args[0].leases.generation)
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


@dataclass
class OpenFile:
    ino: int
    flags: int
    hid: int
    epoch: int
    fh: int = 0  # the kernel's handle for it (key in MxfsOperations.files)
    cred: Cred | None = None  # who opened it (reopened as that user after a reconnect)
    lock: trio.Lock = field(default_factory=trio.Lock)
    wlock: trio.Lock = field(default_factory=trio.Lock)  # orders this file's writes
    seen: Cursor = field(default_factory=lambda: Cursor(0, 0, 0))  # of its inode's errors
    run: Run | None = None  # small writes answered but not yet sent (writeback.py)
    inflight: list[tuple[int, int]] = field(default_factory=list)  # runs on the wire
    writes: int = 0  # WRITEs sent so far (tells whether another one overlapped a write)
    changed: trio.Event = field(default_factory=trio.Event)  # set when one of them ends


@dataclass
class OpenDir:
    ino: int
    hid: int
    epoch: int
    cred: Cred | None = None
    # entries fetched but not yet taken by the kernel: (own offset, name, next offset, stat,
    # handle)
    buffered: list[tuple[int, bytes, int, StatTuple, Any]] = field(default_factory=list)
    eof_after_buffer: bool = False
    gen: int = -1  # the callback generation before they were fetched (leases.py)


def _report(err: int) -> None:
    if err:
        raise FUSEError(err)


class MxfsOperations(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, rpc: RpcClient, opts: MountOptions) -> None:
        super().__init__()
        self.rpc = rpc
        self.opts = opts
        self.inodes = InodeTable()
        self.files: dict[int, OpenFile] = {}
        self.dirs: dict[int, OpenDir] = {}
        self._fh = itertools.count(1)
        self.initialized = trio.Event()
        self.dirty: set[int] = set()  # file handles with a pending write-behind run
        self.werr = WriteErrors()  # failed write-behind and unsynced data, per inode
        self._senders: trio.Nursery | None = None  # where write-behind runs travel
        self._no_cap: dict[int, float] = {}  # inode -> until when it has no file capability
        self.callers = Callers()
        # inode -> (until when, its attributes right after our last change of it): the kernel
        # drops a directory's attributes after every create/unlink/rename in it, and a file's
        # after every write, and asks again (permission check, fchmod/futimens after a write);
        # the server's reply to the change answers that getattr
        self._after: dict[int, tuple[float, StatTuple]] = {}
        # callbacks: what may be answered from memory while the server keeps its promises
        self.leases = Leases(timeout=opts.lease_timeout, max_entries=int(opts.cache_max))
        self.leases.active = rpc.callbacks
        self.invalidator = Invalidator(self.leases, rpc.ack_break, self._drop_key,
                                       self._kernel_names)
        rpc.on_break = self.invalidator.on_break
        rpc.on_reset = self._on_reset

    def init(self) -> None:
        self.initialized.set()

    # -- helpers -------------------------------------------------------------------------------
    # -- callbacks -----------------------------------------------------------------------------
    def _on_reset(self) -> None:
        """The connection was lost or made anew: whatever the server promised is void."""
        self.leases.active = self.rpc.peer is not None and self.rpc.callbacks
        self.invalidator.on_reset()

    def _drop_key(self, key: Key | None) -> None:
        """A BREAK named *key* (None: everything): the per-inode caches here forget it."""
        if key is None:
            self._after.clear()
            self._no_cap.clear()
            return
        ino = self.leases.inode(key)
        if ino is not None:
            self._after.pop(ino, None)
            self._no_cap.pop(ino, None)

    def _kernel_names(self) -> list[Drop]:
        """Every name the kernel may hold with a long timeout (for a reset)."""
        return [Drop(parent, name=name) for parent, name in self.inodes.names()]

    def _trusted(self, gen: int | None = None) -> bool:
        """Whether the answer just received may be cached (and kept long by the kernel)."""
        return self.leases.fresh(_began_at.get() if gen is None else gen)

    def _negative(self) -> EntryAttributes:
        """A name known not to exist: the kernel keeps that (a negative entry) while the
        server's promise on the directory holds."""
        e = EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.leases.timeout
        return e

    def _entry(self, ino: int, st: StatTuple, gen: int | None = None) -> EntryAttributes:
        self._after.pop(ino, None)  # what the kernel is told now supersedes older post-op ones
        e = EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        self.leases.know(ino, st)
        if self._trusted(gen):
            self.leases.put_attrs(st, self.leases.generation)
            e.entry_timeout = e.attr_timeout = self.leases.timeout
        else:
            e.entry_timeout = self.opts.entry_timeout
            e.attr_timeout = self.opts.attr_timeout
        (_, _, e.st_mode, e.st_nlink, e.st_uid, e.st_gid, e.st_rdev, e.st_size, e.st_blocks,
         e.st_blksize, e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns) = st
        node = self.inodes._inodes.get(ino)
        if node is not None:
            node.size, node.mtime_ns = st[7], st[11]
        return e

    def _learn(self, parent: int, name: bytes, st: StatTuple, fh: Any = None,
               gen: int | None = None) -> EntryAttributes:
        # a directory's st_nlink counts its subdirectories, not names: it has only one
        ino = self.inodes.lookup(parent, name, (st[0], st[1]) if fh is None else fh,
                                 1 if stat.S_ISDIR(st[2]) else st[3], fh)
        pkey = self.leases.key(parent)
        if pkey is not None and self._trusted(gen):
            self.leases.put_entry(pkey, name, (key_of(st), fh), self.leases.generation)
        return self._entry(ino, st, gen)

    def _changed(self, ino: int, st: StatTuple) -> None:
        """Remember an inode's post-op attributes (from the server's reply to our change of
        it) for one getattr within attr_timeout, as NFS clients use post-op attributes.
        Under callbacks they are cached like any answer (the server kept our promise)."""
        if self._trusted():
            self.leases.put_attrs(st, self.leases.generation)
        else:
            self.leases.forget(key_of(st))
        if self.opts.attr_timeout > 0:
            if len(self._after) > 4096:
                self._after.clear()
            self._after[ino] = (trio.current_time() + self.opts.attr_timeout, st)

    def _forget_after(self, parent: int, name: bytes) -> None:
        """Drop the remembered post-op attributes of what *name* names: they are old now."""
        ino = self.inodes.child(parent, name)
        if ino is not None:
            self._after.pop(ino, None)
            key = self.leases.key(ino)
            if key is not None:
                self.leases.forget(key)

    def _name_changed(self, parent: int, name: bytes, value: Any = _UNKNOWN) -> None:
        """Our own change made *name* name *value* now: (key, handle), ABSENT, or _UNKNOWN
        (the cached entry just goes)."""
        pkey = self.leases.key(parent)
        if pkey is None:
            return
        if value is _UNKNOWN or not self._trusted():
            self.leases.forget_entry(pkey, name)
        else:
            self.leases.renamed_in(pkey, name, value, self.leases.generation)

    def _cached_ref(self, parent: int, name: bytes) -> Any:
        """(key, handle) of what *name* names as far as the inode table knows, or _UNKNOWN."""
        ino = self.inodes.child(parent, name)
        key = self.leases.key(ino) if ino is not None else None
        if key is None:
            return _UNKNOWN
        return key, self.inodes.get(ino).fh

    def _forget_attrs(self, ino: int) -> None:
        key = self.leases.key(ino)
        if key is not None:
            self.leases.forget(key)

    def _cred(self, ctx: Any) -> Cred | None:
        """The caller's credentials (None: no context, the mount process's own are sent)."""
        return None if ctx is None else self.callers.cred(ctx)

    def _open_file_of(self, ino: int) -> OpenFile | None:
        """One of this inode's open files (of the current connection if any): changes through
        an fd (fchmod, fsetxattr...) reach the file itself, even unlinked, through it."""
        node = self.inodes._inodes.get(ino)
        found = None
        for fh in node.handles if node is not None else ():
            f = self.files.get(fh)
            if f is not None:
                if f.epoch == self.rpc.epoch:
                    return f
                found = found or f
        return found

    def _ref(self, ino: int) -> Any:
        """How a request names the inode: its server handle, or its path without one."""
        try:
            node = self.inodes.get(ino)
            return node.fh if node.fh is not None else self.inodes.path(ino)
        except StaleInode:
            raise FUSEError(errno.ENOENT) from None

    def _child(self, parent: int, name: bytes) -> Any:
        """How a request names an entry: [directory handle, name], or a path."""
        if name in (b".", b"..") or b"/" in name:
            raise FUSEError(errno.EINVAL)
        try:
            node = self.inodes.get(parent)
            if node.fh is not None:
                return [node.fh, name]
            return self.inodes.child_path(parent, name)
        except StaleInode:
            raise FUSEError(errno.ENOENT) from None

    async def _with_file(self, f: OpenFile, op: Op, *args: Any, **kw: Any) -> Any:
        """Call *op* with the file's server handle first, reopening it after a reconnect
        (keyword arguments, cred= among them, go to rpc.call)."""
        for _ in range(3):
            if f.epoch != self.rpc.epoch:
                await self._reopen(f)
            try:
                return await self.rpc.call(op, f.hid, *args, epoch=f.epoch, **kw)
            except StaleEpoch:
                continue
        raise FUSEError(errno.EIO)

    async def _reopen(self, f: OpenFile) -> None:
        async with f.lock:
            if f.epoch == self.rpc.epoch:
                return
            epoch = self.rpc.epoch
            path = self._reopen_ref(f.ino)
            hid, st = await self.rpc.call(Op.OPEN, path, f.flags & ~_REOPEN_DROP, cred=f.cred)
            self._same_object(f.ino, st, hid, epoch, path)
            f.hid, f.epoch = hid, epoch
            log.info("reopened inode %d after reconnect", f.ino)

    def _reopen_ref(self, ino: int) -> Any:
        """What reopens an inode after a reconnect: its handle (the file itself, or ESTALE
        from the server), else its name (ESTALE here if the name went away)."""
        try:
            node = self.inodes.get(ino)
            return node.fh if node.fh is not None else self.inodes.path(ino)
        except StaleInode:
            raise FUSEError(errno.ESTALE) from None

    def _same_object(self, ino: int, st: StatTuple, hid: int, epoch: int, path: Any) -> None:
        """A handle reopened by name after a reconnect must reach the object it reached
        before (the name may have been renamed away and reused meanwhile, or the server may
        export another tree now): if not, the open file is stale, never another file.
        (Reopened by file handle, it is that file or the server said ESTALE.)"""
        node = self.inodes.get(ino)
        if node.fh is None and node.key is not None and (st[0], st[1]) != node.key:
            self.rpc.post(Op.RELEASE, hid, epoch=epoch)
            log.warning("%r is another file after the reconnect: the open one is stale", path)
            raise FUSEError(errno.ESTALE)

    async def _fresh_handle(self, f: OpenFile) -> tuple[int, int]:
        if f.epoch != self.rpc.epoch:
            await self._reopen(f)
        return f.hid, f.epoch

    # -- lifecycle -----------------------------------------------------------------------------
    async def prime(self) -> None:
        """Check the export answers and learn its root (before mounting)."""
        st = await self.rpc.call(Op.GETATTR, b"")
        if not stat.S_ISDIR(st[2]):
            raise RpcError(errno.ENOTDIR, "export root is not a directory")
        self.inodes.set_root_key((st[0], st[1]))
        self.leases.know(ROOT_INODE, st)

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
        ref = self._child(parent_inode, name)
        pkey = self.leases.key(parent_inode)
        known, value = self.leases.entry(pkey, name) if pkey is not None else (False, None)
        if known:  # answered from memory: the server promised to tell us of any change
            if value is ABSENT:
                return self._negative()
            st = self.leases.attrs(value[0])
        if not known or st is None:
            try:
                st, fh = await self.rpc.call(Op.LOOKUP, ref, cred=cred)
            except RpcError as e:
                if e.errno == errno.ENOENT and pkey is not None and self._trusted():
                    self.leases.put_entry(pkey, name, ABSENT, self.leases.generation)
                    return self._negative()
                raise
        else:
            fh = value[1]
        entry = self._learn(parent_inode, name, st, fh)
        if self._has_run(entry.st_ino):  # its size must include what we hold
            await self._settle_inode(entry.st_ino)
            entry = self._entry(entry.st_ino, await self.rpc.call(
                Op.GETATTR, self._ref(entry.st_ino), cred=cred))
        return entry

    def _has_run(self, ino: int) -> bool:
        node = self.inodes._inodes.get(ino)
        return node is not None and any(
            (f := self.files.get(fh)) is not None and (f.run is not None or f.inflight)
            for fh in node.handles)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            try:
                self.inodes.forget(ino, n)
            except Exception:  # forget has no reply; never let it raise
                log.exception("forget")

    @_guard
    async def getattr(self, inode: int, ctx: Any = None) -> EntryAttributes:
        await self._settle_inode(inode)  # (the answers to the writes it sends bring them)
        after = self._after.pop(inode, None)
        if after is not None and after[0] > trio.current_time() and not self._has_run(inode):
            return self._entry(inode, after[1])
        key = self.leases.key(inode)
        cached = self.leases.attrs(key) if key is not None else None
        if cached is not None and not self._has_run(inode):
            return self._entry(inode, cached)
        node = self.inodes.get(inode)
        for fh in list(node.handles):
            f = self.files.get(fh)
            if f is not None and f.epoch == self.rpc.epoch:
                try:
                    st = await self.rpc.call(Op.FGETATTR, f.hid, epoch=f.epoch)
                    return self._entry(inode, st)
                except StaleEpoch:
                    break
        st = await self.rpc.call(Op.GETATTR, self._ref(inode), cred=self._cred(ctx))
        return self._entry(inode, st)

    @_guard
    async def setattr(self, inode: int, attr: EntryAttributes, fields: Any, fh: int | None,
                      ctx: Any) -> EntryAttributes:
        self._after.pop(inode, None)  # (a setattr that fails half-way leaves them old)
        await self._settle_inode(inode)
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
            f = self._open_file_of(inode)
        if f is not None:
            st = await self._with_file_setattr(f, args, cred)
        else:
            st = await self.rpc.call(Op.SETATTR, self._ref(inode), None, *args, cred=cred)
        entry = self._entry(inode, st)
        self._changed(inode, st)  # the kernel often asks for them again right away
        return entry

    async def _with_file_setattr(self, f: OpenFile, args: list[Any],
                                 cred: Cred | None) -> StatTuple:
        for _ in range(3):
            hid, epoch = await self._fresh_handle(f)
            try:
                return await self.rpc.call(Op.SETATTR, b"", hid, *args, epoch=epoch, cred=cred)
            except StaleEpoch:
                continue
        raise FUSEError(errno.EIO)

    @_guard
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return await self.rpc.call(Op.READLINK, self._ref(inode), cred=self._cred(ctx))

    @_guard
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: Any) -> EntryAttributes:
        st, pst, fh = await self.rpc.call(Op.MKNOD, self._child(parent_inode, name), mode, rdev,
                                      cred=self._cred(ctx))
        self._changed(parent_inode, pst)
        self._name_changed(parent_inode, name, (key_of(st), fh))
        return self._learn(parent_inode, name, st, fh)

    @_guard
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> EntryAttributes:
        st, pst, fh = await self.rpc.call(Op.MKDIR, self._child(parent_inode, name), mode,
                                      cred=self._cred(ctx))
        self._changed(parent_inode, pst)
        self._name_changed(parent_inode, name, (key_of(st), fh))
        if self._trusted():  # new, so empty: a name in it is absent until we make it
            self.leases.made_dir(st, self.leases.generation)
        return self._learn(parent_inode, name, st, fh)

    @_guard
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: Any) -> EntryAttributes:
        st, pst, fh = await self.rpc.call(Op.SYMLINK, self._child(parent_inode, name), target,
                                      cred=self._cred(ctx))
        self._changed(parent_inode, pst)
        self._name_changed(parent_inode, name, (key_of(st), fh))
        return self._learn(parent_inode, name, st, fh)

    @_guard
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: Any) -> EntryAttributes:
        st, pst, fh = await self.rpc.call(Op.LINK, self._ref(inode),
                                      self._child(new_parent_inode, new_name),
                                      cred=self._cred(ctx))
        self._changed(new_parent_inode, pst)
        self._name_changed(new_parent_inode, new_name, (key_of(st), fh))
        return self._learn(new_parent_inode, new_name, st, fh)

    @_guard
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        pst = await self.rpc.call(Op.UNLINK, self._child(parent_inode, name),
                                  cred=self._cred(ctx))
        self._changed(parent_inode, pst)
        self._forget_after(parent_inode, name)  # its link count just dropped
        self._name_changed(parent_inode, name, ABSENT)
        self.inodes.removed(parent_inode, name)

    @_guard
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        pst = await self.rpc.call(Op.RMDIR, self._child(parent_inode, name),
                                  cred=self._cred(ctx))
        self._changed(parent_inode, pst)
        self._forget_after(parent_inode, name)
        self._name_changed(parent_inode, name, ABSENT)
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
        self._changed(parent_inode_old, spst)
        self._changed(parent_inode_new, dpst)
        self._forget_after(parent_inode_new, name_new)  # a replaced file lost a link
        self._forget_after(parent_inode_old, name_old)  # the moved one: its ctime
        if wire & RENAME_EXCHANGE:
            self._name_changed(parent_inode_old, name_old)
            self._name_changed(parent_inode_new, name_new)
        else:
            moved = self._cached_ref(parent_inode_old, name_old)
            self._name_changed(parent_inode_old, name_old, ABSENT)
            self._name_changed(parent_inode_new, name_new, moved)
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
        node = self.inodes.get(ino)
        same = (node.size, node.mtime_ns) == (st[7], st[11])
        if not same:
            try:  # the file changed elsewhere: make the kernel fetch fresh attributes (size)
                pyfuse3.invalidate_inode(ino, attr_only=True)
            except OSError:
                pass
            node.size, node.mtime_ns = st[7], st[11]
        self._changed(ino, st)  # fresh from the server: answers that fetch, and drops older ones
        fh = next(self._fh)
        self.files[fh] = OpenFile(ino, flags, hid, self.rpc.epoch, fh, cred,
                                  seen=self.werr.sample(ino))
        self.inodes.opened(ino, fh)
        # the kernel's cached pages are the file's as long as a promise covered them: any
        # change elsewhere broke it, and the break dropped them (invalidator.py)
        return FileInfo(fh=fh, keep_cache=same and self._trusted())

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
        self._changed(parent_inode, pst)
        self._name_changed(parent_inode, name, (key_of(st), fh))
        entry = self._learn(parent_inode, name, st, fh)
        if created:  # a new file has no capability xattr: the first write needn't ask
            self._no_capability(entry.st_ino)
        return self._opened(entry.st_ino, flags, hid, st, cred), entry

    @_guard
    async def read(self, fh: int, off: int, size: int) -> Any:
        f = self._file(fh)
        await self._settle_inode(f.ino)
        for _ in range(3):
            hid, epoch = await self._fresh_handle(f)
            try:
                return await self.rpc.read(hid, off, size, epoch=epoch)
            except StaleEpoch:
                continue
        raise FUSEError(errno.EIO)

    @_guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        f = self._file(fh)
        if f.flags & os.O_APPEND:
            return await self._append(f, off, buf)
        n = len(buf)
        async with f.wlock:
            _report(self.werr.for_write(f.ino, f.seen))
            run = f.run
            if run is not None and run.continues(off, n):
                run.add(buf)  # answered now, sent with the rest of the run
                return n
            if run is not None:
                await self._send_run(f)
            if worth_buffering(n):
                f.run = Run(off, [buf], n, trio.current_time())
                self.dirty.add(fh)
                return n
            await self._drain(f, 0)  # a direct write must not overtake runs on the wire
            _report(self.werr.for_write(f.ino, f.seen))
            return await self._write_now(f, off, buf)

    async def _append(self, f: OpenFile, off: int, buf: bytes) -> int:
        """An O_APPEND write: gathered so that each write(2) reaches the server whole and in
        the kernel's order (writeback.py says how)."""
        n = len(buf)
        async with f.wlock:
            _report(self.werr.for_write(f.ino, f.seen))
            run = f.run
            if run is None or not run.continues_append(off, n):
                if run is not None:
                    await self._send_run(f)
                await self._settle_other_appends(f)
                run = f.run = Run(off, [], 0, trio.current_time())
                self.dirty.add(f.fh)
            run.add(buf)
            run.open = may_continue(off, n)
            if ((run.size >= RUN_MAX and not run.open) or run.size >= APPEND_MAX
                    or len(run.parts) >= MAX_PARTS):
                await self._send_run(f)
            return n

    async def _settle_other_appends(self, f: OpenFile) -> None:
        """A new write(2) of f's inode begins: the kernel finished the previous one (it holds
        the inode's lock across a write(2)), so other files' append runs of it go first."""
        node = self.inodes._inodes.get(f.ino)
        for fh in list(node.handles) if node is not None else ():
            g = self.files.get(fh)
            if g is not None and g is not f and g.flags & os.O_APPEND and (g.run or g.inflight):
                await self._settle(g)

    async def _write_now(self, f: OpenFile, off: int, data: Any, tracked: bool = False) -> int:
        for _ in range(3):
            hid, epoch = await self._fresh_handle(f)
            verifier = self.rpc.verifier  # of the server run this connection reaches
            alone = len(f.inflight) == tracked  # no other write of f on the wire now
            f.writes += 1
            seq = f.writes
            self._after.pop(f.ino, None)  # attributes remembered before this write are old
            key = self.leases.key(f.ino)
            if key is not None:
                self.leases.forget(key)
            try:
                n, st = await self.rpc.write(hid, off, data, epoch=epoch)
            except StaleEpoch:
                continue
            self.werr.acknowledged(f.ino, epoch, verifier)  # not durable until an fsync
            if alone and f.writes == seq and f.run is None and len(f.inflight) == tracked:
                # no other write of f overlapped this one (the server may apply overlapping
                # ones in any order) and none waits: these are the file's attributes now
                self._changed(f.ino, st)
            return n
        raise FUSEError(errno.EIO)

    async def _send_run(self, f: OpenFile) -> None:
        """Put the file's pending run on the wire (caller holds f.wlock). Up to MAX_INFLIGHT
        runs of one file travel at once, so a sequential writer streams instead of waiting
        a round trip per MiB; a run that overlaps one still travelling waits for it."""
        run, f.run = f.run, None
        self.dirty.discard(f.fh)
        if run is None:
            return
        if f.flags & os.O_APPEND or any(a < run.end and run.off < b for a, b in f.inflight):
            await self._drain(f, 0)  # (appends land where the server's end of file is: in order)
        else:
            await self._drain(f, MAX_INFLIGHT - 1)
        if self._senders is None:  # no background sender (not mounted): send inline
            await self._sender(f, run)
            _report(self.werr.for_write(f.ino, f.seen))
            return
        f.inflight.append((run.off, run.end))
        self._senders.start_soon(self._sender, f, run, True)

    async def _sender(self, f: OpenFile, run: Run, tracked: bool = False) -> None:
        err = 0
        try:
            done = await self._write_now(f, run.off, run.parts, tracked)
            if done != run.size:
                err = errno.EIO
        except FUSEError as e:
            err = e.errno
        except OSError as e:
            err = e.errno or errno.EIO
        except Exception:
            log.exception("write-behind run")
            err = errno.EIO
        finally:
            if err:  # kept for the file: every open file's next fsync and close report it
                self.werr.record(f.ino, err)
                log.warning("write-behind of %d bytes at %d on inode %d failed: %s",
                            run.size, run.off, f.ino, os.strerror(err))
            if tracked:
                f.inflight.remove((run.off, run.end))
            f.changed.set()
            f.changed = trio.Event()

    async def _drain(self, f: OpenFile, at_most: int) -> None:
        """Wait until no more than at_most of f's runs are on the wire."""
        while len(f.inflight) > at_most:
            await f.changed.wait()

    async def _settle(self, f: OpenFile) -> None:
        """Send f's pending run and wait for all its runs (failures are kept in werr)."""
        async with f.wlock:
            if f.run is not None:
                await self._send_run(f)
            await self._drain(f, 0)

    async def _check_durable(self, f: OpenFile) -> None:
        """Writes of f's inode acknowledged by an earlier connection, or with the server
        away now: ask which server run answers (PING brings its verifier, connecting if
        need be). Another run than the one that acknowledged them may have lost them: EIO."""
        if not (self.werr.needs_check(f.ino, self.rpc.epoch)
                or (self.rpc.peer is None and self.werr.unsynced_since(f.ino) >= 0)):
            return
        try:
            await self.rpc.call(Op.PING)
        except RpcError:
            self.werr.record(f.ino, errno.EIO)  # no server vouches for them
            return
        self.werr.check(f.ino, self.rpc.verifier, self.rpc.epoch)

    async def _settle_inode(self, ino: int) -> None:
        """Before anything that must see ino's data or size: send its pending runs."""
        node = self.inodes._inodes.get(ino)
        if node is None:
            return
        for fh in list(node.handles):
            f = self.files.get(fh)
            if f is not None and (f.run is not None or f.inflight):
                await self._settle(f)

    async def settle_all(self, max_age: float = 0.0) -> None:
        """Send every pending run at least max_age old (the background flusher; unmount)."""
        now = trio.current_time()
        for fh in list(self.dirty):
            f = self.files.get(fh)
            if f is None:
                self.dirty.discard(fh)
            elif f.run is not None and now - f.run.born >= max_age:
                async with f.wlock:
                    if f.run is not None:
                        await self._send_run(f)

    async def write_behind_task(self) -> None:
        """Runs for the life of the mount: hosts the run senders, sends runs that aged."""
        async with trio.open_nursery() as senders:
            self._senders = senders
            while True:
                await trio.sleep(MAX_AGE / 2)
                try:
                    await self.settle_all(MAX_AGE)
                except Exception:  # never let the flusher end the mount
                    log.exception("write-behind flusher")

    def _file(self, fh: int) -> OpenFile:
        f = self.files.get(fh)
        if f is None:
            raise FUSEError(errno.EBADF)
        return f

    @_guard
    async def flush(self, fh: int) -> None:
        """Every close(2) of the file description, in any process: report its errors."""
        f = self._file(fh)
        await self._settle(f)
        await self._check_durable(f)
        _report(self.werr.for_close(f.ino, f.seen))

    @_guard
    async def release(self, fh: int) -> None:
        f = self.files.get(fh)
        if f is None:
            return
        await self._settle(f)
        self.files.pop(fh, None)
        self.dirty.discard(fh)
        self.inodes.closed(f.ino, fh)
        node = self.inodes._inodes.get(f.ino)
        if node is None or not node.handles:
            self.werr.forget(f.ino)
        # no need to wait for the answer: the data went out with flush (close-to-open), and
        # the server drops a lost client's handles by itself
        self.rpc.post(Op.RELEASE, f.hid, epoch=f.epoch)

    @_guard
    async def fsync(self, fh: int, datasync: bool) -> None:
        f = self._file(fh)
        await self._settle(f)
        token = self.werr.unsynced_since(f.ino)
        await self._with_file(f, Op.FSYNC, bool(datasync))
        # the server run that synced must be the one that acknowledged the writes
        self.werr.check(f.ino, self.rpc.verifier, self.rpc.epoch)
        self.werr.synced(f.ino, token)
        _report(self.werr.for_fsync(f.ino, f.seen))

    # -- directories ---------------------------------------------------------------------------
    @_guard
    async def opendir(self, inode: int, ctx: Any) -> int:
        cred = self._cred(ctx)
        hid = await self.rpc.call(Op.OPENDIR, self._ref(inode), cred=cred)
        fh = next(self._fh)
        self.dirs[fh] = OpenDir(inode, hid, self.rpc.epoch, cred)
        return fh

    async def _dir_call(self, d: OpenDir, op: Op, *args: Any) -> Any:
        for _ in range(3):
            if d.epoch != self.rpc.epoch:
                epoch = self.rpc.epoch
                path = self._reopen_ref(d.ino)
                hid = await self.rpc.call(Op.OPENDIR, path, cred=d.cred)
                st = await self.rpc.call(Op.FGETATTR, hid, epoch=epoch)
                self._same_object(d.ino, st, hid, epoch, path)
                d.hid, d.epoch = hid, epoch
            try:
                return await self.rpc.call(op, d.hid, *args, epoch=d.epoch)
            except StaleEpoch:
                continue
        raise FUSEError(errno.EIO)

    @_guard
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        for f in list(self.files.values()):  # readdirplus carries sizes: include our writes
            if f.run is not None or f.inflight:
                await self._settle(f)
        d = self.dirs.get(fh)
        if d is None:
            raise FUSEError(errno.EBADF)
        if not d.buffered or d.buffered[0][0] != start_id:
            d.buffered = [e for e in d.buffered if e[0] >= start_id]
            if not d.buffered or d.buffered[0][0] != start_id:
                d.buffered, d.eof_after_buffer = [], False
        # "." and ".." come first (offsets 1 and 2); server entry offsets are shifted by 2
        if start_id < 2:
            node = self.inodes.get(d.ino)
            for name, ino, nxt in ((b".", d.ino, 1), (b"..", node.parent or ROOT_INODE, 2)):
                if start_id < nxt:
                    if not pyfuse3.readdir_reply(token, name, self._dot_entry(ino), nxt):
                        return
                    start_id = nxt
        while True:
            if not d.buffered:
                if d.eof_after_buffer:
                    return
                d.gen = self.leases.generation
                entries, eof = await self._dir_call(d, Op.READDIR, start_id - DOTS)
                own = start_id
                for name, nxt, st, efh in entries:
                    d.buffered.append((own, name, nxt + DOTS, st, efh))
                    own = nxt + DOTS
                d.eof_after_buffer = bool(eof)
                if not d.buffered:
                    return
            while d.buffered:
                own, name, nxt, st, efh = d.buffered[0]
                entry = self._learn(d.ino, name, st, efh, d.gen)
                if not pyfuse3.readdir_reply(token, name, entry, nxt):
                    self.inodes.forget(entry.st_ino, 1)
                    return
                d.buffered.pop(0)
                start_id = nxt
            if d.eof_after_buffer:
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
        d = self.dirs.pop(fh, None)
        if d is not None:
            self.rpc.post(Op.RELEASE, d.hid, epoch=d.epoch)

    @_guard
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        d = self.dirs.get(fh)
        if d is None:
            raise FUSEError(errno.EBADF)
        await self._dir_call(d, Op.FSYNC, bool(datasync))

    # -- extended attributes -------------------------------------------------------------------
    @_guard
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if inode == ROOT_INODE and name == STATS_XATTR:
            return (await self.stats_json()).encode()
        if name == CAPABILITY and self._no_cap.get(inode, 0.0) > trio.current_time():
            raise FUSEError(pyfuse3.ENOATTR)
        try:
            return await self._xattr_call(inode, ctx, Op.GETXATTR, Op.FGETXATTR, name)
        except RpcError as e:
            if e.errno == errno.ENODATA:
                if name == CAPABILITY:
                    self._no_capability(inode)
                raise FUSEError(pyfuse3.ENOATTR) from None
            raise

    def _no_capability(self, inode: int) -> None:
        """The kernel asks for security.capability before EVERY write (to drop file
        capabilities): remember "none" for attr_timeout, as attributes are remembered."""
        if len(self._no_cap) > 65536:
            self._no_cap.clear()
        self._no_cap[inode] = trio.current_time() + (
            self.leases.timeout if self.leases.enabled else self.opts.attr_timeout)

    @_guard
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if inode == ROOT_INODE and name == STATS_XATTR:
            raise FUSEError(errno.EPERM)
        self._no_cap.pop(inode, None)
        await self._xattr_call(inode, ctx, Op.SETXATTR, Op.FSETXATTR, name, value, 0)
        self._forget_attrs(inode)  # its ctime

    @_guard
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return await self._xattr_call(inode, ctx, Op.LISTXATTR, Op.FLISTXATTR)

    async def _xattr_call(self, inode: int, ctx: Any, by_path: Op, by_handle: Op,
                          *args: Any) -> Any:
        """An xattr op through an open file of the inode if it has one (the file itself,
        even unlinked), else by path; as the caller either way."""
        cred = self._cred(ctx)
        f = self._open_file_of(inode)
        if f is not None:
            return await self._with_file(f, by_handle, *args, cred=cred)
        return await self.rpc.call(by_path, self._ref(inode), *args, cred=cred)

    @_guard
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self._no_cap.pop(inode, None)
        self._forget_attrs(inode)  # its ctime
        try:
            await self._xattr_call(inode, ctx, Op.REMOVEXATTR, Op.FREMOVEXATTR, name)
        except RpcError as e:
            if e.errno == errno.ENODATA:
                raise FUSEError(pyfuse3.ENOATTR) from None
            raise

    async def stats_json(self) -> str:
        out: dict[str, Any] = {
            "server": f"{self.opts.host}:{self.rpc.port}",
            "transport": self.rpc.transport,
            "client": self.rpc.statistics(),
            "open_files": len(self.files),
            "write_errors": self.werr.recorded,
            "lost_by_server_restart": self.werr.lost_by_restart,
            "inodes": len(self.inodes),
            "cache": self.invalidator.statistics(),
        }
        try:
            out["server_side"] = await self.rpc.call(Op.STATS)
        except (RpcError, StaleEpoch) as e:
            out["server_side"] = {"error": str(e)}
        return json.dumps(out, sort_keys=True, default=str)
