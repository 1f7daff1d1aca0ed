"""The write path of open files: write-behind runs sent and settled, errors reported.

How this works
--------------
writeback.py decides (pure) which writes gather into a run and when a run must go; this
module drives it. A write that continues its file's run is answered at once and kept; a run
goes on the wire when it is full, when a write does not continue it, when it is older than
MAX_AGE (`run`, the mount's background task, which also hosts the sending tasks), and before
anything that must see the data (`settle`, `settle_inode`, `settle_open_files`). Up to
MAX_INFLIGHT runs of a file travel at once; an O_APPEND run, a run overlapping one on the
wire and a direct (large) write wait for those before them, so the server applies
overlapping data in the kernel's order.

A run that fails later cannot fail the write(2) that made it: its error is kept per inode
(writeerrors.py, Linux's errseq) and raised at every open file's next write, fsync and close
(`flush`, `fsync`). Every WRITE's answer carries the file's attributes right after it; when
no other write of the file overlapped it they answer the kernel's next getattr (attrcache).
Errors are raised as OSError.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import trio

from fsproto.rpc import Op

from .attrcache import PostOpAttrs
from .openfiles import OpenFile, OpenFiles
from .reopen import Reopener
from .rpc import RpcClient, RpcError
from .writeback import (
    APPEND_MAX,
    MAX_AGE,
    MAX_INFLIGHT,
    MAX_PARTS,
    RUN_MAX,
    Run,
    may_continue,
    worth_buffering,
)
from .writeerrors import WriteErrors

log = logging.getLogger("mxfs")


def _report(err: int) -> None:
    if err:
        raise OSError(err, os.strerror(err))


class Writer:
    def __init__(self, rpc: RpcClient, files: OpenFiles, reopen: Reopener,
                 attrs: PostOpAttrs) -> None:
        self.rpc = rpc
        self.files = files
        self.reopen = reopen
        self.attrs = attrs
        self.werr = WriteErrors()  # failed write-behind and unsynced data, per inode
        self.dirty: set[int] = set()  # file handles with a pending run
        self._senders: trio.Nursery | None = None  # where runs travel (None: sent inline)

    # -- write(2) ------------------------------------------------------------------------------
    async def write(self, f: OpenFile, off: int, buf: bytes) -> int:
        if f.flags & os.O_APPEND:
            return await self._append(f, off, buf)
        n = len(buf)
        async with f.wlock:
            _report(self.werr.for_write(f.ino, f.seen))
            run = f.run
            if run is not None and run.continues(off, n):
                run.add(buf)  # answered now, sent with the rest of the run
                return n
            if run is not None:
                await self._send_run(f)
            if worth_buffering(n):
                f.run = Run(off, [buf], n, trio.current_time())
                self.dirty.add(f.fh)
                return n
            await self._drain(f, 0)  # a direct write must not overtake runs on the wire
            _report(self.werr.for_write(f.ino, f.seen))
            return await self._write_now(f, off, buf)

    async def _append(self, f: OpenFile, off: int, buf: bytes) -> int:
        """An O_APPEND write: gathered so that each write(2) reaches the server whole and in
        the kernel's order (writeback.py says how)."""
        n = len(buf)
        async with f.wlock:
            _report(self.werr.for_write(f.ino, f.seen))
            run = f.run
            if run is None or not run.continues_append(off, n):
                if run is not None:
                    await self._send_run(f)
                await self._settle_other_appends(f)
                run = f.run = Run(off, [], 0, trio.current_time())
                self.dirty.add(f.fh)
            run.add(buf)
            run.open = may_continue(off, n)
            if ((run.size >= RUN_MAX and not run.open) or run.size >= APPEND_MAX
                    or len(run.parts) >= MAX_PARTS):
                await self._send_run(f)
            return n

    async def _settle_other_appends(self, f: OpenFile) -> None:
        """A new write(2) of f's inode begins: the kernel finished the previous one (it holds
        the inode's lock across a write(2)), so other files' append runs of it go first."""
        for g in self.files.of_inode(f.ino):
            if g is not f and g.flags & os.O_APPEND and g.pending:
                await self.settle(g)

    async def _write_now(self, f: OpenFile, off: int, data: Any, tracked: bool = False) -> int:
        async def attempt(hid: int, epoch: int) -> int:
            verifier = self.rpc.verifier  # of the server run this connection reaches
            alone = len(f.inflight) == tracked  # no other write of f on the wire now
            f.writes += 1
            seq = f.writes
            self.attrs.forget(f.ino)  # attributes remembered before this write are old
            n, st = await self.rpc.write(hid, off, data, epoch=epoch)
            self.werr.acknowledged(f.ino, epoch, verifier)  # not durable until an fsync
            if alone and f.writes == seq and f.run is None and len(f.inflight) == tracked:
                # no other write of f overlapped this one (the server may apply overlapping
                # ones in any order) and none waits: these are the file's attributes now
                self.attrs.changed(f.ino, st)
            return n

        return await self.reopen.retry(f, attempt)

    # -- runs on the wire ----------------------------------------------------------------------
    async def _send_run(self, f: OpenFile) -> None:
        """Put the file's pending run on the wire (caller holds f.wlock). Up to MAX_INFLIGHT
        runs of one file travel at once, so a sequential writer streams instead of waiting
        a round trip per MiB; a run that overlaps one still travelling waits for it."""
        run, f.run = f.run, None
        self.dirty.discard(f.fh)
        if run is None:
            return
        if f.flags & os.O_APPEND or any(a < run.end and run.off < b for a, b in f.inflight):
            await self._drain(f, 0)  # (appends land where the server's end of file is: in order)
        else:
            await self._drain(f, MAX_INFLIGHT - 1)
        if self._senders is None:  # no background sender (not mounted): send inline
            await self._sender(f, run)
            _report(self.werr.for_write(f.ino, f.seen))
            return
        f.inflight.append((run.off, run.end))
        self._senders.start_soon(self._sender, f, run, True)

    async def _sender(self, f: OpenFile, run: Run, tracked: bool = False) -> None:
        err = 0
        try:
            done = await self._write_now(f, run.off, run.parts, tracked)
            if done != run.size:
                err = errno.EIO
        except OSError as e:
            err = e.errno or errno.EIO
        except Exception:
            log.exception("write-behind run")
            err = errno.EIO
        finally:
            if err:  # kept for the file: every open file's next fsync and close report it
                self.werr.record(f.ino, err)
                log.warning("write-behind of %d bytes at %d on inode %d failed: %s",
                            run.size, run.off, f.ino, os.strerror(err))
            if tracked:
                f.inflight.remove((run.off, run.end))
            f.changed.set()
            f.changed = trio.Event()

    async def _drain(self, f: OpenFile, at_most: int) -> None:
        """Wait until no more than at_most of f's runs are on the wire."""
        while len(f.inflight) > at_most:
            await f.changed.wait()

    # -- settling ------------------------------------------------------------------------------
    async def settle(self, f: OpenFile) -> None:
        """Send f's pending run and wait for all its runs (failures are kept in werr)."""
        async with f.wlock:
            if f.run is not None:
                await self._send_run(f)
            await self._drain(f, 0)

    async def settle_inode(self, ino: int) -> None:
        """Before anything that must see ino's data or size: send its pending runs."""
        for f in self.files.of_inode(ino):
            if f.pending:
                await self.settle(f)

    async def settle_open_files(self) -> None:
        """Before a readdir (readdirplus carries sizes): every open file's pending runs."""
        for f in self.files.all():
            if f.pending:
                await self.settle(f)

    async def settle_all(self, max_age: float = 0.0) -> None:
        """Send every pending run at least max_age old (the background flusher; unmount)."""
        now = trio.current_time()
        for fh in list(self.dirty):
            f = self.files.get(fh)
            if f is None:
                self.dirty.discard(fh)
            elif f.run is not None and now - f.run.born >= max_age:
                async with f.wlock:
                    if f.run is not None:
                        await self._send_run(f)

    async def run(self) -> None:
        """Runs for the life of the mount: hosts the run senders, sends runs that aged."""
        async with trio.open_nursery() as senders:
            self._senders = senders
            while True:
                await trio.sleep(MAX_AGE / 2)
                try:
                    await self.settle_all(MAX_AGE)
                except Exception:  # never let the flusher end the mount
                    log.exception("write-behind flusher")

    # -- close, fsync --------------------------------------------------------------------------
    async def flush(self, f: OpenFile) -> None:
        """Every close(2) of the file description, in any process: report its errors."""
        await self.settle(f)
        await self._check_durable(f)
        _report(self.werr.for_close(f.ino, f.seen))

    async def fsync(self, f: OpenFile, datasync: bool) -> None:
        await self.settle(f)
        token = self.werr.unsynced_since(f.ino)
        await self.reopen.call(f, Op.FSYNC, bool(datasync))
        # the server run that synced must be the one that acknowledged the writes
        self.werr.check(f.ino, self.rpc.verifier, self.rpc.epoch)
        self.werr.synced(f.ino, token)
        _report(self.werr.for_fsync(f.ino, f.seen))

    def closed(self, f: OpenFile, last: bool) -> None:
        """f is released (settled before); *last*: its inode has no open file left."""
        self.dirty.discard(f.fh)
        if last:
            self.werr.forget(f.ino)

    async def _check_durable(self, f: OpenFile) -> None:
        """Writes of f's inode acknowledged by an earlier connection, or with the server
        away now: ask which server run answers (PING brings its verifier, connecting if
        need be). Another run than the one that acknowledged them may have lost them: EIO."""
        if not (self.werr.needs_check(f.ino, self.rpc.epoch)
                or (self.rpc.peer is None and self.werr.unsynced_since(f.ino) >= 0)):
            return
        try:
            await self.rpc.call(Op.PING)
        except RpcError:
            self.werr.record(f.ino, errno.EIO)  # no server vouches for them
            return
        self.werr.check(f.ino, self.rpc.verifier, self.rpc.epoch)
