"""What is mounted where, from /proc/self/mountinfo (pure, no FUSE imports).

`mxfs mount` refuses a mount point that already has something mounted on it, and `mxfs umount`
refuses one whose topmost mount is not an mxfs mount. Neither stat()s the mount point before
looking it up here: the stat of a hung FUSE mount blocks, and that of a dead one fails.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
MXFS_FSTYPE = "fuse.mxfs"  # fuse.<subtype>: the mount passes subtype=mxfs
STATS_XATTR = b"user.mxfs.stats"  # on the mount's root: its statistics as JSON (mxfs stats)
# a FUSE mount whose process died or hangs answers stat() with these
DEAD_MOUNT_ERRNOS = frozenset({errno.ENOTCONN, errno.EIO, errno.ECONNABORTED})

_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    device: str  # major:minor
    mountpoint: str
    fstype: str
    source: str

    def describe(self) -> str:
        return f"{self.fstype} from {self.source}"


def unescape(field: bytes) -> str:
    """A mountinfo path field: the kernel writes space, tab, newline and backslash as \\ooo."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def parse_line(line: bytes) -> MountEntry | None:
    fields = line.split()
    try:
        sep = fields.index(b"-", 6)  # optional fields end with a lone "-"
        return MountEntry(int(fields[0]), int(fields[1]), fields[2].decode(), unescape(fields[4]),
                          unescape(fields[sep + 1]), unescape(fields[sep + 2]))
    except (ValueError, IndexError):
        return None


def mount_table(path: str = MOUNTINFO) -> list[MountEntry]:
    with open(path, "rb") as f:
        return [e for e in map(parse_line, f) if e is not None]


def lexical_path(path: str) -> str:
    """*path* made absolute with its directory's symlinks resolved, the last component kept
    as it is: nothing under the mount point itself is stat()ed."""
    absolute = os.path.abspath(path)
    parent, name = os.path.split(absolute)
    if not name:
        return absolute
    return os.path.join(os.path.realpath(parent), name)


def mounts_at(path: str, table: list[MountEntry] | None = None) -> list[MountEntry]:
    """Every mount whose mount point is *path* (already absolute and resolved)."""
    return [e for e in (mount_table() if table is None else table) if e.mountpoint == path]


def topmost(entries: list[MountEntry]) -> MountEntry:
    """Of the mounts stacked on one mount point, the visible one: no other is mounted on it."""
    parents = {e.parent_id for e in entries}
    on_top = [e for e in entries if e.mount_id not in parents]
    return (on_top or entries)[-1]


def find_mounts(path: str) -> tuple[str, list[MountEntry]]:
    """(the resolved path, the mounts on it). A last component that is a symlink is followed
    only when nothing is mounted on the symlink's own path (lstat of a mount point is safe
    then: it is not one)."""
    table = mount_table()
    where = lexical_path(path)
    found = mounts_at(where, table)
    if found:
        return where, found
    try:
        is_link = stat.S_ISLNK(os.lstat(where).st_mode)
    except OSError:
        return where, []
    if is_link:
        where = os.path.realpath(where)
        found = mounts_at(where, table)
    return where, found


def mountpoint_problem(path: str) -> str | None:
    """Why *path* cannot be mounted on (an error line), or None when it is a free directory."""
    try:
        where, found = find_mounts(path)
    except OSError as e:
        return f"cannot read {MOUNTINFO}: {e.strerror}"
    if found:
        return (f"{path} is already mounted ({topmost(found).describe()}); "
                "unmount it first")
    try:
        st = os.stat(where)
    except OSError as e:
        if e.errno in DEAD_MOUNT_ERRNOS:
            return (f"mount point {path} does not answer ({e.strerror}): a dead or hung mount "
                    "is on it or above it; unmount that first")
        if e.errno == errno.ENOENT:
            return f"mount point {path} does not exist"
        return f"mount point {path}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"mount point {path} is not a directory"
    if os.path.ismount(where):
        return f"{path} is already mounted; unmount it first"
    return None
