"""`python -m bench.floor`: what one FUSE request costs in the stack mxfs is built on (root).

A stat after the kernel's caches are dropped is one FUSE LOOKUP. mxfs answers it from its
callback cache (no network message), so its rate is set by pyfuse3 + trio + mxfs's handler.
This puts three file systems side by side in one run, the same loop on each (N files made
through the mount; per round: drop the kernel's caches, os.stat every file; median of the
rounds), with the daemon's CPU per stat (procs.cpu_seconds):

    nullfs        pyfuse3 + trio answering lookups from a dict: no network, no cache logic;
                  the floor of any pyfuse3/trio file system on this machine
    mxfs-mx       mxfs and its own server
    sshfs-direct  sshfs (C, libfuse threads) with its own attribute cache, if installed

    python -m bench.floor [--files N] [--rounds R]
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import procs
from .peers import Mxfs, Peer, SshfsDirect


class NullFs(Peer):
    """This module run with --serve: a pyfuse3 file system of N empty files in its root."""
    name = "nullfs"
    kind = "pyfuse3 + trio, lookups answered from a dict (no network)"

    def __init__(self, work: Path, files: int) -> None:
        super().__init__(work)
        self.files = files

    def _mount(self) -> None:
        self._spawn_daemon([sys.executable, "-m", "bench.floor", "--serve", str(self.mnt),
                            str(self.files)])


def serve(mnt: str, files: int) -> None:
    import stat

    import pyfuse3
    import trio

    class Null(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.names = {f"f{i}".encode(): i + 2 for i in range(files)}

        async def getattr(self, ino: int, ctx: object = None) -> pyfuse3.EntryAttributes:
            e = pyfuse3.EntryAttributes()
            e.st_ino = ino
            e.st_mode = (stat.S_IFDIR | 0o755) if ino == pyfuse3.ROOT_INODE else (
                stat.S_IFREG | 0o644)
            e.st_nlink = 1
            e.attr_timeout = e.entry_timeout = 60
            return e

        async def lookup(self, parent: int, name: bytes, ctx: object = None
                         ) -> pyfuse3.EntryAttributes:
            ino = self.names.get(name)
            if ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return await self.getattr(ino)

    pyfuse3.init(Null(), mnt, set(pyfuse3.default_options) | {"fsname=nullfs"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


def stat_rounds(d: Path, files: int, rounds: int, pid: int) -> tuple[float, float]:
    """(median stats/s, daemon CPU µs per stat over all rounds)."""
    names = [str(d / f"f{i}") for i in range(files)]
    rates, cpu, n = [], 0.0, 0
    for _ in range(rounds):
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        c0, t0 = procs.cpu_seconds([pid]), time.perf_counter()
        for p in names:
            os.stat(p)
        rates.append(files / (time.perf_counter() - t0))
        cpu += procs.cpu_seconds([pid]) - c0
        n += files
    return statistics.median(rates), cpu / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--serve", nargs=2, metavar=("MNT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if os.geteuid() != 0:
        print("bench.floor: must run as root (mounts, drop_caches)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="mxfs-floor-", dir="/var/tmp"))
    peers: list[Peer] = [NullFs(work, args.files), Mxfs(work, "mx")]
    if shutil.which("sshfs") and shutil.which("socat") and Path(
            "/usr/lib/openssh/sftp-server").exists():
        peers.append(SshfsDirect(work))
    rows = []
    try:
        for p in peers:
            p.setup()
            p.mount()
            try:
                d = p.root
                if not isinstance(p, NullFs):  # (nullfs has its files from the start)
                    d = p.root / "floor"
                    d.mkdir()
                    for i in range(args.files):
                        os.close(os.open(d / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
                rate, cpu = stat_rounds(d, args.files, args.rounds, p.client_pid)
                rows.append((p.name, rate, cpu))
            finally:
                p.umount()
                p.teardown()
    finally:
        procs.stop_all()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    print(f"stat after drop_caches, {args.files} files, median of {args.rounds} rounds")
    print("| file system | stats/s | client daemon CPU µs per stat |")
    print("|---|---:|---:|")
    for name, rate, cpu in rows:
        print(f"| {name} | {rate:,.0f} | {cpu:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
