"""The client's inode table (pure): paths, lookups/forgets, renames, hard links."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mxfs.inodes import ROOT_INODE, InodeTable, StaleInode


def test_paths_and_rename_of_directory():
    t = InodeTable()
    d = t.lookup(ROOT_INODE, b"d", (1, 10))
    e = t.lookup(d, b"e", (1, 11))
    f = t.lookup(e, b"f", (1, 12))
    assert t.path(f) == b"d/e/f" and t.path(ROOT_INODE) == b""
    assert t.child_path(e, b"g") == b"d/e/g"
    t.renamed(ROOT_INODE, b"d", ROOT_INODE, b"D")
    assert t.path(f) == b"D/e/f"
    t.renamed(d, b"e", ROOT_INODE, b"E")
    assert t.path(f) == b"E/f"


def test_hard_links_share_an_inode_and_lookup_counts():
    t = InodeTable()
    a = t.lookup(ROOT_INODE, b"a", (1, 5))
    b = t.lookup(ROOT_INODE, b"b", (1, 5))
    assert a == b and t.get(a).nlookup == 2
    assert t.path(a) == b"b"  # the latest name is used
    t.forget(a, 1)
    assert a in t
    t.forget(a, 1)
    assert a not in t


def test_parent_kept_while_child_alive():
    t = InodeTable()
    d = t.lookup(ROOT_INODE, b"d", (1, 2))
    f = t.lookup(d, b"f", (1, 3))
    t.forget(d, 1)  # the kernel forgets the parent first
    assert d in t and t.path(f) == b"d/f"
    t.forget(f, 1)
    assert d not in t and f not in t and len(t) == 1


def test_unlink_and_open_files():
    t = InodeTable()
    f = t.lookup(ROOT_INODE, b"f", (1, 3))
    t.opened(f, 7)
    t.removed(ROOT_INODE, b"f")
    with pytest.raises(StaleInode):
        t.path(f)
    t.forget(f, 1)
    assert f in t  # still open
    t.closed(f, 7)
    assert f not in t


def test_other_hard_link_names_take_over():
    t = InodeTable()
    b = t.lookup(ROOT_INODE, b"b", (1, 5))
    assert t.lookup(ROOT_INODE, b"c", (1, 5), nlink=2) == b  # ln b c
    t.lookup(ROOT_INODE, b"b", (1, 5), nlink=2)  # the kernel looks b up again
    g = t.lookup(ROOT_INODE, b"g", (1, 6))
    t.renamed(ROOT_INODE, b"g", ROOT_INODE, b"b")  # mv g b: the file lives on as c
    assert t.path(g) == b"b" and t.path(b) == b"c"
    t.renamed(ROOT_INODE, b"c", ROOT_INODE, b"d")  # its remaining name moves
    assert t.path(b) == b"d"
    t.removed(ROOT_INODE, b"d")
    with pytest.raises(StaleInode):
        t.path(b)
    e = t.lookup(ROOT_INODE, b"e", (1, 7))
    t.lookup(ROOT_INODE, b"f", (1, 7), nlink=2)
    t.renamed(ROOT_INODE, b"e", ROOT_INODE, b"f")  # both names of one file: nothing moves
    assert t.path(e) == b"f"
    t.removed(ROOT_INODE, b"f")
    assert t.path(e) == b"e"


def test_rename_over_and_exchange():
    t = InodeTable()
    a = t.lookup(ROOT_INODE, b"a", (1, 1))
    b = t.lookup(ROOT_INODE, b"b", (1, 2))
    t.renamed(ROOT_INODE, b"a", ROOT_INODE, b"b", exchange=True)
    assert t.path(a) == b"b" and t.path(b) == b"a"
    t.renamed(ROOT_INODE, b"a", ROOT_INODE, b"b")  # b (old a) is replaced by a (old b)
    assert t.path(b) == b"b"
    with pytest.raises(StaleInode):
        t.path(a)


@settings(max_examples=1000, deadline=None)
@example(ops=[  # an exchange that names a file beneath itself made the table lose count
    ("lookup", 0, 0, 1), ("lookup", 0, 2, 1), ("lookup", 0, 1, 1), ("link", 0, 3, 2),
    ("exchange", 0, 3, 1), ("link", 0, 1, 1), ("forget", 3, 0, 2), ("lookup", 0, 1, 1)])
@given(st.lists(st.tuples(st.sampled_from(["lookup", "link", "forget", "rename", "remove",
                                           "exchange"]),
                          st.integers(0, 5), st.integers(0, 5), st.integers(1, 3)),
                max_size=60))
def test_random_operations_keep_table_consistent(ops):
    t = InodeTable()
    dirs = [ROOT_INODE]
    for op, x, y, n in ops:
        parent = dirs[x % len(dirs)]
        name = b"n%d" % y
        if op == "lookup":
            try:
                ino = t.lookup(parent, name, (0, 100 + y * 7 + x))
            except StaleInode:
                continue
            if ino not in dirs:
                dirs.append(ino)
        elif op == "link":  # another name for an object already known (nlink > 1)
            keys = [node.key for node in t._inodes.values() if node.key is not None]
            if keys:
                try:
                    t.lookup(parent, name, keys[n % len(keys)], nlink=2)
                except StaleInode:
                    continue
        elif op == "exchange":
            t.renamed(parent, name, dirs[y % len(dirs)], b"n%d" % x, exchange=True)
        elif op == "forget":
            t.forget(dirs[x % len(dirs)], n)
        elif op == "rename":
            t.renamed(parent, name, dirs[y % len(dirs)], b"m%d" % x)
        else:
            t.removed(parent, name)
        dirs = [d for d in dirs if d in t]
        for ino in list(t._inodes):
            node = t.get(ino)
            assert node.children >= 0 and node.nlookup >= 0
            if node.parent:
                assert node.parent in t
        # children counts match
        counts: dict[int, int] = {}
        for node in t._inodes.values():
            if node.parent:
                counts[node.parent] = counts.get(node.parent, 0) + 1
        for ino, node in t._inodes.items():
            assert node.children == counts.get(ino, 0)
            if node.parent:  # the current name maps back to the inode
                assert t._by_name[(node.parent, node.name)] == ino
            assert (node.parent, node.name) not in node.links
