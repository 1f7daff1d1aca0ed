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
