"""`python -m tools.demo` (make demo): a local server + mount, a few standard tools, the counters.

    python -m tools.demo           set up ./demo/{export,mnt}, start, show, leave it running
    python -m tools.demo --stop    unmount ./demo/mnt and stop the demo server

It lives in tools/, not in mxfs/: it drives the two commands as a user would (mxfs-server,
mxfs mount, mxfs stats) and is no part of the client library. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

DEMO = Path("demo")
EXPORT, MNT, SECRET, PIDFILE, LOG = (DEMO / "export", DEMO / "mnt", DEMO / "secret",
                                     DEMO / "server.pid", DEMO / "server.log")


def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _run(cmd: str) -> None:
    print(f"\n$ {cmd}", flush=True)
    subprocess.run(cmd, shell=True, check=False)


def stop() -> int:
    if MNT.exists() and _mounted(MNT):
        subprocess.run(["fusermount3", "-u", "-z", str(MNT)], check=False)
        print(f"unmounted {MNT}")
    if PIDFILE.exists():
        try:
            pid = int(PIDFILE.read_text())
            os.kill(pid, signal.SIGTERM)
            print(f"stopped server (pid {pid})")
        except (ValueError, ProcessLookupError):
            pass
        PIDFILE.unlink()
    return 0


def start() -> int:
    if not os.path.exists("/dev/fuse"):
        print("tools.demo: /dev/fuse is missing (modprobe fuse?)", file=sys.stderr)
        return 1
    stop()
    EXPORT.mkdir(parents=True, exist_ok=True)
    MNT.mkdir(parents=True, exist_ok=True)
    (EXPORT / "README.txt").write_text("Served by mxfs-server, read through mxfs.\n")
    (EXPORT / "docs").mkdir(exist_ok=True)
    for i in range(5):
        (EXPORT / "docs" / f"note-{i}.txt").write_text(f"note {i}\n" * (i + 1) * 100)
    with open(EXPORT / "data.bin", "wb") as f:
        f.write(os.urandom(8 * 1024 * 1024))
    SECRET.write_text(os.urandom(16).hex() + "\n")
    os.chmod(SECRET, 0o600)

    log = open(LOG, "w")
    srv = subprocess.Popen([sys.executable, "-m", "server", str(EXPORT), "--listen",
                            "127.0.0.1:0", "--secret-file", str(SECRET),
                            "-o", "no_root_squash"],  # the demo's own files, as its user
                           stdout=subprocess.PIPE, stderr=log, text=True,
                           start_new_session=True)
    assert srv.stdout is not None
    line = srv.stdout.readline().strip()
    found = re.search(r"listening on .*:(\d+) \(mx\)", line)  # port 0: it picked a free pair
    if found is None:
        print(f"tools.demo: server did not start; see {LOG}", file=sys.stderr)
        return 1
    port = int(found.group(1))
    PIDFILE.write_text(str(srv.pid))
    print(line)
    cli = f"{sys.executable} -m mxfs.cli"
    r = subprocess.run(f"{cli} mount 127.0.0.1:{port} {MNT} -o transport=mx,secret_file={SECRET}",
                       shell=True)
    if r.returncode != 0:
        stop()
        return 1
    print(f"mounted 127.0.0.1:{port} on {MNT} (transport=mx)")
    _run(f"ls -l {MNT} {MNT}/docs")
    _run(f"cat {MNT}/README.txt")
    _run(f"cp -a {MNT}/docs {MNT}/docs-copy && diff -r {MNT}/docs {MNT}/docs-copy && echo copies match")
    _run(f"du -sh {MNT}")
    _run("echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; "
         f"sha256sum {EXPORT}/data.bin {MNT}/data.bin")
    time.sleep(0.1)
    _run(f"{cli} stats {MNT}")
    print(f"\nThe file system stays mounted at {MNT}. Stop it with:\n"
          f"  {sys.executable} -m tools.demo --stop     (or: make demo-stop)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools.demo")
    p.add_argument("--stop", action="store_true", help="unmount and stop the demo server")
    args = p.parse_args(argv)
    return stop() if args.stop else start()


if __name__ == "__main__":
    sys.exit(main())
