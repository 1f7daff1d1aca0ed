"""The workloads. Each runs one peer once and returns measurements (dicts, see `m`).

Files the read workloads need are written once at set-up (`populate`), in the peer's backing
directory when it has one (a plain directory on this disk), through the mount otherwise.
Every file has its own bytes on every peer (no hard links: the page cache must not be shared).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import procs
from .peers import Peer

K, M, G = 1 << 10, 1 << 20, 1 << 30
REPO = Path(__file__).resolve().parent.parent


def human(n: int) -> str:
    for unit, size in (("G", G), ("M", M), ("K", K)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


@dataclass
class Config:
    rounds: int = 3
    seq_size: int = 1 * G
    rand_size: int = 256 * M
    rand_runtime: int = 10
    # (file size, number of files read per point)
    sizes: list[tuple[int, int]] = field(default_factory=lambda: [
        (4 * K, 512), (64 * K, 128), (1 * M, 32), (16 * M, 4), (256 * M, 1), (1 * G, 1)])
    readers: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    scale_size: int = 64 * M
    meta_files: int = 2000
    tree_files: int = 1000
    mxnet_args: list[str] = field(default_factory=lambda: ["--rounds", "5"])

    @classmethod
    def quick(cls) -> Config:
        return cls(rounds=3, seq_size=64 * M, rand_size=64 * M, rand_runtime=3,
                   sizes=[(4 * K, 128), (64 * K, 32), (1 * M, 8), (16 * M, 2), (64 * M, 1)],
                   scale_size=16 * M, meta_files=500, tree_files=1000,
                   mxnet_args=["--rounds", "1", "--max-size", "1M"])


def m(workload: str, metric: str, value: float, unit: str, *, higher: bool = True,
      param: str = "", **extra) -> dict:
    d = {"workload": workload, "metric": metric, "param": param, "value": value, "unit": unit,
         "higher_is_better": higher}
    d.update(extra)
    return d


# -- set-up ---------------------------------------------------------------------------------------
_PATTERN = os.urandom(4 * M)


def _write_file(path: Path, size: int, salt: int) -> None:
    """Incompressible content, different per file (a salted rotation of one random block)."""
    rot = (salt * 7919 * 4096) % len(_PATTERN)
    block = _PATTERN[rot:] + _PATTERN[:rot]
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


def layout(cfg: Config) -> list[tuple[str, int]]:
    """(relative path, size) of every pre-made file."""
    files = [("rand.dat", cfg.rand_size)]
    for size, count in cfg.sizes:
        files += [(f"fsz/{human(size)}/f.{i}", size) for i in range(count)]
    for n in cfg.readers:
        files += [(f"scale/n{n}/sc.{j}", cfg.scale_size) for j in range(n)]
    return files


def populate(peer: Peer, cfg: Config) -> int:
    base = (peer.backing or peer.root) / "bench"
    total = 0
    for i, (rel, size) in enumerate(layout(cfg)):
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if not (p.exists() and p.stat().st_size == size):
            _write_file(p, size, i)
        total += size
    return total


def workdir(peer: Peer) -> Path:
    return peer.root / "bench"


# -- fio ----------------------------------------------------------------------------------------------
def fio(args: list[str], timeout: float = 1800) -> dict:
    cp = procs.run(["fio", "--output-format=json", "--ioengine=psync", *args], "fio",
                   timeout=timeout)
    out = cp.stdout
    try:
        data = json.loads(out[out.index("{"):])
    except ValueError:
        raise procs.BenchError(f"fio {' '.join(args)}: unreadable output: {out[:500]}") from None
    for job in data["jobs"]:
        if job.get("error"):
            raise procs.BenchError(f"fio {' '.join(args)}: error {job['error']}")
    return data["jobs"][0]


class CpuMeter:
    """CPU seconds the peer's client and server processes spend on one workload, per GiB it
    moved: wall time hides copies on a machine where a memcpy is cheap next to a round trip
    (the paper's point is what the host CPUs spend), CPU time does not."""

    def __init__(self, peer: Peer) -> None:
        self.client, self.server = peer.cpu_pids()
        self.c0 = procs.cpu_seconds(self.client)
        self.s0 = procs.cpu_seconds(self.server)

    def rows(self, what: str, nbytes: int) -> list[dict]:
        gib = nbytes / G
        out = []
        if self.client:
            out.append(m("cpu", f"client, {what}", (procs.cpu_seconds(self.client) - self.c0) / gib,
                         "CPU s/GiB", higher=False))
        if self.server:
            out.append(m("cpu", f"server, {what}", (procs.cpu_seconds(self.server) - self.s0) / gib,
                         "CPU s/GiB", higher=False))
        return out

    def per_op_rows(self, what: str, ops: int) -> list[dict]:
        """CPU µs per operation (each a round trip on a network file system)."""
        out = []
        for side, pids, t0 in (("client", self.client, self.c0), ("server", self.server, self.s0)):
            if pids and ops:
                out.append(m("cpu", f"{side}, {what}",
                             (procs.cpu_seconds(pids) - t0) / ops * 1e6, "CPU µs/op",
                             higher=False))
        return out


def seqwrite(peer: Peer, cfg: Config, rnd: int) -> list[dict]:
    f = workdir(peer) / "seq.dat"
    f.unlink(missing_ok=True)
    cpu = CpuMeter(peer)
    j = fio(["--name=seqwrite", f"--filename={f}", "--rw=write", "--bs=1M",
             f"--size={cfg.seq_size}", "--end_fsync=1"])
    return [m("seqwrite", "throughput", j["write"]["bw_bytes"] / 1e6, "MB/s",
              param=human(cfg.seq_size)), *cpu.rows("write", cfg.seq_size)]


def seqread(peer: Peer, cfg: Config, rnd: int) -> list[dict]:
    f = workdir(peer) / "seq.dat"
    cpu = CpuMeter(peer)
    j = fio(["--name=seqread", f"--filename={f}", "--rw=read", "--bs=1M",
             f"--size={cfg.seq_size}"])
    return [m("seqread", "throughput", j["read"]["bw_bytes"] / 1e6, "MB/s",
              param=human(cfg.seq_size)), *cpu.rows("read", cfg.seq_size)]


def reread(peer: Peer, cfg: Config, rnd: int) -> list[dict]:
    """Read a file of the seqread size twice (it did not change in between); the second
    read is measured: a coherent cache answers it without the server."""
    f = workdir(peer) / "seq.dat"
    args = [f"--filename={f}", "--rw=read", "--bs=1M", f"--size={cfg.seq_size}",
            "--invalidate=0"]  # (fio drops the file's cached pages first by default)
    fio(["--name=warm", *args])
    j = fio(["--name=reread", *args])
    return [m("reread", "throughput", j["read"]["bw_bytes"] / 1e6, "MB/s",
              param=human(cfg.seq_size))]


def randread(peer: Peer, cfg: Config, rnd: int) -> list[dict]:
    f = workdir(peer) / "rand.dat"
    # warm the server side (or the local page cache) the same way on every peer, then read
    # with O_DIRECT so every 4 KiB read is a request to the file system, not a client-cache hit
    fio(["--name=warm", f"--filename={f}", "--rw=read", "--bs=1M", f"--size={cfg.rand_size}"])
    cpu = CpuMeter(peer)
    j = fio(["--name=randread", f"--filename={f}", "--rw=randread", "--bs=4k", "--iodepth=1",
             "--direct=1", f"--size={cfg.rand_size}", "--time_based",
             f"--runtime={cfg.rand_runtime}", "--ramp_time=1", "--randrepeat=1"])
    r = j["read"]
    pct = r["clat_ns"]["percentile"]
    return [m("randread", "iops", r["iops"], "IOPS"),
            m("randread", "p50", pct["50.000000"] / 1e3, "µs", higher=False),
            m("randread", "p99", pct["99.000000"] / 1e3, "µs", higher=False),
            # (the CPU covers the 1 s ramp too: count its reads at the measured rate)
            *cpu.per_op_rows("4 KiB read", int(r["iops"] * (cfg.rand_runtime + 1)))]


def filesizes(peer: Peer, cfg: Config, rnd: int) -> list[dict]:
    out = []
    for size, count in cfg.sizes:
        d = workdir(peer) / "fsz" / human(size)
        files = [str(d / f"f.{i}") for i in range(count)]
        cp = procs.run([sys.executable, "-m", "bench.readfiles", *files], "bench.readfiles",
                       cwd=REPO)
        r = json.loads(cp.stdout)
        if r["bytes"] != size * count:
            raise procs.BenchError(f"{peer.name}: read {r['bytes']} bytes of {d}, "
                                   f"expected {size * count}")
        out.append(m("filesize", "throughput", r["bytes"] / r["seconds"] / 1e6, "MB/s",
                     param=human(size), files=count))
    return out


def scaling(peer: Peer, cfg: Config, rnd: int) -> list[dict]:
    out = []
    for n in cfg.readers:
        d = workdir(peer) / "scale" / f"n{n}"
        j = fio(["--name=scale", f"--directory={d}", "--filename_format=sc.$jobnum",
                 "--rw=read", "--bs=1M", f"--size={cfg.scale_size}", f"--numjobs={n}",
                 "--group_reporting"])
        out.append(m("scaling", "throughput", j["read"]["bw_bytes"] / 1e6, "MB/s",
                     param=str(n)))
    return out


def metadata(peer: Peer, cfg: Config, rnd: int) -> list[dict]:
    d = workdir(peer) / f"meta-r{rnd}"
    if d.exists():
        shutil.rmtree(d)
    cpu = CpuMeter(peer)
    cp = procs.run([sys.executable, "-m", "bench.meta", str(d), str(cfg.meta_files)],
                   "bench.meta", cwd=REPO)
    t = json.loads(cp.stdout)
    n = cfg.meta_files
    out = [m("meta", op, n / t[op], "ops/s", param=str(n)) for op in ("create", "stat", "unlink")]
    out.append(m("meta", "total", sum(t.values()), "s", higher=False, param=str(n)))
    return out + cpu.per_op_rows("create/stat/unlink", 3 * n)


def tree(peer: Peer, cfg: Config, rnd: int, tarball: Path) -> list[dict]:
    base = workdir(peer)
    src, dst = base / f"tree-r{rnd}", base / f"tree-r{rnd}-copy"
    for d in (src, dst):
        if d.exists():
            shutil.rmtree(d)
    src.mkdir()
    steps = [
        ("untar", ["tar", "-xf", str(tarball), "-C", str(src)]),
        ("du", ["du", "-s", str(src)]),
        ("find", ["find", str(src)]),
        ("ls -lR", ["ls", "-lR", str(src)]),  # (not in the total: the tree is the rest)
        ("cp -r", ["cp", "-r", str(src), str(dst)]),
        ("rm -r", ["rm", "-rf", str(src), str(dst)]),
    ]
    out, total = [], 0.0
    for name, argv in steps:
        t0 = time.perf_counter()
        cp = procs.run(argv, name)
        dt = time.perf_counter() - t0
        if name == "find":
            found = len(cp.stdout.splitlines())
            if found < cfg.tree_files:
                raise procs.BenchError(f"{peer.name}: find saw {found} entries, "
                                       f"expected > {cfg.tree_files}")
        if name != "ls -lR":
            total += dt
        out.append(m("tree", name, dt, "s", higher=False))
    out.append(m("tree", "total", total, "s", higher=False))
    return out
