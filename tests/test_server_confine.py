"""Confinement of the I/O server: no request reaches outside the export (no sockets)."""

from __future__ import annotations

import errno
import os

import pytest

from fsproto.rpc import Op
from server.confine import EscapeError, Export, split_path
from server.ops import FileServer

ME = "client-1"


@pytest.fixture
def tree(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"TOP SECRET")
    export = tmp_path / "export"
    export.mkdir()
    (export / "dir").mkdir()
    (export / "dir" / "f").write_bytes(b"inside")
    os.symlink("/", export / "abs")
    os.symlink("../outside", export / "rel")
    os.symlink("../../outside/secret", export / "dir" / "up")
    ex = Export(export)
    yield ex, FileServer(ex), tmp_path
    ex.close()


@pytest.mark.parametrize("path", [b"..", b"../outside", b"dir/../..", b".", b"dir//f", b"/etc",
                                  b"dir/\0x", b"dir/./f"])
def test_bad_components_refused(path):
    with pytest.raises(EscapeError) as ei:
        split_path(path)
    assert ei.value.errno == errno.EACCES


@pytest.mark.parametrize("path", [b"abs/etc/passwd", b"rel/secret", b"abs/etc"])
def test_symlink_in_middle_refused(tree, path):
    ex, fs, _ = tree
    with pytest.raises(OSError) as ei:
        fs.call(ME, Op.GETATTR, [path])
    assert ei.value.errno == errno.EACCES
    with pytest.raises(OSError) as ei:
        fs.call(ME, Op.OPEN, [path, os.O_RDONLY])
    assert ei.value.errno == errno.EACCES


def test_open_final_symlink_not_followed(tree):
    ex, fs, _ = tree
    for p in (b"rel", b"abs", b"dir/up"):
        with pytest.raises(OSError) as ei:
            fs.call(ME, Op.OPEN, [p, os.O_RDONLY])
        assert ei.value.errno == errno.ELOOP
    # but the link itself can be read as text, and stat'ed without following
    assert fs.call(ME, Op.READLINK, [b"dir/up"]) == b"../../outside/secret"
    st = fs.call(ME, Op.GETATTR, [b"abs"])
    import stat as S
    assert S.S_ISLNK(st[2])


def test_xattr_setattr_on_symlink_do_not_follow(tree):
    ex, fs, tmp = tree
    before = os.stat(tmp / "outside" / "secret")
    with pytest.raises(OSError):
        fs.call(ME, Op.SETATTR, [b"dir/up", None, 0o777, None, None, None, None, None])
    with pytest.raises(OSError):
        fs.call(ME, Op.SETXATTR, [b"dir/up", b"user.x", b"v", 0])
    with pytest.raises(OSError) as ei:
        fs.call(ME, Op.SETATTR, [b"dir/up", None, None, None, None, 0, None, None])
    assert ei.value.errno == errno.ELOOP
    # times/owner on a symlink change the link itself, never the target
    fs.call(ME, Op.SETATTR, [b"dir/up", None, None, None, None, None, 1, 2])
    after = os.stat(tmp / "outside" / "secret")
    assert (after.st_mode, after.st_size, after.st_mtime_ns) == (
        before.st_mode, before.st_size, before.st_mtime_ns)
    assert (tmp / "outside" / "secret").read_bytes() == b"TOP SECRET"


def test_swap_dir_for_symlink_is_refused(tree):
    ex, fs, tmp = tree
    exp = tmp / "export"
    assert fs.call(ME, Op.GETATTR, [b"dir/f"])[7] == 6
    os.rename(exp / "dir", exp / "dir.real")
    os.symlink(str(tmp / "outside"), exp / "dir")
    with pytest.raises(OSError) as ei:
        fs.call(ME, Op.OPEN, [b"dir/secret", os.O_RDONLY])
    assert ei.value.errno == errno.EACCES


def test_link_and_rename_cannot_leave(tree):
    ex, fs, _ = tree
    with pytest.raises(OSError) as ei:
        fs.call(ME, Op.LINK, [b"rel/secret", b"stolen"])
    assert ei.value.errno == errno.EACCES
    with pytest.raises(OSError) as ei:
        fs.call(ME, Op.RENAME, [b"dir/f", b"../f", 0])
    assert ei.value.errno == errno.EACCES
    with pytest.raises(OSError) as ei:
        fs.call(ME, Op.RENAME, [b"dir/f", b"rel/f", 0])
    assert ei.value.errno == errno.EACCES


def test_device_nodes_need_root(tree):
    """Device nodes are made as the caller: root (CAP_MKNOD) may, another user may not."""
    ex, fs, tmp = tree
    import stat as S
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from server.creds import Creds
    with pytest.raises(OSError) as ei:
        fs.call(ME, Op.MKNOD, [b"dir/dev", S.S_IFCHR | 0o600, os.makedev(1, 3)],
                Creds(65534, 65534))
    assert ei.value.errno in (errno.EPERM, errno.EACCES)
    fs.call(ME, Op.MKNOD, [b"dev", S.S_IFCHR | 0o600, os.makedev(1, 3)], Creds(0, 0))
    st = os.lstat(tmp / "export" / "dev")
    assert S.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_open_handle_survives_rename_and_unlink(tree):
    ex, fs, tmp = tree
    hid, st = fs.call(ME, Op.OPEN, [b"dir/f", os.O_RDONLY])
    fs.call(ME, Op.RENAME, [b"dir/f", b"g", 0])
    fd, n = fs.read_plan(ME, hid, 0, 100)
    assert os.pread(fd, n, 0) == b"inside"
    fs.call(ME, Op.UNLINK, [b"g"])
    assert fs.call(ME, Op.FGETATTR, [hid])[3] == 0  # nlink 0, still readable
    fd, n = fs.read_plan(ME, hid, 0, 100)
    assert os.pread(fd, n, 0) == b"inside"
    fs.call(ME, Op.RELEASE, [hid])
