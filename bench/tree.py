"""A deterministic source tree as a tarball: same bytes on every run (seeded, fixed metadata)."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from pathlib import Path

MTIME = 1_700_000_000


def make_tarball(path: Path, files: int = 1000, seed: int = 4) -> tuple[int, int, str]:
    """Write the tarball (if absent); return (files, payload bytes, sha256 of the tarball)."""
    rng = random.Random(seed)
    blob = rng.randbytes(1 << 20)
    members: list[tuple[str, int, int]] = []  # name, size, offset into blob
    dirs: list[str] = []
    per_dir = 20
    for i in range(files):
        top, sub = (i // per_dir) // 10, (i // per_dir) % 10
        d = f"src/pkg{top:02d}/mod{sub}"
        if d not in dirs:
            dirs.append(d)
        # mostly small files like a source tree, a few larger ones (log-uniform 64 B .. 64 KiB)
        size = int(2 ** rng.uniform(6, 16))
        members.append((f"{d}/file{i:04d}.dat", size, rng.randrange(0, len(blob) - size)))
    total = sum(s for _, s, _ in members)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tf:
            seen: set[str] = set()
            for d in dirs:
                parts = d.split("/")
                for k in range(1, len(parts) + 1):
                    sub = "/".join(parts[:k])
                    if sub not in seen:
                        seen.add(sub)
                        ti = tarfile.TarInfo(sub)
                        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
                        tf.addfile(ti)
            for name, size, off in members:
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode, ti.mtime = size, 0o644, MTIME
                tf.addfile(ti, io.BytesIO(blob[off:off + size]))
        tmp.rename(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return files, total, digest
