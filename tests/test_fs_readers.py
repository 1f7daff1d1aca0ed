"""End to end: how pyfuse3's workers share /dev/fuse (mxfs/fusereaders.py) on a real mount.
A request answered from memory keeps the reading worker (no task switch, counted in
`fuse_reader_handoffs`); one that waits on the server hands the device to another worker, so
a frozen server never stops the requests that need no server."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest_fs import cluster, needs_fuse, sh

pytestmark = [needs_fuse, pytest.mark.fuse]


def _handoffs(m) -> int:  # noqa: ANN001
    return m.stats()["fuse_reader_handoffs"]


def test_only_requests_that_wait_on_the_server_hand_the_device_over(tmp_path):
    with cluster(tmp_path) as (_, (m,)):
        d = m.mnt / "d"
        d.mkdir()
        before = _handoffs(m)
        n = 200
        for i in range(n):  # LOOKUP, CREATE (waits on the server), GETATTR, FLUSH, RELEASE
            os.close(os.open(d / f"f{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        made = _handoffs(m) - before
        # one per create, and a few for the stats requests themselves
        assert n <= made <= n + 5, made
        sh("echo 2 > /proc/sys/vm/drop_caches")  # the kernel forgets the names...
        before = _handoffs(m)
        for i in range(n):  # ...and asks mxfs, which knows them: answered from memory
            os.stat(d / f"f{i}")
        assert _handoffs(m) - before <= 5


def test_writes_gathered_in_memory_do_not_hand_the_device_over(tmp_path):
    with cluster(tmp_path) as (server, (m,)):
        before = _handoffs(m)
        with open(m.mnt / "log", "wb", buffering=0) as f:
            for i in range(300):  # 300 FUSE WRITEs, gathered into one run
                f.write(b"%05d\n" % i)
        # OPEN... CREATE waits on the server, the close sends the run: a few, not 300
        assert _handoffs(m) - before <= 8
        assert (server.export / "log").read_bytes() == b"".join(b"%05d\n" % i
                                                               for i in range(300))


def test_many_callers_mixing_cached_and_waiting_requests_all_finish(tmp_path):
    """Eight threads create, write, read back, stat and unlink at once while another stats
    cached names: requests that wait on the server and ones answered from memory interleave
    across pyfuse3's workers; every caller finishes with its own data."""
    with cluster(tmp_path) as (server, (m,)):
        (m.mnt / "hot").mkdir()
        for i in range(20):
            (m.mnt / "hot" / f"h{i}").write_bytes(b"x" * i)
        errors: list[BaseException] = []
        done: list[int] = []
        stop = threading.Event()

        def worker(w: int) -> None:
            try:
                d = m.mnt / f"w{w}"
                d.mkdir()
                for i in range(40):
                    data = os.urandom(100 + 997 * i)
                    p = d / f"f{i}"
                    with open(p, "wb") as f:
                        f.write(data[:50])
                        f.write(data[50:])
                    assert p.read_bytes() == data
                    assert os.stat(p).st_size == len(data)
                    if i % 2:
                        os.unlink(p)
                done.append(w)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def looker() -> None:
            try:
                while not stop.is_set():
                    for i in range(20):
                        assert os.stat(m.mnt / "hot" / f"h{i}").st_size == i
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        before = _handoffs(m)
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        lk = threading.Thread(target=looker)
        lk.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stop.set()
        lk.join(10)
        assert not errors, errors
        assert sorted(done) == list(range(8))
        assert _handoffs(m) - before > 0
        for w in range(8):
            assert sorted(os.listdir(server.export / f"w{w}")) == sorted(
                f"f{i}" for i in range(0, 40, 2))


def test_a_frozen_server_does_not_stop_answers_from_memory(tmp_path):
    with cluster(tmp_path, extra="timeout=10") as (server, (m,)):
        (m.mnt / "cached").write_text("a")
        (m.mnt / "waits").write_text("b")
        os.stat(m.mnt / "cached")
        sh("echo 2 > /proc/sys/vm/drop_caches")
        result: list[object] = []

        def opener() -> None:
            try:
                result.append((m.mnt / "waits").read_text())  # OPEN: needs the server
            except OSError as e:
                result.append(e)

        server.proc.send_signal(signal.SIGSTOP)
        try:
            t = threading.Thread(target=opener)
            t.start()
            time.sleep(0.5)
            assert t.is_alive() and not result  # it waits on the frozen server
            t0 = time.monotonic()
            st = os.stat(m.mnt / "cached")  # a LOOKUP mxfs answers from memory
            took = time.monotonic() - t0
            assert st.st_size == 1 and took < 2, took
            assert t.is_alive()
        finally:
            server.proc.send_signal(signal.SIGCONT)
        t.join(15)
        assert result == ["b"]


@pytest.mark.parametrize("how", ["unmount", "SIGTERM"])
def test_the_mount_ends_cleanly_while_a_handler_waits_on_a_frozen_server(tmp_path, how):
    """The end of the session reaches every worker (the one waiting on the server, the one
    reading /dev/fuse, any parked): the mount process exits, nothing hangs. SIGTERM ends it
    at once; a lazy unmount once the waiting request has failed (the kernel keeps the
    connection while a request of it is in flight: timeout=3 here)."""
    with cluster(tmp_path, extra="timeout=30" if how == "SIGTERM" else "timeout=3"
                 ) as (server, (m,)):
        (m.mnt / "waits").write_text("b")
        result: list[object] = []

        def opener() -> None:
            try:
                result.append((m.mnt / "waits").read_text())
            except OSError as e:
                result.append(e.errno)

        server.proc.send_signal(signal.SIGSTOP)
        try:
            t = threading.Thread(target=opener, daemon=True)
            t.start()
            time.sleep(0.5)
            assert t.is_alive()  # its OPEN waits on the frozen server
            t0 = time.monotonic()
            if how == "unmount":
                sh(f"fusermount3 -u -z {m.mnt}")
            else:
                m.proc.send_signal(signal.SIGTERM)
            m.proc.wait(10)  # (SIGTERM: well before the 30 s request timeout)
            assert time.monotonic() - t0 < 10
            t.join(10)
            assert not t.is_alive() and result and result[0] != "b", result
        finally:
            server.proc.send_signal(signal.SIGCONT)
