"""End to end: a non-root user on an allow_other mount, checked against the server's view."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest
from conftest_fs import cluster, needs_fuse, sh

pytestmark = [needs_fuse, pytest.mark.skipif(shutil.which("runuser") is None,
                                             reason="needs runuser")]


def _as_nobody(cmd: str, check: bool = True):
    return sh(f"runuser -u nobody -- sh -c {cmd!r}", check=check)


def test_non_root_user_permissions(open_tmp: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    with cluster(open_tmp, "mx", extra="allow_other") as (server, (m,)):
        shared = m.mnt / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        secret = m.mnt / "root-only"
        secret.write_text("top secret\n")
        secret.chmod(0o600)
        (m.mnt / "public").write_text("hello\n")

        # files a user creates belong to that user on the server
        _as_nobody(f"echo mine > {shared}/n.txt && mkdir {shared}/nd")
        st = os.stat(server.export / "shared" / "n.txt")
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
        assert os.stat(server.export / "shared" / "nd").st_uid == nobody.pw_uid
        assert _as_nobody(f"cat {shared}/n.txt").stdout == "mine\n"
        assert _as_nobody(f"cat {m.mnt}/public").stdout == "hello\n"

        # modes are enforced: no reading root's 0600 file, no writing root's directory
        r = _as_nobody(f"cat {secret}", check=False)
        assert r.returncode != 0 and "Permission denied" in r.stderr
        r = _as_nobody(f"touch {m.mnt}/not-allowed", check=False)
        assert r.returncode != 0 and "Permission denied" in r.stderr
        assert not (server.export / "not-allowed").exists()
        # the sticky shared directory: nobody cannot remove root's file in it
        (shared / "roots").write_text("x")
        r = _as_nobody(f"rm -f {shared}/roots", check=False)
        assert r.returncode != 0 and (server.export / "shared" / "roots").exists()
        # chmod of one's own file works, of someone else's does not
        _as_nobody(f"chmod 600 {shared}/n.txt")
        assert os.stat(server.export / "shared" / "n.txt").st_mode & 0o777 == 0o600
        r = _as_nobody(f"chmod 777 {m.mnt}/public", check=False)
        assert r.returncode != 0


def test_what_root_cached_is_not_shown_to_a_user_the_modes_keep_out(open_tmp: Path) -> None:
    """Root's listing of a 0700 directory, answered from memory the second time, and the
    "no extended attributes" of root's 0600 file are root's: nobody still gets
    Permission denied for both, and a file it may read answers "no such attribute"."""
    with cluster(open_tmp, "mx", extra="allow_other") as (server, (m,)):
        priv = m.mnt / "priv"
        priv.mkdir()
        priv.chmod(0o700)
        (priv / "inside").write_text("x")
        secret = m.mnt / "root-only"
        secret.write_text("top secret\n")
        secret.chmod(0o600)
        (m.mnt / "public").write_text("hello\n")
        hits = m.stats()["cache"]
        assert os.listdir(priv) == os.listdir(priv) == ["inside"]
        assert os.listxattr(secret) == [] and os.listxattr(m.mnt / "public") == []
        after = m.stats()["cache"]
        assert after["listing_hits"] > hits["listing_hits"]
        assert after["xattr_hits"] >= hits["xattr_hits"] + 2

        r = _as_nobody(f"ls {priv}", check=False)
        assert r.returncode != 0 and "Permission denied" in r.stderr and "inside" not in r.stdout
        r = _as_nobody(f"getfattr -n user.k {secret}", check=False)
        assert r.returncode != 0 and "Permission denied" in r.stderr
        r = _as_nobody(f"getfattr -n user.k {m.mnt}/public", check=False)
        assert r.returncode != 0 and "No such attribute" in r.stderr
        fd = os.open(secret, os.O_RDONLY | os.O_DIRECT)  # root's OPEN brings the bytes...
        try:
            assert m.stats()["cache"]["ahead_held"] == len("top secret\n")
            r = _as_nobody(f"cat {secret}", check=False)  # ...for root's descriptor only
            assert r.returncode != 0 and "top secret" not in r.stdout
            assert os.pread(fd, 100, 0) == b"top secret\n"
        finally:
            os.close(fd)
