"""Carries callback breaks to the kernel, off the FUSE request path, then acknowledges them.

How this works
--------------
`on_break` runs inside mxnet's completion callback when a BREAK arrives: it drops what the
break names from the client's own caches at once (leases.py), then a task makes the kernel
drop its copies (pyfuse3.invalidate_inode / invalidate_entry) in a worker thread, because
the kernel may hold such a call until a request of ours on the same directory is answered
(calling it from the event loop, or from a handler, can deadlock the mount). The BREAK is
acknowledged when the kernel is done, or after ACK_WAIT at most: past that the kernel is
waiting for one of our own requests on that object, which the server's reply to the change
(held until our acknowledgement) would otherwise block; that request's answer refreshes the
kernel's view anyway. `on_reset` (connection lost or new) drops everything the same way,
with nothing to acknowledge.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable
from typing import Any

import pyfuse3
import trio

from .leases import Drop, Key, Leases

log = logging.getLogger("mxfs.invalidator")

ACK_WAIT = 0.2  # seconds a BREAK's acknowledgement waits for the kernel
THREADS = 4  # kernel invalidations under way at once (one may wait for a request of ours)


def invalidate(drops: Iterable[Drop]) -> None:
    """Tell the kernel (blocking: run in a worker thread)."""
    for d in drops:
        try:
            if d.name is None:
                pyfuse3.invalidate_inode(d.ino, d.attr_only)
            else:
                pyfuse3.invalidate_entry(d.ino, d.name)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF):
                log.warning("kernel invalidation of inode %d failed: %s", d.ino, e)
        except Exception:  # no FUSE session (a client without a mount): nothing to drop
            log.debug("kernel invalidation skipped", exc_info=True)
            return


class Invalidator:
    def __init__(self, leases: Leases, ack: Callable[[int], None],
                 dropped: Callable[[Key | None], None], extra: Callable[[], list[Drop]]) -> None:
        self.leases = leases
        self._ack = ack  # acknowledges a BREAK to the server
        self._dropped = dropped  # the client's other per-object caches forget it (None: all)
        self._extra = extra  # on reset: kernel entries known elsewhere (the inode table)
        self._nursery: trio.Nursery | None = None
        self._limiter = trio.CapacityLimiter(THREADS)
        self.late_acks = 0  # acknowledged before the kernel was done (ACK_WAIT passed)

    async def run(self) -> None:
        """For the life of the mount: hosts the kernel invalidations."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await trio.sleep_forever()
        finally:  # unmounting: the connection's end, which comes after, has nothing to drop
            self._nursery = None

    def on_break(self, seq: int, entries: list[tuple[Key, int, list[bytes]]] | None) -> None:
        if entries is None:  # unreadable or too long: take it as "everything changed"
            drops = self._reset_drops()
        else:
            drops = self.leases.apply_break(entries)
            for key, _, _ in entries:
                self._dropped(key)
        if not drops or self._nursery is None:
            self._ack(seq)
            return
        self._nursery.start_soon(self._kernel_then_ack, seq, drops)

    def on_reset(self) -> None:
        drops = self._reset_drops()
        if drops and self._nursery is not None:
            self._nursery.start_soon(self._kernel, drops, trio.Event())

    def _reset_drops(self) -> list[Drop]:
        drops = self.leases.reset()
        self._dropped(None)
        return drops + self._extra()

    async def _kernel(self, drops: list[Drop], done: trio.Event) -> None:
        try:
            await trio.to_thread.run_sync(invalidate, drops, limiter=self._limiter)
        finally:
            done.set()

    async def _kernel_then_ack(self, seq: int, drops: list[Drop]) -> None:
        done = trio.Event()
        assert self._nursery is not None
        self._nursery.start_soon(self._kernel, drops, done)
        with trio.move_on_after(ACK_WAIT):
            await done.wait()
        if not done.is_set():
            self.late_acks += 1
        self._ack(seq)

    def statistics(self) -> dict[str, Any]:
        return {**self.leases.statistics(), "late_acks": self.late_acks}
