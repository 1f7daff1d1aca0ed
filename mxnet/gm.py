"""GM's rules: registered memory, contiguous buffers, size-class receive buffers, send tokens.

Myrinet GM (the MPI-shaped API the paper compares against) only communicates from and into
memory that was *registered* first — pinned with ``mlock`` and entered in a registration
table, which costs a system call and bookkeeping every time. A send names one contiguous
range of one registered region. Receives are not matched by tags: the receiver pre-posts
registered buffers per power-of-two *size class* and every message lands in any buffer of
its class; the application demultiplexes by itself. Sends consume *send tokens* (flow
control) that come back when the send completes.

This module holds those rules. ``gm_engine.py`` runs them on the wire and offers the
mx-shaped convenience calls on top, paying the copies a file system on GM must pay.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass, field
from typing import Any

from .errors import RegistrationError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def size_class(length: int) -> int:
    """GM size class: the smallest k with 2**k >= length (at least 5, i.e. 32 bytes)."""
    return max(5, (max(length, 1) - 1).bit_length())


@dataclass(eq=False)
class Region:
    """A registered (pinned) memory region. Only the table that made it can free it."""

    rid: int
    buf: Any
    view: memoryview
    pinned: bool
    registered: bool = True

    @property
    def size(self) -> int:
        return self.view.nbytes

    def span(self, offset: int, length: int) -> memoryview:
        if not self.registered:
            raise RegistrationError(f"region {self.rid} was deregistered")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise RegistrationError(
                f"range {offset}+{length} lies outside registered region {self.rid} "
                f"of {self.size} bytes"
            )
        return self.view[offset : offset + length]


@dataclass
class RegistrationTable:
    """The registration table: every region pinned with mlock and remembered."""

    stats: Any
    regions: dict[int, Region] = field(default_factory=dict)
    next_id: int = 1

    def register(self, buf: Any) -> Region:
        view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
        if view.readonly:
            raise RegistrationError("GM registers writable memory only")
        pinned = False
        if view.nbytes:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(view))
            pinned = _libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(view.nbytes)) == 0
        region = Region(self.next_id, buf, view, pinned)
        self.next_id += 1
        self.regions[region.rid] = region
        self.stats.registrations += 1
        self.stats.registered_bytes += view.nbytes
        self.stats.registered_now += view.nbytes
        return region

    def deregister(self, region: Region) -> None:
        if self.regions.pop(region.rid, None) is None:
            raise RegistrationError(f"region {region.rid} is not registered")
        if region.pinned and region.view.nbytes:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(region.view))
            _libc.munlock(ctypes.c_void_p(addr), ctypes.c_size_t(region.view.nbytes))
        region.registered = False
        self.stats.registered_now -= region.view.nbytes

    def check(self, region: Any) -> Region:
        if not isinstance(region, Region) or self.regions.get(region.rid) is not region:
            raise RegistrationError(
                "GM sends and receives need registered memory: call register() first"
            )
        return region

    def close(self) -> None:
        for region in list(self.regions.values()):
            self.deregister(region)


@dataclass
class SendTokens:
    """GM flow control: a send needs a token; the token returns when the send completes."""

    total: int
    free: int = -1

    def __post_init__(self) -> None:
        if self.free < 0:
            self.free = self.total

    def take(self) -> bool:
        if self.free == 0:
            return False
        self.free -= 1
        return True

    def give(self) -> None:
        self.free = min(self.total, self.free + 1)


@dataclass
class ReceivePool:
    """Registered receive buffers pre-posted per size class (GM has no tag matching)."""

    provided: dict[int, list[Region]] = field(default_factory=dict)

    def provide(self, region: Region, klass: int) -> None:
        if region.size < (1 << klass):
            raise RegistrationError(
                f"a size class {klass} buffer needs {1 << klass} bytes, region has {region.size}"
            )
        self.provided.setdefault(klass, []).append(region)

    def take(self, klass: int) -> Region | None:
        q = self.provided.get(klass)
        return q.pop() if q else None

    def count(self, klass: int) -> int:
        return len(self.provided.get(klass, ()))
