"""Operation handlers of the I/O server: plain synchronous functions, no sockets.

`FileServer.call(owner, op, args, cred)` runs one metadata operation and returns its result
(raising OSError on failure; the service turns that into an errno reply). Operations in
CRED_OPS run with the caller's credentials (creds.py): the server's kernel decides access
against the file as it is now, new nodes get their owner and group from the kernel as for a
local process (setgid directories included), and the server's umask is 0 (the client's kernel
applied the caller's). `serve()` is what the service calls: it squashes the credentials a
request carried as the export options say (exports.py) first.

Nothing opened by name is ever a FIFO, device or socket: names are opened O_PATH first and
only a regular file is then opened for I/O (through its /proc/self/fd link, as the caller),
so no request can block in open(); a name that is no longer a regular file is ESTALE, and the
client's kernel looks it up again. Data operations are split so
that the transport can move the payload itself: `read_plan` and `write_plan` say which fd and
range to hand to mxnet.file(...), `write_inline` writes data that arrived inside the request.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Hashable
from typing import Any

import msgpack

from fsproto.rpc import (
    BREAK_ATTR,
    BREAK_DATA,
    CRED_OPS,
    FH_EXT,
    PROTOCOL_VERSION,
    READDIR_MAX_BYTES,
    READDIR_MAX_ENTRIES,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    TIME_NOW,
    Op,
    is_handle,
    stat_tuple,
)

from .appends import AppendLocks
from .callbacks import Callbacks
from .confine import Export, Resolved, check_name, proc_path, split_path
from .creds import Creds, Identity
from .exports import ExportOptions
from .handles import Handle, HandleTable
from .syscalls import chown_fd, readlink_fd, renameat2, utime_fd

_OPEN_KEEP = os.O_ACCMODE | os.O_TRUNC | os.O_SYNC | os.O_DSYNC | os.O_EXCL | os.O_NOATIME
_NODE_KINDS = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)
_ROOT_ONLY_XATTRS = (b"trusted.", b"security.")  # need CAP_SYS_ADMIN (or CAP_SETFCAP)
_SUID_BITS = stat.S_ISUID | stat.S_ISGID


def written(fd: int, n: int) -> list[Any]:
    """A WRITE's answer: bytes written and the file's attributes right after (the client
    answers the kernel's next getattr with them, as NFS does with post-op attributes)."""
    return [n, stat_tuple(os.fstat(fd))]


def _dir_st(pfd: int) -> list[int]:
    """The parent directory's attributes right after a change in it (NFS's post-op
    attributes): the client answers the kernel's next getattr of that directory with them
    instead of another round trip."""
    return stat_tuple(os.fstat(pfd))


def has_xattrs(mode: int, target: int | bytes) -> int:
    """1 if the object (an fd of it, O_PATH too, or a path) has any extended attribute, or
    if that cannot be told; 0 if it has none. Symlinks have none as far as clients can see
    (the xattr operations below answer them ENODATA). As the server sees them, trusted.*
    included: an object with none has none for every caller."""
    if stat.S_ISLNK(mode):
        return 0
    try:
        if isinstance(target, int):
            return 1 if os.listxattr(proc_path(target)) else 0
        return 1 if os.listxattr(target, follow_symlinks=False) else 0
    except OSError:  # no xattr support here (ENOTSUP), gone meanwhile: let the client ask
        return 1


def _key(st: Any) -> tuple[int, int]:
    """(st_dev, st_ino) of a stat tuple (the wire's) or an os.stat_result."""
    if isinstance(st, os.stat_result):
        return st.st_dev, st.st_ino
    return st[0], st[1]


def _entry_st(pfd: int, name: bytes) -> os.stat_result | None:
    """The attributes of what *name* names in the directory now (None: nothing)."""
    try:
        return os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except OSError:
        return None


def _times(st: os.stat_result, atime: Any, mtime: Any) -> tuple[int, int] | None:
    """utime's ns argument for a SETATTR's times (None: both "now", as utimensat(NULL),
    which needs only write permission; explicit times need ownership)."""
    if atime == TIME_NOW and mtime == TIME_NOW:
        return None
    now = time.time_ns()
    return (st.st_atime_ns if atime is None else now if atime == TIME_NOW else atime,
            st.st_mtime_ns if mtime is None else now if mtime == TIME_NOW else mtime)


class FileServer:
    def __init__(self, export: Export, handles: HandleTable | None = None,
                 exports: ExportOptions | None = None) -> None:
        self.export = export
        self.handles = handles if handles is not None else HandleTable()
        self.exports = exports if exports is not None else ExportOptions()
        self.identity = Identity()
        self.is_root = self.identity.can_switch
        self.caller: Creds | None = None  # who the operation under way acts as (None: us)
        # the write verifier: new with every server run, so a client whose acknowledged but
        # unsynced writes went to an earlier run learns they may be lost (as NFS's)
        self.verifier = int.from_bytes(os.urandom(8), "little")
        self.appends = AppendLocks()  # shared by the services of every transport
        self.callbacks = Callbacks()  # who caches what (every transport's clients)
        self.routes: dict[Hashable, Any] = {}  # client -> the service it came in through
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
            Op.FGETXATTR: self.fgetxattr,
            Op.FSETXATTR: self.fsetxattr,
            Op.FLISTXATTR: self.flistxattr,
            Op.FREMOVEXATTR: self.fremovexattr,
            Op.LOOKUP: self.lookup,
        }

    def serve(self, owner: Hashable, op: int, wire_cred: Any, args: list[Any]) -> Any:
        """A request from the wire: its credentials squashed as the export says, then call."""
        cred = self.exports.caller(wire_cred) if op in CRED_OPS else None
        return self.call(owner, op, args, cred)

    def call(self, owner: Hashable, op: int, args: list[Any], cred: Creds | None = None) -> Any:
        """Run one operation; with *cred*, ops in CRED_OPS act as that caller (None: as the
        server itself, for callers inside the server and tests)."""
        fn = self._table.get(op)
        if fn is None:
            raise OSError(errno.ENOSYS, f"unknown operation {op}")
        if self.exports.refuses(op, args):
            raise OSError(errno.EROFS, "read-only export")
        # file handles are resolved as the server itself (open_by_handle_at needs a
        # capability that acting as the caller drops), the operation then acts on the fds
        args, opened = self.export.resolve_args(args)
        try:
            if cred is None or op not in CRED_OPS:
                return fn(owner, *args)
            self.caller = cred
            try:
                with self.identity.acting_as(cred):
                    return fn(owner, *args)
            finally:
                self.caller = None
        except (TypeError, ValueError, OverflowError) as e:
            # wrong argument count, types or ranges (a mode of -1, an offset past 2**63) from a
            # confused client
            raise OSError(errno.EINVAL, f"bad arguments: {e}") from None
        finally:
            if opened:
                self.export.release(opened)

    # -- helpers -------------------------------------------------------------------------------
    def _told(self, owner: Hashable, st: Any) -> Any:
        """*owner* is told these attributes (a stat tuple or result): a promise on the object."""
        self.callbacks.grant(owner, _key(st))
        return st

    def _told_x(self, owner: Hashable, st: os.stat_result, target: int | bytes) -> list[int]:
        """_told for an answer that names the object: with whether it has extended
        attributes (fsproto.rpc.ST_XATTRS); *target*: an fd of it (O_PATH too), or a path."""
        t = stat_tuple(st)
        t.append(has_xattrs(st.st_mode, target))
        return self._told(owner, t)

    def _dir_changed(self, owner: Hashable, pst: Any, *names: bytes) -> None:
        """Entries of the directory (its attributes *pst*) were added, removed or replaced."""
        self.callbacks.changed(owner, _key(pst), BREAK_ATTR, names)
        self._told(owner, pst)

    def _obj_changed(self, owner: Hashable, st: Any, flags: int = BREAK_ATTR) -> None:
        self.callbacks.changed(owner, _key(st), flags)

    def _lstat(self, path: Any) -> list[int]:
        if not isinstance(path, bytes):  # a handle, or [directory, name]
            with self.export.node_fd(path) as fd:
                return stat_tuple(os.fstat(fd))
        parts = split_path(path)
        if not parts:
            return stat_tuple(os.stat(self.export.root_fd))
        with self.export.dir_fd(parts[:-1]) as pfd:
            return stat_tuple(os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False))

    def _privileged(self) -> bool:
        """Whether the operation under way acts as root (or as the server itself)."""
        return self.caller is None or self.caller.uid == 0 or not self.is_root

    def _kills_privs(self) -> bool:
        """Whether writes through a handle opened now must clear setuid/setgid bits, as the
        kernel does for a writer without CAP_FSETID (the server writes as itself)."""
        return self.is_root and self.caller is not None and self.caller.uid != 0

    @staticmethod
    def _open_regular(pfd: int, name: bytes, flags: int) -> int:
        """open() of *name* in *pfd*, which must be a regular file: never a FIFO or device
        (whose open may block or act), never a followed symlink. The name is opened O_PATH
        (no access, cannot block), then the object itself is opened through its /proc link;
        that open is where the kernel checks the caller's permission."""
        nfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            return FileServer._open_node(nfd, flags)
        finally:
            os.close(nfd)

    @staticmethod
    def _open_node(nfd: int, flags: int) -> int:
        """open() for I/O of the object an O_PATH fd refers to: only a regular file."""
        mode = os.fstat(nfd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "is a symbolic link")
        if not stat.S_ISREG(mode):
            # the client took it for a regular file: its view is stale (its kernel looks
            # the name up again and opens the FIFO or device on its own side)
            raise OSError(errno.ESTALE, "not a regular file")
        return os.open(proc_path(nfd), flags | os.O_CLOEXEC)

    def _file(self, owner: Hashable, hid: int) -> Handle:
        return self.handles.get(owner, hid, is_dir=False)

    # -- metadata ------------------------------------------------------------------------------
    def ping(self, owner: Hashable) -> dict[str, Any]:
        return {"version": PROTOCOL_VERSION, "verifier": self.verifier, "callbacks": True,
                "open_ahead": True}

    def statfs(self, owner: Hashable) -> list[int]:
        s = os.fstatvfs(self.export.root_fd)
        return [s.f_bsize, s.f_frsize, s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                s.f_favail, s.f_namemax]

    def getattr(self, owner: Hashable, path: Any) -> list[int]:
        return self._told(owner, self._lstat(path))

    def lookup(self, owner: Hashable, entry: Any) -> list[Any]:
        """[stat, handle] of an entry [directory, name], or of a path (b"": the root); the
        handle is nil when this server issues none."""
        if type(entry) is list or (type(entry) is bytes and entry):  # an entry of a directory:
            # a promise on the directory's names too, whether the name exists or not
            with self.export.parent(entry) as (pfd, name):
                self._told(owner, os.fstat(pfd))
                nfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                return self._found(owner, nfd)
            finally:
                os.close(nfd)
        with self.export.node_fd(entry) as fd:
            return self._found(owner, fd)

    def _found(self, owner: Hashable, fd: int) -> list[Any]:
        st = self._told_x(owner, os.fstat(fd), fd)
        return [st, self._handle(self.export.handle_of_fd(fd))]

    @staticmethod
    def _handle(h: bytes | None) -> Any:
        return None if h is None else msgpack.ExtType(FH_EXT, h)

    def _handle_at(self, pfd: int, name: bytes) -> Any:
        try:
            return self._handle(self.export.handle_of(pfd, name))
        except FileNotFoundError:  # gone already (another client): it is looked up later
            return None

    def fgetattr(self, owner: Hashable, hid: int) -> list[int]:
        return self._told(owner, stat_tuple(os.fstat(self.handles.get(owner, hid).fd)))

    def access(self, owner: Hashable, path: bytes, mode: int) -> None:
        """As access(2) for the caller: faccessat(AT_EACCESS) checks the thread's fsuid,
        fsgid and groups (the caller's while acting as it), not the real ids."""
        if type(mode) is not int or mode & ~(os.R_OK | os.W_OK | os.X_OK):
            raise OSError(errno.EINVAL, "bad access mode")
        self._lstat(path)  # ENOENT, EACCES on the way: as access(2) reports them
        if not isinstance(path, bytes):
            with self.export.node_fd(path) as nfd:
                ok = (stat.S_ISLNK(os.fstat(nfd).st_mode)  # (symlinks are 0777)
                      or os.access(proc_path(nfd), mode, effective_ids=True))
            if not ok:
                raise PermissionError(errno.EACCES, "access denied")
            return
        parts = split_path(path)
        with self.export.dir_fd(parts[:-1]) as pfd:
            ok = (os.access(proc_path(pfd), mode, effective_ids=True) if not parts else
                  os.access(parts[-1], mode, dir_fd=pfd, effective_ids=True,
                            follow_symlinks=False))
        if not ok:
            raise PermissionError(errno.EACCES, "access denied")

    def setattr(self, owner: Hashable, path: Any, hid: int | None, mode: int | None,
                uid: int | None, gid: int | None, size: int | None, atime_ns: int | None,
                mtime_ns: int | None) -> list[int]:
        st = self._setattr(owner, path, hid, mode, uid, gid, size, atime_ns, mtime_ns)
        self._obj_changed(owner, st, BREAK_ATTR | (BREAK_DATA if size is not None else 0))
        return self._told(owner, st)

    def _setattr(self, owner: Hashable, path: Any, hid: int | None, mode: int | None,
                 uid: int | None, gid: int | None, size: int | None, atime_ns: int | None,
                 mtime_ns: int | None) -> list[int]:
        if hid is not None:
            fd = self.handles.get(owner, hid).fd
            if mode is not None:
                self._chmod(fd, fd, mode)
            if uid is not None or gid is not None:
                os.chown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            if size is not None:
                os.ftruncate(fd, size)
            if atime_ns is not None or mtime_ns is not None:
                self._set_owner_times(fd, {}, os.fstat(fd), None, None, atime_ns, mtime_ns)
            return stat_tuple(os.fstat(fd))
        with self.export.node_fd(path) as nfd:
            st = os.fstat(nfd)
            if size is not None:
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "truncate of a directory")
                if stat.S_ISLNK(st.st_mode):
                    raise OSError(errno.ELOOP, "truncate of a symbolic link (not followed)")
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EINVAL, "truncate of a non-regular file")
                fd = os.open(proc_path(nfd), os.O_WRONLY | os.O_CLOEXEC)  # as truncate(2)
                try:
                    os.ftruncate(fd, size)
                finally:
                    os.close(fd)
            if mode is not None:
                if stat.S_ISLNK(st.st_mode):
                    raise OSError(errno.EOPNOTSUPP, "chmod of a symlink")
                self._chmod(proc_path(nfd), nfd, mode)
            if not isinstance(path, bytes):  # a handle: owner and times through the fd
                if uid is not None or gid is not None:
                    chown_fd(nfd, -1 if uid is None else uid, -1 if gid is None else gid)
                if atime_ns is not None or mtime_ns is not None:
                    utime_fd(nfd, _times(st, atime_ns, mtime_ns))
                return stat_tuple(os.fstat(nfd))
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

    def _chmod(self, target: Any, fd: int, mode: int) -> None:
        """chmod as the caller. One exception, as a local kernel makes it: a writer's kernel
        clears a file's setuid/setgid bits before it writes (file_remove_privs) and sends
        that as a chmod, which the writer may do when it may write the file, owner or not."""
        try:
            os.chmod(target, stat.S_IMODE(mode))
        except PermissionError:
            old = stat.S_IMODE(os.fstat(fd).st_mode)
            new = stat.S_IMODE(mode)
            if (new == old or new & ~old or new | _SUID_BITS != old | _SUID_BITS
                    or not os.access(proc_path(fd), os.W_OK, effective_ids=True)):
                raise
            with self.identity.as_itself(self.caller):
                os.chmod(target, new)

    @staticmethod
    def _set_owner_times(target: Any, kw: dict[str, Any], st: os.stat_result, uid: int | None,
                         gid: int | None, atime_ns: int | None, mtime_ns: int | None) -> None:
        if uid is not None or gid is not None:
            os.chown(target, -1 if uid is None else uid, -1 if gid is None else gid, **kw)
        if atime_ns is not None or mtime_ns is not None:
            times = _times(st, atime_ns, mtime_ns)
            if times is None:
                os.utime(target, None, **kw)
            else:
                os.utime(target, ns=times, **kw)

    def readlink(self, owner: Hashable, path: Any) -> bytes:
        if isinstance(path, Resolved) or is_handle(path):
            with self.export.node_fd(path) as fd:
                return readlink_fd(fd)
        with self.export.parent(path) as (pfd, name):
            return os.readlink(name, dir_fd=pfd)

    def mknod(self, owner: Hashable, path: bytes, mode: int, rdev: int) -> list[int]:
        kind = stat.S_IFMT(mode)
        if kind not in _NODE_KINDS:
            raise OSError(errno.EINVAL, f"cannot make a node of type {kind:o}")
        if kind not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0
        with self.export.parent(path) as (pfd, name):
            check_name(name)
            os.mknod(name, mode, rdev, dir_fd=pfd)  # devices: the caller needs CAP_MKNOD
            return self._made(owner, pfd, name)

    def mkdir(self, owner: Hashable, path: bytes, mode: int) -> list[int]:
        with self.export.parent(path) as (pfd, name):
            os.mkdir(name, mode, dir_fd=pfd)
            return self._made(owner, pfd, name)

    def symlink(self, owner: Hashable, path: bytes, target: bytes) -> list[int]:
        if not target or b"\0" in target:
            raise OSError(errno.EINVAL, "bad symlink target")
        with self.export.parent(path) as (pfd, name):
            os.symlink(target, name, dir_fd=pfd)
            return self._made(owner, pfd, name)

    def _made(self, owner: Hashable, pfd: int, name: bytes) -> list[Any]:
        """A new name's answer: its object's attributes, its directory's, its handle."""
        st = self._told_x(owner, os.stat(name, dir_fd=pfd, follow_symlinks=False),
                          os.fsencode(proc_path(pfd)) + b"/" + name)
        pst = _dir_st(pfd)
        self._dir_changed(owner, pst, name)
        return [st, pst, self._handle_at(pfd, name)]

    def link(self, owner: Hashable, src: Any, dst: Any) -> list[Any]:
        if isinstance(src, Resolved) or is_handle(src):
            # the object itself, through its /proc link (linkat's AT_EMPTY_PATH would need
            # CAP_DAC_READ_SEARCH, which acting as the caller drops)
            with self.export.node_fd(src) as nfd, self.export.parent(dst) as (dpfd, dname):
                if stat.S_ISDIR(os.fstat(nfd).st_mode):
                    raise PermissionError(errno.EPERM, "hard link to a directory")
                os.link(proc_path(nfd), dname, dst_dir_fd=dpfd, follow_symlinks=True)
                return self._linked(owner, dpfd, dname)
        with self.export.parent(src) as (spfd, sname), self.export.parent(dst) as (dpfd, dname):
            os.link(sname, dname, src_dir_fd=spfd, dst_dir_fd=dpfd, follow_symlinks=False)
            return self._linked(owner, dpfd, dname)

    def _linked(self, owner: Hashable, dpfd: int, dname: bytes) -> list[Any]:
        made = self._made(owner, dpfd, dname)
        self._obj_changed(owner, made[0])  # its link count
        return made

    def unlink(self, owner: Hashable, path: bytes) -> list[int]:
        return self._remove(owner, path, os.unlink)

    def rmdir(self, owner: Hashable, path: bytes) -> list[int]:
        return self._remove(owner, path, os.rmdir)

    def _remove(self, owner: Hashable, path: bytes, remove: Callable[..., None]) -> list[int]:
        with self.export.parent(path) as (pfd, name):
            gone = _entry_st(pfd, name)
            remove(name, dir_fd=pfd)
            pst = _dir_st(pfd)
        self._dir_changed(owner, pst, name)
        if gone is not None:
            self._obj_changed(owner, gone)  # its link count
        return pst

    def rename(self, owner: Hashable, src: bytes, dst: bytes, flags: int = 0) -> list[list[int]]:
        if type(flags) is not int or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise OSError(errno.EINVAL, f"unsupported rename flags {flags!r}")
        with self.export.parent(src) as (spfd, sname), self.export.parent(dst) as (dpfd, dname):
            moved, replaced = _entry_st(spfd, sname), _entry_st(dpfd, dname)
            renameat2(spfd, sname, dpfd, dname, flags)
            spst, dpst = _dir_st(spfd), _dir_st(dpfd)
        if _key(spst) == _key(dpst):
            self._dir_changed(owner, spst, sname, dname)
        else:
            self._dir_changed(owner, spst, sname)
            self._dir_changed(owner, dpst, dname)
        for st in (moved, replaced):
            if st is not None:
                self._obj_changed(owner, st)  # ctime, link count, a directory's ".."
        return [spst, dpst]

    # -- files ---------------------------------------------------------------------------------
    def _register(self, owner: Hashable, fd: int, flags: int) -> list[Any]:
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory")
        except BaseException:
            os.close(fd)
            raise
        hid = self.handles.add(owner, fd, append=bool(flags & os.O_APPEND),
                               kill_privs=self._kills_privs())
        if flags & os.O_TRUNC:
            self._obj_changed(owner, st, BREAK_ATTR | BREAK_DATA)
        return [hid, self._told_x(owner, st, fd)]

    def open(self, owner: Hashable, path: Any, flags: int) -> list[Any]:
        if not isinstance(path, bytes):  # a handle, or [directory, name]
            with self.export.node_fd(path) as nfd:
                fd = self._open_node(nfd, flags & (_OPEN_KEEP & ~os.O_EXCL))
            return self._register(owner, fd, flags)
        parts = split_path(path)
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "the root is a directory")
        with self.export.dir_fd(parts[:-1]) as pfd:
            fd = self._open_regular(pfd, parts[-1], flags & (_OPEN_KEEP & ~os.O_EXCL))
        return self._register(owner, fd, flags)

    def create(self, owner: Hashable, path: bytes, flags: int, mode: int) -> list[Any]:
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
                fd = self._open_regular(pfd, name, keep & ~os.O_EXCL)
                created = False
            parent_st = _dir_st(pfd)
        try:
            fh = self._handle(self.export.handle_of_fd(fd))
        except BaseException:
            os.close(fd)
            raise
        if created:
            self._dir_changed(owner, parent_st, name)
        # created: the file is new (no xattrs yet), not one that existed under that name
        return [*self._register(owner, fd, flags), parent_st, created, fh]

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
        if self.exports.ro:
            raise OSError(errno.EROFS, "read-only export")
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
        return self.written(owner, hid, fd, done)

    def written(self, owner: Hashable, hid: int, fd: int, n: int) -> list[Any]:
        """A WRITE's answer (see written()). A write through a handle that a caller other
        than root opened clears the setuid bit and an executable file's setgid bit, as the
        kernel does for a local writer without CAP_FSETID (the server writes as itself)."""
        st = os.fstat(fd)
        h = self.handles._handles.get(hid)
        if h is not None and h.kill_privs and st.st_mode & _SUID_BITS:
            kill = st.st_mode & stat.S_ISUID
            if st.st_mode & stat.S_ISGID and st.st_mode & stat.S_IXGRP:
                kill |= stat.S_ISGID
            if kill:
                os.chmod(fd, stat.S_IMODE(st.st_mode) & ~kill)
                st = os.fstat(fd)
        self._obj_changed(owner, st, BREAK_ATTR | BREAK_DATA)
        return [n, self._told(owner, stat_tuple(st))]

    # -- directories ---------------------------------------------------------------------------
    def opendir(self, owner: Hashable, path: Any) -> int:
        fd = self.export.open_dir(path)
        return self.handles.add(owner, fd, is_dir=True)

    def readdir(self, owner: Hashable, hid: int, off: int) -> list[Any]:
        """[[name, next_offset, stat, handle], ...], eof. Offsets are entry ordinals (1 = after first).

        Listing continues the handle's scandir stream when *off* is where it stands (the normal
        sequential case, any directory size); otherwise it restarts and skips *off* entries.
        """
        h = self.handles.get(owner, hid, is_dir=True)
        self._told(owner, os.fstat(h.fd))  # a promise on its names
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
        where = os.fsencode(proc_path(h.fd)) + b"/"
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
            out.append([name, cur.pos, self._told_x(owner, st, where + name),
                        self._handle_at(h.fd, name)])
            used += len(name) + 170
        return [out, False]

    # -- extended attributes -------------------------------------------------------------------
    def _xattr_target(self, nfd: int, writing: bool) -> str | None:
        if stat.S_ISLNK(os.fstat(nfd).st_mode):
            if writing:
                raise OSError(errno.EPERM, "no user xattrs on symlinks")
            return None
        return proc_path(nfd)

    # The server keeps CAP_SYS_ADMIN while it acts as a caller: trusted.* and security.*
    # names are what a local process other than root may not write (nor read, trusted.*).
    def _may_read_xattr(self, name: bytes) -> bool:
        return self._privileged() or not bytes(name).startswith(b"trusted.")

    def _check_write_xattr(self, name: bytes) -> None:
        if not isinstance(name, bytes):
            raise OSError(errno.EINVAL, "xattr name is not bytes")
        if not self._privileged() and name.startswith(_ROOT_ONLY_XATTRS):
            raise OSError(errno.EPERM, "only root may set this attribute")

    def _get(self, target: Any, name: bytes) -> bytes:
        if not self._may_read_xattr(name):
            raise OSError(errno.ENODATA, "no such attribute")
        return os.getxattr(target, name)

    def _list(self, target: Any) -> list[bytes]:
        names = [os.fsencode(n) for n in os.listxattr(target)]
        return names if self._privileged() else [n for n in names if self._may_read_xattr(n)]

    def getxattr(self, owner: Hashable, path: Any, name: bytes) -> bytes:
        with self.export.node_fd(path) as nfd:
            target = self._xattr_target(nfd, False)
            if target is None:
                raise OSError(errno.ENODATA, "no such attribute")
            return self._get(target, name)

    def setxattr(self, owner: Hashable, path: Any, name: bytes, value: bytes,
                 flags: int = 0) -> None:
        self._check_write_xattr(name)
        with self.export.node_fd(path) as nfd:
            os.setxattr(self._xattr_target(nfd, True), name, value, flags)  # type: ignore[arg-type]
            self._obj_changed(owner, os.fstat(nfd))

    def listxattr(self, owner: Hashable, path: Any) -> list[bytes]:
        with self.export.node_fd(path) as nfd:
            target = self._xattr_target(nfd, False)
            if target is None:
                return []
            return self._list(target)

    def removexattr(self, owner: Hashable, path: Any, name: bytes) -> None:
        self._check_write_xattr(name)
        with self.export.node_fd(path) as nfd:
            os.removexattr(self._xattr_target(nfd, True), name)  # type: ignore[arg-type]
            self._obj_changed(owner, os.fstat(nfd))

    # through an open file (it may have no name any more: unlinked while open)
    def fgetxattr(self, owner: Hashable, hid: int, name: bytes) -> bytes:
        return self._get(self._file(owner, hid).fd, name)

    def fsetxattr(self, owner: Hashable, hid: int, name: bytes, value: bytes,
                  flags: int = 0) -> None:
        self._check_write_xattr(name)
        fd = self._file(owner, hid).fd
        os.setxattr(fd, name, value, flags)
        self._obj_changed(owner, os.fstat(fd))

    def flistxattr(self, owner: Hashable, hid: int) -> list[bytes]:
        return self._list(self._file(owner, hid).fd)

    def fremovexattr(self, owner: Hashable, hid: int, name: bytes) -> None:
        self._check_write_xattr(name)
        fd = self._file(owner, hid).fd
        os.removexattr(fd, name)
        self._obj_changed(owner, os.fstat(fd))
