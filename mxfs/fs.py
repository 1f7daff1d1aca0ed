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

Consistency: with a server that keeps callbacks (leases.py, invalidator.py), what was
answered under a promise is cached here and given to the kernel with lease_timeout, and a
BREAK drops both copies; otherwise every EntryAttributes carries the short attr/entry
timeouts of the mount options.
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
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
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
from .fusereaders import ReaderLock
from .inodes import ROOT_INODE, InodeTable, StaleInode, stat_key
from .invalidator import Invalidator
from .leases import ABSENT, Drop, Key, Leases, key_of
from .mounttab import STATS_XATTR
from .openahead import OpenAhead
from .openfiles import OpenDir, OpenFiles
from .options import MountOptions
from .readdir import DOTS, dots, server_offset
from .reopen import Reopener
from .rpc import RpcClient, RpcError, StaleEpoch
from .stats import stats_json
from .writer import Writer

log = logging.getLogger("mxfs")

CAPABILITY = b"security.capability"
PAGE_SIZE = 4096  # the kernel's page cache granule for FUSE files
NOW_WINDOW_NS = 500_000_000  # pyfuse3 turns utimensat's UTIME_NOW into its clock's "now"
# what EntryAttributes takes from a stat tuple, in wire order (st_dev and st_ino stay ours: the
# inode number); _entry assigns them in one statement: 0.24 µs against 0.55 µs for a setattr loop
_ENTRY_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blocks",
                 "st_blksize", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
assert STAT_FIELDS[St.MODE:St.CTIME_NS + 1] == _ENTRY_FIELDS, "fs._entry's field order is out of date"

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_NOT_KNOWN = (False, None, None, 0.0)  # Leases.lookup's answer for a name not cached
_UNKNOWN = object()  # _name_changed: what the name names now is not known here
# the callback generation when the kernel request being handled began (leases.py: an answer
# is trusted, cached and given a long timeout only if no BREAK came since)
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


class MxfsOperations(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, rpc: RpcClient, opts: MountOptions) -> None:
        super().__init__()
        self.rpc = rpc
        self.opts = opts
        self.readers: ReaderLock | None = None  # pyfuse3's read lock, once mounted
        self.inodes = InodeTable()
        self.files = OpenFiles(self.inodes)
        self.reopen = Reopener(rpc, self.inodes)
        self.attrs = PostOpAttrs(opts.attr_timeout)
        self.no_cap = NoCapability(opts.attr_timeout)
        self.ahead = OpenAhead()  # files' first bytes, brought by their OPEN
        self.writer = Writer(rpc, self.files, self.reopen, self.attrs)
        self.callers = Callers()
        self.initialized = trio.Event()
        # callbacks: what may be answered from memory while the server keeps its promises
        self.leases = Leases(timeout=opts.lease_timeout, max_entries=int(opts.cache_max))
        self.invalidator = Invalidator(self.leases, rpc.ack_break, self._drop_key,
                                       self._kernel_names)
        self.attrs.on_change = self._attrs_changed
        rpc.on_break = self.invalidator.on_break
        rpc.on_reset = self._on_reset
        self._lease_mode()

    def init(self) -> None:
        self.initialized.set()

    # -- callbacks -----------------------------------------------------------------------------
    def _lease_mode(self) -> None:
        self.leases.active = self.rpc.peer is not None and self.rpc.callbacks
        self.no_cap.ttl = self.leases.timeout if self.leases.enabled else self.opts.attr_timeout

    def _on_reset(self) -> None:
        """The connection was lost or made anew: whatever the server promised is void."""
        self._lease_mode()
        self.invalidator.on_reset()

    def _drop_key(self, key: Key | None) -> None:
        """A BREAK named *key* (None: everything): the per-inode caches here forget it."""
        if key is None:
            self.attrs.clear()
            self.no_cap.clear()
            self.ahead.changed(None)
            return
        ino = self.leases.inode(key)
        if ino is not None:
            self.attrs.forget(ino)
            self.no_cap.forget(ino)
            self.ahead.changed(ino)

    def _kernel_names(self) -> list[Drop]:
        """Every name the kernel may hold with a long timeout (for a reset)."""
        return [Drop(parent, name=name) for parent, name in self.inodes.names()]

    def _trusted(self, gen: int | None = None) -> bool:
        """Whether the answer just received may be cached (and kept long by the kernel)."""
        return self.leases.fresh(_began_at.get() if gen is None else gen)

    def _attrs_changed(self, ino: int, st: StatTuple | None) -> None:
        """Post-op attributes from our own change (st), or "they are old" (None)."""
        if st is not None and self._trusted():
            self.leases.put_attrs(st, self.leases.generation)  # (the server kept our promise)
            return
        key = key_of(st) if st is not None else self.leases.key(ino)
        if key is not None:
            self.leases.forget(key)

    def _negative(self, left: float | None = None) -> EntryAttributes:
        """A name known not to exist: the kernel keeps that (a negative entry) while the
        server's promise on the directory holds (*left* seconds, for an answer from memory)."""
        e = EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.leases.timeout if left is None else left
        return e

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

    def _names_changed(self, parent: int, pst: StatTuple) -> None:
        """Our own change of a name in directory *parent*, whose attributes are *pst* now."""
        self.attrs.changed(parent, pst)
        pkey = self.leases.key(parent)
        if pkey is not None:
            self.leases.names_changed(pkey)

    def _cached_ref(self, parent: int, name: bytes) -> Any:
        """(key, handle) of what *name* names as far as the inode table knows, or _UNKNOWN."""
        ino = self.inodes.child(parent, name)
        key = self.leases.key(ino) if ino is not None else None
        node = self.inodes.find(ino) if ino is not None else None
        if key is None or node is None:
            return _UNKNOWN
        return key, node.fh

    # -- translation ---------------------------------------------------------------------------
    def _entry(self, ino: int, st: StatTuple, gen: int | None = None,
               left: float | None = None) -> EntryAttributes:
        """The kernel's answer for *st*; *left*: it came from memory, its promise has that many
        seconds left (nothing is cached anew: an answer from memory renews no promise)."""
        self.attrs.take(ino)  # what the kernel is told now supersedes older post-op ones
        e = EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        self.leases.know(ino, st)
        if left is not None:
            e.entry_timeout = e.attr_timeout = left
        elif self._trusted(gen):
            self.leases.put_attrs(st, self.leases.generation)
            e.entry_timeout = e.attr_timeout = self.leases.timeout
        else:
            e.entry_timeout = self.opts.entry_timeout
            e.attr_timeout = self.opts.attr_timeout
        (e.st_mode, e.st_nlink, e.st_uid, e.st_gid, e.st_rdev, e.st_size, e.st_blocks,
         e.st_blksize, e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns) = st[St.MODE:St.CTIME_NS + 1]
        if ino in self.inodes:
            self.inodes.note_attrs(ino, st[St.SIZE], st[St.MTIME_NS])
        return e

    def _learn(self, parent: int, name: bytes, st: StatTuple, fh: Any = None,
               gen: int | None = None, left: float | None = None) -> EntryAttributes:
        """Count the kernel's lookup of *name* (naming *st*, handle *fh*) and answer it;
        *left* as for _entry (an answer from memory: the cache already holds it)."""
        # a directory's st_nlink counts its subdirectories, not names: it has only one
        ino = self.inodes.lookup(parent, name, stat_key(st) if fh is None else fh,
                                 1 if stat.S_ISDIR(st[St.MODE]) else st[St.NLINK], fh)
        pkey = self.leases.key(parent) if left is None else None
        if pkey is not None:  # (an answer that crossed a BREAK must not leave an old entry)
            if self._trusted(gen):
                self.leases.put_entry(pkey, name, (key_of(st), fh), self.leases.generation)
            else:
                self.leases.forget_entry(pkey, name)
        return self._entry(ino, st, gen, left)

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
        self.leases.know(ROOT_INODE, st)

    # -- metadata ------------------------------------------------------------------------------
    @_guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> EntryAttributes:
        if name == b"." or name == b"..":
            return await self._lookup_dots(parent_inode, name, self._cred(ctx))
        pkey = self.leases.key(parent_inode)
        # known: answered from memory (the server promised to tell us of any change); only
        # a name that passed _child is ever cached, so it needs no check here
        known, value, st, left = (self.leases.lookup(pkey, name) if pkey is not None
                                  else _NOT_KNOWN)
        if known and value is ABSENT:
            return self._negative(left)
        if known:
            entry = self._learn(parent_inode, name, st, value[1], left=left)
        else:
            ref = self._child(parent_inode, name)
            try:
                st, fh = await self.rpc.call(Op.LOOKUP, ref, cred=self._cred(ctx))
            except RpcError as e:
                if e.errno == errno.ENOENT and pkey is not None and self._trusted():
                    self.leases.put_entry(pkey, name, ABSENT, self.leases.generation)
                    return self._negative()
                raise
            entry = self._learn(parent_inode, name, st, fh)
        if self.files.pending(entry.st_ino):  # its size must include what we hold
            await self.writer.settle_inode(entry.st_ino)
            entry = self._entry(entry.st_ino, await self.rpc.call(
                Op.GETATTR, self._ref(entry.st_ino), cred=self._cred(ctx)))
        return entry

    async def _lookup_dots(self, parent_inode: int, name: bytes, cred: Cred | None
                           ) -> EntryAttributes:
        target = parent_inode
        if name == b"..":
            node = self.inodes.get(parent_inode)
            target = node.parent if node.parent else ROOT_INODE
        st = await self.rpc.call(Op.GETATTR, self._ref(target), cred=cred)
        self.inodes.get(target).nlookup += 1
        return self._entry(target, st)

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
        key = self.leases.key(inode)
        cached = self.leases.cached_attrs(key) if key is not None else None
        if cached is not None and not self.files.pending(inode):
            return self._entry(inode, cached[0], left=cached[1])
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
        if fields.update_size:
            self.ahead.changed(inode)
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
        self._names_changed(parent_inode, pst)
        return self._learn(parent_inode, name, st, fh)

    @_guard
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> EntryAttributes:
        st, pst, fh = await self.rpc.call(Op.MKDIR, self._child(parent_inode, name), mode,
                                          cred=self._cred(ctx))
        self._names_changed(parent_inode, pst)
        if self._trusted():  # new, so empty: a name in it is absent until we make it
            self.leases.made_dir(st, self.leases.generation)
        return self._learn(parent_inode, name, st, fh)

    @_guard
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: Any) -> EntryAttributes:
        st, pst, fh = await self.rpc.call(Op.SYMLINK, self._child(parent_inode, name), target,
                                          cred=self._cred(ctx))
        self._names_changed(parent_inode, pst)
        return self._learn(parent_inode, name, st, fh)

    @_guard
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: Any) -> EntryAttributes:
        st, pst, fh = await self.rpc.call(Op.LINK, self._ref(inode),
                                          self._child(new_parent_inode, new_name),
                                          cred=self._cred(ctx))
        self._names_changed(new_parent_inode, pst)
        return self._learn(new_parent_inode, new_name, st, fh)

    @_guard
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        pst = await self.rpc.call(Op.UNLINK, self._child(parent_inode, name),
                                  cred=self._cred(ctx))
        self._names_changed(parent_inode, pst)
        self._forget_after(parent_inode, name)  # its link count just dropped
        self._name_changed(parent_inode, name, ABSENT)
        self.inodes.removed(parent_inode, name)

    @_guard
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        pst = await self.rpc.call(Op.RMDIR, self._child(parent_inode, name),
                                  cred=self._cred(ctx))
        self._names_changed(parent_inode, pst)
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
        self._names_changed(parent_inode_old, spst)
        self._names_changed(parent_inode_new, dpst)
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
        changed = self.inodes.note_attrs(ino, st[St.SIZE], st[St.MTIME_NS])
        node = self.inodes.get(ino)
        # pages this client wrote only partly (tar writes 10 KiB blocks) are not up to date:
        # kept, they make a reader fetch the file in pieces around them (1.7 READs per file
        # in `cp -r` of an untarred tree); dropped, it comes in one READ (1.0 per file)
        patchy, node.partial_pages = node.partial_pages, False
        if changed:
            try:  # the file changed elsewhere: make the kernel fetch fresh attributes (size)
                pyfuse3.invalidate_inode(ino, attr_only=True)
            except OSError:
                pass
        self.attrs.changed(ino, st)  # fresh from the server: answers that fetch, drops older
        f = self.files.add_file(ino, flags, hid, self.rpc.epoch, cred,
                               self.writer.werr.sample(ino))
        # the kernel's cached pages are the file's as long as a promise covered them: any
        # change elsewhere broke it, and the break dropped them (invalidator.py)
        keep = not changed and not patchy and self._trusted()
        if not keep:
            self.ahead.changed(ino)  # its pages go: older OPENs' bytes of it may be old too
        return FileInfo(fh=f.fh, keep_cache=keep)

    @_guard
    async def open(self, inode: int, flags: int, ctx: Any) -> FileInfo:
        cred = self._cred(ctx)
        want = 0
        if (self.rpc.opens_ahead and self.leases.enabled and not self.rpc.checksum
                and flags & os.O_ACCMODE != os.O_WRONLY and not flags & os.O_TRUNC):
            node = self.inodes.find(inode)
            want = self.ahead.want(inode, node.size if node is not None else -1)
        if not want:
            hid, st = await self.rpc.call(Op.OPEN, self._ref(inode), flags, cred=cred)
            return self._opened(inode, flags, hid, st, cred)
        hid, st, data = await self.rpc.open_ahead(self._ref(inode), flags, want, cred)
        fi = self._opened(inode, flags, hid, st, cred)
        if data is not None:
            self.ahead.keep(fi.fh, inode, data, want, st[St.SIZE])
        return fi

    @_guard
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[FileInfo, EntryAttributes]:
        cred = self._cred(ctx)
        hid, st, pst, created, fh = await self.rpc.call(
            Op.CREATE, self._child(parent_inode, name), flags, mode, cred=cred)
        self._names_changed(parent_inode, pst)
        entry = self._learn(parent_inode, name, st, fh)
        if created:  # a new file has no capability xattr: the first write needn't ask
            self.no_cap.remember(entry.st_ino)
        return self._opened(entry.st_ino, flags, hid, st, cred), entry

    @_guard
    async def read(self, fh: int, off: int, size: int) -> Any:
        f = self.files.file(fh)
        got = self.ahead.take(fh, off, size)
        if got is None:
            await self.writer.settle_inode(f.ino)
            got = await self.reopen.retry(
                f, lambda hid, epoch: self.rpc.read(hid, off, size, epoch=epoch))
        self.ahead.kernel_has(f.ino)
        return got

    @_guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        f = self.files.file(fh)
        self.ahead.changed(f.ino)
        if off % PAGE_SIZE:  # (a sequential writer's unaligned block ends show up here)
            self.inodes.get(f.ino).partial_pages = True
        return await self.writer.write(f, off, buf)

    @_guard
    async def flush(self, fh: int) -> None:
        """Every close(2) of the file description, in any process: report its errors."""
        await self.writer.flush(self.files.file(fh))

    @_guard
    async def release(self, fh: int) -> None:
        self.ahead.drop(fh)
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
                await self._fetch_entries(d, start_id)
                if not buf.entries:
                    return
            while buf.entries:
                e = buf.entries[0]
                entry = self._learn(d.ino, e.name, e.st, e.fh, d.gen, e.left)
                if not pyfuse3.readdir_reply(token, e.name, entry, e.next):
                    self.inodes.forget(entry.st_ino, 1)
                    return
                buf.entries.pop(0)
                start_id = e.next
            if buf.eof:
                return

    async def _fetch_entries(self, d: OpenDir, start: int) -> None:
        """Entries from *start* on into the directory's buffer: from memory when the whole
        directory was listed before and nothing of it changed since, else from the server
        (a listing fetched whole, first batch to last, is remembered)."""
        dkey = self.leases.key(d.ino)
        if start == DOTS:
            listing = self.leases.listing(dkey)
            if listing is not None:
                d.buffer.add_listing(listing)
                return
            d.collected = [] if dkey is not None else None
            d.mark = self.leases.listing_mark()
        d.gen = self.leases.generation
        entries, eof = await self.reopen.call(d, Op.READDIR, server_offset(start))
        d.buffer.add(start, entries, eof)
        got = d.collected
        if got is None or dkey is None or server_offset(start) != len(got):
            d.collected = None  # not from the first entry on, or a seek: not a whole listing
            return
        for name, nxt, st, fh in entries:
            if nxt != len(got) + 1:  # the server skipped one that vanished meanwhile
                d.collected = None
                return
            got.append((name, key_of(st), fh))
        if eof:
            self.leases.put_listing(dkey, got, d.mark)
            d.collected = None

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
                                     self.writer.werr, len(self.inodes),
                                     {**self.invalidator.statistics(),
                                      **self.ahead.statistics()},
                                     self.readers.handoffs if self.readers else 0)).encode()
        if (name == CAPABILITY and self.no_cap.known(inode)) or \
                self.leases.no_xattrs(self.leases.key(inode)):
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
        async with self._xattrs_changing(inode):
            await self._xattr_call(inode, ctx, Op.SETXATTR, Op.FSETXATTR, name, value, 0)

    @_guard
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if self.leases.no_xattrs(self.leases.key(inode)):
            return []
        return await self._xattr_call(inode, ctx, Op.LISTXATTR, Op.FLISTXATTR)

    @_guard
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        try:
            async with self._xattrs_changing(inode):
                await self._xattr_call(inode, ctx, Op.REMOVEXATTR, Op.FREMOVEXATTR, name)
        except RpcError as e:
            if e.errno == errno.ENODATA:
                raise FUSEError(pyfuse3.ENOATTR) from None
            raise

    @asynccontextmanager
    async def _xattrs_changing(self, inode: int) -> AsyncIterator[None]:
        """Around our own setxattr/removexattr: what this client knows of the inode's
        attributes (its ctime, whether it has extended attributes) is old, before and after
        (attrs.forget: the callback cache follows), and so is any answer about it that was
        sent before the change and arrives after it."""
        self.no_cap.forget(inode)
        self.attrs.forget(inode)
        key = self.leases.key(inode)
        try:
            yield
        finally:
            self.attrs.forget(inode)
            if key is not None:
                self.leases.xattrs_changed(key)

    async def _xattr_call(self, inode: int, ctx: Any, by_path: Op, by_handle: Op,
                          *args: Any) -> Any:
        """An xattr op through an open file of the inode if it has one (the file itself,
        even unlinked), else by path; as the caller either way."""
        cred = self._cred(ctx)
        f = self.files.one_of(inode, self.rpc.epoch)
        if f is not None:
            return await self.reopen.call(f, by_handle, *args, cred=cred)
        return await self.rpc.call(by_path, self._ref(inode), *args, cred=cred)
