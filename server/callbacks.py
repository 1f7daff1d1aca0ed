"""Callbacks: which client caches what, and whom a change must tell first (no I/O here).

How this works
--------------
An answer that tells a client about an object (attributes, a directory's names, a file
opened for its data) is a promise (`grant`): until the server breaks it, that client may
answer from its cache. Objects are keyed by (st_dev, st_ino). A change (`changed`) breaks the
promises every *other* holder has on the object: they are owed a BREAK entry (what changed,
and which names of a directory) and lose the promise (they take a new one when they ask
again). The client that made the change keeps its promise: its own answer tells it the new
state. `take()` hands the owed entries to the service, per client, once per request; the
service sends them and waits for the acknowledgements before it answers the change.

Bounded: each client holds at most `per_client` promises; granting one more drops its oldest,
and that client is owed a BREAK_ALL entry for it (sent without waiting: only its own cache
shrinks). A client that goes away loses all of them (`drop`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any

from fsproto.rpc import BREAK_ALL, BREAK_NAMES, BreakEntry

Key = tuple[int, int]  # (st_dev, st_ino)
Owner = Hashable  # the client's connection


class Callbacks:
    def __init__(self, per_client: int = 65536) -> None:
        self.per_client = per_client
        self._holders: dict[Key, set[Owner]] = {}
        self._held: dict[Owner, OrderedDict[Key, None]] = {}
        self._owed: dict[Owner, dict[Key, list[Any]]] = {}  # owner -> key -> [flags, names]
        self._evicted: dict[Owner, list[Key]] = {}
        self.granted = 0
        self.broken = 0  # promises broken by another client's change
        self.evicted = 0  # promises dropped to stay within per_client

    def __len__(self) -> int:
        return sum(len(h) for h in self._held.values())

    def grant(self, owner: Owner, key: Key) -> None:
        held = self._held.get(owner)
        if held is None:
            held = self._held[owner] = OrderedDict()
        if key in held:
            held.move_to_end(key)
            return
        held[key] = None
        self._holders.setdefault(key, set()).add(owner)
        self.granted += 1
        if len(held) > self.per_client:
            old, _ = held.popitem(last=False)
            self._unhold(owner, old)
            self._evicted.setdefault(owner, []).append(old)
            self.evicted += 1

    def changed(self, by: Owner, key: Key, flags: int, names: Iterable[bytes] = ()) -> None:
        """*by* changed the object *key* (flags: BREAK_*; names: of a directory's entries)."""
        holders = self._holders.get(key)
        if not holders or (len(holders) == 1 and by in holders):
            return
        for owner in [h for h in holders if h is not by]:
            self._unhold(owner, key)
            self._held[owner].pop(key, None)
            owed = self._owed.setdefault(owner, {})
            entry = owed.get(key)
            if entry is None:
                entry = owed[key] = [0, set()]
            entry[0] |= flags
            if names:
                entry[0] |= BREAK_NAMES
                entry[1].update(names)
            self.broken += 1

    def _unhold(self, owner: Owner, key: Key) -> None:
        holders = self._holders.get(key)
        if holders is not None:
            holders.discard(owner)
            if not holders:
                del self._holders[key]

    def take(self) -> tuple[dict[Owner, list[BreakEntry]], dict[Owner, list[BreakEntry]]]:
        """(breaks to deliver before answering, evictions to send without waiting)."""
        breaks: dict[Owner, list[BreakEntry]] = {}
        if self._owed:
            for owner, owed in self._owed.items():
                breaks[owner] = [[k[0], k[1], flags, sorted(names) if names else None]
                                 for k, (flags, names) in owed.items()]
            self._owed = {}
        evictions: dict[Owner, list[BreakEntry]] = {}
        if self._evicted:
            for owner, keys in self._evicted.items():
                evictions[owner] = [[k[0], k[1], BREAK_ALL, None] for k in keys]
            self._evicted = {}
        return breaks, evictions

    def pending(self) -> bool:
        return bool(self._owed or self._evicted)

    def drop(self, owner: Owner) -> int:
        """The client is gone: forget its promises (and what it was owed). Returns how many."""
        held = self._held.pop(owner, None) or {}
        for key in held:
            self._unhold(owner, key)
        self._owed.pop(owner, None)
        self._evicted.pop(owner, None)
        return len(held)

    def holds(self, owner: Owner, key: Key) -> bool:
        held = self._held.get(owner)
        return held is not None and key in held

    def statistics(self) -> dict[str, int]:
        return {"promises": len(self), "granted": self.granted, "broken": self.broken,
                "evicted": self.evicted, "clients": len(self._held)}
