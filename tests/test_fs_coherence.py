"""Two clients of one server: a change on one is seen by the other's very next look, with no
timeout to wait for (callbacks, server/callbacks.py), while unchanged things are answered
without asking the server."""

from __future__ import annotations

import errno
import os
import signal
import stat
import time

import pytest
from conftest_fs import cluster, errno_of, needs_fuse, sh

pytestmark = [needs_fuse, pytest.mark.fuse]


def _requests(m) -> int:
    return m.stats()["client"]["messages_sent"]


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_a_change_is_seen_at_once_by_the_other_client(tmp_path, transport):
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        fa, fb = a.mnt / "f", b.mnt / "f"
        fa.write_bytes(b"one")
        assert fb.read_bytes() == b"one" and os.stat(fb).st_size == 3  # b caches it all
        os.chmod(fa, 0o600)
        assert stat.S_IMODE(os.stat(fb).st_mode) == 0o600
        fa.write_bytes(b"two")  # same size, same second: only the break tells b
        assert fb.read_bytes() == b"two"
        os.truncate(fa, 1)
        assert os.stat(fb).st_size == 1 and fb.read_bytes() == b"t"
        os.setxattr(fa, "user.k", b"v")
        assert os.getxattr(fb, "user.k") == b"v"
        # names: a negative lookup, a create, a rename, an unlink
        assert not (b.mnt / "new").exists()
        (a.mnt / "new").write_text("n")
        assert (b.mnt / "new").read_text() == "n"
        os.rename(a.mnt / "new", a.mnt / "renamed")
        assert not (b.mnt / "new").exists() and (b.mnt / "renamed").read_text() == "n"
        os.rename(a.mnt / "renamed", a.mnt / "f")  # over a file b has cached
        assert fb.read_text() == "n"
        os.unlink(a.mnt / "f")
        assert errno_of(os.stat, fb) == errno.ENOENT
        (a.mnt / "d").mkdir()
        assert os.listdir(b.mnt / "d") == []
        (a.mnt / "d" / "x").write_text("")
        assert os.listdir(b.mnt / "d") == ["x"]
        cache = b.stats()["cache"]
        assert cache["active"] == 1 and cache["breaks"] > 0
        assert a.stats()["server_side"]["breaks_waited"] > 0


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_what_did_not_change_is_answered_without_the_server(tmp_path, transport):
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        data = os.urandom(1 << 20)
        (a.mnt / "big").write_bytes(data)
        for i in range(20):
            (a.mnt / f"s{i}").write_text(str(i))
        assert (b.mnt / "big").read_bytes() == data
        for i in range(20):
            os.stat(b.mnt / f"s{i}")
        before = b.stats()["client"]
        assert (b.mnt / "big").read_bytes() == data  # re-read: the kernel kept the pages
        after = b.stats()["client"]
        assert after["payload_bytes_received"] - before["payload_bytes_received"] < 64 * 1024
        # the kernel forgets its dentries and inodes: the client answers from memory
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        n = _requests(b)
        per_stats_read = _requests(b) - n  # (reading the counters costs messages too)
        n += per_stats_read
        for i in range(20):
            assert os.stat(b.mnt / f"s{i}").st_size == len(str(i))
        assert _requests(b) - n <= per_stats_read
        assert b.stats()["cache"]["hits"] >= 20


@pytest.mark.parametrize("block", [10240, 65536])
def test_a_file_written_in_blocks_is_read_back_in_one_request(tmp_path, block):
    """tar writes 10 KiB blocks: the pages two blocks share are left only partly written in
    the kernel's cache, and kept they made a reader fetch the file piecemeal around them;
    aligned blocks leave whole pages, and either way reading it back is one READ."""
    with cluster(tmp_path, "mx", clients=1) as (server, (a,)):
        data = os.urandom(4 * 10240 + 123)
        fd = os.open(a.mnt / "t", os.O_CREAT | os.O_WRONLY, 0o644)
        for off in range(0, len(data), block):
            os.write(fd, data[off:off + block])
        os.close(fd)
        os.utime(a.mnt / "t", ns=(10**18, 10**18))  # (as tar does: the kernel's copy is current)
        n = _requests(a)
        per_stats_read = _requests(a) - n
        n += per_stats_read
        assert (a.mnt / "t").read_bytes() == data
        assert _requests(a) - n - per_stats_read <= 3  # OPEN, one READ, the posted RELEASE
        n = _requests(a)
        assert (a.mnt / "t").read_bytes() == data  # and then the cache is kept: no READ
        assert _requests(a) - n - per_stats_read <= 2  # OPEN, the posted RELEASE
        assert os.stat(a.mnt / "t").st_size == len(data)


def test_a_client_that_stops_answering_loses_its_promises(tmp_path):
    with cluster(tmp_path, "mx", clients=2, server_args=("--break-timeout", "1")) as (
            server, (a, b)):
        (a.mnt / "f").write_text("x")
        os.stat(b.mnt / "f")
        b.proc.send_signal(signal.SIGSTOP)
        try:
            t = time.monotonic()
            os.chmod(a.mnt / "f", 0o600)  # waits for b at most the break timeout
            assert time.monotonic() - t < 30
            (a.mnt / "g").write_text("a goes on")
        finally:
            b.proc.send_signal(signal.SIGCONT)
        assert "did not acknowledge" in server.log_text()
        # b's connection was cut: it reconnects and trusts nothing it had
        deadline = time.monotonic() + 15
        while stat.S_IMODE(os.stat(b.mnt / "f").st_mode) != 0o600:
            assert time.monotonic() < deadline, "b kept its stale attributes"
            time.sleep(0.05)
        assert b.stats()["client"]["reconnects"] >= 1


def test_a_promise_is_never_trusted_after_a_reconnect(tmp_path):
    with cluster(tmp_path, "mx", clients=2) as (server, (a, b)):
        (a.mnt / "f").write_text("x")
        os.stat(b.mnt / "f")
        server.kill()  # promises die with the server
        server.start()
        # the other client changes it on the new server run (nobody holds a promise there)
        deadline = time.monotonic() + 15
        while True:
            try:
                os.chmod(a.mnt / "f", 0o640)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        deadline = time.monotonic() + 15
        while stat.S_IMODE(os.stat(b.mnt / "f").st_mode) != 0o640:
            assert time.monotonic() < deadline, "b trusted a promise of the old server run"
            time.sleep(0.05)


def test_what_an_open_brought_is_not_read_after_the_server_restarted(tmp_path):
    """A descriptor whose OPEN brought the file's bytes, the server restarted and the file
    rewritten on its disk meanwhile: the next read is of the file as it is now (the handle
    is opened again on the new server run), not of what came before the restart."""
    with cluster(tmp_path, "mx") as (server, (a,)):
        (server.export / "f").write_bytes(b"old" * 100)
        os.listdir(a.mnt)
        fd = os.open(a.mnt / "f", os.O_RDONLY | os.O_DIRECT)  # (every read is a READ)
        try:
            assert a.stats()["cache"]["ahead_held"] == 300
            server.kill()
            (server.export / "f").write_bytes(b"new" * 100)
            server.start()
            deadline = time.monotonic() + 15
            while True:
                try:
                    got = os.pread(fd, 300, 0)
                    break
                except OSError:  # (while the client reconnects)
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert got == b"new" * 100
        finally:
            os.close(fd)


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_two_clients_racing_on_the_same_names(tmp_path, transport):
    """Both clients create the same 100 names with O_EXCL at once, in a directory one of them
    made (so it "knows" every name in it until the other's first create breaks that): each
    name is created exactly once, and afterwards both see the same listing and contents."""
    import threading
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        (a.mnt / "race").mkdir()
        os.listdir(b.mnt / "race")
        won: dict[str, list[str]] = {"a": [], "b": []}

        def creator(who: str, mnt) -> None:
            for i in range(100):
                try:
                    fd = os.open(mnt / "race" / f"n{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                                 0o644)
                except FileExistsError:
                    continue
                os.write(fd, who.encode())
                os.close(fd)
                won[who].append(f"n{i}")

        threads = [threading.Thread(target=creator, args=(w, m.mnt))
                   for w, m in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(won["a"] + won["b"]) == sorted(f"n{i}" for i in range(100))
        assert not set(won["a"]) & set(won["b"])
        for m in (a, b):
            assert sorted(os.listdir(m.mnt / "race")) == sorted(f"n{i}" for i in range(100))
        for who in ("a", "b"):
            for name in won[who]:
                assert (a.mnt / "race" / name).read_text() == who
                assert (b.mnt / "race" / name).read_text() == who


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_no_xattrs_is_answered_from_memory_until_someone_sets_one(tmp_path, transport):
    """ls -l, cp -a and getfattr ask every file for extended attributes. A file the server
    said has none is answered from memory while the promise holds; another client's
    setxattr breaks it at once, and this client's own setxattr/removexattr forgets it."""
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        fa, fb, real = a.mnt / "f", b.mnt / "f", server.export / "f"
        fa.write_text("x")
        os.listdir(b.mnt)  # b learns f (READDIR): it has no extended attributes
        before = _requests(b)
        for _ in range(5):
            assert errno_of(os.getxattr, fb, "user.k") == errno.ENODATA
            assert os.listxattr(fb) == []
        assert _requests(b) - before - 2 == 0
        assert b.stats()["cache"]["xattr_hits"] >= 10
        os.setxattr(fa, "user.k", b"v")  # another client's: b is told before a returns
        assert os.getxattr(fb, "user.k") == b"v" and os.listxattr(fb) == ["user.k"]
        os.removexattr(fb, "user.k")  # b's own
        assert errno_of(os.getxattr, fa, "user.k") == errno.ENODATA
        assert os.listxattr(fa) == [] and os.listxattr(fb) == []
        os.listdir(b.mnt)  # b learns again that f has none...
        hits = b.stats()["cache"]["xattr_hits"]
        assert os.listxattr(fb) == [] and b.stats()["cache"]["xattr_hits"] == hits + 1
        os.setxattr(fb, "user.j", b"w")  # ...and sets one itself
        assert os.getxattr(fb, "user.j") == b"w" and os.getxattr(fa, "user.j") == b"w"
        assert os.stat(fb).st_ctime_ns == os.stat(real).st_ctime_ns  # (its ctime moved)
        os.symlink("f", a.mnt / "link")
        assert errno_of(lambda: os.getxattr(b.mnt / "link", "user.k", follow_symlinks=False)
                        ) == errno.ENODATA


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_a_remembered_listing_shows_the_other_clients_changes_at_once(tmp_path, transport):
    """b lists a directory from memory while nothing in it changed; a's create, unlink,
    rename, chmod and write there are in b's very next listing (ls -l for the attributes)."""
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        da, db = a.mnt / "d", b.mnt / "d"
        da.mkdir()
        for i in range(5):
            (da / f"f{i}").write_text("x")
        names = {f"f{i}" for i in range(5)}
        assert set(os.listdir(db)) == names
        hits = b.stats()["cache"]["listing_hits"]
        assert set(os.listdir(db)) == names
        assert b.stats()["cache"]["listing_hits"] == hits + 1
        (da / "new").write_text("n")
        assert set(os.listdir(db)) == names | {"new"}
        os.unlink(da / "f0")
        assert set(os.listdir(db)) == names - {"f0"} | {"new"}
        os.rename(da / "f1", da / "g1")
        assert set(os.listdir(db)) == names - {"f0", "f1"} | {"new", "g1"}
        os.chmod(da / "f2", 0o600)
        (da / "f3").write_text("eleven long")

        def ls_l() -> dict[str, list[str]]:
            rows = [line.split() for line in sh(f"ls -l {db}").stdout.splitlines()[1:]]
            return {r[-1]: r for r in rows}

        rows = ls_l()
        assert rows["f2"][0] == "-rw-------" and rows["f3"][4] == "11"
        assert ls_l() == rows  # (from memory again)
        assert b.stats()["cache"]["listing_hits"] >= hits + 2


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_what_an_open_brought_is_not_read_after_the_file_changed(tmp_path, transport):
    """b's OPEN brings the file's first bytes; b reads only after a rewrote the file, or
    after b itself wrote or truncated it through another descriptor: each read sees the
    new bytes, not what the OPEN brought."""
    with cluster(tmp_path, transport, clients=2) as (server, (a, b)):
        (a.mnt / "f").write_bytes(b"old" * 100)
        os.listdir(b.mnt)
        asked = b.stats()["cache"]["ahead_asked"]
        fd = os.open(b.mnt / "f", os.O_RDONLY)
        try:
            assert b.stats()["cache"]["ahead_held"] == 300  # it came with the open
            (a.mnt / "f").write_bytes(b"new" * 100)  # a's close: b is told first
            assert os.pread(fd, 300, 0) == b"new" * 100
        finally:
            os.close(fd)
        # files b never read (its kernel has no pages of them: its OPEN asks), read with
        # O_DIRECT (every read is a READ; the kernel's pages would answer a buffered one)
        (a.mnt / "g").write_bytes(b"old" * 100)
        (a.mnt / "h").write_bytes(b"old" * 100)
        os.listdir(b.mnt)
        fd = os.open(b.mnt / "g", os.O_RDONLY | os.O_DIRECT)
        try:
            assert b.stats()["cache"]["ahead_held"] == 300
            with open(b.mnt / "g", "r+b") as w:
                w.write(b"own")
            assert os.pread(fd, 3, 0) == b"own"
        finally:
            os.close(fd)
        fd = os.open(b.mnt / "h", os.O_RDONLY | os.O_DIRECT)
        try:
            assert b.stats()["cache"]["ahead_held"] == 300
            os.truncate(b.mnt / "h", 2)
            assert os.pread(fd, 300, 0) == b"ol"
        finally:
            os.close(fd)
        assert b.stats()["cache"]["ahead_asked"] > asked


def test_a_change_on_the_servers_disk_is_seen_after_lease_timeout(tmp_path):
    """A local process on the server breaks no promise: what the client cached (attributes,
    a name it knows is absent, even in a directory it made, "no extended attributes", a
    directory's listing)
    expires after lease_timeout."""
    with cluster(tmp_path, "mx", clients=1, extra="lease_timeout=1") as (server, (a,)):
        (a.mnt / "d").mkdir()  # made here: every name in it is known absent
        (a.mnt / "f").write_text("x")
        assert stat.S_IMODE(os.stat(a.mnt / "f").st_mode) == 0o644
        assert not (a.mnt / "d" / "local").exists()
        assert os.listxattr(a.mnt / "f") == []  # (answered from memory: it has none)
        assert os.listdir(a.mnt / "d") == os.listdir(a.mnt / "d") == []  # (then from memory)
        os.chmod(server.export / "f", 0o600)
        os.setxattr(server.export / "f", "user.local", b"1")
        (server.export / "d" / "local").write_text("made on the server")
        deadline = time.monotonic() + 10
        while (stat.S_IMODE(os.stat(a.mnt / "f").st_mode) != 0o600
               or not (a.mnt / "d" / "local").exists()
               or os.listxattr(a.mnt / "f") != ["user.local"]
               or os.listdir(a.mnt / "d") != ["local"]):
            assert time.monotonic() < deadline, "a cached copy outlived lease_timeout"
            time.sleep(0.1)
        assert (a.mnt / "d" / "local").read_text() == "made on the server"


def test_looking_again_and_again_does_not_stretch_lease_timeout(tmp_path):
    """An answer from memory renews no promise: a client asked again and again (the kernel's
    own copies dropped before each look, so every one is answered from the client's memory)
    still sees a change made on the server's disk within lease_timeout of it (attributes,
    and a name known absent)."""
    lease = 2.0

    def forget_kernel_copies() -> None:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")

    with cluster(tmp_path, "mx", clients=1, extra=f"lease_timeout={lease:g}") as (server, (a,)):
        (a.mnt / "f").write_text("x")
        assert not (a.mnt / "new").exists()
        for _ in range(10):  # ~1 s of answers from memory before the change
            forget_kernel_copies()
            os.stat(a.mnt / "f")
            assert not (a.mnt / "new").exists()
            time.sleep(0.1)
        os.chmod(server.export / "f", 0o600)
        (server.export / "new").write_text("made on the server")
        changed = time.monotonic()
        seen: dict[str, float] = {}
        while len(seen) < 2 and time.monotonic() - changed < 3 * lease:
            forget_kernel_copies()
            if "mode" not in seen and stat.S_IMODE(os.stat(a.mnt / "f").st_mode) == 0o600:
                seen["mode"] = time.monotonic() - changed
            if "name" not in seen and (a.mnt / "new").exists():
                seen["name"] = time.monotonic() - changed
            time.sleep(0.1)
        assert seen.keys() == {"mode", "name"}, f"never seen: {seen}"
        assert max(seen.values()) < lease + 0.5, seen


def test_the_client_cache_stays_within_cache_max(tmp_path):
    """cache_max bounds what the client keeps, however many objects it has seen; answers
    beyond it come from the server, still right."""
    with cluster(tmp_path, "mx", clients=1, extra="cache_max=100") as (server, (a,)):
        d = a.mnt / "many"
        d.mkdir()
        for i in range(600):
            (d / f"f{i}").write_text(str(i))
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        for i in range(600):
            assert os.stat(d / f"f{i}").st_size == len(str(i))
        cache = a.stats()["cache"]
        assert cache["attrs"] <= 100 and cache["entries"] <= 100
        assert cache["misses"] > 0  # (those beyond the bound were asked for again)


def test_unmounting_a_client_with_promises_logs_no_traceback(tmp_path):
    """Unmounting ends the invalidator first, then the connection, whose end voids the
    promises: that must find nothing left to do, not fail in a closed nursery."""
    with cluster(tmp_path, "mx") as (server, (a,)):
        (a.mnt / "f").write_text("x")
        assert a.stats()["cache"]["active"] == 1
        log = a.log
    text = log.read_text()
    assert "Traceback" not in text and "callback failed" not in text, text[-2000:]
