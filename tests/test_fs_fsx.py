"""fsx-style: a long random mix of writes, reads, truncates, fsyncs, reopens and mmap reads on
one file of a real mount, every read checked against an in-memory model; after each close a
second client reads the file and sometimes writes to it (close-to-open both ways).
Write-behind, the kernel's page cache and the server must agree at every step."""

from __future__ import annotations

import mmap
import os
import random
from pathlib import Path

import pytest
from conftest_fs import cluster, needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse]

MAX_SIZE = 1 << 20


def _check(fd: int, model: bytearray, off: int, n: int, what: str) -> None:
    got = os.pread(fd, n, off)
    want = bytes(model[off:off + n])
    assert got == want, f"{what}: read {len(got)} bytes at {off}, first mismatch at " \
        f"{next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), -1)}"


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_random_operations_match_a_model(tmp_path: Path, transport: str) -> None:
    rng = random.Random(f"fsx-{transport}")
    model = bytearray()
    with cluster(tmp_path, transport, clients=2) as (server, (m, other)):
        path, path2 = m.mnt / "fsx", other.mnt / "fsx"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for step in range(1500):
                op = rng.random()
                if op < 0.40:  # write, sometimes past the end (a hole), sizes across pages
                    off = rng.randrange(0, min(len(model) + 65536, MAX_SIZE))
                    n = rng.choice([1, 7, 512, 4096, 4097, rng.randrange(1, 200_000)])
                    n = min(n, MAX_SIZE - off)
                    data = rng.randbytes(n)
                    assert os.pwrite(fd, data, off) == n
                    if off > len(model):
                        model.extend(bytes(off - len(model)))
                    model[off:off + n] = data
                elif op < 0.70:  # read somewhere, also across and past the end
                    off = rng.randrange(0, len(model) + 8192)
                    _check(fd, model, off, rng.randrange(1, 300_000), f"step {step} read")
                elif op < 0.78:  # truncate: shrink or grow
                    size = rng.randrange(0, MAX_SIZE)
                    os.ftruncate(fd, size)
                    del model[size:]
                    model.extend(bytes(size - len(model)))
                elif op < 0.84:
                    assert os.fstat(fd).st_size == len(model), f"step {step} size"
                elif op < 0.88:
                    os.fsync(fd)
                elif op < 0.94:  # close; the other client checks, maybe writes too; reopen
                    os.close(fd)
                    fd = -1
                    with open(path2, "r+b") as f:
                        assert f.read() == bytes(model), f"step {step}: other client"
                        if rng.random() < 0.5:
                            off = rng.randrange(0, len(model) + 1)
                            data = rng.randbytes(rng.randrange(1, 70_000))
                            f.seek(off)
                            f.write(data)
                            model[off:off + len(data)] = data
                    fd = os.open(path, os.O_RDWR)
                elif model:  # mmap read of a random window
                    with mmap.mmap(fd, len(model), prot=mmap.PROT_READ) as mm:
                        off = rng.randrange(0, len(model))
                        n = rng.randrange(1, 100_000)
                        assert mm[off:off + n] == model[off:off + n], f"step {step} mmap"
        finally:
            if fd >= 0:
                os.close(fd)
        assert (server.export / "fsx").read_bytes() == bytes(model)
