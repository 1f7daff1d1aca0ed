"""File handles (server/fhandle.py): the codec, its HMAC, export identity, confinement, and
the operations that name files by handle (issue 12, item 1)."""

from __future__ import annotations

import errno
import os
import stat

import msgpack
import pytest

from fsproto.rpc import FH_EXT, Op
from server import fhandle
from server.confine import Export
from server.fhandle import TAG_LEN, BadHandle, HandleCodec
from server.ops import FileServer

SECRET = b"the shared secret"
A = "client-a"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="open_by_handle_at needs root")


@pytest.fixture
def export(tmp_path):
    root = tmp_path / "export"
    root.mkdir()
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"data")
    ex = Export(root, secret=SECRET)
    assert ex.codec is not None, ex.no_handles
    yield ex
    ex.close()


def _fd_of(ex: Export, rel: str) -> int:
    return os.open(os.path.join(ex.root, rel), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)


def _ino(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _handle(ex: Export, rel: str) -> bytes:
    fd = _fd_of(ex, rel)
    try:
        return ex.codec.of_fd(fd)
    finally:
        os.close(fd)


def test_round_trip_reaches_the_same_object(export):
    for rel in ("d", "d/f", ""):
        h = _handle(export, rel)
        fd = export.codec.open(h)
        want = _fd_of(export, rel or ".")
        try:
            assert _ino(fd) == _ino(want)
        finally:
            os.close(fd)
            os.close(want)


def test_a_hard_link_has_the_same_handle(export):
    os.link(os.path.join(export.root, "d/f"), os.path.join(export.root, "g"))
    assert _handle(export, "d/f") == _handle(export, "g")


def test_layout_and_tag(export):
    h = _handle(export, "d/f")
    version, eid, _htype = fhandle._HEAD.unpack_from(h)
    assert version == fhandle.VERSION and eid == export.codec.export_id
    assert len(h) <= fhandle.MAX_WIRE and len(h) > fhandle._HEAD.size + TAG_LEN


@pytest.mark.parametrize("where", ["tag", "kernel handle", "export id", "type", "version"])
def test_altered_handle_is_refused(export, where):
    h = bytearray(_handle(export, "d/f"))
    at = {"tag": len(h) - 1, "kernel handle": fhandle._HEAD.size, "export id": 1,
          "type": 9, "version": 0}[where]
    h[at] ^= 0x01
    with pytest.raises(BadHandle) as ei:
        export.codec.open(bytes(h))
    assert ei.value.errno == errno.EACCES


@pytest.mark.parametrize("bad", [b"", b"x" * 10, b"x" * 500, "text", None])
def test_malformed_handle_is_refused(export, bad):
    with pytest.raises(OSError) as ei:
        export.codec.open(bad)
    assert ei.value.errno == errno.EACCES


def test_forged_handle_to_a_file_outside_is_refused(tmp_path, export):
    """A kernel handle of a file outside the export (same file system), wrapped by someone
    without the secret: refused before anything is opened."""
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"TOP SECRET")
    other = HandleCodec(export.root_fd, fhandle.derive_key(b"a guessed secret"))
    try:
        fd = os.open(outside, os.O_PATH)
        forged = other.of_fd(fd)
        os.close(fd)
    finally:
        other.close()
    with pytest.raises(BadHandle):
        export.codec.open(forged)


def test_same_secret_survives_a_restart_another_secret_does_not(export):
    h = _handle(export, "d/f")
    again = Export(export.root, secret=SECRET)  # the server restarted
    try:
        fd = again.codec.open(h)
        os.close(fd)
    finally:
        again.close()
    other = Export(export.root, secret=b"another secret")
    try:
        with pytest.raises(BadHandle):
            other.codec.open(h)
    finally:
        other.close()


def test_another_export_is_stale(tmp_path, export):
    """Same secret, another exported tree (even one holding a hard link of the very file):
    the handle is ESTALE there."""
    root2 = tmp_path / "export2"
    root2.mkdir()
    os.link(os.path.join(export.root, "d/f"), root2 / "f")
    h = _handle(export, "d/f")
    ex2 = Export(root2, secret=SECRET)
    try:
        with pytest.raises(OSError) as ei:
            ex2.codec.open(h)
        assert ei.value.errno == errno.ESTALE
    finally:
        ex2.close()


def test_gone_file_is_stale(export):
    h = _handle(export, "d/f")
    os.unlink(os.path.join(export.root, "d/f"))
    with pytest.raises(OSError) as ei:
        export.codec.open(h)
    assert ei.value.errno == errno.ESTALE


def test_directory_moved_outside_is_refused(tmp_path, export, monkeypatch):
    h = _handle(export, "d")
    os.close(export.codec.open(h))  # found inside (and remembered for INSIDE_TTL)
    monkeypatch.setattr(fhandle.time, "monotonic", lambda: 1e12)  # ... which has passed
    os.rename(os.path.join(export.root, "d"), tmp_path / "d-outside")
    with pytest.raises(BadHandle):
        export.codec.open(h)


def test_without_the_capability_the_server_works_by_path(tmp_path, monkeypatch):
    def no_cap(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(fhandle, "open_by_handle", no_cap)
    root = tmp_path / "e"
    root.mkdir()
    (root / "f").write_bytes(b"x")
    ex = Export(root, secret=SECRET)
    try:
        assert ex.codec is None and "CAP_DAC_READ_SEARCH" in ex.no_handles
        fs = FileServer(ex)
        st, fh = fs.call(A, Op.LOOKUP, [[b"", b"f"]])
        assert fh is None and st[7] == 1
        with pytest.raises(OSError) as ei:
            fs.call(A, Op.GETATTR, [msgpack.ExtType(FH_EXT, b"\0" * 40)])
        assert ei.value.errno == errno.ESTALE
    finally:
        ex.close()


# -- operations by handle ------------------------------------------------------------------
@pytest.fixture
def fs(export):
    return FileServer(export)


def _lookup(fs, entry):
    st, fh = fs.call(A, Op.LOOKUP, [entry])
    assert isinstance(fh, msgpack.ExtType) and fh.code == FH_EXT
    return st, fh


def test_operations_follow_the_file_not_its_name(fs, export):
    _, root = _lookup(fs, b"")
    _, d = _lookup(fs, [root, b"d"])
    st, f = _lookup(fs, [d, b"f"])
    os.rename(os.path.join(export.root, "d"), os.path.join(export.root, "moved"))
    os.rename(os.path.join(export.root, "moved/f"), os.path.join(export.root, "moved/g"))
    assert fs.call(A, Op.GETATTR, [f])[1] == st[1]
    hid, _ = fs.call(A, Op.OPEN, [f, os.O_RDWR])
    fs.write_inline(A, hid, 0, memoryview(b"DATA"))
    fs.call(A, Op.RELEASE, [hid])
    with open(os.path.join(export.root, "moved/g"), "rb") as fh:
        assert fh.read() == b"DATA"
    # namespace operations under the renamed directory, by its handle
    fs.call(A, Op.MKDIR, [[d, b"sub"], 0o755])
    hid, _, _, created, nf = fs.call(A, Op.CREATE, [[d, b"new"], os.O_WRONLY, 0o644])
    fs.call(A, Op.RELEASE, [hid])
    assert created and nf == _lookup(fs, [d, b"new"])[1]
    _, _, sl = fs.call(A, Op.SYMLINK, [[d, b"ln"], b"target"])
    assert fs.call(A, Op.READLINK, [sl]) == b"target"
    assert stat.S_ISLNK(fs.call(A, Op.GETATTR, [sl])[2])
    _, _, lf = fs.call(A, Op.LINK, [f, [d, b"g2"]])
    assert lf == f
    fs.call(A, Op.RENAME, [[d, b"g2"], [root, b"g3"], 0])
    fs.call(A, Op.UNLINK, [[root, b"g3"]])
    names = sorted(os.listdir(os.path.join(export.root, "moved")))
    assert names == ["g", "ln", "new", "sub"]
    hid = fs.call(A, Op.OPENDIR, [d])
    entries, eof = fs.call(A, Op.READDIR, [hid, 0])
    assert eof and sorted(e[0] for e in entries) == [b"g", b"ln", b"new", b"sub"]
    assert {e[0]: e[3] for e in entries}[b"g"] == f
    fs.call(A, Op.RELEASE, [hid])
    # attributes through the handle, a symlink's own too
    fs.call(A, Op.SETATTR, [f, None, 0o600, None, None, None, 10**9, 2 * 10**9])
    st = os.stat(os.path.join(export.root, "moved/g"))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == 2 * 10**9
    fs.call(A, Op.SETATTR, [sl, None, None, 1234, 1234, None, None, 5 * 10**9])
    st = os.lstat(os.path.join(export.root, "moved/ln"))
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (1234, 1234, 5 * 10**9)
    fs.call(A, Op.SETXATTR, [f, b"user.k", b"v", 0])
    assert fs.call(A, Op.GETXATTR, [f, b"user.k"]) == b"v"
    fs.call(A, Op.ACCESS, [f, os.R_OK | os.W_OK])


def test_operations_on_a_gone_file_are_stale(fs, export):
    _, root = _lookup(fs, b"")
    _, f = _lookup(fs, [root, b"d"])
    _, f = _lookup(fs, [f, b"f"])
    os.unlink(os.path.join(export.root, "d/f"))
    for op, args in [(Op.GETATTR, [f]), (Op.OPEN, [f, os.O_RDONLY]),
                     (Op.SETATTR, [f, None, 0o600, None, None, None, None, None])]:
        with pytest.raises(OSError) as ei:
            fs.call(A, op, args)
        assert ei.value.errno == errno.ESTALE, op
