"""The client's inode table: FUSE inode numbers <-> server objects, their handles and names.

How this works
--------------
The server names each object by a file handle (protocol 5): the client gives each server
object, identified by its handle (the same for every hard link of a file), one FUSE inode
number, so hard links share an inode as the kernel expects, and sends the handle with every
request on it. Where the server issues no handles (``fh`` None: a server not running as root)
an object is identified by its (st_dev, st_ino) and named by its path. Each inode has one current name: (parent inode, name). Its path
is found by walking parents to the root, so renaming a directory is one update, not one per
descendant. Each inode holds a reference on its parent entry (`children`), so a parent is
never dropped while a child still names it, whatever order the kernel forgets them in.
A file with several hard links also remembers the other names it was seen under (`links`):
when its current name is unlinked or renamed over, the next still-valid one takes over, so
`ln b c; mv g b; cat c` still reaches the file through "c".

An entry lives while the kernel holds lookups on it (`nlookup`, FUSE semantics), children
name it, or the client has it open (`opens`).
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from fsproto.rpc import St, StatTuple, join_path

ROOT_INODE = 1
Key = Hashable  # the server's handle, or (st_dev, st_ino) where it gives none


def stat_key(st: StatTuple) -> tuple[int, int]:
    """What identifies an object where the server issues no handles: (st_dev, st_ino)."""
    return st[St.DEV], st[St.INO]


class StaleInode(OSError):
    def __init__(self, what: str) -> None:
        super().__init__(errno.ESTALE, what)


@dataclass
class Inode:
    ino: int
    key: Key | None
    parent: int = 0  # 0: none (the root, or an object whose name is gone)
    name: bytes = b""
    nlookup: int = 0
    children: int = 0
    opens: int = 0
    size: int = -1  # last size/mtime the kernel was told about (close-to-open checks)
    mtime_ns: int = -1
    handles: set[int] = field(default_factory=set)  # open client file handles
    links: list[tuple[int, bytes]] = field(default_factory=list)  # other hard-link names
    fh: Any = None  # the server's handle of it (None: named by path)
    # written here at an offset inside a page: the kernel's cache holds pages only partly
    # written (not up to date), which a later read fetches piecemeal (fs.py, _opened)
    partial_pages: bool = False


class InodeTable:
    def __init__(self) -> None:
        self._ids = itertools.count(ROOT_INODE + 1)
        root = Inode(ROOT_INODE, None, nlookup=1)
        self._inodes: dict[int, Inode] = {ROOT_INODE: root}
        self._by_key: dict[Key, int] = {}
        self._by_name: dict[tuple[int, bytes], int] = {}

    def __len__(self) -> int:
        return len(self._inodes)

    def __contains__(self, ino: int) -> bool:
        return ino in self._inodes

    def get(self, ino: int) -> Inode:
        node = self._inodes.get(ino)
        if node is None:
            raise StaleInode(f"unknown inode {ino}")
        return node

    def find(self, ino: int) -> Inode | None:
        """The inode, or None if the table does not know it (any more)."""
        return self._inodes.get(ino)

    def handles(self, ino: int) -> list[int]:
        """The client file handles open on *ino* (a copy: callers await between them); none
        for an inode the table does not know."""
        node = self._inodes.get(ino)
        return list(node.handles) if node is not None else []

    def note_attrs(self, ino: int, size: int, mtime_ns: int) -> bool:
        """The kernel was just told *ino*'s size and mtime: remember them. True when they
        differ from what it was told before (the file changed elsewhere). StaleInode if the
        table does not know *ino*."""
        node = self.get(ino)
        changed = (node.size, node.mtime_ns) != (size, mtime_ns)
        node.size, node.mtime_ns = size, mtime_ns
        return changed

    def set_root_key(self, key: Key) -> None:
        root = self._inodes[ROOT_INODE]
        if root.key is None:
            root.key = key
            self._by_key[key] = ROOT_INODE

    # -- paths ---------------------------------------------------------------------------------
    def path(self, ino: int) -> bytes:
        parts: list[bytes] = []
        node = self.get(ino)
        hops = 0
        while node.ino != ROOT_INODE:
            if node.parent == 0:
                raise StaleInode(f"inode {ino} has no name any more")
            parts.append(node.name)
            node = self.get(node.parent)
            hops += 1
            if hops > 4096:
                raise OSError(errno.ELOOP, "inode parent chain too long")
        return b"/".join(reversed(parts))

    def child_path(self, parent: int, name: bytes) -> bytes:
        return join_path(self.path(parent), name)

    def ref(self, ino: int) -> Any:
        """How a request names the inode: its server handle, or its path without one
        (StaleInode if it has neither any more)."""
        node = self.get(ino)
        return node.fh if node.fh is not None else self.path(ino)

    def entry_ref(self, parent: int, name: bytes) -> Any:
        """How a request names the entry *name* in *parent*: [directory handle, name], or
        its path where the directory has no handle."""
        node = self.get(parent)
        return [node.fh, name] if node.fh is not None else self.child_path(parent, name)

    # -- naming --------------------------------------------------------------------------------
    def _unname(self, node: Inode, promote: bool = True, keep_name: bool = False) -> None:
        """Drop node's current name (and its reference on the parent). With ``promote`` one of
        its other hard-link names that is still valid becomes the current one."""
        if node.parent:
            if not keep_name and self._by_name.get((node.parent, node.name)) == node.ino:
                del self._by_name[(node.parent, node.name)]
            parent = self._inodes.get(node.parent)
            node.parent, node.name = 0, b""
            if parent is not None:
                parent.children -= 1
                self._maybe_drop(parent)
        while promote and node.links and not node.parent:
            p, n = node.links.pop(0)
            if self._by_name.get((p, n)) != node.ino:
                continue
            if p not in self._inodes or self._under(p, node.ino):
                del self._by_name[(p, n)]  # (a name beneath itself: the table is stale)
                continue
            self._inodes[p].children += 1
            node.parent, node.name = p, n

    def _under(self, ino: int, ancestor: int) -> bool:
        """Is *ino* the inode *ancestor* or beneath it, as far as the table knows?"""
        hops = 0
        while ino and hops < 4096:
            if ino == ancestor:
                return True
            node = self._inodes.get(ino)
            ino = node.parent if node is not None else 0
            hops += 1
        return False

    def _drop_name(self, node: Inode, parent: int, name: bytes) -> None:
        """(parent, name) no longer names node: its current name or one of its links."""
        if (node.parent, node.name) == (parent, name):
            self._unname(node)
        elif (parent, name) in node.links:
            node.links.remove((parent, name))
            if self._by_name.get((parent, name)) == node.ino:
                del self._by_name[(parent, name)]

    def _name(self, node: Inode, parent: int, name: bytes, keep_old: bool = False) -> None:
        """Make (parent, name) node's current name; ``keep_old`` keeps the old one as a link."""
        if (node.parent, node.name) == (parent, name):
            self._by_name[(parent, name)] = node.ino
            return
        if parent == node.ino:  # impossible on a real tree: the table is stale
            self._unname(node)
            return
        # take the new parent reference first: dropping the name's previous owner or node's old
        # name may not free the parent (it may be the same, or only alive through them)
        self.get(parent).children += 1
        self._break_cycle(node, parent)
        old = self._by_name.get((parent, name))
        if old is not None and old != node.ino:
            self._drop_name(self._inodes[old], parent, name)
        if (parent, name) in node.links:
            node.links.remove((parent, name))
        keep_old = keep_old and node.parent != 0
        if keep_old:  # (the current name is never among the links)
            node.links.append((node.parent, node.name))
        self._unname(node, promote=False, keep_name=keep_old)
        node.parent, node.name = parent, name
        self._by_name[(parent, name)] = node.ino

    def _break_cycle(self, node: Inode, parent: int) -> None:
        """Naming *node* under *parent* would make it its own ancestor: what we remember of
        parent's ancestry is stale (another client moved things). Forget the link just
        below *node* on that chain; the subtree is looked up afresh when next used."""
        cur = self._inodes.get(parent)
        hops = 0
        while cur is not None and cur.parent and hops < 4096:
            if cur.parent == node.ino:
                node.children += 1  # keep node alive while it loses that child
                self._unname(cur, promote=False)
                node.children -= 1
                return
            cur = self._inodes.get(cur.parent)
            hops += 1

    def lookup(self, parent: int, name: bytes, key: Key, nlink: int = 1, fh: Any = None) -> int:
        """Record that *name* in *parent* is the server object *key* (handle *fh*); count one
        kernel lookup. With ``nlink`` > 1 the name it had so far stays known as another of
        its names."""
        self.get(parent)  # an unknown parent: StaleInode before anything changes
        ino = self._by_key.get(key)
        if ino is None:
            ino = next(self._ids)
            self._inodes[ino] = Inode(ino, key, fh=fh)
            self._by_key[key] = ino
        node = self._inodes[ino]
        if fh is not None:
            node.fh = fh
        self._name(node, parent, name, keep_old=nlink > 1)
        node.nlookup += 1
        return ino

    def forget(self, ino: int, n: int) -> None:
        node = self._inodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.nlookup = max(0, node.nlookup - n)
        self._maybe_drop(node)

    def _maybe_drop(self, node: Inode) -> None:
        if node.ino == ROOT_INODE or node.nlookup or node.children or node.opens:
            return
        self._unname(node, promote=False)
        for link in node.links:
            if self._by_name.get(link) == node.ino:
                del self._by_name[link]
        node.links.clear()
        del self._inodes[node.ino]
        if node.key is not None and self._by_key.get(node.key) == node.ino:
            del self._by_key[node.key]

    def child(self, parent: int, name: bytes) -> int | None:
        """The inode known under *name* in *parent*, if any."""
        return self._by_name.get((parent, name))

    def removed(self, parent: int, name: bytes) -> None:
        """The entry *name* in *parent* was unlinked or rmdir'ed."""
        ino = self._by_name.get((parent, name))
        if ino is not None:
            self._drop_name(self._inodes[ino], parent, name)

    def renamed(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
                exchange: bool = False) -> None:
        moved = self._by_name.get((parent, name))
        other = self._by_name.get((new_parent, new_name))
        if exchange:
            for p in {parent, new_parent}:  # hold both directories while names move
                self.get(p).children += 1
            if moved is not None:
                self._drop_name(self._inodes[moved], parent, name)
            if other is not None:
                self._drop_name(self._inodes[other], new_parent, new_name)
                self._add_name(self._inodes[other], parent, name)
            if moved is not None:
                self._add_name(self._inodes[moved], new_parent, new_name)
            for p in {parent, new_parent}:
                node = self.get(p)
                node.children -= 1
                self._maybe_drop(node)
            return
        if moved is not None and moved == other:
            return  # two names of one file: rename(2) leaves both in place
        if other is not None:
            self._drop_name(self._inodes[other], new_parent, new_name)
        if moved is None:
            return
        node = self._inodes[moved]
        if (node.parent, node.name) == (parent, name):
            self._name(node, new_parent, new_name)
        else:  # one of its other names moved
            self._drop_name(node, parent, name)
            self._add_name(node, new_parent, new_name)

    def _add_name(self, node: Inode, parent: int, name: bytes) -> None:
        if not node.parent:
            self._name(node, parent, name)
        elif (parent, name) != (node.parent, node.name):
            if self._under(parent, node.ino):
                return  # a name beneath itself: impossible on a real tree (the server refuses)
            if (parent, name) not in node.links:
                node.links.append((parent, name))
            self._by_name[(parent, name)] = node.ino

    # -- opens ---------------------------------------------------------------------------------
    def names(self) -> list[tuple[int, bytes]]:
        """Every (parent inode, name) the table knows."""
        return list(self._by_name)

    def opened(self, ino: int, fh: int) -> None:
        node = self.get(ino)
        node.opens += 1
        node.handles.add(fh)

    def closed(self, ino: int, fh: int) -> None:
        node = self._inodes.get(ino)
        if node is None:
            return
        node.opens = max(0, node.opens - 1)
        node.handles.discard(fh)
        self._maybe_drop(node)
