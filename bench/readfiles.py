"""Read whole files, one after another, in its own process: `python -m bench.readfiles F...`.

Prints JSON {"bytes": total, "seconds": t} where t runs from before the first open() to after
the last close(): lookups, opens and closes are part of what is measured (as for `cat`).
"""

import json
import os
import sys
import time

BUF = 1 << 20


def main() -> int:
    paths = sys.argv[1:]
    buf = bytearray(BUF)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            while True:
                n = os.readv(fd, [view])
                if n == 0:
                    break
                total += n
        finally:
            os.close(fd)
    t = time.perf_counter() - t0
    print(json.dumps({"bytes": total, "seconds": t}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
