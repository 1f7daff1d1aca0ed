"""Random namespace operations (create, mkdir, rmdir, unlink, rename, link, symlink, chmod,
truncate) done on a real mount and on a local reference directory side by side: each must
succeed or fail with the same errno on both, and the two trees must stay identical — names,
types, modes, sizes, link counts, contents and link targets."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest
from conftest_fs import cluster, needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse]

NAMES = ["a", "b", "c", "d/e", "d/f", "d/g/h", "g", "g/i"]


def _snapshot(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_nlink, f.read())
    return out


def _apply(op: str, r: Path, a: str, b: str, data: bytes, mode: int, size: int) -> object:
    """Do ``op`` in the tree rooted at ``r``: ("ok", result) or ("err", errno)."""
    try:
        if op == "create":
            return ("ok", (r / a).write_bytes(data))
        if op == "mkdir":
            return ("ok", os.mkdir(r / a))
        if op == "rmdir":
            return ("ok", os.rmdir(r / a))
        if op == "unlink":
            return ("ok", os.unlink(r / a))
        if op == "rename":
            return ("ok", os.rename(r / a, r / b))
        if op == "link":
            return ("ok", os.link(r / a, r / b))
        if op == "symlink":
            return ("ok", os.symlink(b, r / a))
        if op == "readlink":
            return ("ok", os.readlink(r / a))
        if op == "chmod":
            return ("ok", None if (r / a).is_symlink() else os.chmod(r / a, mode))
        if op == "truncate":
            return ("ok", os.truncate(r / a, size))
        if op == "read":
            return ("ok", (r / a).read_bytes())
        return ("ok", sorted(os.listdir(r / a)))
    except OSError as e:
        return ("err", e.errno)


OPS = ["create", "mkdir", "rmdir", "unlink", "rename", "link", "symlink", "readlink", "chmod",
       "truncate", "read", "listdir"]


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_namespace_operations_match_a_local_directory(tmp_path: Path, transport: str) -> None:
    rng = random.Random(f"ns-{transport}")
    ref = tmp_path / "reference"
    ref.mkdir()
    with cluster(tmp_path, transport) as (_server, (m,)):
        for step in range(800):
            a, b = rng.choice(NAMES), rng.choice(NAMES)
            data = rng.randbytes(rng.choice([0, 5, 4096, 9000]))
            mode, size, op = rng.choice([0o600, 0o644, 0o755]), rng.randrange(10000), rng.choice(OPS)
            want = _apply(op, ref, a, b, data, mode, size)
            got = _apply(op, m.mnt, a, b, data, mode, size)
            assert got == want, f"step {step}: {op} {a!r} {b!r}: mount {got}, local {want}"
            if step % 50 == 49:
                assert _snapshot(m.mnt) == _snapshot(ref), f"trees differ after step {step}"
        assert _snapshot(m.mnt) == _snapshot(ref)
