"""Operation handlers and the handle table of the I/O server, without sockets."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from fsproto.rpc import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ST_XATTRS,
    Op,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    stat_dict,
)
from server.confine import Export
from server.handles import HandleTable
from server.ops import FileServer, has_xattrs

A, B = "client-a", "client-b"


@pytest.fixture
def fs(tmp_path):
    ex = Export(tmp_path)
    server = FileServer(ex, HandleTable(max_per_owner=8))
    yield server
    server.handles.close_all()
    ex.close()


def test_request_roundtrip_keeps_inline_view():
    hdr = encode_request(Op.WRITE, 7, 4096, 5, True)
    msg = bytearray(hdr + b"hello")
    op, cred, args, data = decode_request(memoryview(msg))
    assert op == Op.WRITE and cred is None and args == [7, 4096, 5, True]
    _, cred, args, _ = decode_request(memoryview(encode_request(Op.GETATTR, b"f",
                                                               cred=[1, 2, 3])))
    assert cred == [1, 2, 3] and args == [b"f"]
    assert isinstance(data, memoryview) and data.obj is msg and bytes(data) == b"hello"
    assert decode_reply(encode_reply(0, [b"x", 1])) == (0, [b"x", 1])


def test_create_write_read_stat(fs, tmp_path):
    hid, st, parent, created, _fh = fs.call(A, Op.CREATE, [b"f", os.O_RDWR, 0o640])
    assert created is True
    assert stat.S_ISREG(st[2]) and stat.S_IMODE(st[2]) == 0o640
    assert stat.S_ISDIR(parent[2]) and parent[11] == os.stat(tmp_path).st_mtime_ns
    n, after = fs.write_inline(A, hid, 0, memoryview(b"hello world"))
    assert n == 11 and after[7] == 11 and after[1] == st[1]  # size after the write, same file
    fd, n = fs.read_plan(A, hid, 6, 100)
    assert n == 5 and os.pread(fd, n, 6) == b"world"
    assert fs.read_plan(A, hid, 11, 10)[1] == 0
    assert fs.read_plan(A, hid, 1000, 10)[1] == 0
    assert stat_dict(fs.call(A, Op.GETATTR, [b"f"]))["st_size"] == 11
    fs.call(A, Op.FSYNC, [hid, False])
    fs.call(A, Op.RELEASE, [hid])
    with pytest.raises(OSError) as ei:
        fs.call(A, Op.RELEASE, [hid])
    assert ei.value.errno == errno.EBADF


def test_create_exclusive(fs):
    hid, _, _, created, _ = fs.call(A, Op.CREATE, [b"f", os.O_WRONLY, 0o644])
    assert created
    with pytest.raises(FileExistsError):
        fs.call(A, Op.CREATE, [b"f", os.O_WRONLY | os.O_EXCL, 0o644])
    hid2, _, _, created, _ = fs.call(A, Op.CREATE, [b"f", os.O_WRONLY, 0o644])  # exists: opened
    assert not created
    assert hid2 != hid


def test_append_lands_at_end(fs, tmp_path):
    (tmp_path / "log").write_bytes(b"abc")
    hid, _ = fs.call(A, Op.OPEN, [b"log", os.O_WRONLY | os.O_APPEND])
    (tmp_path / "log").write_bytes(b"abcdef")  # someone else appended meanwhile
    fs.write_inline(A, hid, 3, memoryview(b"XY"))
    assert (tmp_path / "log").read_bytes() == b"abcdefXY"


def test_sparse_and_large_offsets(fs, tmp_path):
    hid, *_ = fs.call(A, Op.CREATE, [b"sparse", os.O_RDWR, 0o644])
    off = 5 * 1024**3
    fs.write_inline(A, hid, off, memoryview(b"end"))
    st = stat_dict(fs.call(A, Op.FGETATTR, [hid]))
    assert st["st_size"] == off + 3
    assert st["st_blocks"] * 512 < 1024 * 1024
    fd, n = fs.read_plan(A, hid, off - 2, 10)
    assert os.pread(fd, n, off - 2) == b"\0\0end"


def test_setattr_variants(fs, tmp_path):
    (tmp_path / "f").write_bytes(b"0123456789")
    st = fs.call(A, Op.SETATTR, [b"f", None, 0o600, None, None, 4, 1_000_000_000, 2_000_000_000])
    d = stat_dict(st)
    assert stat.S_IMODE(d["st_mode"]) == 0o600 and d["st_size"] == 4
    assert d["st_atime_ns"] == 1_000_000_000 and d["st_mtime_ns"] == 2_000_000_000
    hid, _ = fs.call(A, Op.OPEN, [b"f", os.O_RDWR])
    d = stat_dict(fs.call(A, Op.SETATTR, [b"f", hid, None, None, None, 8, None, 5_000_000_000]))
    assert d["st_size"] == 8 and d["st_mtime_ns"] == 5_000_000_000
    assert d["st_atime_ns"] == 1_000_000_000
    if os.geteuid() == 0:
        d = stat_dict(fs.call(A, Op.SETATTR, [b"f", None, None, 1234, 5678, None, None, None]))
        assert (d["st_uid"], d["st_gid"]) == (1234, 5678)
    with pytest.raises(OSError) as ei:
        fs.call(A, Op.SETATTR, [b"missing", None, 0o600, None, None, None, None, None])
    assert ei.value.errno == errno.ENOENT


def post_op(reply: list, directory) -> list:
    """A namespace change answers with its parent directory's attributes after the change:
    they must be exactly what a stat of that directory says now."""
    st = os.stat(directory)
    assert stat.S_ISDIR(reply[2]) and (reply[0], reply[1]) == (st.st_dev, st.st_ino)
    assert (reply[3], reply[11], reply[12]) == (st.st_nlink, st.st_mtime_ns, st.st_ctime_ns)
    return reply


def test_namespace_ops(fs, tmp_path):
    d, parent, _ = fs.call(A, Op.MKDIR, [b"d", 0o755])
    assert stat.S_ISDIR(d[2])
    assert post_op(parent, tmp_path)[3] == 3  # ".", "..", and d's ".." now
    _, parent, _ = fs.call(A, Op.MKNOD, [b"d/fifo", stat.S_IFIFO | 0o644, 0])
    post_op(parent, tmp_path / "d")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "d" / "fifo").st_mode)
    fs.call(A, Op.SYMLINK, [b"d/ln", b"../elsewhere"])
    assert os.readlink(tmp_path / "d" / "ln") == "../elsewhere"
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    st, parent, _ = fs.call(A, Op.LINK, [b"a", b"d/a2"])
    assert st[3] == 2
    post_op(parent, tmp_path / "d")
    with pytest.raises(FileExistsError):
        fs.call(A, Op.RENAME, [b"a", b"b", RENAME_NOREPLACE])
    fs.call(A, Op.RENAME, [b"a", b"b", RENAME_EXCHANGE])
    assert (tmp_path / "a").read_bytes() == b"B" and (tmp_path / "b").read_bytes() == b"A"
    src_parent, dst_parent = fs.call(A, Op.RENAME, [b"b", b"d/b", 0])
    assert (tmp_path / "d" / "b").exists()
    post_op(src_parent, tmp_path)
    post_op(dst_parent, tmp_path / "d")
    post_op(fs.call(A, Op.UNLINK, [b"d/fifo"]), tmp_path / "d")
    fs.call(A, Op.MKDIR, [b"d/e", 0o755])
    assert post_op(fs.call(A, Op.RMDIR, [b"d/e"]), tmp_path / "d")[3] == 2
    with pytest.raises(OSError) as ei:
        fs.call(A, Op.RMDIR, [b"d"])
    assert ei.value.errno == errno.ENOTEMPTY
    with pytest.raises(IsADirectoryError):
        fs.call(A, Op.UNLINK, [b"d"])
    with pytest.raises(NotADirectoryError):
        fs.call(A, Op.RMDIR, [b"a"])
    with pytest.raises(FileNotFoundError):
        fs.call(A, Op.GETATTR, [b"nope/x"])
    with pytest.raises(NotADirectoryError):
        fs.call(A, Op.GETATTR, [b"a/x"])
    with pytest.raises(IsADirectoryError):
        fs.call(A, Op.OPEN, [b"d", os.O_RDONLY])


def test_readdir_streams_with_stable_offsets(fs, tmp_path):
    names = {f"n{i:05d}".encode() for i in range(1500)}
    for n in names:
        (tmp_path / n.decode()).touch()
    hid = fs.call(A, Op.OPENDIR, [b""])
    seen: list[bytes] = []
    offsets: list[int] = []
    off = 0
    while True:
        entries, eof = fs.call(A, Op.READDIR, [hid, off])
        for name, nxt, st, _fh in entries:
            seen.append(name)
            offsets.append(nxt)
            assert stat.S_ISREG(st[2])
        if entries:
            off = entries[-1][1]
        if eof:
            break
    assert set(seen) == names and len(seen) == len(names)
    assert offsets == sorted(offsets)
    # restarting at an earlier offset (seekdir) yields the same continuation
    entries, _ = fs.call(A, Op.READDIR, [hid, offsets[99]])
    assert [e[0] for e in entries[:5]] == seen[100:105]
    entries, _ = fs.call(A, Op.READDIR, [hid, 0])
    assert entries[0][0] == seen[0]
    fs.call(A, Op.RELEASE, [hid])


def test_xattrs(fs, tmp_path):
    (tmp_path / "f").touch()
    fs.call(A, Op.SETXATTR, [b"f", b"user.color", b"blue", 0])
    assert fs.call(A, Op.GETXATTR, [b"f", b"user.color"]) == b"blue"
    assert b"user.color" in fs.call(A, Op.LISTXATTR, [b"f"])
    fs.call(A, Op.REMOVEXATTR, [b"f", b"user.color"])
    with pytest.raises(OSError) as ei:
        fs.call(A, Op.GETXATTR, [b"f", b"user.color"])
    assert ei.value.errno == errno.ENODATA


def test_handles_are_per_owner_and_bounded(fs, tmp_path):
    (tmp_path / "f").touch()
    hid, _ = fs.call(A, Op.OPEN, [b"f", os.O_RDONLY])
    with pytest.raises(OSError) as ei:
        fs.call(B, Op.FGETATTR, [hid])
    assert ei.value.errno == errno.EBADF
    for _ in range(7):
        fs.call(A, Op.OPEN, [b"f", os.O_RDONLY])
    with pytest.raises(OSError) as ei:
        fs.call(A, Op.OPEN, [b"f", os.O_RDONLY])
    assert ei.value.errno == errno.EMFILE
    fs.call(B, Op.OPEN, [b"f", os.O_RDONLY])
    assert fs.handles.close_owner(A) == 8
    assert fs.handles.owned_by(A) == 0 and fs.handles.owned_by(B) == 1


def test_statfs_and_unknown_op(fs):
    assert len(fs.call(A, Op.STATFS, [])) == 9
    with pytest.raises(OSError) as ei:
        fs.call(A, 250, [])
    assert ei.value.errno == errno.ENOSYS
    with pytest.raises(OSError) as ei:
        fs.call(A, Op.GETATTR, [b"a", b"b", b"c"])
    assert ei.value.errno == errno.EINVAL


def test_answers_that_name_an_object_say_whether_it_has_xattrs(fs, tmp_path):
    """LOOKUP, READDIR, CREATE/OPEN and MKDIR/SYMLINK answers carry ST_XATTRS: 0 only when
    the object has no extended attribute at all (as the server sees it, trusted.* too)."""
    hid, st, *_ = fs.call(A, Op.CREATE, [b"plain", os.O_RDWR, 0o644])
    fs.call(A, Op.RELEASE, [hid])
    assert st[ST_XATTRS] == 0
    (tmp_path / "tagged").write_bytes(b"")
    os.setxattr(tmp_path / "tagged", "user.k", b"v")
    (tmp_path / "secret").write_bytes(b"")
    os.setxattr(tmp_path / "secret", "trusted.k", b"v")  # hidden from non-root callers
    os.symlink("plain", tmp_path / "link")
    st_dir, _, _ = fs.call(A, Op.MKDIR, [b"d", 0o755])
    assert st_dir[ST_XATTRS] == 0
    flags = {name: fs.call(A, Op.LOOKUP, [name])[0][ST_XATTRS]
             for name in (b"plain", b"tagged", b"secret", b"link", b"d")}
    assert flags == {b"plain": 0, b"tagged": 1, b"secret": 1, b"link": 0, b"d": 0}
    dh = fs.call(A, Op.OPENDIR, [b""])
    entries, eof = fs.call(A, Op.READDIR, [dh, 0])
    assert eof and {e[0]: e[2][ST_XATTRS] for e in entries} == flags
    hid, st = fs.call(A, Op.OPEN, [b"tagged", os.O_RDONLY])
    fs.call(A, Op.RELEASE, [hid])
    assert st[ST_XATTRS] == 1
    assert has_xattrs(0o100644, b"/nonexistent/x") == 1  # cannot tell: the client asks
