"""End to end: server loss. Requests fail with EIO within `timeout`, the mount stays, and the
client reconnects and reopens its files when the server is back."""

from __future__ import annotations

import errno
import os
import signal
import time

import pytest
from conftest_fs import ServerProc, cluster, is_mounted, needs_fuse, sh

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.slow]

TIMEOUT = 3.0
MB = 1024 * 1024


def _pattern(i: int) -> bytes:
    return bytes([i % 251]) * MB


def _timed_read(fd: int, off: int) -> tuple[float, int | bytes]:
    t0 = time.monotonic()
    try:
        data: int | bytes = os.pread(fd, MB, off)
    except OSError as e:
        data = e.errno
    return time.monotonic() - t0, data


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_server_loss_eio_then_recovery(tmp_path, transport):
    with cluster(tmp_path, transport, extra=f"timeout={TIMEOUT}") as (server, (m,)):
        with open(server.export / "big", "wb") as fh:
            for i in range(48):
                fh.write(_pattern(i))
        fd = os.open(m.mnt / "big", os.O_RDONLY)
        try:
            assert os.pread(fd, MB, 0) == _pattern(0)
            sh("echo 3 > /proc/sys/vm/drop_caches", check=False)

            # a frozen server: the read fails with EIO after about `timeout`, never hangs
            server.proc.send_signal(signal.SIGSTOP)
            took, res = _timed_read(fd, 20 * MB)
            assert res == errno.EIO and took < TIMEOUT + 2, (took, res)

            # a dead server: EIO within the timeout as well
            server.kill()
            took, res = _timed_read(fd, 30 * MB)
            assert res == errno.EIO and took < TIMEOUT + 2, (took, res)
            t0 = time.monotonic()
            with pytest.raises(OSError) as ei:
                os.stat(m.mnt / "does-not-matter")
            assert ei.value.errno == errno.EIO and time.monotonic() - t0 < TIMEOUT + 2
            assert is_mounted(m.mnt)

            # the server comes back on the same port: the open file works again
            ServerProc.__init__(server, server.export, server.secret_file, server.port)
            server.start()
            deadline = time.monotonic() + 15
            while True:
                _, res = _timed_read(fd, 40 * MB)
                if res == _pattern(40) or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert res == _pattern(40)
            assert os.pread(fd, MB, 47 * MB) == _pattern(47)
            (m.mnt / "after").write_text("back")
            assert (server.export / "after").read_text() == "back"
            assert m.stats()["client"]["reconnects"] >= 1
        finally:
            os.close(fd)


def test_kill_during_large_reads(tmp_path):
    """The server dies while reads are streaming: the reader gets EIO, not a hang or bad data."""
    import threading

    with cluster(tmp_path, "mx", extra=f"timeout={TIMEOUT}") as (server, (m,)):
        with open(server.export / "big", "wb") as fh:
            for i in range(64):
                fh.write(_pattern(i))
        result: dict[str, object] = {}

        def reader() -> None:
            try:
                with open(m.mnt / "big", "rb", buffering=0) as fh:
                    i = 0
                    while chunk := fh.read(MB):
                        if chunk != _pattern(i):
                            result["bad"] = i
                            return
                        i += 1
                        time.sleep(0.02)
                result["done"] = i
            except OSError as e:
                result["errno"] = e.errno
                result["t"] = time.monotonic()

        sh("echo 3 > /proc/sys/vm/drop_caches", check=False)
        t = threading.Thread(target=reader)
        t.start()
        time.sleep(0.3)
        server.kill()
        killed = time.monotonic()
        t.join(30)
        assert not t.is_alive()
        assert "bad" not in result
        if "errno" in result:
            assert result["errno"] == errno.EIO
            assert float(result["t"]) - killed < TIMEOUT + 2  # type: ignore[arg-type]
        assert is_mounted(m.mnt)
