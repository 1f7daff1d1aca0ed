"""Acting as the caller, without sockets: per-thread credentials, export options (squash, ro),
access checks, FIFOs opened by name, the client's credential cache."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from types import SimpleNamespace

import pytest

from fsproto.rpc import MAX_GROUPS, Op
from mxfs.callers import Callers, read_groups
from server.confine import Export
from server.creds import Creds, Identity
from server.exports import ExportOptionError, ExportOptions, parse_export_options
from server.handles import HandleTable
from server.ops import FileServer

A = "client-a"
NOBODY = Creds(65534, 65534)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as others needs root")


def _fs_ids(tid: int | None = None) -> tuple[int, int, str]:
    """(fsuid, fsgid, groups) of a thread, from /proc."""
    path = f"/proc/self/task/{tid or threading.get_native_id()}/status"
    fields = dict(line.split(":", 1) for line in open(path).read().splitlines())
    return (int(fields["Uid"].split()[3]), int(fields["Gid"].split()[3]),
            fields["Groups"].strip())


@pytest.fixture
def fs(tmp_path):
    tmp_path.chmod(0o755)
    ex = Export(tmp_path)
    server = FileServer(ex, HandleTable(), ExportOptions(squash="none"))
    yield server
    server.handles.close_all()
    ex.close()


@needs_root
def test_acting_as_changes_only_this_thread_and_comes_back():
    ident = Identity()
    before = _fs_ids()
    seen: dict[str, tuple] = {}
    other_tid = []
    go, done = threading.Event(), threading.Event()

    def other() -> None:
        other_tid.append(threading.get_native_id())
        go.wait(5)
        seen["other"] = _fs_ids()
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with ident.acting_as(Creds(1234, 5678, (42, 43))):
        seen["me"] = _fs_ids()
        go.set()
        done.wait(5)
    t.join()
    assert seen["me"] == (1234, 5678, "42 43")
    assert seen["other"][:2] == before[:2] and seen["other"][2] == before[2]
    assert _fs_ids() == before
    with pytest.raises(RuntimeError), ident.acting_as(NOBODY):
        raise RuntimeError("an operation failed")
    assert _fs_ids() == before  # restored after a failure too


@needs_root
def test_the_server_kernel_decides_as_the_caller(fs, tmp_path):
    (tmp_path / "secret").write_bytes(b"s")
    (tmp_path / "secret").chmod(0o600)
    (tmp_path / "public").write_bytes(b"p")
    (tmp_path / "public").chmod(0o644)
    with pytest.raises(PermissionError):
        fs.call(A, Op.OPEN, [b"secret", os.O_RDONLY], NOBODY)
    hid, _ = fs.call(A, Op.OPEN, [b"public", os.O_RDONLY], NOBODY)
    with pytest.raises(PermissionError):
        fs.call(A, Op.OPEN, [b"public", os.O_WRONLY | os.O_APPEND], NOBODY)
    fs.call(A, Op.ACCESS, [b"public", os.R_OK], NOBODY)
    for path, mode in ((b"secret", os.R_OK), (b"public", os.W_OK), (b"", os.W_OK)):
        with pytest.raises(PermissionError):
            fs.call(A, Op.ACCESS, [path, mode], NOBODY)
    fs.call(A, Op.ACCESS, [b"secret", os.R_OK | os.W_OK])  # as the server: root
    with pytest.raises(PermissionError):
        fs.call(A, Op.CREATE, [b"new", os.O_WRONLY, 0o644], NOBODY)
    # a new node belongs to its creator, with the mode asked for (server umask 0 aside)
    (tmp_path / "pub").mkdir(mode=0o777)
    (tmp_path / "pub").chmod(0o1777)
    fs.call(A, Op.MKDIR, [b"pub/d", 0o2750], NOBODY)
    st = os.stat(tmp_path / "pub" / "d")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    # xattrs only root may write, and trusted.* names it may not even read
    with pytest.raises(PermissionError):
        fs.call(A, Op.SETXATTR, [b"pub/d", b"trusted.x", b"v", 0], NOBODY)
    fs.call(A, Op.SETXATTR, [b"pub/d", b"trusted.x", b"v", 0], Creds(0, 0))
    assert b"trusted.x" not in fs.call(A, Op.LISTXATTR, [b"pub/d"], NOBODY)
    with pytest.raises(OSError) as ei:
        fs.call(A, Op.GETXATTR, [b"pub/d", b"trusted.x"], NOBODY)
    assert ei.value.errno == errno.ENODATA
    fs.call(A, Op.RELEASE, [hid])


@needs_root
def test_a_writer_may_clear_setuid_bits_but_not_set_them(fs, tmp_path):
    f = tmp_path / "suid"
    f.write_bytes(b"")
    f.chmod(0o4777)  # root's, writable by all: a write by another user clears setuid
    fs.call(A, Op.SETATTR, [b"suid", None, 0o777, None, None, None, None, None], NOBODY)
    assert stat.S_IMODE(f.stat().st_mode) == 0o777
    for mode in (0o4777, 0o755):
        with pytest.raises(PermissionError):
            fs.call(A, Op.SETATTR, [b"suid", None, mode, None, None, None, None, None], NOBODY)
    f.chmod(0o4755)  # not writable by others: no clearing either
    with pytest.raises(PermissionError):
        fs.call(A, Op.SETATTR, [b"suid", None, 0o755, None, None, None, None, None], NOBODY)
    # and a write through a handle another user opened clears it on the server
    f.chmod(0o6777)
    hid, _ = fs.call(A, Op.OPEN, [b"suid", os.O_WRONLY], NOBODY)
    fs.write_inline(A, hid, 0, memoryview(b"x"))
    assert stat.S_IMODE(f.stat().st_mode) == 0o777


def test_open_of_a_fifo_by_name_never_blocks(fs, tmp_path):
    os.mkfifo(tmp_path / "p")
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        t0 = time.monotonic()
        with pytest.raises(OSError) as ei:
            fs.call(A, Op.OPEN, [b"p", flags])
        assert ei.value.errno == errno.ESTALE and time.monotonic() - t0 < 1
    with pytest.raises(OSError) as ei:
        fs.call(A, Op.CREATE, [b"p", os.O_RDONLY, 0o644])
    assert ei.value.errno == errno.ESTALE
    with pytest.raises(OSError) as ei:
        fs.call(A, Op.SETATTR, [b"p", None, None, None, None, 0, None, None])
    assert ei.value.errno == errno.EINVAL


def test_export_options_parse_and_squash():
    assert parse_export_options("") == ExportOptions("root", 65534, 65534, False)
    o = parse_export_options("no_root_squash,ro")
    assert (o.squash, o.ro) == ("none", True)
    o = parse_export_options("all_squash,anonuid=1000,anongid=100")
    assert o.caller([0, 0, 1, 2]) == Creds(1000, 100, ())
    root = parse_export_options("root_squash")
    assert root.caller([0, 0, 0, 7]) == Creds(65534, 65534, (65534, 7))
    assert root.caller([5, 6, 7]) == Creds(5, 6, (7,))
    assert root.caller(None) == Creds(65534, 65534, ())  # no credentials: anonymous
    assert parse_export_options("no_root_squash").caller([0, 0]) == Creds(0, 0, ())
    for bad in ([], [1], "x", [1, -1], [1, 2**32], [1, 2, "g"], [1, 2, *range(MAX_GROUPS + 1)],
                [True, 1]):
        with pytest.raises(OSError) as ei:
            root.caller(bad)
        assert ei.value.errno == errno.EINVAL
    for bad in ("bogus", "anonuid=", "anonuid=-1", "anongid=x", "ro=1", "anonuid=4294967295"):
        with pytest.raises(ExportOptionError):
            parse_export_options(bad)


def test_read_only_export_refuses_changes(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    ex = Export(tmp_path)
    fs = FileServer(ex, HandleTable(), parse_export_options("ro"))
    try:
        for op, args in [(Op.CREATE, [b"g", os.O_WRONLY, 0o644]), (Op.MKDIR, [b"d", 0o755]),
                         (Op.UNLINK, [b"f"]), (Op.OPEN, [b"f", os.O_WRONLY]),
                         (Op.OPEN, [b"f", os.O_RDONLY | os.O_TRUNC]),
                         (Op.ACCESS, [b"f", os.W_OK]),
                         (Op.SETATTR, [b"f", None, 0o600, None, None, None, None, None]),
                         (Op.SETXATTR, [b"f", b"user.x", b"v", 0])]:
            with pytest.raises(OSError) as ei:
                fs.call(A, op, args)
            assert ei.value.errno == errno.EROFS, op
        hid, _ = fs.call(A, Op.OPEN, [b"f", os.O_RDONLY])
        with pytest.raises(OSError) as ei:
            fs.write_inline(A, hid, 0, memoryview(b"y"))
        assert ei.value.errno == errno.EROFS
        assert (tmp_path / "f").read_bytes() == b"x"
    finally:
        fs.handles.close_all()
        ex.close()


def test_client_credential_cache_is_bounded_and_short_lived():
    now = [0.0]
    reads = []

    def groups_of(pid: int) -> list[int]:
        reads.append(pid)
        return [pid * 10]

    c = Callers(ttl=1.0, size=3, clock=lambda: now[0], groups_of=groups_of)
    ctx = SimpleNamespace(pid=7, uid=1, gid=2)
    assert c.cred(ctx) == [1, 2, 70]
    assert c.cred(ctx) == [1, 2, 70] and reads == [7]  # cached
    assert c.cred(SimpleNamespace(pid=7, uid=3, gid=2)) == [3, 2, 70]  # new ids: asked again
    now[0] = 1.5
    c.cred(ctx)
    assert reads == [7, 7, 7]  # expired
    for pid in range(100, 110):
        c.cred(SimpleNamespace(pid=pid, uid=1, gid=1))
    assert len(c._cache) <= 3
    assert read_groups(os.getpid()) == os.getgroups()[:MAX_GROUPS] or sorted(
        read_groups(os.getpid())) == sorted(os.getgroups())
    assert read_groups(0) == [] and read_groups(2**22 + 12345) == []  # kernel / gone
