"""Garbage-collector settings for the long-running processes (the mount and the server).

Every request allocates a few container objects (requests, lists, statuses); CPython runs a
young-generation collection every 700 such allocations, and `perf` shows the collector at a
few percent of a busy process. Almost all of that garbage is freed by reference counting, so
the daemons move what exists at startup out of the collector's sight (`gc.freeze`) and collect
the young generation every 50 000 allocations instead: cycles are still collected, later.
MXFS_GC_DEFAULT=1 keeps CPython's defaults (for comparison).
"""

from __future__ import annotations

import gc
import os

YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    if os.environ.get("MXFS_GC_DEFAULT"):
        return
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
