"""End to end: standard tools on a real mxfs mount, on both transports, same results."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import stat
import struct
from pathlib import Path

import pytest
from conftest_fs import ROOT, cluster, needs_fuse, sh

pytestmark = [needs_fuse, pytest.mark.fuse]

SRC = ROOT / "mxnet"  # a real source tree to copy around


def sent(m) -> int:
    """Messages the mount's client has sent so far, the two that read them included
    (os.getxattr asks twice: once with a small buffer, then with one of the size)."""
    return m.stats()["client"]["messages_sent"]


@pytest.fixture(scope="module", params=["mx", "gm"])
def fsenv(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"tools-{request.param}")
    with cluster(tmp, request.param) as (server, mounts):
        yield server, mounts[0], tmp


def test_cp_tree_diff(fsenv):
    server, m, tmp = fsenv
    sh(f"cp -a {SRC} {m.mnt}/tree")
    sh(f"diff -r {SRC} {m.mnt}/tree")
    sh(f"diff -r {SRC} {server.export}/tree")
    out = sh(f"ls -lR {m.mnt}/tree").stdout
    assert "endpoint.py" in out
    n_src = int(sh(f"find {SRC} | wc -l").stdout)
    assert int(sh(f"find {m.mnt}/tree | wc -l").stdout) == n_src
    assert int(sh(f"du -s {m.mnt}/tree").stdout.split()[0]) > 0


def test_tar_roundtrip(fsenv):
    server, m, tmp = fsenv
    sh(f"tar cf {tmp}/src.tar -C {ROOT} mxnet server")
    (m.mnt / "untar").mkdir()
    sh(f"tar xf {tmp}/src.tar -C {m.mnt}/untar")
    sh(f"diff -r {ROOT}/server {m.mnt}/untar/server")
    sh(f"tar cf {tmp}/back.tar -C {m.mnt}/untar mxnet")
    sh(f"mkdir -p {tmp}/back && tar xf {tmp}/back.tar -C {tmp}/back && diff -r {SRC} {tmp}/back/mxnet")


def test_rsync(fsenv):
    server, m, tmp = fsenv
    if not shutil.which("rsync"):
        pytest.skip("rsync not installed")
    sh(f"rsync -a {SRC}/ {m.mnt}/rs/")
    sh(f"diff -r {SRC} {m.mnt}/rs")
    r = sh(f"rsync -ai {SRC}/ {m.mnt}/rs/").stdout  # nothing to do the second time
    assert r.strip() == ""


def test_git(fsenv):
    server, m, tmp = fsenv
    g = "git -c user.email=t@e -c user.name=t -c init.defaultBranch=main"
    repo = m.mnt / "repo"
    repo.mkdir()
    sh(f"cp -a {ROOT}/server {repo}/")
    sh(f"{g} init -q && {g} add . && {g} commit -qm first", cwd=repo)
    (repo / "new.txt").write_text("more\n")
    sh(f"{g} add new.txt && {g} commit -qm second", cwd=repo)
    sh(f"{g} clone -q {repo} {m.mnt}/clone")
    assert (m.mnt / "clone" / "new.txt").read_text() == "more\n"
    assert sh(f"{g} log --oneline", cwd=m.mnt / "clone").stdout.count("\n") == 2
    sh(f"{g} fsck --no-progress", cwd=repo)


def test_sqlite(fsenv):
    server, m, tmp = fsenv
    if not shutil.which("sqlite3"):
        pytest.skip("sqlite3 not installed")
    db = m.mnt / "db.sqlite"
    sh(f"sqlite3 {db} 'create table t(a integer, b text);'")
    sql = "begin;" + "".join(f"insert into t values ({i}, 'row{i}');" for i in range(500)) + "commit;"
    sh(f"sqlite3 {db} \"{sql}\"")
    out = sh(f"sqlite3 {db} 'select count(*), sum(a) from t; pragma integrity_check;'").stdout
    assert out.split() == ["500|124750", "ok"]


@pytest.mark.parametrize("bs,count", [("4k", 600), ("4M", 6)])
def test_dd_checksums(fsenv, bs, count):
    server, m, tmp = fsenv
    src = tmp / f"rand-{bs}"
    sh(f"dd if=/dev/urandom of={src} bs={bs} count={count} status=none")
    dst = m.mnt / f"dd-{bs}"
    sh(f"dd if={src} of={dst} bs={bs} status=none")
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    assert hashlib.sha256((server.export / dst.name).read_bytes()).hexdigest() == want
    sh("echo 3 > /proc/sys/vm/drop_caches", check=False)
    got = sh(f"dd if={dst} bs={bs} status=none | sha256sum").stdout.split()[0]
    assert got == want


def test_redirections_and_mv(fsenv):
    server, m, tmp = fsenv
    f = m.mnt / "log.txt"
    sh(f"echo one > {f}")
    sh(f"echo two >> {f}")
    sh(f"echo three >> {f}")
    assert f.read_text() == "one\ntwo\nthree\n"
    sh(f"echo new > {f}")
    assert f.read_text() == "new\n"
    (m.mnt / "a" / "b").mkdir(parents=True)
    (m.mnt / "c").mkdir()
    sh(f"mv {f} {m.mnt}/a/b/moved.txt")
    sh(f"mv {m.mnt}/a/b {m.mnt}/c/")
    assert (m.mnt / "c" / "b" / "moved.txt").read_text() == "new\n"
    assert (server.export / "c" / "b" / "moved.txt").exists()
    assert not f.exists()


def test_metadata_ops(fsenv):
    server, m, tmp = fsenv
    d = m.mnt / "meta"
    d.mkdir()
    f = d / "f"
    f.write_bytes(b"0123456789")
    os.chmod(f, 0o600)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    os.chown(f, 1234, 4321)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1234, 4321)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(f).st_mtime_ns == 2_000_000_000
    os.truncate(f, 4)
    assert f.read_bytes() == b"0123"
    with open(f, "r+b") as fh:
        os.ftruncate(fh.fileno(), 2)
    assert os.stat(f).st_size == 2
    os.symlink("f", d / "ln")
    assert os.readlink(d / "ln") == "f" and (d / "ln").read_bytes() == b"01"
    os.link(f, d / "hard")
    assert os.stat(f).st_nlink == 2 and os.stat(d / "hard").st_ino == os.stat(f).st_ino
    os.mkfifo(d / "fifo")
    assert stat.S_ISFIFO(os.lstat(d / "fifo").st_mode)
    os.setxattr(f, "user.k", b"v")
    assert os.getxattr(f, "user.k") == b"v" and "user.k" in os.listxattr(f)
    os.removexattr(f, "user.k")
    with pytest.raises(OSError) as ei:
        os.getxattr(f, "user.k")
    assert ei.value.errno == errno.ENODATA
    s = os.statvfs(m.mnt)
    assert s.f_blocks > 0 and s.f_namemax > 0
    with open(f, "w") as fh:
        fh.write("x")
        os.fsync(fh.fileno())


def test_directory_changes_cost_no_extra_getattr(fsenv):
    """The kernel drops a directory's attributes after every create, mkdir or unlink in it and
    asks for them again (permission check) before the next one. The server's reply carries
    the directory's attributes after the change, and the client answers that getattr with
    them: a create is LOOKUP + CREATE + RELEASE (was 4 round trips), a mkdir LOOKUP + MKDIR."""
    server, m, tmp = fsenv
    d = m.mnt / "postop"
    d.mkdir()
    os.stat(d)
    n = 30

    before = sent(m)
    for i in range(n):
        os.close(os.open(d / f"f{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    assert sent(m) - before - 1 <= 3 * n + 2
    before = sent(m)
    for i in range(n):
        os.mkdir(d / f"d{i}")
    assert sent(m) - before - 1 <= 2 * n + 2
    # what the kernel was told is what the server's disk says
    st, real = os.stat(d), os.stat(server.export / "postop")
    assert (st.st_nlink, st.st_mtime_ns, st.st_ctime_ns) == \
        (real.st_nlink, real.st_mtime_ns, real.st_ctime_ns) and st.st_nlink == n + 2
    for i in range(n):
        os.unlink(d / f"f{i}")
        os.rmdir(d / f"d{i}")
    st, real = os.stat(d), os.stat(server.export / "postop")
    assert (st.st_nlink, st.st_mtime_ns) == (real.st_nlink, real.st_mtime_ns) == (2, st.st_mtime_ns)
    assert os.listdir(d) == []


def test_file_capabilities_dropped_on_write_but_never_asked_of_new_files(fsenv):
    """Before every write the kernel asks for security.capability, to drop it (a written
    binary must lose its file capabilities). A file this client just created has none, so
    writing it costs no such round trip; a file that has one still loses it."""
    server, m, tmp = fsenv
    d = m.mnt / "caps"
    d.mkdir()
    n = 20

    before = sent(m)
    for i in range(n):  # LOOKUP, CREATE, WRITE, RELEASE (no GETXATTR)
        (d / f"new{i}").write_bytes(b"x" * 100)
    assert sent(m) - before - 1 <= 4 * n + 2
    real = server.export / "caps" / "bin"
    (d / "bin").write_bytes(b"\x7fELF")  # (through the mount: the client sees it at once)
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # v2, effective, CAP_NET_RAW
    os.setxattr(d / "bin", "security.capability", cap)
    assert os.getxattr(real, "security.capability") == cap
    with open(d / "bin", "r+b") as f:
        f.write(b"\x7fELG")
    with pytest.raises(OSError) as ei:
        os.getxattr(real, "security.capability")
    assert ei.value.errno == errno.ENODATA
    assert real.read_bytes() == b"\x7fELG"


def test_tar_extract_costs_no_extra_round_trips(fsenv):
    """tar writes each file, then sets its times, owner and mode. The kernel drops a file's
    attributes on a write and a setattr and asks for them again; it asks for
    security.capability before the first write. WRITE and SETATTR answers carry the
    attributes, and a file this client created has no capability: per file that leaves
    LOOKUP, CREATE, WRITE, three SETATTRs and RELEASE (was nine round trips)."""
    server, m, tmp = fsenv
    src = tmp / "tar-src"
    src.mkdir(exist_ok=True)
    n = 30
    for i in range(n):
        (src / f"f{i}").write_bytes(b"z" * (100 + i))
        os.utime(src / f"f{i}", ns=(1_000_000_000, (2 + i) * 1_000_000_000))  # tar: whole s
    sh(f"tar cf {tmp}/small.tar -C {src} .")
    d = m.mnt / "untar-counted"
    d.mkdir()

    before = sent(m)
    sh(f"tar xf {tmp}/small.tar -C {d}")
    assert sent(m) - before - 1 <= 7 * n + 6
    for i in range(n):
        st, real = os.stat(d / f"f{i}"), os.stat(server.export / "untar-counted" / f"f{i}")
        assert (st.st_size, st.st_mtime_ns) == (100 + i, (2 + i) * 1_000_000_000) == \
            (real.st_size, real.st_mtime_ns)
        assert st.st_mode == real.st_mode and (d / f"f{i}").read_bytes() == b"z" * (100 + i)


def test_fstat_after_a_write_costs_no_round_trip(fsenv):
    """A write drops the file's attributes in the kernel; the next fstat asks for them. The
    client sends the buffered write first and its answer carries the attributes after it."""
    server, m, tmp = fsenv
    d = m.mnt / "wstat"
    d.mkdir()
    n = 20

    before = sent(m)
    for i in range(n):
        fd = os.open(d / f"f{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.write(fd, b"a" * 10)
        assert os.fstat(fd).st_size == 10
        os.write(fd, b"b" * i)
        assert os.fstat(fd).st_size == 10 + i
        os.close(fd)
    # LOOKUP, CREATE, WRITE, WRITE, RELEASE: no GETATTR (was two per file)
    assert sent(m) - before - 1 <= 5 * n + 2
    for i in range(n):
        assert (server.export / "wstat" / f"f{i}").read_bytes() == b"a" * 10 + b"b" * i


def test_hard_link_outlives_its_first_name(fsenv):
    """ln b c; mv g b; rm ...: the file stays reachable through every name it has left."""
    server, m, tmp = fsenv
    d = m.mnt / "hl"
    d.mkdir()
    (d / "b").write_bytes(b"first")
    os.link(d / "b", d / "c")
    os.stat(d / "b")  # the kernel looks b up again after c
    (d / "g").write_bytes(b"second")
    os.rename(d / "g", d / "b")
    assert (d / "c").read_bytes() == b"first" and os.stat(d / "c").st_nlink == 1
    assert (d / "b").read_bytes() == b"second"
    os.link(d / "c", d / "e")
    os.stat(d / "c")
    os.unlink(d / "c")
    os.chmod(d / "e", 0o640)  # path-based calls still find the file
    assert (d / "e").read_bytes() == b"first"
    os.symlink("b", d / "s")
    os.link(d / "s", d / "t")  # a hard link to a symlink
    os.lstat(d / "s")
    os.rename(d / "e", d / "s")
    assert os.readlink(d / "t") == "b"


def test_errnos(fsenv):
    server, m, tmp = fsenv
    d = m.mnt / "err"
    d.mkdir()
    (d / "file").write_text("x")
    (d / "full").mkdir()
    (d / "full" / "x").write_text("x")
    cases = [
        (lambda: open(d / "missing"), errno.ENOENT),
        (lambda: os.mkdir(d / "file"), errno.EEXIST),
        (lambda: os.rmdir(d / "full"), errno.ENOTEMPTY),
        (lambda: os.unlink(d / "full"), errno.EISDIR),
        (lambda: os.rmdir(d / "file"), errno.ENOTDIR),
        (lambda: open(d / "file" / "x"), errno.ENOTDIR),
        (lambda: open(d / "full", "w"), errno.EISDIR),
        (lambda: os.open(d / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY), errno.EEXIST),
    ]
    for fn, want in cases:
        with pytest.raises(OSError) as ei:
            fn()
        assert ei.value.errno == want, (fn, ei.value)


_libc = ctypes.CDLL(None, use_errno=True)


def _renameat2(a: Path, b: Path, flags: int) -> int:
    r = _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), flags)
    return 0 if r == 0 else ctypes.get_errno()


def test_rename_flags(fsenv):
    server, m, tmp = fsenv
    a, b = m.mnt / "ra", m.mnt / "rb"
    a.write_text("A")
    b.write_text("B")
    assert _renameat2(a, b, 1) == errno.EEXIST  # RENAME_NOREPLACE
    assert _renameat2(a, b, 2) == 0  # RENAME_EXCHANGE
    assert a.read_text() == "B" and b.read_text() == "A"
    assert _renameat2(a, m.mnt / "rc", 1) == 0
    assert (m.mnt / "rc").read_text() == "B" and not a.exists()


def test_sparse_and_large_file(fsenv):
    server, m, tmp = fsenv
    f = m.mnt / "sparse"
    big = 5 * 1024**3
    with open(f, "wb") as fh:
        fh.seek(big)
        fh.write(b"tail")
        fh.seek(4096)
        fh.write(b"head")
    st = os.stat(f)
    assert st.st_size == big + 4
    assert st.st_blocks * 512 < 10 * 1024 * 1024
    with open(f, "rb") as fh:
        fh.seek(big - 4)
        assert fh.read(100) == b"\0\0\0\0tail"
        fh.seek(4096)
        assert fh.read(4) == b"head"
        assert fh.read(4) == b"\0\0\0\0"
    f.unlink()


def test_append_mode(fsenv):
    server, m, tmp = fsenv
    f = m.mnt / "app"
    f.write_bytes(b"start:")
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(5):
            os.write(fd, b"%d," % i)
        os.write(fd, b"x" * 100_000)  # large append travels as WDATA
    finally:
        os.close(fd)
    assert f.read_bytes() == b"start:0,1,2,3,4," + b"x" * 100_000


def test_big_directory_listing(fsenv):
    server, m, tmp = fsenv
    d = server.export / "bigdir"
    d.mkdir()
    names = {f"entry-{i:05d}-{'x' * 40}" for i in range(3000)}
    for n in names:
        (d / n).touch()
    listed = os.listdir(m.mnt / "bigdir")
    assert len(listed) == len(names) and set(listed) == names
    assert int(sh(f"ls -l {m.mnt}/bigdir | wc -l").stdout) == len(names) + 1


def test_listing_a_directory_costs_one_readdir(fsenv):
    """The kernel reads a directory until a readdir gives nothing; the server's answer already
    said the directory ends there, so that last readdir costs no round trip: a listing is
    OPENDIR, READDIR and a RELEASE that waits for no answer."""
    server, m, tmp = fsenv
    d = m.mnt / "listed"
    d.mkdir()
    for i in range(10):
        (d / f"f{i}").touch()
    (d / "empty").mkdir()
    for path, names in ((d, {f"f{i}" for i in range(10)} | {"empty"}), (d / "empty", set())):
        before = sent(m)
        assert set(os.listdir(path)) == names
        assert sent(m) - before - 2 == 3, path


def test_ls_l_asks_the_server_only_about_files_with_xattrs(fsenv):
    """ls -l asks every entry for its SELinux label and its POSIX ACL (two getxattrs). The
    READDIR answer says which entries have no extended attribute at all; those are answered
    from memory. The one file that has one costs its two round trips."""
    server, m, tmp = fsenv
    d = m.mnt / "lsl"
    d.mkdir()
    for i in range(30):
        (d / f"f{i:02d}").write_text("x")
    os.setxattr(d / "f00", "user.k", b"v")
    before = sent(m)
    out = sh(f"ls -l {d}").stdout.splitlines()
    assert len(out) == 31 and all(" f" in line for line in out[1:])
    assert sent(m) - before - 2 <= 3 + 2
    before = sent(m)
    out = sh(f"getfattr -d {d}/f00 {d}/f01").stdout
    assert sent(m) - before - 2 <= 4  # f00: LISTXATTR and GETXATTR (size, then value); f01: 0
    assert out.count('user.k="v"') == 1 and "f01" not in out


def test_listing_again_costs_no_readdir(fsenv):
    """A directory listed whole before (here over two READDIR batches), with nothing in it
    changed since, is listed from memory: OPENDIR and a RELEASE that waits for no answer.
    This client's own changes of its names or of an entry are in the next listing."""
    server, m, tmp = fsenv
    d = m.mnt / "relisted"
    d.mkdir()
    for i in range(600):
        (d / f"f{i:03d}").touch()
    first = set(os.listdir(d))
    assert len(first) == 600
    before = sent(m)
    assert set(os.listdir(d)) == first
    assert sent(m) - before - 2 == 2
    (d / "new").touch()
    assert set(os.listdir(d)) == first | {"new"}
    os.unlink(d / "f000")
    assert set(os.listdir(d)) == first - {"f000"} | {"new"}
    os.rename(d / "f001", d / "g001")
    assert set(os.listdir(d)) == first - {"f000", "f001"} | {"new", "g001"}
    os.chmod(d / "f002", 0o600)
    (d / "f003").write_text("four")
    rows = {r.split()[-1]: r.split() for r in sh(f"ls -l {d}").stdout.splitlines()[1:]}
    assert rows["f002"][0] == "-rw-------" and rows["f003"][4] == "4"
    assert set(os.listdir(server.export / "relisted")) == set(rows)


def test_unlinking_while_a_big_directory_is_read_leaves_no_stale_listing(fsenv):
    """find -delete style: entries are unlinked between the batches of one read of the
    directory. What that read saw must not be remembered as the directory's listing."""
    server, m, tmp = fsenv
    d = m.mnt / "deleting"
    d.mkdir()
    for i in range(700):
        (d / f"f{i:03d}").touch()
    seen = []
    with os.scandir(d) as it:
        for entry in it:
            seen.append(entry.name)
            if len(seen) % 2:
                os.unlink(entry.path)
    assert len(seen) == 700
    left = set(os.listdir(server.export / "deleting"))
    assert len(left) == 350
    assert set(os.listdir(d)) == left and set(os.listdir(d)) == left


def test_reading_a_small_file_costs_no_read_round_trip(fsenv):
    """cat of a small file: its OPEN brings its first bytes (the server has them in its page
    cache) and the READ that follows is answered from them: OPEN and a posted RELEASE."""
    server, m, tmp = fsenv
    d = server.export / "smallreads"
    d.mkdir()
    blobs = {f"f{i}": os.urandom(1000 * i + 1) for i in range(10)}
    for name, blob in blobs.items():
        (d / name).write_bytes(blob)  # (written on the server: in its page cache)
    os.listdir(m.mnt / "smallreads")  # (their names and sizes: no LOOKUP)
    hits = m.stats()["cache"]["ahead_hits"]
    before = sent(m)
    for name, blob in blobs.items():
        assert (m.mnt / "smallreads" / name).read_bytes() == blob
    assert sent(m) - before - 2 == 2 * len(blobs)
    assert m.stats()["cache"]["ahead_hits"] - hits == len(blobs)


def test_open_unlinked_file_still_readable(fsenv):
    server, m, tmp = fsenv
    f = m.mnt / "ghost"
    f.write_bytes(b"boo" * 1000)
    with open(f, "rb") as fh:
        f.unlink()
        assert not f.exists()
        assert os.fstat(fh.fileno()).st_size == 3000
        assert fh.read() == b"boo" * 1000


def test_parallel_readers_and_writers(fsenv):
    """Several requests in flight at once: parallel streams keep their data apart."""
    import threading

    server, m, tmp = fsenv
    blobs = {i: os.urandom(3 * 1024 * 1024 + i * 4097) for i in range(6)}
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            with open(m.mnt / f"par-{i}", "wb") as fh:
                data = memoryview(blobs[i])
                for off in range(0, len(data), 100_000):
                    fh.write(data[off:off + 100_000])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reader(i: int) -> None:
        try:
            with open(m.mnt / f"par-{i}", "rb") as fh:
                assert fh.read() == blobs[i]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    for fn in (writer, reader):
        threads = [threading.Thread(target=fn, args=(i,)) for i in blobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        sh("echo 3 > /proc/sys/vm/drop_caches", check=False)
    for i, data in blobs.items():
        assert (server.export / f"par-{i}").read_bytes() == data
