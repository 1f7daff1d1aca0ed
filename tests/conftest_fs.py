"""Helpers for end-to-end tests on a real mount: a server process, mounts, and cleanup.

Imported by tests/test_fs_*.py and tests/test_cli*.py (not a pytest conftest: plain helpers).
Every mount is unmounted (fusermount3 -u -z) and every process killed in teardown, even when
the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SECRET = b"test-secret-123"

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0 or not any(
        os.access(os.path.join(d, "fusermount3"), os.X_OK)
        for d in os.environ.get("PATH", "/usr/bin:/bin").split(":")),
    reason="needs /dev/fuse, fusermount3 and root",
)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


class ServerProc:
    """mxfs-server in a subprocess, on a free port (gm on port+1). The tests act as root on
    the mounts, so the export is no_root_squash unless *options* say otherwise."""

    def __init__(self, export: Path, secret_file: Path, port: int = 0,
                 options: str = "no_root_squash", args: tuple[str, ...] = ()) -> None:
        self.options = options
        self.args = args  # more mxfs-server arguments
        self.export = export
        self.secret_file = secret_file
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.log = export.parent / f"server-{id(self)}.log"
        self.wrap: list[str] = []  # a command the server runs under (e.g. setpriv)

    def start(self, timeout: float = 15.0) -> ServerProc:
        self.proc = subprocess.Popen(
            [*self.wrap, PY, "-m", "server", str(self.export), "--listen", f"127.0.0.1:{self.port}",
             "--secret-file", str(self.secret_file), "-v",
             *(["-o", self.options] if self.options else []), *self.args],
            stdout=subprocess.PIPE, stderr=open(self.log, "a"), text=True, env=env(), cwd=ROOT)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if "listening on" in line or not line:
                break
        m = re.search(r":(\d+) \(mx\)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"server did not start: {line!r} {self.log.read_text()[-2000:]}")
        self.port = int(m.group(1))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def is_mounted(mnt: Path) -> bool:
    target = str(mnt.resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def unmount(mnt: Path) -> None:
    for _ in range(3):
        if not is_mounted(mnt):
            return
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        time.sleep(0.1)


class MountProc:
    """`mxfs mount -f` in a subprocess (so the test knows its pid)."""

    def __init__(self, port: int, mnt: Path, secret_file: Path, transport: str = "mx",
                 extra: str = "") -> None:
        self.port, self.mnt, self.secret_file = port, mnt, secret_file
        self.transport, self.extra = transport, extra
        self.proc: subprocess.Popen[str] | None = None
        self.log = mnt.parent / f"mount-{mnt.name}.log"

    def start(self, timeout: float = 20.0) -> MountProc:
        self.mnt.mkdir(parents=True, exist_ok=True)
        opts = f"transport={self.transport},secret_file={self.secret_file}"
        if self.extra:
            opts += "," + self.extra
        e = env()
        e["MXFS_LOG_FILE"] = str(self.log)
        self.proc = subprocess.Popen(
            [PY, "-m", "mxfs.cli", "mount", f"127.0.0.1:{self.port}", str(self.mnt),
             "-o", opts, "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=e, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_mounted(self.mnt):
                time.sleep(0.1)  # let FUSE_INIT and the read-ahead tweak happen
                return self
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"mount failed: {err}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("mount did not appear in time")

    def stop(self) -> None:
        unmount(self.mnt)
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(5)
        unmount(self.mnt)
        self.proc = None

    def stats(self) -> dict:
        return json.loads(os.getxattr(self.mnt, "user.mxfs.stats"))


@contextlib.contextmanager
def cluster(tmp: Path, transport: str = "mx", clients: int = 1, extra: str = "",
            server_options: str = "no_root_squash", server_args: tuple[str, ...] = ()
            ) -> Iterator[tuple[ServerProc, list[MountProc]]]:
    """A server on tmp/export and *clients* mounts at tmp/mnt0, tmp/mnt1, ..."""
    export = tmp / "export"
    export.mkdir(exist_ok=True)
    secret = tmp / "secret"
    secret.write_bytes(SECRET + b"\n")
    server = ServerProc(export, secret, options=server_options, args=server_args)
    mounts: list[MountProc] = []
    try:
        server.start()
        for i in range(clients):
            mounts.append(MountProc(server.port, tmp / f"mnt{i}", secret, transport,
                                    extra).start())
        yield server, mounts
    finally:
        for m in mounts:
            with contextlib.suppress(Exception):
                m.stop()
        server.stop()


def sh(cmd: str, cwd: Path | str | None = None, check: bool = True,
       timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@contextlib.contextmanager
def small_export(tmp: Path, size: str = "8m") -> Iterator[Path]:
    """tmp/export as a tmpfs of *size* (a full disk on demand), unmounted afterwards."""
    export = tmp / "export"
    export.mkdir()
    sh(f"mount -t tmpfs -o size={size} mxfs-test {export}")
    try:
        yield export
    finally:
        subprocess.run(["umount", "-l", str(export)], capture_output=True)


def errno_of(fn, *args) -> int:  # noqa: ANN001
    """The errno fn(*args) fails with, 0 if it works."""
    try:
        fn(*args)
    except OSError as e:
        return e.errno or 0
    return 0

