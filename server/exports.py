"""Export options, as NFS's: who a client's caller becomes on the server, and read-only.

    root_squash (default)  a caller's uid 0 becomes anonuid, gid 0 (also among its groups)
                           becomes anongid
    no_root_squash         callers keep their ids, root included
    all_squash             every caller becomes anonuid/anongid with no supplementary groups
    anonuid=N, anongid=N   the anonymous ids (default 65534, "nobody"/"nogroup")
    ro / rw                a read-only export answers every change with EROFS

Trust: the ids are the ones the client's kernel saw; a host holding the key is trusted to
tell them truly, as an NFS client with sec=sys is. Squashing limits what a client's root can
do; it is not authentication of users.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

from fsproto.rpc import MAX_GROUPS, Op

from .creds import Creds

ANON_ID = 65534
_ID_MAX = 0xFFFFFFFE  # (uid_t)-1 is "no id"

_CHANGES = frozenset({
    Op.SETATTR, Op.MKNOD, Op.MKDIR, Op.SYMLINK, Op.LINK, Op.UNLINK, Op.RMDIR, Op.RENAME,
    Op.CREATE, Op.WRITE, Op.SETXATTR, Op.REMOVEXATTR, Op.FSETXATTR, Op.FREMOVEXATTR,
})
_WRITE_OPEN = os.O_WRONLY | os.O_RDWR | os.O_TRUNC


class ExportOptionError(ValueError):
    pass


def _is_id(v: Any) -> bool:
    return type(v) is int and 0 <= v <= _ID_MAX


@dataclass(frozen=True)
class ExportOptions:
    squash: str = "root"  # "root" | "all" | "none"
    anonuid: int = ANON_ID
    anongid: int = ANON_ID
    ro: bool = False

    @property
    def anonymous(self) -> Creds:
        return Creds(self.anonuid, self.anongid, ())

    def caller(self, wire: Any) -> Creds:
        """The credentials a request carried ([uid, gid, group...]), squashed as this export
        says. None (a request that carried none) is the anonymous user."""
        if wire is None:
            return self.anonymous
        if (not isinstance(wire, list) or not 2 <= len(wire) <= 2 + MAX_GROUPS
                or not all(_is_id(v) for v in wire)):
            raise OSError(errno.EINVAL, "malformed credentials")
        uid, gid, groups = wire[0], wire[1], tuple(wire[2:])
        if self.squash == "all":
            return self.anonymous
        if self.squash == "root":
            if uid == 0:
                uid = self.anonuid
            if gid == 0:
                gid = self.anongid
            groups = tuple(self.anongid if g == 0 else g for g in groups)
        return Creds(uid, gid, groups)

    def refuses(self, op: int, args: list[Any]) -> bool:
        """Whether a read-only export must answer this request with EROFS."""
        if not self.ro:
            return False
        if op in _CHANGES:
            return True
        if op == Op.OPEN and args and type(args[-1]) is int:
            return bool(args[-1] & _WRITE_OPEN)
        if op == Op.ACCESS and len(args) == 2 and type(args[1]) is int:
            return bool(args[1] & os.W_OK)
        return False

    def describe(self) -> str:
        parts = [{"root": "root_squash", "all": "all_squash", "none": "no_root_squash"}[
            self.squash]]
        if self.squash != "none":
            parts.append(f"anonuid={self.anonuid},anongid={self.anongid}")
        parts.append("ro" if self.ro else "rw")
        return ",".join(parts)


def parse_export_options(text: str, base: ExportOptions | None = None) -> ExportOptions:
    """'-o no_root_squash,anonuid=1000,ro' -> ExportOptions (later words win)."""
    o = base or ExportOptions()
    squash, anonuid, anongid, ro = o.squash, o.anonuid, o.anongid, o.ro
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if key in ("anonuid", "anongid"):
            if not eq or not value.isascii() or not value.isdigit() or int(value) > _ID_MAX:
                raise ExportOptionError(f"{key} wants an id 0..{_ID_MAX}, not {value!r}")
            if key == "anonuid":
                anonuid = int(value)
            else:
                anongid = int(value)
            continue
        if eq:
            raise ExportOptionError(f"export option {key!r} takes no value")
        if word == "root_squash":
            squash = "root"
        elif word == "no_root_squash":
            squash = "none"
        elif word == "all_squash":
            squash = "all"
        elif word in ("ro", "rw"):
            ro = word == "ro"
        else:
            raise ExportOptionError(
                f"unknown export option {word!r} (known: root_squash, no_root_squash, "
                "all_squash, anonuid=N, anongid=N, ro, rw)")
    return ExportOptions(squash, anonuid, anongid, ro)
