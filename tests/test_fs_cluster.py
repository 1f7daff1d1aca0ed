"""End to end: several clients, secrets, escape attempts, transport counters."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest
import trio
from conftest_fs import PY, ROOT, SECRET, MountProc, cluster, env, needs_fuse, sh

from fsproto.rpc import Op
from mxfs.rpc import RpcError, open_client

pytestmark = [needs_fuse, pytest.mark.fuse]


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_two_clients_close_to_open(tmp_path, transport):
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        fa, fb = a.mnt / "shared.txt", b.mnt / "shared.txt"
        fa.write_text("version 1\n")
        assert fb.read_text() == "version 1\n"  # B opens after A closed: sees it
        with open(fa, "a") as fh:  # within B's attribute timeout
            fh.write("version 2, longer\n")
        assert fb.read_text() == "version 1\nversion 2, longer\n"
        fb.write_text("B wrote\n")
        assert fa.read_text() == "B wrote\n"
        (b.mnt / "dir").mkdir()
        (b.mnt / "dir" / "x").write_text("x")
        time.sleep(1.1)  # entry timeout: A's negative lookups expire
        assert sorted(os.listdir(a.mnt / "dir")) == ["x"]
        os.rename(a.mnt / "dir" / "x", a.mnt / "dir" / "y")
        time.sleep(1.1)
        assert sorted(os.listdir(b.mnt / "dir")) == ["y"]
        assert (b.mnt / "dir" / "y").read_text() == "x"


def test_wrong_secret_refused(tmp_path):
    with cluster(tmp_path, "mx", clients=0) as (server, _):
        bad = tmp_path / "bad-secret"
        bad.write_bytes(b"not-the-secret\n")
        mnt = tmp_path / "mnt-bad"
        mnt.mkdir()
        r = subprocess.run(
            [PY, "-m", "mxfs.cli", "mount", f"127.0.0.1:{server.port}", str(mnt), "-o",
             f"secret_file={bad}"], capture_output=True, text=True, env=env(), cwd=ROOT,
            timeout=30)
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "key" in lines[0], r.stderr
        assert not os.path.ismount(mnt)


async def test_escape_attempts_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("TOP SECRET")
    with cluster(tmp_path, "mx", clients=0) as (server, _):
        os.symlink("../outside", server.export / "rel")
        os.symlink(str(outside), server.export / "abs")
        (server.export / "ok").write_text("fine")
        async with open_client("127.0.0.1", server.port, key=SECRET, timeout=5) as rpc:
            assert (await rpc.call(Op.GETATTR, b"ok"))[7] == 4
            for path in (b"..", b"../outside/secret", b"rel/secret", b"abs/secret", b"/etc",
                         b"ok/../../outside"):
                with pytest.raises(RpcError) as ei:
                    await rpc.call(Op.GETATTR, path)
                assert ei.value.errno == errno.EACCES, path
                with pytest.raises(RpcError) as ei:
                    await rpc.call(Op.OPEN, path, os.O_RDONLY)
                assert ei.value.errno in (errno.EACCES, errno.ELOOP), path
            with pytest.raises(RpcError) as ei:
                await rpc.call(Op.OPEN, b"rel", os.O_RDONLY)
            assert ei.value.errno == errno.ELOOP
            with pytest.raises(RpcError) as ei:
                await rpc.call(Op.LINK, b"abs/secret", b"stolen")
            assert ei.value.errno == errno.EACCES
            # a bogus handle is refused, the server survives garbage
            with pytest.raises(RpcError) as ei:
                await rpc.read(999999, 0, 10, epoch=rpc.epoch)
            assert ei.value.errno == errno.EBADF
            with pytest.raises(RpcError) as ei:
                await rpc.call(250)
            assert ei.value.errno == errno.ENOSYS
            assert (await rpc.call(Op.PING))["version"] >= 1
        await trio.sleep(0.2)
        assert "refused" in server.log_text()
        assert not (server.export / "stolen").exists()


def _read_all(path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(1 << 20):
            n += len(chunk)
    return n


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_copy_counters(tmp_path, transport):
    with cluster(tmp_path, transport) as (server, (m,)):
        size = 24 * 1024 * 1024
        sh(f"dd if=/dev/urandom of={server.export}/blob bs=1M count={size >> 20} status=none")
        before = m.stats()
        sh("echo 3 > /proc/sys/vm/drop_caches", check=False)
        assert _read_all(m.mnt / "blob") == size
        after = m.stats()
        got = (after["client"]["payload_bytes_received"]
               - before["client"]["payload_bytes_received"])
        assert got >= size
        copied = (after["client"]["payload_bytes_copied"]
                  - before["client"]["payload_bytes_copied"])
        srv_copied = (after["server_side"]["payload_bytes_copied"]
                      - before["server_side"]["payload_bytes_copied"])
        if transport == "mx":
            assert copied == 0 and srv_copied == 0
            assert after["client"]["copies_per_byte"] == 0
        else:
            assert copied >= size
            assert after["client"]["registrations"] > 0
        out = sh(f"{PY} -m mxfs.cli stats {m.mnt}").stdout
        assert "payload bytes copied" in out and "copies per byte delivered" in out


def test_read_only_mount(tmp_path):
    with cluster(tmp_path, "mx", clients=0) as (server, _):
        (server.export / "f").write_text("data")
        m = MountProc(server.port, tmp_path / "ro", server.secret_file, extra="ro").start()
        try:
            assert (m.mnt / "f").read_text() == "data"
            with pytest.raises(OSError) as ei:
                (m.mnt / "g").write_text("no")
            assert ei.value.errno == errno.EROFS
        finally:
            m.stop()


async def test_server_drops_handles_of_lost_client(tmp_path):
    with cluster(tmp_path, "mx", clients=0) as (server, _):
        (server.export / "f").write_text("x")
        async with open_client("127.0.0.1", server.port, key=SECRET, timeout=5) as watcher:
            async with open_client("127.0.0.1", server.port, key=SECRET, timeout=5) as rpc:
                for _ in range(5):
                    await rpc.call(Op.OPEN, b"f", os.O_RDONLY)
                await rpc.call(Op.OPENDIR, b"")
                assert (await watcher.call(Op.STATS))["open_handles"] == 6
            # the second client is gone (its endpoint closed): its handles go with it
            with trio.fail_after(15):
                while (await watcher.call(Op.STATS))["open_handles"]:
                    await trio.sleep(0.05)
