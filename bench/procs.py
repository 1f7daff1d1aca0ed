"""Every process the harness starts is recorded here and stopped by PID on the way out.

Two kinds: children we spawn (`spawn`, `run`) and daemons that detach from us (the mxfs mount
process, glusterfs client and brick processes), which a peer *adopts* by PID once it has found
them by their exact command line. `stop_all` sends SIGTERM, waits, then SIGKILL, newest first.
Children are started in their own session so a terminal Ctrl-C reaches only the harness, which
then tears down in order (unmount before killing servers).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class BenchError(RuntimeError):
    """A peer or workload failed: the run stops, loudly."""


_children: dict[int, tuple[subprocess.Popen, str]] = {}
_adopted: dict[int, str] = {}


def spawn(argv: Sequence[str], name: str, *, log: Path | None = None, **kw) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    kw.setdefault("stdout", out)
    kw.setdefault("stderr", subprocess.STDOUT if log else subprocess.DEVNULL)
    p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    if log:
        out.close()
    _children[p.pid] = (p, name)
    return p


def run(argv: Sequence[str], name: str = "", *, timeout: float = 1800, check: bool = True,
        cwd: str | Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run to completion (registered while it runs, so an interrupt stops it too)."""
    p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, cwd=cwd, env=env)
    _children[p.pid] = (p, name or os.path.basename(argv[0]))
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_one(p.pid, p)
        _children.pop(p.pid, None)
        raise BenchError(f"{' '.join(map(str, argv))}: timed out after {timeout:.0f} s") from None
    except BaseException:  # interrupted: stop it now (by PID) and pass the interrupt on
        _kill_one(p.pid, p, grace=2.0)
        _children.pop(p.pid, None)
        raise
    _children.pop(p.pid, None)
    cp = subprocess.CompletedProcess(p.args, p.returncode, out.decode(errors="replace"),
                                     err.decode(errors="replace"))
    if check and cp.returncode != 0:
        msg = (cp.stderr.strip() or cp.stdout.strip())[-2000:]
        raise BenchError(f"{' '.join(map(str, argv))}: exit {cp.returncode}: {msg}")
    return cp


def forget(p: subprocess.Popen) -> None:
    _children.pop(p.pid, None)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def find_pids(match) -> list[int]:
    """PIDs whose argv satisfies match(argv) (used to adopt daemons by exact command line)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            argv = cmdline(int(d))
            if argv and match(argv):
                out.append(int(d))
    return out


def tree(root: int) -> list[int]:
    """root and every process descended from it."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += [c for c, p in parent.items() if p == pid]
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds the processes' live threads have run so far (schedstat: nanoseconds, where
    /proc/PID/stat counts 10 ms ticks, too coarse for a 64 MiB quick run). Gone ones count 0."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def adopt(pid: int, name: str) -> None:
    _adopted[pid] = name


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_one(pid: int, popen: subprocess.Popen | None, grace: float = 5.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if popen is not None and popen.poll() is not None:
            return
        if popen is None and not alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if popen is not None:
                if popen.poll() is not None:
                    return
            elif not alive(pid):
                return
            time.sleep(0.05)


def stop_pid(pid: int, grace: float = 5.0) -> None:
    entry = _children.pop(pid, None)
    _adopted.pop(pid, None)
    _kill_one(pid, entry[0] if entry else None, grace)


def stop_all(log=print) -> None:
    pids = list(_adopted) + list(reversed(_children))
    for pid in pids:
        entry = _children.get(pid)
        name = entry[1] if entry else _adopted.get(pid, "?")
        if (entry and entry[0].poll() is None) or (not entry and alive(pid)):
            log(f"  stopping {name} (pid {pid})")
        stop_pid(pid)


def running() -> list[tuple[int, str]]:
    out = [(pid, n) for pid, (p, n) in _children.items() if p.poll() is None]
    return out + [(pid, n) for pid, n in _adopted.items() if alive(pid)]
