"""What the client may answer from memory while the server keeps its promises (no I/O here).

How this works
--------------
A server that keeps callbacks (protocol 6, server/callbacks.py) promises to tell this client,
before it answers anyone else's change, that something it told us changed. Until then our
copy is as good as the server's, so the client keeps three bounded maps, by the server's
object key (st_dev, st_ino):

    attrs     key -> attributes                      (getattr answered from memory)
    entries   (directory key, name) -> (key, handle)  (lookup answered from memory)
              or ABSENT (a name that does not exist: a negative lookup)
    inodes    key -> FUSE inode number                (to tell the kernel what to drop)
    listings  directory key -> its names in order     (readdir answered from memory)

and gives the kernel long timeouts (`timeout`) for what it answers under a promise. Objects
the server said have no extended attributes at all (fsproto.rpc.ST_XATTRS) are remembered
apart, with their own expiry: getxattr and listxattr of them are answered from memory. Our
own changes replace an object's attributes but add no extended attribute (only setxattr
does: `xattrs_changed`), so they leave that alone. A
directory whose every name is in `entries` (one this client just made: empty) is *complete*:
a name not there does not exist, with no need to ask (the LOOKUP before each file `tar x` or
`cp -r` creates). Losing any of its names (a BREAK, the LRU bound) ends that.

A BREAK names keys (and a directory's names): `apply_break` drops them here and returns the
kernel invalidations to make (`Drop`): the caller runs them off the FUSE request path and then
acknowledges the BREAK. `reset` (connection lost or new: the promises are void) drops all and
returns invalidations for everything the kernel may hold with a long timeout.

A listing is kept when a readdir fetched a whole directory, first READDIR to last, with no
BREAK and no change of our own in between; it is answered from memory while every entry's
attributes are still cached (a BREAK on one of them drops those: the next listing asks the
server again). A BREAK on the directory, or our own change of a name in it, drops it.

Changes made on the server's disk by local processes, not through mxfs, break no promise:
every cached item therefore also expires after `timeout` (the kernel's copies too), which is
how long such a change can stay unseen.

Races: an answer that was on its way while a BREAK arrived may predate the change. Every
request notes `generation` before it is sent; `fresh(gen)` after the answer is False if any
BREAK or reset came meanwhile, and such an answer is neither cached nor given a long timeout.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fsproto.rpc import BREAK_ALL, BREAK_DATA, BREAK_NAMES, ST_XATTRS, StatTuple

Key = tuple[int, int]
ABSENT = None  # an entries value: the name does not exist


@dataclass(frozen=True)
class Drop:
    """One kernel invalidation: an inode's attributes (and data unless attr_only), or the
    entry *name* of directory inode *ino*."""
    ino: int
    attr_only: bool = True
    name: bytes | None = None


def key_of(st: StatTuple) -> Key:
    return st[0], st[1]


class Leases:
    def __init__(self, *, timeout: float = 10.0, max_entries: int = 65536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout  # kernel attr/entry timeout under a promise (0: no caching)
        self.max_entries = max_entries
        self._clock = clock
        self.active = False  # this connection's server keeps callbacks
        self.generation = 0
        # every value is kept with the time it expires
        self._attrs: OrderedDict[Key, tuple[StatTuple, float]] = OrderedDict()
        self._entries: OrderedDict[tuple[Key, bytes], tuple[tuple[Key, Any] | None, float]] = (
            OrderedDict())
        self._names: dict[Key, set[bytes]] = {}  # directory key -> its names in _entries
        self._inodes: OrderedDict[Key, int] = OrderedDict()
        self._keys: dict[int, Key] = {}  # FUSE inode -> key
        self._complete: dict[Key, float] = {}  # directories whose every name is in _entries
        self._no_xattrs: OrderedDict[Key, float] = OrderedDict()  # key -> until
        # directory key -> ([(name, key, handle)...] in server order, until)
        self._listings: OrderedDict[Key, tuple[list[tuple[bytes, Key, Any]], float]] = (
            OrderedDict())
        self._listed = 0  # entries in _listings (bounded by max_entries)
        self.own_changes = 0  # our own changes of names, anywhere (listing_mark)
        self.hits = 0
        self.misses = 0
        self.xattr_hits = 0  # getxattr/listxattr answered "none" from memory
        self.listing_hits = 0  # readdirs answered from memory
        self.breaks = 0
        self.resets = 0
        self.kernel_drops = 0

    @property
    def enabled(self) -> bool:
        return self.active and self.timeout > 0

    def fresh(self, gen: int) -> bool:
        """Whether an answer to a request sent at generation *gen* may be trusted."""
        return self.enabled and gen == self.generation

    # -- what we learn -------------------------------------------------------------------------
    def know(self, ino: int, st: StatTuple) -> None:
        """The kernel knows the object of *st* as inode *ino*."""
        key = key_of(st)
        self._inodes[key] = ino
        self._inodes.move_to_end(key)
        self._keys[ino] = key
        if len(self._inodes) > self.max_entries * 2:  # (the kernel's copy then times out)
            _, old = self._inodes.popitem(last=False)
            self._keys.pop(old, None)

    def inode(self, key: Key) -> int | None:
        return self._inodes.get(key)

    def key(self, ino: int) -> Key | None:
        """The server's key of a FUSE inode, if known (only while promises are kept)."""
        return self._keys.get(ino) if self.enabled else None

    def put_attrs(self, st: StatTuple, gen: int) -> None:
        if self.fresh(gen):
            key = key_of(st)
            until = self._clock() + self.timeout
            self._attrs[key] = (st, until)
            self._attrs.move_to_end(key)
            if len(self._attrs) > self.max_entries:
                self._attrs.popitem(last=False)
            if len(st) > ST_XATTRS:  # (answers to our own changes do not say)
                if st[ST_XATTRS]:
                    self._no_xattrs.pop(key, None)
                else:
                    self._no_xattrs[key] = until
                    self._no_xattrs.move_to_end(key)
                    if len(self._no_xattrs) > self.max_entries:
                        self._no_xattrs.popitem(last=False)

    def put_entry(self, dir_key: Key, name: bytes, value: tuple[Key, Any] | None,
                  gen: int) -> None:
        if not self.fresh(gen):
            return
        k = (dir_key, name)
        self._entries[k] = (value, self._clock() + self.timeout)
        self._entries.move_to_end(k)
        self._names.setdefault(dir_key, set()).add(name)
        if len(self._entries) > self.max_entries:
            (old_dir, old_name), _ = self._entries.popitem(last=False)
            self._unname(old_dir, old_name)
            self._complete.pop(old_dir, None)

    def made_dir(self, st: StatTuple, gen: int) -> None:
        """This client just made the directory *st*: it has no names yet."""
        if self.fresh(gen) and len(self._complete) < self.max_entries:
            self._complete[key_of(st)] = self._clock() + self.timeout

    def _unname(self, dir_key: Key, name: bytes) -> None:
        names = self._names.get(dir_key)
        if names is not None:
            names.discard(name)
            if not names:
                del self._names[dir_key]

    # -- what we answer ------------------------------------------------------------------------
    def attrs(self, key: Key) -> StatTuple | None:
        got = self.cached_attrs(key)
        return None if got is None else got[0]

    def cached_attrs(self, key: Key) -> tuple[StatTuple, float] | None:
        """The attributes of *key* and the seconds left of the promise they rest on (what the
        kernel may be told to keep them: an answer from memory renews nothing)."""
        if not self.enabled:
            return None
        got = self._attrs.get(key)
        now = self._clock()
        if got is None or got[1] <= now:
            self.misses += 1
            return None
        self.hits += 1
        return got[0], got[1] - now

    def no_xattrs(self, key: Key | None) -> bool:
        """Whether the server said, under a promise still held, that *key* has no extended
        attributes at all (fsproto.rpc.ST_XATTRS): any name is ENODATA, the list empty."""
        until = self._no_xattrs.get(key) if self.enabled and key is not None else None
        if until is None or until <= self._clock():
            return False
        self.xattr_hits += 1
        return True

    def listing_mark(self) -> tuple[int, int]:
        """Taken before a directory's first READDIR: put_listing keeps what was fetched only
        if it is still the same at the last (no BREAK, no change of ours, meanwhile)."""
        return self.generation, self.own_changes

    def put_listing(self, dir_key: Key, entries: list[tuple[bytes, Key, Any]],
                    mark: tuple[int, int]) -> None:
        """A whole directory fetched from the server: (name, key, handle) in its order."""
        if not self.enabled or mark != self.listing_mark() or len(entries) > self.max_entries // 4:
            return
        self._drop_listing(dir_key)
        self._listings[dir_key] = (entries, self._clock() + self.timeout)
        self._listed += len(entries)
        while self._listed > self.max_entries:
            old, (gone, _) = self._listings.popitem(last=False)
            self._listed -= len(gone)

    def listing(self, dir_key: Key | None) -> list[tuple[bytes, StatTuple, Any, float]] | None:
        """The directory's entries, in order, as (name, attributes, handle, seconds left of
        the shortest promise that answer rests on), or None: not listed, or some entry's
        attributes are not cached any more (then the server is asked)."""
        got = self._listings.get(dir_key) if self.enabled and dir_key is not None else None
        if got is None:
            return None
        entries, until = got
        now = self._clock()
        out: list[tuple[bytes, StatTuple, Any, float]] = []
        if until > now:
            attrs = self._attrs
            for name, key, fh in entries:
                a = attrs.get(key)
                if a is None or a[1] <= now:
                    return None
                out.append((name, a[0], fh, min(until, a[1]) - now))
            self.listing_hits += 1
            return out
        self._drop_listing(dir_key)
        return None

    def names_changed(self, dir_key: Key) -> None:
        """Our own change of a name in the directory: its listing is old."""
        self.own_changes += 1
        self._drop_listing(dir_key)

    def _drop_listing(self, dir_key: Key) -> None:
        got = self._listings.pop(dir_key, None)
        if got is not None:
            self._listed -= len(got[0])

    def lookup(self, dir_key: Key, name: bytes) -> tuple[bool, Any, StatTuple | None, float]:
        """(known, value, attributes, seconds left) for *name* in *dir_key*: value is
        (key, handle), or ABSENT for a name known not to exist; the attributes of what it
        names (None for ABSENT); how long the kernel may keep the answer: what is left of
        the shortest promise it rests on."""
        if not self.enabled:
            return False, None, None, 0.0
        now = self._clock()
        got = self._entries.get((dir_key, name))
        if got is not None:
            value, until = got
            if until > now:
                if value is None:
                    self.hits += 1
                    return True, ABSENT, None, until - now
                attrs = self._attrs.get(value[0])
                if attrs is not None and attrs[1] > now:
                    self.hits += 1
                    return True, value, attrs[0], min(until, attrs[1]) - now
        else:
            until = self._complete.get(dir_key, 0.0)
            if until > now:
                self.hits += 1
                return True, ABSENT, None, until - now
        self.misses += 1
        return False, None, None, 0.0

    # -- what we drop --------------------------------------------------------------------------
    def forget(self, key: Key) -> None:
        """Our own change made our copy of *key*'s attributes old."""
        self._attrs.pop(key, None)

    def xattrs_changed(self, key: Key) -> None:
        """Our own setxattr/removexattr of *key* is done: its attributes (ctime, "has none")
        are old, and so is any answer about it still on its way (sent before the change)."""
        self._attrs.pop(key, None)
        self._no_xattrs.pop(key, None)
        self.generation += 1

    def forget_entry(self, dir_key: Key, name: bytes) -> None:
        """Our own change of the name: the caller records what it names now."""
        if self._entries.pop((dir_key, name), 0) != 0:
            self._unname(dir_key, name)
        self._complete.pop(dir_key, None)  # (until the caller puts the new value back)

    def renamed_in(self, dir_key: Key, name: bytes, value: tuple[Key, Any] | None,
                   gen: int) -> None:
        """Our own change made *name* name *value* now (ABSENT: nothing): a complete
        directory stays complete if the answer may be trusted."""
        complete = self._complete.get(dir_key)
        self.forget_entry(dir_key, name)
        if self.fresh(gen):
            self.put_entry(dir_key, name, value, gen)
            if complete is not None:
                self._complete[dir_key] = complete

    def apply_break(self, entries: list[tuple[Key, int, list[bytes]]]) -> list[Drop]:
        """Drop what a BREAK names; return the kernel invalidations it calls for."""
        self.generation += 1
        self.breaks += 1
        drops: list[Drop] = []
        for key, flags, names in entries:
            self._attrs.pop(key, None)
            self._no_xattrs.pop(key, None)
            self._complete.pop(key, None)
            self._drop_listing(key)
            ino = self._inodes.get(key)
            if ino is not None:
                drops.append(Drop(ino, attr_only=not flags & (BREAK_DATA | BREAK_ALL)))
            if flags & BREAK_ALL:
                names = sorted(self._names.get(key, ()))
            elif not flags & BREAK_NAMES:
                continue
            for name in names:
                self.forget_entry(key, name)
                if ino is not None:
                    drops.append(Drop(ino, name=name))
        self.kernel_drops += len(drops)
        return drops

    def reset(self) -> list[Drop]:
        """The promises are void: drop everything; invalidate all the kernel may hold."""
        self.generation += 1
        self.resets += 1
        drops = [Drop(ino, attr_only=False) for ino in self._inodes.values()]
        for dir_key, names in self._names.items():
            ino = self._inodes.get(dir_key)
            if ino is not None:
                drops += [Drop(ino, name=n) for n in sorted(names)]
        self._attrs.clear()
        self._no_xattrs.clear()
        self._listings.clear()
        self._listed = 0
        self._entries.clear()
        self._names.clear()
        self._complete.clear()
        self.kernel_drops += len(drops)
        return drops

    def statistics(self) -> dict[str, int]:
        return {"active": int(self.enabled), "hits": self.hits, "misses": self.misses,
                "xattr_hits": self.xattr_hits, "listing_hits": self.listing_hits,
                "breaks": self.breaks, "resets": self.resets, "kernel_drops": self.kernel_drops,
                "attrs": len(self._attrs), "entries": len(self._entries),
                "listed": self._listed}
