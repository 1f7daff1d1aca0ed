"""File handles: a client names a file by the file itself, not by a path.

How this works
--------------
The kernel gives every object of a file system that can be exported (ext4, xfs, btrfs,
tmpfs...) a file handle: ``name_to_handle_at`` turns an fd into (type, opaque bytes) and
``open_by_handle_at`` turns those back into an fd of the same object, even after the name
changed, after the server restarted or the machine rebooted; if the object is gone it fails
with ESTALE. This is what knfsd and nfs-ganesha hand to NFS clients.

What travels to the client (and back) is the kernel's handle wrapped so that it cannot be
forged and names its export::

    version (1) | export id (8) | handle type (int32 LE) | kernel handle (n) | tag (16)

    export id   SHA-256 of the export root's own kernel handle and its file system's fsid,
                first 8 bytes: another export (another directory, or the same path recreated)
                has another id, so its handles are ESTALE here
    tag         HMAC-SHA256 over everything before it, keyed from the shared secret (so the
                same on every run of the server with that secret: handles survive a restart),
                first 16 bytes. A handle whose tag does not match was not issued by a server
                holding the secret: refused with EACCES (and one log line), never opened.

Confinement: a well-tagged handle was issued by this export for an object that was beneath
its root then. A directory named by handle is checked again when it is resolved (its ".."
chain must reach the export root; a directory found inside is taken to stay there for
INSIDE_TTL = 1 s, as attributes are cached), because a directory outside the export would
let a client create, list or open anything beneath it: one that was moved out (on the
server's own disk) is EACCES. A non-directory is not re-checked: as with NFS's no_subtree_check, a file
moved out of the export by the server's own users stays reachable by the clients that held it.

``open_by_handle_at`` needs CAP_DAC_READ_SEARCH: the server resolves handles as itself
before it switches to the caller's ids (setfsuid drops that capability), then acts relative
to the fd it got. A server that is not root (or whose file system has no handles) cannot
resolve handles: ``HandleCodec.create`` says why, and the server then answers every lookup
without a handle and clients name files by path, as before (confine.py keeps paths confined).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import hmac
import logging
import os
import stat
import struct
import threading
import time

log = logging.getLogger("mxfs.server")

VERSION = 1
MAX_HANDLE_SZ = 128
TAG_LEN = 16
ID_LEN = 8
_HEAD = struct.Struct("<B8si")  # version, export id, handle type
MAX_WIRE = _HEAD.size + MAX_HANDLE_SZ + TAG_LEN
AT_EMPTY_PATH = 0x1000
_KEY_LABEL = b"mxfs file handles v1"
INSIDE_TTL = 1.0  # how long a directory found beneath the root is taken to stay there
_INSIDE_MAX = 4096


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_n2h = getattr(_libc, "name_to_handle_at", None)
_obh = getattr(_libc, "open_by_handle_at", None)
if _n2h is not None and _obh is not None:
    _n2h.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle),
                     ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    _n2h.restype = ctypes.c_int
    _obh.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]
    _obh.restype = ctypes.c_int


def _err(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


class _Scratch(threading.local):
    """name_to_handle_at's out-arguments, made once per thread (a READDIR asks per entry)."""

    def __init__(self) -> None:
        self.h = _FileHandle()
        self.mount_id = ctypes.c_int()
        self.h_ref = ctypes.byref(self.h)
        self.mount_id_ref = ctypes.byref(self.mount_id)
        self.data_at = ctypes.addressof(self.h.f_handle)


_scratch = _Scratch()


def name_to_handle(dirfd: int, name: bytes = b"") -> tuple[int, bytes]:
    """The kernel's handle of *name* in *dirfd* (not followed), or of *dirfd* itself."""
    if _n2h is None:
        raise OSError(errno.EOPNOTSUPP, "name_to_handle_at is not available")
    sc = _scratch
    h = sc.h
    h.handle_bytes = MAX_HANDLE_SZ
    if _n2h(dirfd, name, sc.h_ref, sc.mount_id_ref, 0 if name else AT_EMPTY_PATH) != 0:
        raise _err("name_to_handle_at")
    return h.handle_type, ctypes.string_at(sc.data_at, h.handle_bytes)


def open_by_handle(mount_fd: int, htype: int, data: bytes, flags: int) -> int:
    if _obh is None:
        raise OSError(errno.EOPNOTSUPP, "open_by_handle_at is not available")
    if len(data) > MAX_HANDLE_SZ:
        raise OSError(errno.ESTALE, "handle too long")
    h = _FileHandle()
    h.handle_bytes = len(data)
    h.handle_type = htype
    ctypes.memmove(h.f_handle, data, len(data))
    fd = _obh(mount_fd, ctypes.byref(h), flags)
    if fd < 0:
        raise _err("open_by_handle_at")
    return fd


def derive_key(secret: bytes) -> bytes:
    return hmac.digest(secret, _KEY_LABEL, "sha256")


class BadHandle(PermissionError):
    """A handle that this server did not issue (bad tag) or that leads outside the export."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.EACCES, f"refused file handle: {why}")


class HandleCodec:
    """Issues and resolves the wire handles of one export (see the module docstring)."""

    def __init__(self, root_fd: int, key: bytes) -> None:
        self._key = key  # the HMAC key (derived from the shared secret)
        self._inside: dict[tuple[int, int], float] = {}  # directory -> checked until
        # open_by_handle_at wants an fd of the file system that is not O_PATH
        self.mount_fd = os.open(f"/proc/self/fd/{root_fd}",
                                os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            st = os.fstat(self.mount_fd)
            self.root_key = (st.st_dev, st.st_ino)
            rtype, rdata = name_to_handle(self.mount_fd)
            fsid = os.fstatvfs(self.mount_fd).f_fsid
            self.export_id = hashlib.sha256(
                b"mxfs export\0" + struct.pack("<iQ", rtype, fsid & (2**64 - 1)) + rdata
            ).digest()[:ID_LEN]
            # the probe: resolving needs CAP_DAC_READ_SEARCH (EPERM without it)
            os.close(open_by_handle(self.mount_fd, rtype, rdata, os.O_PATH | os.O_CLOEXEC))
        except BaseException:
            os.close(self.mount_fd)
            raise

    @classmethod
    def create(cls, root_fd: int, secret: bytes | None) -> tuple[HandleCodec | None, str]:
        """A codec for the export, or None and why handles cannot be used here."""
        key = derive_key(secret if secret else os.urandom(32))
        try:
            return cls(root_fd, key), ""
        except OSError as e:
            if e.errno == errno.EPERM:
                why = "open_by_handle_at needs CAP_DAC_READ_SEARCH (run the server as root)"
            else:
                why = f"the export's file system has no file handles ({e.strerror})"
            return None, why

    def close(self) -> None:
        if self.mount_fd >= 0:
            os.close(self.mount_fd)
            self.mount_fd = -1

    # -- issuing -------------------------------------------------------------------------------
    def _wrap(self, htype: int, data: bytes) -> bytes:
        body = _HEAD.pack(VERSION, self.export_id, htype) + data
        return body + hmac.digest(self._key, body, "sha256")[:TAG_LEN]

    def of_fd(self, fd: int) -> bytes:
        """The wire handle of the object an fd (O_PATH too) refers to."""
        return self._wrap(*name_to_handle(fd))

    def of_name(self, dirfd: int, name: bytes) -> bytes:
        """The wire handle of *name* in *dirfd*, not followed."""
        return self._wrap(*name_to_handle(dirfd, name))

    # -- resolving -----------------------------------------------------------------------------
    def check(self, wire: bytes) -> tuple[int, bytes]:
        """(type, kernel handle) of a wire handle: EACCES if forged or altered, ESTALE if
        of another export."""
        if not isinstance(wire, bytes) or len(wire) < _HEAD.size + TAG_LEN or len(wire) > MAX_WIRE:
            raise BadHandle("malformed")
        body, tag = wire[:-TAG_LEN], wire[-TAG_LEN:]
        if not hmac.compare_digest(hmac.digest(self._key, body, "sha256")[:TAG_LEN], tag):
            log.warning("refused: a file handle with a bad tag (forged or altered)")
            raise BadHandle("bad tag")
        version, export_id, htype = _HEAD.unpack_from(body)
        if version != VERSION or export_id != self.export_id:
            raise OSError(errno.ESTALE, "a handle of another export")
        return htype, body[_HEAD.size:]

    def open(self, wire: bytes) -> int:
        """An O_PATH fd of the object a wire handle names (the caller closes it)."""
        htype, data = self.check(wire)
        try:
            fd = open_by_handle(self.mount_fd, htype, data, os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ESTALE, errno.EINVAL):  # gone (or garbage)
                raise OSError(errno.ESTALE, "stale file handle") from None
            raise
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                self._check_inside(fd, st)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_inside(self, fd: int, st: os.stat_result) -> None:
        """A directory must still be beneath the export root: walk its ".." chain (a
        directory found inside is taken to stay there for INSIDE_TTL seconds)."""
        key = (st.st_dev, st.st_ino)
        now = time.monotonic()
        if self._inside.get(key, 0.0) > now:
            return
        self._walk_up(fd, key)
        if len(self._inside) >= _INSIDE_MAX:
            self._inside.clear()
        self._inside[key] = now + INSIDE_TTL

    def _walk_up(self, fd: int, key: tuple[int, int]) -> None:
        cur = -1
        try:
            for _ in range(4096):
                if key == self.root_key:
                    return
                try:
                    nxt = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                                  dir_fd=fd if cur < 0 else cur)
                except FileNotFoundError:  # removed meanwhile
                    raise OSError(errno.ESTALE, "stale file handle") from None
                if cur >= 0:
                    os.close(cur)
                cur = nxt
                pst = os.fstat(cur)
                if (pst.st_dev, pst.st_ino) == key:  # the top of the file system
                    break
                key = (pst.st_dev, pst.st_ino)
        finally:
            if cur >= 0:
                os.close(cur)
        log.warning("refused: a file handle of a directory outside the export")
        raise BadHandle("directory outside the export")
