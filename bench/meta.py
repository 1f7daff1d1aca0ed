"""Metadata loop, run in its own process: `python -m bench.meta DIR N` -> JSON seconds per phase.

create: open(O_CREAT|O_EXCL|O_WRONLY) + close of N empty files; then `sync` and drop the
kernel's caches (dentries, inodes, pages: otherwise every stat is a local cache hit whatever the
file system); stat: os.stat of each; unlink: os.unlink of each (after the drop, so each one
looks its name up again). DIR is created fresh and removed at the end.
"""

import json
import os
import sys
import time


def main() -> int:
    d, n = sys.argv[1], int(sys.argv[2])
    os.mkdir(d)
    names = [os.path.join(d, f"f{i:05d}") for i in range(n)]
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    t0 = time.perf_counter()
    for p in names:
        os.close(os.open(p, flags, 0o644))
    t1 = time.perf_counter()
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    t1s = time.perf_counter()
    for p in names:
        os.stat(p)
    t2 = time.perf_counter()
    for p in names:
        os.unlink(p)
    t3 = time.perf_counter()
    os.rmdir(d)
    print(json.dumps({"create": t1 - t0, "stat": t2 - t1s, "unlink": t3 - t2}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
