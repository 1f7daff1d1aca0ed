"""Acting as the caller: per-thread file system credentials for one operation.

How this works
--------------
Linux checks file access against a thread's *file system* ids (fsuid, fsgid) and its
supplementary groups, and these are per-thread credentials in the kernel. The raw system
calls setfsuid, setfsgid and setgroups change only the calling thread; glibc's setgroups()
(like setuid()) makes every thread of the process follow, which is exactly what we must not
do while worker threads fsync or read ahead as the server. So the calls go through
syscall(2) by number.

`acting_as(creds)` switches the calling thread to the caller's ids for one operation and back
afterwards, whatever happens in between (groups and fsgid first, fsuid last; the reverse on
the way back). Moving fsuid away from 0 also drops the thread's file system capabilities
(CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_MKNOD) and
moving it back to 0 restores them, so the server's kernel checks permissions, owners,
setgid inheritance, setuid clearing and device creation exactly as for a local process of
that user, against the file as it is at that moment. Capabilities outside that set stay
(CAP_SYS_ADMIN: trusted.* and security.* xattrs): ops.py refuses those to callers other
than root, as a local kernel would.

Only a server running as root switches (as NFS servers do); one that is not root acts as
itself and its kernel checks against the server's own ids. A switch to the server's own
identity costs nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# syscall numbers (x86_64 / aarch64); the 32-bit-uid variants on these ABIs
_NUMBERS = {
    "x86_64": {"setfsuid": 122, "setfsgid": 123, "setgroups": 116},
    "aarch64": {"setfsuid": 151, "setfsgid": 152, "setgroups": 159},
}
_NR = _NUMBERS.get(platform.machine())
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_NO_ID = 0xFFFFFFFF
ANON_PROBE = 65534  # (uid_t)-1: setfsuid/setfsgid change nothing and tell the current id


@dataclass(frozen=True)
class Creds:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def _set_groups(groups: tuple[int, ...]) -> None:
    arr = (ctypes.c_uint * len(groups))(*groups)
    if _syscall(_NR["setgroups"], len(groups), arr) != 0:  # type: ignore[index]
        e = ctypes.get_errno()
        raise OSError(e, f"setgroups: {os.strerror(e)}")


def _set_fs(which: str, ident: int) -> None:
    _syscall(_NR[which], ctypes.c_uint(ident))  # type: ignore[index]


def _check_fs(which: str, ident: int) -> None:
    """setfsuid/setfsgid report no errors: ask which id holds now."""
    if _syscall(_NR[which], ctypes.c_uint(_NO_ID)) != ident:  # type: ignore[index]
        raise OSError(errno.EPERM, f"{which}({ident}) refused")


class Identity:
    """The server's own identity, and whether it can act as others (root on a known ABI)."""

    def __init__(self) -> None:
        self.own = Creds(os.geteuid(), os.getegid(), tuple(os.getgroups()))
        self.can_switch = self.own.uid == 0 and _NR is not None and self._works()

    def _works(self) -> bool:
        """Try a switch once (a container may deny CAP_SETUID/CAP_SETGID to its root): the
        switches of requests then skip asking the kernel whether each one held."""
        probe = Creds(ANON_PROBE, ANON_PROBE, (ANON_PROBE,))
        try:
            self._apply(probe)
            _check_fs("setfsgid", probe.gid)
            _check_fs("setfsuid", probe.uid)
            return True
        except OSError:
            return False
        finally:
            self._apply(self.own, probe)

    def _apply(self, creds: Creds, current: Creds | None = None) -> None:
        """Switch this thread's ids from *current* (default: our own) to *creds*; only what
        differs is set (each of these system calls costs ~2.5 us: a new cred per call)."""
        now = current or self.own
        if creds.groups != now.groups:
            _set_groups(creds.groups)
        if creds.gid != now.gid:
            _set_fs("setfsgid", creds.gid)
        if creds.uid != now.uid:
            _set_fs("setfsuid", creds.uid)

    @contextmanager
    def acting_as(self, creds: Creds | None) -> Iterator[None]:
        """Run the body with *creds* as this thread's file system ids (None: as the server)."""
        if creds is None or not self.can_switch or creds == self.own:
            yield
            return
        try:
            self._apply(creds)
            yield
        finally:
            self._apply(self.own, creds)

    @contextmanager
    def as_itself(self, current: Creds | None) -> Iterator[None]:
        """Inside acting_as(current): run the body as the server again, then as current."""
        if current is None or not self.can_switch or current == self.own:
            yield
            return
        self._apply(self.own, current)
        try:
            yield
        finally:
            self._apply(current)


def prepare_process() -> None:
    """At server start: umask 0. The client's kernel already applied the caller's umask to
    every mode it sends; applying the server's as well would make 0777 a 0755."""
    os.umask(0)
