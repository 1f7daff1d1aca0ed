"""End to end: files are named by handle, not by path (issue 12, item 1 and item 2's reopen
by handle), on real mounts, both transports."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import msgpack
import pytest
import trio
from conftest_fs import SECRET, MountProc, ServerProc, cluster, needs_fuse
from test_fs_stale import _errno, _reconnected, _restart, _write_synced

from fsproto.rpc import FH_EXT, Op
from mxfs.rpc import RpcError, open_client
from server.fhandle import HandleCodec, derive_key

pytestmark = [needs_fuse, pytest.mark.fuse]
TRANSPORTS = pytest.mark.parametrize("transport", ["mx", "gm"])


@TRANSPORTS
def test_renamed_by_another_client_then_restart_is_the_same_open_file(tmp_path, transport):
    """A holds d/f open; B moves it to e/g and renames d; the server restarts. A's open file
    is still that file: its writes land in e/g, its reads see what B wrote there."""
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        (a.mnt / "d").mkdir()
        fd = os.open(a.mnt / "d" / "f", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"first")
            os.fsync(fd)
            (b.mnt / "e").mkdir()
            os.rename(b.mnt / "d" / "f", b.mnt / "e" / "g")
            os.rename(b.mnt / "d", b.mnt / "d2")
            (b.mnt / "d").mkdir()
            (b.mnt / "d" / "f").write_bytes(b"B's new file")
            _restart(server)
            _reconnected(a.mnt)
            assert _errno(_write_synced, fd, b"AFTER") is None
            assert (server.export / "e" / "g").read_bytes() == b"AFTER"
            assert (server.export / "d" / "f").read_bytes() == b"B's new file"
            with open(b.mnt / "e" / "g", "r+b") as fh:
                fh.seek(8192)
                fh.write(b"TAIL from B")
            time.sleep(1.2)  # A's attribute timeout: it learns the new size
            assert os.pread(fd, 11, 8192) == b"TAIL from B"
        finally:
            os.close(fd)


@TRANSPORTS
def test_open_directory_renamed_and_file_removed_across_a_restart(tmp_path, transport):
    """A holds directory d and file x open; B renames d and removes x; the server restarts.
    A's directory is still d (listed under its new name), A's file is ESTALE (it is gone)."""
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        (a.mnt / "d").mkdir()
        (a.mnt / "d" / "one").write_bytes(b"1")
        (a.mnt / "x").write_bytes(b"x")
        dfd = os.open(a.mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
        fd = os.open(a.mnt / "x", os.O_RDWR)
        try:
            os.rename(b.mnt / "d", b.mnt / "moved")
            (b.mnt / "moved" / "two").write_bytes(b"2")
            (b.mnt / "d").mkdir()  # a new d, which A's open directory must not become
            (b.mnt / "d" / "other").write_bytes(b"other")
            os.unlink(b.mnt / "x")
            _restart(server)
            _reconnected(a.mnt)
            assert sorted(os.listdir(dfd)) == ["one", "two"]
            assert _errno(os.pread, fd, 1, 0) == errno.ESTALE
        finally:
            os.close(dfd)
            _errno(os.close, fd)


@TRANSPORTS
def test_another_export_holding_the_same_file_is_stale(tmp_path, transport):
    """The server comes back exporting another tree whose f is a hard link of the very same
    file (same st_dev and st_ino): the old open file is still ESTALE, as a handle of another
    export is, and the other tree is not written through it."""
    other = tmp_path / "other"
    other.mkdir()
    with cluster(tmp_path, transport) as (server, (m,)):
        (m.mnt / "f").write_bytes(b"first tree")
        os.link(server.export / "f", other / "f")
        fd = os.open(m.mnt / "f", os.O_RDWR)
        try:
            _restart(server, other)
            _reconnected(m.mnt)
            assert _errno(os.pread, fd, 64, 0) == errno.ESTALE
            assert _errno(_write_synced, fd, b"X") == errno.ESTALE
        finally:
            assert _errno(os.close, fd) == errno.ESTALE
        assert (other / "f").read_bytes() == b"first tree"
        assert (m.mnt / "f").read_bytes() == b"first tree"  # by name: the new export's


@TRANSPORTS
def test_cwd_renamed_by_another_client_still_lists(tmp_path, transport):
    """A shell's working directory is renamed by another client: ls, cat and a create there
    still work (the directory is named by its handle, not by a path that is gone)."""
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        (a.mnt / "d").mkdir()
        (a.mnt / "d" / "f").write_text("inside\n")
        sh = subprocess.Popen(["sh", "-c", "read go; ls; cat f; echo new > made; ls -l made"],
                              cwd=a.mnt / "d", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        try:
            os.rename(b.mnt / "d", b.mnt / "e")
            out, err = sh.communicate("go\n", timeout=30)
        finally:
            if sh.poll() is None:
                sh.kill()
        assert sh.returncode == 0, err
        assert out.splitlines()[:2] == ["f", "inside"], out
        assert (server.export / "e" / "made").read_text() == "new\n"
        assert not (server.export / "d").exists()


async def test_forged_and_altered_handles_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("TOP SECRET")
    with cluster(tmp_path, "mx", clients=0) as (server, _):
        (server.export / "ok").write_text("fine")
        root_fd = os.open(server.export, os.O_PATH | os.O_DIRECTORY)
        out_fd = os.open(outside, os.O_PATH | os.O_DIRECTORY)
        sec_fd = os.open(outside / "secret", os.O_PATH)
        try:
            guess = HandleCodec(root_fd, derive_key(b"a guessed secret"))
            insider = HandleCodec(root_fd, derive_key(SECRET))  # the same export id and key
            forged_file = guess.of_fd(sec_fd)
            signed_dir = insider.of_fd(out_fd)
            guess.close()
            insider.close()
        finally:
            for fd in (root_fd, out_fd, sec_fd):
                os.close(fd)
        async with open_client("127.0.0.1", server.port, key=SECRET, timeout=5) as rpc:
            _, root = await rpc.call(Op.LOOKUP, b"")
            st, ok = await rpc.call(Op.LOOKUP, [root, b"ok"])
            assert ok.code == FH_EXT and (await rpc.call(Op.GETATTR, ok))[1] == st[1]
            altered = bytearray(ok.data)
            altered[len(altered) // 2] ^= 1
            cases = [msgpack.ExtType(FH_EXT, bytes(altered)),
                     msgpack.ExtType(FH_EXT, forged_file),
                     msgpack.ExtType(FH_EXT, ok.data[:-1]),
                     msgpack.ExtType(FH_EXT, b"")]
            for h in cases:
                for op, args in [(Op.GETATTR, [h]), (Op.OPEN, [h, os.O_RDONLY]),
                                 (Op.LOOKUP, [[h, b"x"]]),
                                 (Op.SETATTR, [h, None, 0o777, None, None, None, None, None])]:
                    with pytest.raises(RpcError) as ei:
                        await rpc.call(op, *args)
                    assert ei.value.errno == errno.EACCES, (op, h)
            # correctly signed, but a directory outside the export: confinement holds
            with pytest.raises(RpcError) as ei:
                await rpc.call(Op.LOOKUP, [msgpack.ExtType(FH_EXT, signed_dir), b"secret"])
            assert ei.value.errno == errno.EACCES
            with pytest.raises(RpcError) as ei:
                await rpc.call(Op.CREATE, [msgpack.ExtType(FH_EXT, signed_dir), b"planted"],
                               os.O_WRONLY, 0o644)
            assert ei.value.errno == errno.EACCES
            assert (await rpc.call(Op.GETATTR, ok))[1] == st[1]  # the server goes on
        await trio.sleep(0.2)
        assert "refused" in server.log_text()
        assert (outside / "secret").read_text() == "TOP SECRET"
        assert not (outside / "planted").exists()


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_a_server_that_is_not_root_works_by_path(tmp_path):
    """Without CAP_DAC_READ_SEARCH the server issues no handles: it says so once and the
    client names files by path, everything works as before handles."""
    base = Path(tempfile.mkdtemp(prefix="mxfs-nonroot-"))
    server = mount = None
    try:
        os.chmod(base, 0o755)
        export, secret = base / "export", base / "secret"
        export.mkdir()
        secret.write_bytes(SECRET + b"\n")
        for p in (export, secret):
            os.chown(p, 65534, 65534)
        server = ServerProc(export, secret, options="")
        server.wrap = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        server.start()
        mount = MountProc(server.port, tmp_path / "mnt", secret, "mx").start()
        m = mount.mnt
        (m / "d").mkdir()
        (m / "d" / "f").write_bytes(b"by path")
        os.rename(m / "d", m / "e")
        assert (m / "e" / "f").read_bytes() == b"by path"
        assert os.listdir(m / "e") == ["f"]
        assert (export / "e" / "f").read_bytes() == b"by path"
        assert "no file handles" in server.log_text()
        assert "CAP_DAC_READ_SEARCH" in server.log_text()
    finally:
        if mount is not None:
            mount.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
@TRANSPORTS
def test_unprivileged_cwd_renamed_by_another_client(transport):
    """As nobody (allow_other): the cwd is renamed by another client; listing and creating
    there work through its handle, as nobody (the new file is nobody's); once root on the
    other client makes the directory 0700, nobody's next listing is refused (the server
    checks the caller against the directory itself, found by handle)."""
    base = Path(tempfile.mkdtemp(prefix="mxfs-handles-", dir="/tmp"))
    base.chmod(0o755)
    try:
        with cluster(base, transport, clients=2, extra="allow_other") as (server, (a, b)):
            (a.mnt / "d").mkdir()
            (a.mnt / "d").chmod(0o777)
            (a.mnt / "d" / "f").write_text("inside\n")
            script = "cd d && read go && ls && echo mine > made && read go && ls"
            sh = subprocess.Popen(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
                 script], cwd=a.mnt, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            try:
                time.sleep(0.5)  # (the shell is in d)
                os.rename(b.mnt / "d", b.mnt / "e")
                assert sh.stdin is not None and sh.stdout is not None
                sh.stdin.write("go\n")
                sh.stdin.flush()
                assert sh.stdout.readline() == "f\n"
                deadline = time.monotonic() + 10
                while not (server.export / "e" / "made").exists():
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                st = (server.export / "e" / "made").stat()
                assert (st.st_uid, st.st_gid) == (65534, 65534)
                (b.mnt / "e").chmod(0o700)
                out, err = sh.communicate("go\n", timeout=30)
            finally:
                if sh.poll() is None:
                    sh.kill()
            assert sh.returncode != 0 and "Permission denied" in err, (out, err)
    finally:
        shutil.rmtree(base, ignore_errors=True)
