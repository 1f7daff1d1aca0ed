"""The bench's CPU accounting: a process tree and the CPU its threads used."""

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not installed
from bench import procs  # noqa: E402


def test_tree_and_cpu_seconds_follow_a_busy_child() -> None:
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; "
                               "c = subprocess.Popen([sys.executable, '-c', "
                               "'import time\\nt = time.time()\\nwhile time.time() - t < 3: pass']); "
                               "c.wait()"])
    try:
        deadline = time.monotonic() + 5
        while len(procs.tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = procs.tree(parent.pid)
        assert len(pids) == 2 and pids[0] == parent.pid
        before = procs.cpu_seconds(pids)
        time.sleep(0.5)
        assert procs.cpu_seconds(pids) - before > 0.2  # the child spins
    finally:
        parent.kill()
        parent.wait()
    assert procs.cpu_seconds([parent.pid]) == 0.0  # gone: counts nothing
