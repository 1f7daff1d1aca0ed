"""The client's units wired as the mount wires them, over a real client and an in-process
server (loopback mxnet), with no FUSE: for tests of reopen.py and writer.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from test_server_service import KEY, _serve

from fsproto.rpc import Op
from mxfs.attrcache import PostOpAttrs
from mxfs.inodes import ROOT_INODE, InodeTable, stat_key
from mxfs.openfiles import OpenDir, OpenFile, OpenFiles
from mxfs.reopen import Reopener
from mxfs.rpc import RpcClient, open_client
from mxfs.writer import Writer
from server.service import Service


class Units:
    def __init__(self, rpc: RpcClient, svc: Service, export: Path) -> None:
        self.rpc, self.svc, self.export = rpc, svc, export
        self.inodes = InodeTable()
        self.files = OpenFiles(self.inodes)
        self.reopen = Reopener(rpc, self.inodes)
        self.attrs = PostOpAttrs(10.0)
        self.writer = Writer(rpc, self.files, self.reopen, self.attrs)

    async def create(self, name: bytes, flags: int = os.O_RDWR, *,
                     by_path: bool = False) -> OpenFile:
        """CREATE name in the export root, as the mount does; *by_path*: learn it without
        its handle (as from a server that issues none)."""
        hid, st, _, _, fh = await self.rpc.call(Op.CREATE, name, flags | os.O_CREAT, 0o644)
        if by_path:
            fh = None
        ino = self.inodes.lookup(ROOT_INODE, name, stat_key(st) if fh is None else fh, 1, fh)
        return self.files.add_file(ino, flags, hid, self.rpc.epoch, None,
                                   self.writer.werr.sample(ino))

    async def opendir(self) -> OpenDir:
        hid = await self.rpc.call(Op.OPENDIR, b"")
        return self.files.dir(self.files.add_dir(ROOT_INODE, hid, self.rpc.epoch, None))

    async def reconnect(self) -> None:
        """Drop the connection and wait until the client has made a new one."""
        epoch = self.rpc.epoch
        await self.rpc.ep.disconnect(self.rpc.peer)
        with trio.fail_after(10):
            while self.rpc.epoch == epoch or self.rpc.peer is None:
                await trio.sleep(0.01)


@asynccontextmanager
async def units(export: Path) -> AsyncIterator[Units]:
    async with trio.open_nursery() as nursery:
        ep, svc = await _serve(nursery, export, "mx")
        async with open_client("127.0.0.1", ep.address[1], key=KEY, transport="mx",
                               timeout=5) as rpc:
            yield Units(rpc, svc, export)
        nursery.cancel_scope.cancel()
