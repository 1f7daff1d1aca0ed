"""64-bit match/mask matching: the posted-receive queue and the unexpected queue. Pure.

Rule (MX): a message with match info ``m`` matches a posted receive ``(match, mask)`` when
``m & mask == match``. A receive with ``match & ~mask != 0`` can never match and is refused.
A receive may also name a source peer; then only that peer's messages match it.

Order: posted receives are tried in the order they were posted; unexpected messages are
kept in arrival order, so messages from one peer match in the order they were sent.
Exact receives (mask == MASK_ALL) sit in a dict for O(1) lookup; wildcard receives in a
list; a global sequence number decides which of the two was posted first.

Bounds: ``max_count`` messages and ``max_bytes`` bytes *per peer* (``peer_has_room``), the
window mx grants each peer as credits; a peer never fills the queue for another.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import MatchError

MASK_ALL = 0xFFFF_FFFF_FFFF_FFFF


def check_match(match: int, mask: int) -> None:
    if not (0 <= match <= MASK_ALL and 0 <= mask <= MASK_ALL):
        raise MatchError("match and mask must be 64-bit unsigned integers")
    if match & ~mask & MASK_ALL:
        raise MatchError(
            f"receive can never match: match {match:#x} has bits outside mask {mask:#x}"
        )


def matches(msg_match: int, match: int, mask: int) -> bool:
    return msg_match & mask == match


@dataclass(eq=False, slots=True)
class Posted:
    """A posted receive as the matcher sees it. ``item`` is the caller's request object."""

    match: int
    mask: int
    peer: Hashable | None
    item: Any
    seq: int = 0
    active: bool = True

    def accepts(self, msg_match: int, peer: Hashable) -> bool:
        return (self.peer is None or self.peer == peer) and msg_match & self.mask == self.match


@dataclass(eq=False, slots=True)
class Unexpected:
    """A message that arrived before any matching receive. ``item`` is the caller's record."""

    match: int
    peer: Hashable
    length: int  # bytes it holds in memory (0 for a rendezvous announcement)
    item: Any


M = TypeVar("M")


@dataclass
class Matcher(Generic[M]):
    max_count: int = 4096
    max_bytes: int = 64 << 20
    _exact: dict[int, deque[Posted]] = field(default_factory=dict)
    _wild: list[Posted] = field(default_factory=list)
    _unexpected: deque[Unexpected] = field(default_factory=deque)
    _seq: int = 0
    unexpected_bytes: int = 0
    high_water: int = 0  # most messages ever waiting in the unexpected queue
    _per_peer: dict[Hashable, list[int]] = field(default_factory=dict)  # peer: [count, bytes]

    # -- receives ------------------------------------------------------------------------
    def post(self, match: int, mask: int, peer: Hashable | None, item: Any) -> Unexpected | None:
        """Post a receive. Returns the unexpected message it takes, or None (it is queued)."""
        check_match(match, mask)
        if self._unexpected:
            for i, u in enumerate(self._unexpected):
                if (peer is None or u.peer == peer) and u.match & mask == match:
                    del self._unexpected[i]
                    self.unexpected_bytes -= u.length
                    mine = self._per_peer[u.peer]
                    mine[0] -= 1
                    mine[1] -= u.length
                    if not mine[0]:
                        del self._per_peer[u.peer]
                    return u
        self._seq += 1
        p = Posted(match, mask, peer, item, self._seq)
        if mask == MASK_ALL:
            self._exact.setdefault(match, deque()).append(p)
        else:
            self._wild.append(p)
        item._posted = p
        return None

    def cancel(self, item: Any) -> bool:
        """Remove a posted receive. False if it was not posted (already matched)."""
        p: Posted | None = getattr(item, "_posted", None)
        if p is None or not p.active:
            return False
        p.active = False
        item._posted = None  # (item and Posted point at each other: no cycle left behind)
        if p.mask == MASK_ALL:
            q = self._exact.get(p.match)
            if q is not None:
                q.remove(p)
                if not q:
                    del self._exact[p.match]
        else:
            self._wild.remove(p)
        return True

    def posted_count(self) -> int:
        return len(self._wild) + sum(len(q) for q in self._exact.values())

    # -- messages ------------------------------------------------------------------------
    def arrive(self, msg_match: int, peer: Hashable) -> Any | None:
        """A message arrived: return the item of the first posted receive it matches (now
        removed), or None — then the caller either stores it with ``add_unexpected`` or
        waits for room."""
        best: Posted | None = None
        q = self._exact.get(msg_match)
        if q:
            for p in q:
                if p.peer is None or p.peer == peer:
                    best = p
                    break
        if self._wild:
            for p in self._wild:
                if best is not None and p.seq > best.seq:
                    break
                if p.accepts(msg_match, peer):
                    best = p
                    break
        if best is None:
            return None
        if q and best is q[0]:  # the usual case: the oldest exact receive
            best.active = False
            best.item._posted = None  # break the item <-> Posted cycle: freed by refcount
            q.popleft()
            if not q:
                del self._exact[msg_match]
        else:
            self.cancel(best.item)
        return best.item

    def has_room(self, length: int) -> bool:
        """Room for one more message of ``length`` bytes? (length 0: is there room at all)"""
        return len(self._unexpected) < self.max_count and (
            self.unexpected_bytes + length <= self.max_bytes
            if length else self.unexpected_bytes < self.max_bytes
        )

    def peer_has_room(self, peer: Hashable, length: int) -> bool:
        """Room for one more message of ``length`` bytes from ``peer``? (length 0: a message
        that holds no bytes here, or one whose length is not known yet.) A peer with nothing
        queued always has room for one message, however long (else it would wait forever)."""
        mine = self._per_peer.get(peer)
        if mine is None:
            return True
        count, nbytes = mine
        if count >= self.max_count:
            return False
        return nbytes < self.max_bytes if not length else nbytes + length <= self.max_bytes

    def peer_count(self, peer: Hashable) -> int:
        """Messages from ``peer`` waiting in the unexpected queue."""
        mine = self._per_peer.get(peer)
        return mine[0] if mine is not None else 0

    def add_unexpected(self, msg_match: int, peer: Hashable, length: int, item: Any) -> None:
        self._unexpected.append(Unexpected(msg_match, peer, length, item))
        self.unexpected_bytes += length
        mine = self._per_peer.get(peer)
        if mine is None:
            self._per_peer[peer] = [1, length]
        else:
            mine[0] += 1
            mine[1] += length
        self.high_water = max(self.high_water, len(self._unexpected))

    def probe(self, match: int, mask: int, peer: Hashable | None = None) -> Unexpected | None:
        check_match(match, mask)
        for u in self._unexpected:
            if (peer is None or u.peer == peer) and u.match & mask == match:
                return u
        return None

    def unexpected_count(self) -> int:
        return len(self._unexpected)

    # -- peers ---------------------------------------------------------------------------
    def drop_peer(self, peer: Hashable) -> list[Any]:
        """Forget a lost peer: drop its unexpected messages, and return (and remove) the
        posted receives that only that peer could have satisfied."""
        kept = deque(u for u in self._unexpected if u.peer != peer)
        self.unexpected_bytes = sum(u.length for u in kept)
        self._unexpected = kept
        self._per_peer.pop(peer, None)
        doomed = [p.item for p in self._wild if p.peer == peer]
        doomed += [p.item for q in self._exact.values() for p in q if p.peer == peer]
        for item in doomed:
            self.cancel(item)
        return doomed
