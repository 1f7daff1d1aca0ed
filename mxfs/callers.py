"""Who is asking: the credentials sent with each request that acts as the caller.

FUSE tells each request's uid, gid and pid (pyfuse3's RequestContext); supplementary groups
are read from /proc/PID/status ("Groups:"). Reading that file per request would cost more
than the request, so groups are cached per (pid, uid, gid) for TTL seconds in a table of at
most SIZE entries (the oldest goes first). A process whose ids change gets a new key; one that
changes only its groups is seen within TTL. A pid that is gone (or 0: the kernel itself) has
no supplementary groups.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fsproto.rpc import MAX_GROUPS, Cred

TTL = 1.0
SIZE = 512


def read_groups(pid: int) -> list[int]:
    """The supplementary groups of *pid* from /proc (none if it is gone)."""
    if pid <= 0:
        return []
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return [int(g) for g in line.split()[1:]][:MAX_GROUPS]
    except (OSError, ValueError):
        pass
    return []


class Callers:
    def __init__(self, ttl: float = TTL, size: int = SIZE,
                 clock: Callable[[], float] = time.monotonic,
                 groups_of: Callable[[int], list[int]] = read_groups) -> None:
        self.ttl, self.size, self.clock, self.groups_of = ttl, size, clock, groups_of
        self._cache: dict[tuple[int, int, int], tuple[float, Cred]] = {}
        self.reads = 0  # /proc reads (a test looks)

    def cred(self, ctx: Any) -> Cred:
        """[uid, gid, group...] of the request's caller."""
        key = (ctx.pid, ctx.uid, ctx.gid)
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        self.reads += 1
        cred = [ctx.uid, ctx.gid, *self.groups_of(ctx.pid)]
        self._cache.pop(key, None)
        while len(self._cache) >= self.size:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = (now + self.ttl, cred)
        return cred
