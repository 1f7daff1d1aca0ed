"""End to end (issue 12): device nodes of every kind with their rdev, on a nodev mount; a FIFO
that replaced a file a client still takes for a regular one stalls nobody; f-calls on an open,
unlinked file work as on a local file system."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_fs import MountProc, cluster, needs_fuse, sh

pytestmark = [needs_fuse]


@pytest.fixture(params=["mx", "gm"])
def transport(request):
    return request.param



def test_mknod_every_kind_and_the_mount_is_nodev(open_tmp, transport):
    with cluster(open_tmp, transport, clients=1) as (server, (m,)):
        sh(f"cd {m.mnt} && mknod null c 1 3 && mknod loop b 7 0 && mkfifo p && "
           f"{sys.executable} -c 'import os, stat; os.mknod(\"s\", stat.S_IFSOCK | 0o640)' && "
           "mknod r0 p && touch reg")
        kinds = {"null": (stat.S_ISCHR, os.makedev(1, 3)), "loop": (stat.S_ISBLK, os.makedev(7, 0)),
                 "p": (stat.S_ISFIFO, 0), "s": (stat.S_ISSOCK, 0), "reg": (stat.S_ISREG, 0)}
        for name, (is_kind, rdev) in kinds.items():
            for where in (server.export, m.mnt):
                st = os.lstat(where / name)
                assert is_kind(st.st_mode) and st.st_rdev == rdev, (where, name)
        assert stat.S_IMODE(os.lstat(server.export / "s").st_mode) == 0o640
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        opts = next(line.split()[3] for line in mounts if line.split()[1] == str(m.mnt))
        assert "nodev" in opts.split(",")
        with pytest.raises(PermissionError):  # a device on the export is not one here
            open(m.mnt / "null", "rb")


def test_fifo_in_place_of_a_file_stalls_nobody(open_tmp, transport):
    """A believes "f" is a regular file; B replaces it with a FIFO; A opens it for reading.
    The server must not block in open(): B, A's other readers and a new mount keep working."""
    with cluster(open_tmp, transport, clients=2, extra="allow_other") as (server, (a, b)):
        (a.mnt / "f").write_text("file\n")
        (a.mnt / "other").write_text("other\n")
        assert (a.mnt / "f").read_text() == "file\n"  # A's kernel caches a regular file
        (b.mnt / "f").unlink()
        os.mkfifo(b.mnt / "f")
        reader = subprocess.Popen(["cat", str(a.mnt / "f")], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        third = None
        try:
            time.sleep(0.5)  # (its open is in the server now, or blocked on A's side)
            t0 = time.monotonic()
            sh(f"ls {b.mnt} && echo more > {b.mnt}/new && cat {b.mnt}/new", timeout=8)
            assert (a.mnt / "other").read_text() == "other\n"
            third = MountProc(server.port, open_tmp / "mnt2", server.secret_file,
                              transport).start(timeout=8)
            assert (third.mnt / "new").read_text() == "more\n"
            assert time.monotonic() - t0 < 8
            # a writer on A's side meets the reader there: FIFOs are local to each client
            if reader.poll() is None:
                with open(a.mnt / "f", "w") as w:
                    w.write("through the fifo\n")
            out, err = reader.communicate(timeout=8)
            assert out in ("through the fifo\n", ""), (out, err)
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait(5)
            if third is not None:
                third.stop()
        assert stat.S_ISFIFO(os.lstat(server.export / "f").st_mode)


UNLINKED_FCALLS = r"""
import os, sys
p = sys.argv[1]
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"data")
os.unlink(p)
os.fchmod(fd, 0o640)
os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
st = os.fstat(fd)
assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 2_000_000_000), st
os.utime(fd)  # now
os.setxattr(fd, "user.k", b"v")
assert os.getxattr(fd, "user.k") == b"v"
assert "user.k" in os.listxattr(fd)
os.removexattr(fd, "user.k")
assert "user.k" not in os.listxattr(fd)
if os.geteuid() == 0:
    os.fchown(fd, 1234, 5678)
st = os.fstat(fd)
print(oct(st.st_mode), st.st_uid, st.st_gid, st.st_nlink, st.st_size)
"""


@pytest.mark.parametrize("who", ["root", "user"])
def test_fcalls_on_an_unlinked_open_file(open_tmp, transport, who):
    script = open_tmp / "fcalls.py"
    script.write_text(UNLINKED_FCALLS)
    local = open_tmp / "local"
    local.mkdir(mode=0o1777)
    local.chmod(0o1777)
    run = sys.executable if who == "root" else (
        f"setpriv --reuid=65534 --regid=65534 --clear-groups {sys.executable}")
    want = sh(f"{run} {script} {local}/f").stdout
    with cluster(open_tmp, transport, clients=1, extra="allow_other") as (server, (m,)):
        (m.mnt / "pub").mkdir()
        (m.mnt / "pub").chmod(0o1777)
        assert sh(f"{run} {script} {m.mnt}/pub/f").stdout == want
