"""The client's inode table: FUSE inode numbers <-> server objects and their paths.

How this works
--------------
The server is path-based (its requests name paths beneath the export). The client gives each
server object, identified by its (st_dev, st_ino), one FUSE inode number, so hard links share
an inode as the kernel expects. Each inode remembers one name: (parent inode, name). Its path
is found by walking parents to the root, so renaming a directory is one update, not one per
descendant. Each inode holds a reference on its parent entry (`children`), so a parent is
never dropped while a child still names it, whatever order the kernel forgets them in.

An entry lives while the kernel holds lookups on it (`nlookup`, FUSE semantics), children
name it, or the client has it open (`opens`).
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass, field

ROOT_INODE = 1
Key = tuple[int, int]


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
        p = self.path(parent)
        return name if not p else p + b"/" + name

    # -- naming --------------------------------------------------------------------------------
    def _unname(self, node: Inode) -> None:
        if node.parent:
            if self._by_name.get((node.parent, node.name)) == node.ino:
                del self._by_name[(node.parent, node.name)]
            parent = self._inodes.get(node.parent)
            node.parent, node.name = 0, b""
            if parent is not None:
                parent.children -= 1
                self._maybe_drop(parent)

    def _name(self, node: Inode, parent: int, name: bytes) -> None:
        if (node.parent, node.name) == (parent, name):
            self._by_name[(parent, name)] = node.ino
            return
        if parent == node.ino:  # impossible on a real tree: the table is stale
            self._unname(node)
            return
        self._break_cycle(node, parent)
        old = self._by_name.get((parent, name))
        if old is not None and old != node.ino:
            self._unname(self._inodes[old])
        # take the new parent reference before dropping the old one (it may be the same)
        self.get(parent).children += 1
        self._unname(node)
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
                self._unname(cur)
                node.children -= 1
                return
            cur = self._inodes.get(cur.parent)
            hops += 1

    def lookup(self, parent: int, name: bytes, key: Key) -> int:
        """Record that *name* in *parent* is the server object *key*; count one kernel lookup."""
        ino = self._by_key.get(key)
        if ino is None:
            ino = next(self._ids)
            self._inodes[ino] = Inode(ino, key)
            self._by_key[key] = ino
        node = self._inodes[ino]
        self._name(node, parent, name)
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
        self._unname(node)
        del self._inodes[node.ino]
        if node.key is not None and self._by_key.get(node.key) == node.ino:
            del self._by_key[node.key]

    def removed(self, parent: int, name: bytes) -> None:
        """The entry *name* in *parent* was unlinked or rmdir'ed."""
        ino = self._by_name.get((parent, name))
        if ino is not None:
            self._unname(self._inodes[ino])

    def renamed(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
                exchange: bool = False) -> None:
        moved = self._by_name.get((parent, name))
        other = self._by_name.get((new_parent, new_name))
        if exchange:
            if moved is not None:
                self._unname(self._inodes[moved])
            if other is not None:
                self._name(self._inodes[other], parent, name)
            if moved is not None:
                self._name(self._inodes[moved], new_parent, new_name)
            return
        if other is not None and other != moved:
            self._unname(self._inodes[other])
        if moved is not None:
            self._name(self._inodes[moved], new_parent, new_name)

    # -- opens ---------------------------------------------------------------------------------
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
