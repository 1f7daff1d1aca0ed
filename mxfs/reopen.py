"""Fresh handles: every call on an open file or directory, reopened after a reconnect.

How this works
--------------
An open file or directory holds the server's handle (hid) of the connection (epoch) it was
opened in. When the connection is lost and made again (rpc.py bumps its epoch), the server
has dropped those handles, so before the next call on one it is reopened: by file handle,
which reaches the same object whatever its name is now (or the server answers ESTALE), or,
where the server issues no handles, by name, which must still reach the same (st_dev, st_ino)
or the open file is stale (ESTALE), never another file. A file is reopened with its flags
less O_CREAT/O_EXCL/O_TRUNC and as the user who opened it, one reopen at a time.

A call that meets another epoch on its way (StaleEpoch: the connection changed under it)
reopens and tries again; after ATTEMPTS tries, EIO. `Reopener.retry` is that loop, the one
every handle-based call of the client goes through.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fsproto.rpc import Op, StatTuple

from .inodes import InodeTable, stat_key
from .openfiles import OpenDir, OpenFile
from .rpc import RpcClient, RpcError, StaleEpoch

log = logging.getLogger("mxfs")

ATTEMPTS = 3
REOPEN_DROP = os.O_CREAT | os.O_EXCL | os.O_TRUNC  # flags that made sense only the first time
T = TypeVar("T")


class Reopener:
    def __init__(self, rpc: RpcClient, inodes: InodeTable) -> None:
        self.rpc = rpc
        self.inodes = inodes

    async def retry(self, h: OpenFile | OpenDir, call: Callable[[int, int], Awaitable[T]]) -> T:
        """``await call(hid, epoch)`` with h's handle of the current connection, again with a
        reopened one while the connection changes under it."""
        for _ in range(ATTEMPTS):
            hid, epoch = await self.fresh(h)
            try:
                return await call(hid, epoch)
            except StaleEpoch:
                continue
        raise RpcError(errno.EIO, "the connection changed under every try")

    async def call(self, h: OpenFile | OpenDir, op: Op, *args: Any, **kw: Any) -> Any:
        """``rpc.call(op, hid, *args)`` on h's fresh handle (keyword arguments, cred= among
        them, go to rpc.call)."""
        return await self.retry(
            h, lambda hid, epoch: self.rpc.call(op, hid, *args, epoch=epoch, **kw))

    async def fresh(self, h: OpenFile | OpenDir) -> tuple[int, int]:
        """h's (hid, epoch), reopened first if its connection is gone."""
        if h.epoch != self.rpc.epoch:
            if isinstance(h, OpenFile):
                await self._reopen_file(h)
            else:
                await self._reopen_dir(h)
        return h.hid, h.epoch

    async def _reopen_file(self, f: OpenFile) -> None:
        async with f.lock:
            if f.epoch == self.rpc.epoch:
                return  # another task reopened it meanwhile
            epoch = self.rpc.epoch
            ref = self.inodes.ref(f.ino)  # (StaleInode: ESTALE)
            hid, st = await self.rpc.call(Op.OPEN, ref, f.flags & ~REOPEN_DROP, cred=f.cred)
            self._same_object(f.ino, st, hid, epoch, ref)
            f.hid, f.epoch = hid, epoch
            log.info("reopened inode %d after reconnect", f.ino)

    async def _reopen_dir(self, d: OpenDir) -> None:
        epoch = self.rpc.epoch
        ref = self.inodes.ref(d.ino)
        hid = await self.rpc.call(Op.OPENDIR, ref, cred=d.cred)
        st = await self.rpc.call(Op.FGETATTR, hid, epoch=epoch)
        self._same_object(d.ino, st, hid, epoch, ref)
        d.hid, d.epoch = hid, epoch

    def _same_object(self, ino: int, st: StatTuple, hid: int, epoch: int, ref: Any) -> None:
        """Reopened by name, the handle must reach the object it reached before (the name
        may have been renamed away and reused meanwhile, or the server may export another
        tree now). (Reopened by file handle, it is that file or the server said ESTALE.)"""
        node = self.inodes.get(ino)
        if node.fh is None and node.key is not None and stat_key(st) != node.key:
            self.rpc.post(Op.RELEASE, hid, epoch=epoch)
            log.warning("%r is another file after the reconnect: the open one is stale", ref)
            raise OSError(errno.ESTALE, "another file after the reconnect")
