"""What the client answers without asking the server: post-op attributes, "no capability".

How this works
--------------
The kernel drops a directory's attributes after every create, unlink or rename in it, and a
file's after every write, and asks for them again at once (a permission check, fchmod or
futimens after a write). The server's reply to our change carries the object's attributes
right after it (post-op attributes, as NFS clients use them): `PostOpAttrs` keeps them for
one getattr within attr_timeout. The kernel also asks for security.capability before EVERY
write (to drop file capabilities): `NoCapability` remembers "none" for attr_timeout, as
attributes are remembered.

Both are hints kept in an `Expiring` map: an entry answers until its deadline, and past its
size limit the map forgets everything at once (cheaper than an LRU; a forgotten hint costs
one request). Time is the trio clock unless the caller passes another.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import trio

from fsproto.rpc import StatTuple

Clock = Callable[[], float]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

POST_OP_LIMIT = 4096  # inodes with post-op attributes kept
NO_CAP_LIMIT = 65536  # inodes known to have no capability


class Expiring(Generic[K, V]):
    """key -> value until a deadline; more than *limit* keys and all are forgotten."""

    def __init__(self, limit: int, clock: Clock = trio.current_time) -> None:
        self._limit = limit
        self._clock = clock
        self._items: dict[K, tuple[float, V]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: K, value: V, ttl: float) -> None:
        if len(self._items) > self._limit:
            self._items.clear()
        self._items[key] = (self._clock() + ttl, value)

    def get(self, key: K) -> V | None:
        """The value if it has not expired; it stays."""
        item = self._items.get(key)
        return item[1] if item is not None and item[0] > self._clock() else None

    def pop(self, key: K) -> V | None:
        """The value if it has not expired; it goes either way."""
        item = self._items.pop(key, None)
        return item[1] if item is not None and item[0] > self._clock() else None

    def discard(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


class PostOpAttrs:
    """inode -> its attributes right after our last change of it, for one getattr."""

    def __init__(self, ttl: float, clock: Clock = trio.current_time,
                 limit: int = POST_OP_LIMIT) -> None:
        self.ttl = ttl
        self._map: Expiring[int, StatTuple] = Expiring(limit, clock)
        # told of every change and forget (st None): the callback cache follows (fs.py)
        self.on_change: Callable[[int, StatTuple | None], None] | None = None

    def changed(self, ino: int, st: StatTuple) -> None:
        """The server's reply to our change of *ino* says these are its attributes now."""
        if self.ttl > 0:
            self._map.put(ino, st, self.ttl)
        if self.on_change is not None:
            self.on_change(ino, st)

    def take(self, ino: int) -> StatTuple | None:
        """Them, if still within attr_timeout; either way they are used up."""
        return self._map.pop(ino)

    def forget(self, ino: int) -> None:
        """They are old: a change is on its way, or the kernel was told newer ones."""
        self._map.discard(ino)
        if self.on_change is not None:
            self.on_change(ino, None)

    def clear(self) -> None:
        self._map.clear()


class NoCapability:
    """Inodes known to have no security.capability attribute, for attr_timeout."""

    def __init__(self, ttl: float, clock: Clock = trio.current_time,
                 limit: int = NO_CAP_LIMIT) -> None:
        self.ttl = ttl
        self._map: Expiring[int, bool] = Expiring(limit, clock)

    def remember(self, ino: int) -> None:
        self._map.put(ino, True, self.ttl)

    def known(self, ino: int) -> bool:
        return self._map.get(ino) is not None

    def forget(self, ino: int) -> None:
        """Its extended attributes changed."""
        self._map.discard(ino)

    def clear(self) -> None:
        self._map.clear()
