"""The inode table's public answers the client's units use: how a request names an inode or
an entry, its open handles, and the size/mtime the kernel was told (no mount)."""

from __future__ import annotations

import errno

import pytest

from mxfs.inodes import ROOT_INODE, InodeTable, StaleInode, stat_key


def test_a_request_names_by_handle_else_by_path() -> None:
    t = InodeTable()
    d = t.lookup(ROOT_INODE, b"d", ("dev", 2))  # no handle: named by path
    f = t.lookup(d, b"f", "fh-f", fh="fh-f")
    assert t.ref(ROOT_INODE) == b"" and t.ref(d) == b"d" and t.ref(f) == "fh-f"
    assert t.entry_ref(d, b"g") == b"d/g"
    assert t.entry_ref(ROOT_INODE, b"g") == b"g"
    h = t.lookup(ROOT_INODE, b"h", "fh-h", fh="fh-h")
    assert t.entry_ref(h, b"x") == ["fh-h", b"x"]
    with pytest.raises(StaleInode) as e:
        t.ref(999)
    assert e.value.errno == errno.ESTALE


def test_handles_and_find_of_known_and_unknown_inodes() -> None:
    t = InodeTable()
    f = t.lookup(ROOT_INODE, b"f", ("dev", 3))
    t.opened(f, 11)
    t.opened(f, 12)
    assert sorted(t.handles(f)) == [11, 12]
    assert t.find(f) is t.get(f) and t.find(999) is None and t.handles(999) == []


def test_note_attrs_says_when_the_file_changed_elsewhere() -> None:
    t = InodeTable()
    f = t.lookup(ROOT_INODE, b"f", ("dev", 4))
    assert t.note_attrs(f, 10, 100)  # (never told before)
    assert not t.note_attrs(f, 10, 100)
    assert t.note_attrs(f, 10, 101)
    with pytest.raises(StaleInode):
        t.note_attrs(999, 0, 0)


def test_stat_key_is_dev_and_ino() -> None:
    st = [7, 8] + [0] * 11
    assert stat_key(st) == (7, 8)
