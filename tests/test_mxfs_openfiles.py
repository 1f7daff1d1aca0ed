"""mxfs/openfiles.py: the kernel's file handles -> open files and directories (no mount)."""

from __future__ import annotations

import errno

import pytest

from mxfs.inodes import ROOT_INODE, InodeTable
from mxfs.openfiles import OpenFiles
from mxfs.writeback import Run
from mxfs.writeerrors import Cursor


def _table() -> tuple[InodeTable, OpenFiles, int]:
    inodes = InodeTable()
    ino = inodes.lookup(ROOT_INODE, b"f", ("dev", 1))
    return inodes, OpenFiles(inodes), ino


def test_files_and_directories_share_one_numbering() -> None:
    inodes, files, ino = _table()
    f = files.add_file(ino, 0, hid=7, epoch=1, cred=None, seen=Cursor(0, 0, 0))
    d = files.add_dir(ROOT_INODE, hid=8, epoch=1, cred=None)
    assert (f.fh, d) == (1, 2)
    assert files.file(1) is f and files.get(1) is f and files.dir(2).hid == 8
    assert len(files) == 1 and files.all() == [f]
    assert inodes.handles(ino) == [1]
    for call in (lambda: files.file(2), lambda: files.dir(1)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EBADF
    assert files.remove_dir(2) is not None and files.remove_dir(2) is None


def test_an_open_file_keeps_its_inode_until_the_last_closes() -> None:
    inodes, files, ino = _table()
    a = files.add_file(ino, 0, 7, 1, None, Cursor(0, 0, 0))
    b = files.add_file(ino, 0, 8, 1, None, Cursor(0, 0, 0))
    inodes.forget(ino, 1)  # the kernel forgets it: the open files still hold it
    assert ino in inodes
    assert files.remove_file(a) is False
    assert files.remove_file(b) is True
    assert ino not in inodes and files.get(b.fh) is None


def test_one_of_prefers_a_file_of_the_current_connection() -> None:
    _, files, ino = _table()
    assert files.one_of(ino, 2) is None
    old = files.add_file(ino, 0, 7, 1, None, Cursor(0, 0, 0))
    assert files.one_of(ino, 2) is old  # none of epoch 2: an older one
    new = files.add_file(ino, 0, 8, 2, None, Cursor(0, 0, 0))
    assert files.one_of(ino, 2) is new


def test_pending_sees_gathered_and_travelling_runs() -> None:
    _, files, ino = _table()
    f = files.add_file(ino, 0, 7, 1, None, Cursor(0, 0, 0))
    assert not files.pending(ino) and not f.pending
    f.run = Run(0, [b"x"], 1)
    assert files.pending(ino)
    f.run = None
    f.inflight.append((0, 1))
    assert files.pending(ino)
    assert not files.pending(ino + 100)  # an unknown inode has no open files


def test_of_inode_skips_a_file_closed_meanwhile() -> None:
    _, files, ino = _table()
    a = files.add_file(ino, 0, 7, 1, None, Cursor(0, 0, 0))
    b = files.add_file(ino, 0, 8, 1, None, Cursor(0, 0, 0))
    seen = []
    for f in files.of_inode(ino):
        seen.append(f)
        files.remove_file(b if f is a else a)  # (as a release during an await would)
    assert len(seen) == 1
