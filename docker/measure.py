"""Figures for README (Docker) and bench/docker.md: image size, build time, cluster start
time, aggregate sequential read MB/s of 1, 2 and 4 client containers reading one file.

    python3 docker/measure.py [--runs 5] [--builds 3] [--size-mb 512] [--compose docker-compose]

Run from the repository root, as root, with a Docker engine (docker/ensure-docker.sh) and
mxfs:local built once. Uses its own compose project (mxfsmeasure) and removes it at the end.
Medians over --runs (spread min-max in brackets). Standard library only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "mxfsmeasure"
MNT = "/mnt/mxfs"
READER = r"""
import os, sys, time
start, path = float(sys.argv[1]), sys.argv[2]
while time.time() < start:
    time.sleep(0.0005)
fd, buf, n = os.open(path, os.O_RDONLY), bytearray(1 << 20), 0
while (k := os.readv(fd, [buf])):
    n += k
print(n, time.time())
"""


def sh(cmd: list[str], env: dict | None = None, check: bool = True) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if check and r.returncode:
        sys.exit(f"{' '.join(cmd)}: {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r.stdout


def med(xs: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(statistics.median(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"


class Compose:
    def __init__(self, cmd: list[str], files: list[str], env: dict):
        self.cmd, self.files, self.env = cmd, files, env

    def __call__(self, *args: str, check: bool = True) -> str:
        fs = [a for f in self.files for a in ("-f", f"docker/{f}")]
        return sh([*self.cmd, *fs, "-p", PROJECT, *args], self.env, check)

    def ids(self, service: str) -> list[str]:
        return sorted(self("ps", "-q", service).split())

    def mounted(self, cid: str) -> bool:
        return subprocess.run(["docker", "exec", cid, "mxfs-entrypoint", "health-client"],
                              capture_output=True).returncode == 0

    def up_until_mounted(self, scale: dict[str, int]) -> float:
        t = time.monotonic()
        self("up", "-d", *[a for s, n in scale.items() for a in ("--scale", f"{s}={n}")])
        while True:
            ids = [c for s in scale for c in self.ids(s)]
            if len(ids) == sum(scale.values()) and all(self.mounted(c) for c in ids):
                return time.monotonic() - t
            if time.monotonic() - t > 120:
                sys.exit("clients not mounted after 120 s\n" + self("logs", "--tail", "20"))
            time.sleep(0.1)


def parallel_read(ids: list[str], path: str) -> float:
    """Aggregate MB/s of len(ids) containers starting one read of *path* at the same instant."""
    start = time.time() + 1.5
    procs = [subprocess.Popen(["docker", "exec", c, "python3", "-c", READER, str(start), path],
                              stdout=subprocess.PIPE, text=True) for c in ids]
    outs = [p.communicate()[0].split() for p in procs]
    total = sum(int(o[0]) for o in outs)
    end = max(float(o[1]) for o in outs)
    return total / (end - start) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--builds", type=int, default=3, help="cold builds to time (0: skip)")
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--compose", default="docker-compose", help='or "docker compose"')
    ap.add_argument("--base", default=os.environ.get("MXFS_BASE", "mxfs-base:bookworm"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "secret").write_text(os.urandom(24).hex() + "\n")
    env = {**os.environ, "MXFS_SECRET": str(tmp / "secret"), "MXFS_BASE": args.base}
    cmd = args.compose.split()
    plain = Compose(cmd, ["compose.yaml"], env)
    print(f"base {args.base}, compose: {sh([*cmd, 'version']).splitlines()[0]}, "
          f"{os.cpu_count()} CPUs")

    if args.builds:
        times = []
        for _ in range(args.builds):
            t = time.monotonic()
            plain("build", "--no-cache")
            times.append(time.monotonic() - t)
        sh(["docker", "image", "prune", "-f", "--filter", "label=io.mxfs.image=runtime"])
        print(f"build, no cache (base present): {med(times, '{:.1f}')} s")
        t = time.monotonic()
        plain("build")
        print(f"build, nothing changed: {time.monotonic() - t:.1f} s")
    size = int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", "mxfs:local"]))
    print(f"image mxfs:local: {size / 1e6:.0f} MB")

    try:
        starts = []
        for _ in range(args.runs):
            starts.append(plain.up_until_mounted({"client-mx": 1, "client-gm": 1}))
            plain("down", "-v", "-t", "5")
        print(f"cluster start (up -d to both clients mounted): {med(starts, '{:.1f}')} s")

        path = f"{MNT}/read.bin"
        for label, files, service in (
                ("mx", ["compose.yaml"], "client-mx"),
                ("gm", ["compose.yaml"], "client-gm"),
                ("mx, readahead.yaml", ["compose.yaml", "readahead.yaml"], "client-mx")):
            c = Compose(cmd, files, env)
            other = "client-gm" if service == "client-mx" else "client-mx"
            c.up_until_mounted({service: 4, other: 0})
            server = c.ids("server")[0]
            sh(["docker", "exec", server, "sh", "-c",
                f"head -c {args.size_mb}M /dev/urandom > /export/read.bin && "
                "cat /export/read.bin > /dev/null"])
            ids = c.ids(service)
            ra = sh(["docker", "exec", ids[0], "sh", "-c",
                     f"d=$(awk '$5==\"{MNT}\" {{print $3}}' /proc/self/mountinfo); "
                     "cat /sys/class/bdi/$d/read_ahead_kb"]).strip()
            row = []
            for k in (1, 2, 4):
                rates = [parallel_read(ids[:k], path) for _ in range(args.runs)]
                row.append(f"{k}: {med(rates)}")
            print(f"read {args.size_mb} MiB, {label} (read_ahead_kb {ra}), MB/s aggregate by "
                  f"clients: " + ", ".join(row))
            c("down", "-v", "-t", "5")
    finally:
        plain("down", "-v", "-t", "5", check=False)


if __name__ == "__main__":
    main()
