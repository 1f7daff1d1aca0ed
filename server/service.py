"""The trio shell of the I/O server: receives requests from mxnet, runs them, sends replies.

How this works
--------------
`REQ_SLOTS` slot tasks each keep one receive (match REQ<<56, mask KIND_MASK, any peer) posted
with its own REQ_BUF_SIZE buffer, serve what lands in it, then post again. A request carrying
a small write has its data inside that buffer: it is written with os.pwrite from a memoryview
slice. READ data leaves with mxnet.file(fd, off, n) (sendfile on mx), larger WRITE data is
received with mxnet.file(fd, off, n) (splice). Everything else is FileServer.call. Errors
become an errno in the reply; a request never ends the server. fsync runs in a worker thread
and completes before its reply is sent. When a peer is lost, its handles are closed.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import trio

import mxnet
from mxfs.rpcproto import (
    KIND_MASK,
    KIND_SHIFT,
    MASK_ALL,
    MAX_READ,
    READ_HDR,
    REQ_BUF_SIZE,
    REQ_SLOTS,
    RID_MASK,
    Kind,
    Op,
    ProtocolError,
    decode_request,
    encode_reply,
    make_match,
)

from . import pagecache
from .confine import EscapeError
from .ops import FileServer

log = logging.getLogger("mxfs.server")

_OPENING = (Op.OPEN, Op.CREATE, Op.OPENDIR)


def _op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return str(op)


class Service:
    def __init__(self, ep: Any, fs: FileServer, *, slots: int = REQ_SLOTS,
                 data_timeout: float = 30.0) -> None:
        self.ep = ep
        self.fs = fs
        self.slots = slots
        self.data_timeout = data_timeout
        self.requests = 0
        self.refused = 0
        ep.on_peer_lost(self._peer_lost)
        if hasattr(ep, "on_peer_accepted"):
            ep.on_peer_accepted(self._peer_accepted)

    def _peer_accepted(self, peer: Any) -> None:
        log.info("client %s connected (%s)", peer.address, self.ep.transport)

    def _peer_lost(self, peer: Any) -> None:
        n = self.fs.handles.close_owner(peer)
        log.info("client %s gone; closed %d handle(s)", getattr(peer, "address", peer), n)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.slots):
                nursery.start_soon(self._slot)

    async def _slot(self) -> None:
        buf = bytearray(REQ_BUF_SIZE)
        view = memoryview(buf)
        while True:
            rx = self.ep.irecv([mxnet.user(buf)], int(Kind.REQ) << KIND_SHIFT, KIND_MASK)
            st = await rx.wait()
            if st.code not in (mxnet.StatusCode.SUCCESS, mxnet.StatusCode.TRUNCATED):
                continue
            try:
                await self._serve(st, view[:st.xfer_length], truncated=not st.ok)
            except Exception:  # never let one request end the slot
                log.exception("internal error serving a request")

    async def _serve(self, st: Any, msg: memoryview, *, truncated: bool) -> None:
        peer, rid = st.source, st.match & RID_MASK
        self.requests += 1
        result: Any = None
        op = 0
        try:
            if truncated:
                raise OSError(errno.EMSGSIZE, "request larger than the server's buffers")
            op, args, inline = decode_request(msg)
            if op == Op.READ:
                await self._read(peer, rid, args)  # answers by itself, in one message
                return
            result = await self._dispatch(peer, rid, op, args, inline)
            err = 0
        except EscapeError as e:
            self.refused += 1
            log.warning("refused %s from %s: %s", _op_name(op), getattr(peer, "address", peer),
                        e.strerror)
            err = errno.EACCES
        except ProtocolError as e:
            log.warning("bad request from %s: %s", getattr(peer, "address", peer), e)
            err = errno.EPROTO
        except OSError as e:
            err = e.errno or errno.EIO
        except Exception:
            log.exception("internal error in %s", _op_name(op))
            err = errno.EIO
        if peer.lost:
            if not err and op in _OPENING:
                self.fs.handles.close_owner(peer)  # opened for a client that is already gone
            return
        self.ep.isend(peer, [mxnet.user(encode_reply(err, None if err else result))],
                      make_match(Kind.REPLY, rid))

    async def _dispatch(self, peer: Any, rid: int, op: int, args: list[Any],
                        inline: memoryview) -> Any:
        if op == Op.WRITE:
            return await self._write(peer, rid, inline, *args)
        if op == Op.FSYNC:
            hid, datasync = args
            fd = self.fs.fsync_fd(peer, hid)
            try:
                await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)
            finally:
                os.close(fd)
            return None
        if op == Op.STATS:
            return self.statistics()
        return self.fs.call(peer, op, args)

    async def _read(self, peer: Any, rid: int, args: list[Any]) -> None:
        """Answer a READ with one RDATA message: READ_HDR(errno, n), then n bytes of the file
        straight from the page cache (mxnet.file: sendfile on mx, a counted copy on gm)."""
        match = make_match(Kind.RDATA, rid)
        try:
            if len(args) != 3 or not all(type(a) is int for a in args):
                raise OSError(errno.EPROTO, "malformed READ")
            hid, off, size = args
            fd, n = self.fs.read_plan(peer, hid, off, min(size, MAX_READ))
            if n and not pagecache.cached(fd, off, n):  # wait for the disk in a thread
                await trio.to_thread.run_sync(pagecache.warm, fd, off, n)
                fd, n = self.fs.read_plan(peer, hid, off, min(size, MAX_READ))  # may be gone
        except EscapeError as e:
            self.refused += 1
            log.warning("refused READ from %s: %s", getattr(peer, "address", peer), e.strerror)
            fd, n, err = -1, 0, errno.EACCES
        except OSError as e:
            fd, n, err = -1, 0, e.errno or errno.EIO
        else:
            err = 0
        if peer.lost:
            return
        segs = [mxnet.user(READ_HDR.pack(err, n))]
        if n:
            segs.append(mxnet.file(fd, off, n))
        self.ep.isend(peer, segs, match)

    async def _write(self, peer: Any, rid: int, inline: memoryview, hid: int, off: int,
                     n: int) -> int:
        if len(inline) == n:
            return self.fs.write_inline(peer, hid, off, inline)
        if inline:
            raise ProtocolError("inline write data of the wrong length")
        match = make_match(Kind.WDATA, rid)
        try:
            fd, woff = self.fs.write_plan(peer, hid, off)
        except OSError:
            # take the data off the wire anyway so it does not sit in the unexpected queue
            self.ep.irecv([mxnet.user(bytearray(0))], match, MASK_ALL, peer=peer)
            raise
        req = self.ep.irecv([mxnet.file(fd, woff, n)], match, MASK_ALL, peer=peer)
        try:
            st = await req.wait(timeout=self.data_timeout)
        except mxnet.Timeout:
            req.cancel()
            raise OSError(errno.EIO, "write data did not arrive in time") from None
        if st.code is mxnet.StatusCode.LOCAL_ERROR:
            raise OSError(st.error or errno.EIO, "writing received data failed")
        if not st.ok:
            raise OSError(errno.EIO, f"write data {st.code.name}")
        return st.xfer_length

    def statistics(self) -> dict[str, Any]:
        d = dict(self.ep.statistics().as_dict())
        d["requests"] = self.requests
        d["refused"] = self.refused
        d["open_handles"] = len(self.fs.handles)
        return d

