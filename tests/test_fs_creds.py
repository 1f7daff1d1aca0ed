"""End to end: the server acts as the caller (issue 12). Real mounts, both transports, two
clients with allow_other, root and an unprivileged user (setpriv as 65534, with or without
supplementary groups). The server's kernel decides access against the file as it is now,
not the client's cached attributes; modes, owners, setuid/setgid bits, umask and setgid
directories come out as on a local directory; root squash maps a client's root away."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest_fs import cluster, needs_fuse, sh

pytestmark = [needs_fuse, pytest.mark.skipif(shutil.which("setpriv") is None,
                                             reason="needs setpriv")]

NOBODY = 65534
GROUP = 5678  # a group nobody is not in unless the test gives it


def as_user(cmd: str, *, groups: str = "", check: bool = True, timeout: float = 60):
    grp = f"--groups={groups}" if groups else "--clear-groups"
    return sh(f"setpriv --reuid={NOBODY} --regid={NOBODY} {grp} sh -c {cmd!r}", check=check,
              timeout=timeout)


@pytest.fixture(params=["mx", "gm"])
def transport(request):
    return request.param



def test_rename_over_race_gives_eacces(open_tmp, transport):
    """nobody reads a 0644 file on A; root on B renames a 0600 root-only file over that name;
    nobody's next read on A (A's kernel still has the old attributes) must be refused."""
    with cluster(open_tmp, transport, clients=2, extra="allow_other") as (server, (a, b)):
        (a.mnt / "d").mkdir()
        (a.mnt / "d").chmod(0o777)
        (a.mnt / "d" / "f").write_text("public\n")
        assert as_user(f"cat {a.mnt}/d/f").stdout == "public\n"
        (b.mnt / "d" / "secret").write_text("root only\n")
        (b.mnt / "d" / "secret").chmod(0o600)
        os.rename(b.mnt / "d" / "secret", b.mnt / "d" / "f")
        r = as_user(f"cat {a.mnt}/d/f", check=False)
        assert "root only" not in r.stdout
        assert r.returncode != 0 and "Permission denied" in r.stderr, r


def test_append_into_root_file_refused(open_tmp, transport):
    with cluster(open_tmp, transport, clients=2, extra="allow_other") as (server, (a, b)):
        (a.mnt / "d").mkdir()
        (a.mnt / "d").chmod(0o777)
        as_user(f"echo one >> {a.mnt}/d/log")  # nobody's own file, seen by A
        (b.mnt / "d" / "rootlog").write_text("root\n")  # 0644, root's
        os.rename(b.mnt / "d" / "rootlog", b.mnt / "d" / "log")
        r = as_user(f"echo two >> {a.mnt}/d/log", check=False)
        assert r.returncode != 0 and "Permission denied" in r.stderr, r
        assert (server.export / "d" / "log").read_text() == "root\n"


def test_supplementary_groups_reach_the_server(open_tmp, transport):
    """Access through a supplementary group works; without the group it is refused, even when
    the client's kernel still believes otherwise."""
    with cluster(open_tmp, transport, clients=2, extra="allow_other") as (server, (a, b)):
        f = a.mnt / "grp"
        f.write_text("for the group\n")
        os.chown(f, 0, GROUP)
        f.chmod(0o640)
        assert as_user(f"cat {f}", groups=str(GROUP)).stdout == "for the group\n"
        r = as_user(f"cat {f}", check=False)
        assert r.returncode != 0 and "Permission denied" in r.stderr
        # B takes the group's read access away; A's kernel cached 0640
        as_user(f"cat {f}", groups=str(GROUP))
        (b.mnt / "grp").chmod(0o600)
        r = as_user(f"cat {f}", groups=str(GROUP), check=False)
        assert r.returncode != 0 and "Permission denied" in r.stderr, r


# one sequence, run in a local directory and on a mount: the results must be the same
ROOT_SEQUENCE = f"""
set -e
cd "$1"
umask 022; touch a; mkdir b; echo x > a2
umask 077; touch c; mkdir e
umask 0; touch h; mkdir i
umask 027
install -m 4755 /dev/null suid; install -m 2750 /dev/null sgid
touch s2; chmod 4700 s2; chown 1234:{GROUP} s2           # chown clears setuid
touch s3; chmod 2755 s3; chown :{GROUP} s3               # and an executable's setgid
mkdir g; chown :{GROUP} g; chmod 2775 g                  # a setgid directory
touch g/x; mkdir g/y; mkdir -m 700 g/z; mkfifo g/p
ln -s a sym
mkdir -m 1777 pub
touch pub/rootfile; chmod 04777 pub/rootfile
mkdir nob; chown {NOBODY}:{NOBODY} nob; chown :{GROUP} nob; chmod 2777 nob
"""

USER_SEQUENCE = """
set -e
cd "$1"
umask 002; touch pub/u1; mkdir pub/u2
umask 077; touch pub/u3; mkdir pub/u4
touch pub/u5; chmod 4755 pub/u5; chmod 2755 pub/u5 || true   # not in the file's group
touch nob/n1; mkdir nob/n2                                # setgid dir: the dir's group
echo data >> pub/rootfile                                 # a write clears setuid
chmod 0644 pub/u3
"""


def _snapshot(top: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            out[str(p.relative_to(top))] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid,
                                             st.st_rdev)
    return out


@pytest.mark.parametrize("who", ["root", "user"])
def test_modes_owners_and_setgid_dirs_match_local(open_tmp, transport, who):
    local = open_tmp / "local"
    local.mkdir()
    local.chmod(0o755)
    with cluster(open_tmp, transport, clients=1, extra="allow_other") as (server, (m,)):
        root_seq, user_seq = open_tmp / "root.sh", open_tmp / "user.sh"
        root_seq.write_text(ROOT_SEQUENCE)
        user_seq.write_text(USER_SEQUENCE)
        for top in (local, m.mnt):
            sh(f"sh {root_seq} {top}")
            if who == "user":
                as_user(f"sh {user_seq} {top}")
        want = _snapshot(local)
        assert _snapshot(m.mnt) == want
        assert _snapshot(server.export) == want  # what the server has, not just what we see
        assert want["g/x"][2] == GROUP and want["g/y"][0] == "drwxr-s---"


def test_root_squash(open_tmp, transport):
    """Default export: a client's root acts as the anonymous user on the server."""
    export = open_tmp / "export"
    export.mkdir()
    export.chmod(0o777)
    (export / "roots").write_text("server root's\n")
    (export / "roots").chmod(0o600)
    with cluster(open_tmp, transport, clients=1, server_options="") as (server, (m,)):
        (m.mnt / "made").write_text("x")
        (m.mnt / "dir").mkdir()
        st = os.stat(server.export / "made")
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
        assert os.stat(server.export / "dir").st_uid == NOBODY
        r = sh(f"cat {m.mnt}/roots", check=False)
        assert r.returncode != 0 and "Permission denied" in r.stderr
        r = sh(f"chown 0:0 {m.mnt}/made", check=False)
        assert r.returncode != 0
        r = sh(f"mknod {m.mnt}/null c 1 3", check=False)
        assert r.returncode != 0 and not (server.export / "null").exists()


def test_all_squash_anon_ids_and_no_root_squash(open_tmp, transport):
    export = open_tmp / "export"
    export.mkdir()
    export.chmod(0o777)
    with cluster(open_tmp, transport, clients=1, extra="allow_other",
                 server_options=f"all_squash,anonuid=1234,anongid={GROUP}") as (server, (m,)):
        (m.mnt / "r").write_text("x")
        as_user(f"echo y > {m.mnt}/u")
        for n in ("r", "u"):
            st = os.stat(server.export / n)
            assert (st.st_uid, st.st_gid) == (1234, GROUP)
    second = open_tmp / "second"
    second.mkdir()
    with cluster(second, transport, clients=1,
                 server_options="no_root_squash") as (server, (m,)):
        (m.mnt / "r0").write_text("x")
        st = os.stat(server.export / "r0")
        assert (st.st_uid, st.st_gid) == (0, 0)


def test_read_only_export(open_tmp, transport):
    export = open_tmp / "export"
    export.mkdir()
    (export / "f").write_text("content\n")
    with cluster(open_tmp, transport, clients=1,
                 server_options="ro,no_root_squash") as (server, (m,)):
        assert (m.mnt / "f").read_text() == "content\n"
        for cmd in (f"echo x >> {m.mnt}/f", f"touch {m.mnt}/new", f"mkdir {m.mnt}/d",
                    f"rm {m.mnt}/f", f"chmod 600 {m.mnt}/f", f"truncate -s 0 {m.mnt}/f"):
            r = sh(cmd, check=False)
            assert r.returncode != 0 and "Read-only file system" in r.stderr, (cmd, r)
        assert (export / "f").read_text() == "content\n"
        assert sorted(p.name for p in export.iterdir()) == ["f"]


def test_server_cli_rejects_bad_export_options(open_tmp):
    from conftest_fs import PY, ROOT
    secret = open_tmp / "s"
    secret.write_text("k\n")
    for bad in ("bogus", "anonuid=x", "ro=1"):
        r = sh(f"cd {ROOT} && {PY} -m server {open_tmp} --secret-file {secret} -o {bad}",
               check=False)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r
        assert "mxfs-server" in r.stderr and bad.split("=")[0] in r.stderr
