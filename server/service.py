"""The trio shell of the I/O server: receives requests from mxnet, runs them, sends replies.

How this works
--------------
`REQ_SLOTS` receives (match REQ<<56, mask KIND_MASK, any peer) stay posted, each with its
own REQ_BUF_SIZE buffer. When one completes, its completion callback runs inside mxnet's
reader and serves the request right there if nothing has to wait — metadata calls, small
writes (os.pwrite from a memoryview slice of the buffer), READs whose pages are cached (one
RDATA message, the data leaving with mxnet.file: sendfile on mx) — then posts the buffer
again. A request that must wait (a READ of cold pages, a WRITE whose data follows as WDATA
into mxnet.file (splice), FSYNC in a worker thread) goes to a task, and its buffer is posted
again when that task is done. Errors become an errno in the reply; a request never ends the
server. When a peer is lost, its handles are closed and its callbacks dropped.

Callbacks: whatever the operation owes other clients (callbacks.py: they cached what it
changed) is taken when its reply is due; the reply then waits in a task until every one of
them acknowledged its BREAK message, at most break_timeout seconds: a client that has not
answered by then is disconnected (it drops its caches when its connection ends).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
from typing import Any

import trio
import xxhash

import mxnet
from fsproto.rpc import (
    BREAK_BATCH,
    CHECKSUM_MISMATCH,
    KIND_MASK,
    KIND_SHIFT,
    MAX_READ,
    OPEN_AHEAD_MAX,
    POSTED,
    READ_HDR,
    REQ_BUF_SIZE,
    REQ_SLOTS,
    RID_MASK,
    BreakEntry,
    Kind,
    Op,
    ProtocolError,
    decode_request,
    encode_breaks,
    encode_reply,
    make_match,
)
from mxnet import MASK_ALL

from . import pagecache
from .checksum import Hasher
from .confine import EscapeError
from .ops import FileServer

log = logging.getLogger("mxfs.server")

_OPENING = (Op.OPEN, Op.CREATE, Op.OPENDIR)
_break_seqs = itertools.count(1)  # BREAK message numbers (0: no acknowledgement wanted)


def _op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return str(op)


def _write_args(args: list[Any]) -> tuple[int, int, int, int | None]:
    """(handle, offset, length, checksum or None) of a WRITE request, or EINVAL."""
    if len(args) not in (3, 4) or not all(type(a) is int and a >= 0 for a in args):
        raise OSError(errno.EINVAL, "malformed WRITE")
    return args[0], args[1], args[2], args[3] if len(args) == 4 else None


class Service:
    def __init__(self, ep: Any, fs: FileServer, *, slots: int = REQ_SLOTS,
                 data_timeout: float = 30.0, break_timeout: float = 5.0) -> None:
        self.ep = ep
        self.fs = fs
        self.break_timeout = break_timeout
        self.breaks_sent = 0  # BREAK messages (to this transport's clients)
        self.breaks_waited = 0  # replies that waited for other clients' acknowledgements
        self.breaks_unanswered = 0  # clients disconnected for not acknowledging in time
        self.dropped = 0  # messages of a kind nothing here asks for (a confused client)
        self.posted = 0  # requests answered with no reply: their client waits for none
        self.slots = slots
        self.data_timeout = data_timeout
        self.requests = 0
        self.refused = 0
        self.served_inline = 0  # answered inside the completion callback (no task switch)
        self.served_in_task = 0  # had to wait (cold pages, WDATA, fsync): ran in a task
        self.hasher = Hasher()  # -o checksum: xxh3-64 of file data through a memory map
        self.checksum_mismatches = 0  # WRITE data that did not land as it was sent
        ep.on_peer_lost(self._peer_lost)
        ep.set_unexpected_handler(self._unexpected)
        if hasattr(ep, "on_peer_accepted"):
            ep.on_peer_accepted(self._peer_accepted)

    def _unexpected(self, st: Any) -> None:
        """A message no receive was posted for: requests and write data wait for one (all
        slots busy; WDATA before its REQ was served); anything else (an acknowledgement
        nobody waits for, an unknown kind) would sit in the queue forever: dropped."""
        if st.match >> KIND_SHIFT not in (Kind.REQ, Kind.WDATA):
            self.dropped += 1
            self.ep.irecv([mxnet.user(bytearray(0))], st.match, MASK_ALL, peer=st.source)

    def _peer_accepted(self, peer: Any) -> None:
        log.info("client %s connected (%s)", peer.address, self.ep.transport)

    def _peer_lost(self, peer: Any) -> None:
        n = self.fs.handles.close_owner(peer)
        self.fs.callbacks.drop(peer)
        self.fs.routes.pop(peer, None)
        log.info("client %s gone; closed %d handle(s)", getattr(peer, "address", peer), n)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(self.slots):
                self._post(bytearray(REQ_BUF_SIZE))
            await trio.sleep_forever()

    def _post(self, buf: bytearray) -> None:
        rx = self.ep.irecv([mxnet.user(buf)], int(Kind.REQ) << KIND_SHIFT, KIND_MASK)
        rx.add_done_callback(lambda r: self._arrived(r.status, buf))

    def _arrived(self, st: Any, buf: bytearray) -> None:
        """A request landed in ``buf`` (runs as a completion callback: must not block)."""
        if self.ep.closed:
            return
        if st.code not in (mxnet.StatusCode.SUCCESS, mxnet.StatusCode.TRUNCATED):
            self._post(buf)
            return
        msg = memoryview(buf)[:st.xfer_length]
        if st.source not in self.fs.routes:
            self.fs.routes[st.source] = self  # BREAKs for this client go out through us
        try:
            served = self._serve_now(st, msg, truncated=not st.ok)
        except Exception:  # never let one request stop the server
            log.exception("internal error serving a request")
            served = True
        if served:
            self.served_inline += 1
            self._post(buf)
        else:
            self.served_in_task += 1
            self._nursery.start_soon(self._serve_then_post, st, buf)

    async def _serve_then_post(self, st: Any, buf: bytearray) -> None:
        try:
            await self._serve(st, memoryview(buf)[:st.xfer_length], truncated=not st.ok)
        except Exception:
            log.exception("internal error serving a request")
        finally:
            if not self.ep.closed:
                self._post(buf)

    def _serve_now(self, st: Any, msg: memoryview, *, truncated: bool) -> bool:
        """Serve the request now if it needs no waiting; False leaves it to _serve."""
        if truncated:
            return False
        try:
            op, cred, args, inline = decode_request(msg)
        except ProtocolError:
            return False  # _serve answers it with EPROTO
        if op == Op.READ:
            plan = self._read_plan(st.source, args)
            if plan is None:
                return False  # cold pages: warm them in a thread first
            self.requests += 1
            self._send_read(st.source, st.match & RID_MASK, *plan)
            return True
        if op == Op.OPEN and len(args) == 3:
            self.requests += 1
            self._open_ahead(st.source, st.match & RID_MASK, cred, args)
            return True
        if op == Op.FSYNC or (op == Op.WRITE and (len(args) not in (3, 4)
                                                  or len(inline) != args[2])):
            return False
        if op == Op.WRITE and self._append_waits(st.source, args[0]):
            return False  # another append to that file is under way: queue behind it
        self.requests += 1
        self._answer(st.source, st.match & RID_MASK, op, lambda: self._sync_call(
            st.source, op, cred, args, inline))
        return True

    def _open_ahead(self, peer: Any, rid: int, cred: Any, args: list[Any]) -> None:
        """An OPEN that wants the file's first bytes too (args[2], at most OPEN_AHEAD_MAX):
        if they are in the page cache they follow the answer as one RDATA message, exactly
        as a READ's would (zero copy on mx), and the answer says how many ([hid, stat, n]).
        Cold pages are not waited for: the client READs them as usual."""
        path, flags, ahead = args
        plan = None
        try:
            result = self.fs.serve(peer, Op.OPEN, cred, [path, flags])
        except Exception as e:
            self._reply(peer, rid, Op.OPEN, self._errno(Op.OPEN, peer, e), None)
            return
        if type(ahead) is int and ahead > 0 and flags & os.O_ACCMODE != os.O_WRONLY \
                and not flags & os.O_TRUNC:
            plan = self._read_plan(peer, [result[0], 0, min(ahead, OPEN_AHEAD_MAX)])
            if plan is not None and plan[3]:
                plan = None  # (no data, no error: the client's READ meets it)
        result = [*result, plan[2] if plan is not None else -1]
        self._reply(peer, rid, Op.OPEN, 0, result)
        if plan is not None:
            self._send_read(peer, rid, *plan)

    def _sync_call(self, peer: Any, op: int, cred: Any, args: list[Any],
                   inline: memoryview) -> Any:
        if op == Op.WRITE:
            hid, off, _n, checksum = _write_args(args)
            self._check_inline(inline, checksum)
            return self.fs.write_inline(peer, hid, off, inline)
        if op == Op.STATS:
            return self.statistics()
        return self.fs.serve(peer, op, cred, args)

    async def _serve(self, st: Any, msg: memoryview, *, truncated: bool) -> None:
        peer, rid = st.source, st.match & RID_MASK
        self.requests += 1
        op = 0
        try:
            if truncated:
                raise OSError(errno.EMSGSIZE, "request larger than the server's buffers")
            op, cred, args, inline = decode_request(msg)
            if op == Op.READ:
                await self._read(peer, rid, args)  # answers by itself, in one message
                return
            result = await self._dispatch(peer, rid, op, cred, args, inline)
        except BaseException as e:
            if not isinstance(e, Exception):
                raise
            err = self._errno(op, peer, e)
            result = None
        else:
            err = 0
        self._reply(peer, rid, op, err, result)

    def _answer(self, peer: Any, rid: int, op: int, call: Any) -> None:
        try:
            result, err = call(), 0
        except Exception as e:
            result, err = None, self._errno(op, peer, e)
        self._reply(peer, rid, op, err, result)

    def _errno(self, op: int, peer: Any, e: Exception) -> int:
        if isinstance(e, EscapeError):
            self.refused += 1
            log.warning("refused %s from %s: %s", _op_name(op), getattr(peer, "address", peer),
                        e.strerror)
            return errno.EACCES
        if isinstance(e, ProtocolError):
            log.warning("bad request from %s: %s", getattr(peer, "address", peer), e)
            return errno.EPROTO
        if isinstance(e, OSError):
            return e.errno or errno.EIO
        log.error("internal error in %s", _op_name(op), exc_info=e)
        return errno.EIO

    def _reply(self, peer: Any, rid: int, op: int, err: int, result: Any) -> None:
        if self.fs.callbacks.pending():  # (taken before any other request can run)
            breaks, evictions = self.fs.callbacks.take()
            for owner, entries in evictions.items():
                self._send_breaks(owner, entries, ack=False)
            if breaks:
                self.breaks_waited += 1
                self._nursery.start_soon(self._reply_after_breaks, breaks, peer, rid, op, err,
                                         result)
                return
        self._send_reply(peer, rid, op, err, result)

    async def _reply_after_breaks(self, breaks: dict[Any, list[BreakEntry]], peer: Any,
                                  rid: int, op: int, err: int, result: Any) -> None:
        acks: list[tuple[Any, Any]] = []
        for owner, entries in breaks.items():
            acks += [(owner, r) for r in self._send_breaks(owner, entries, ack=True)]
        late: set[Any] = set()
        try:
            with trio.move_on_after(self.break_timeout):
                for _, req in acks:
                    await req.wait()
        finally:
            for owner, req in acks:
                if not req.done:
                    req.cancel()
                    late.add(owner)
        for owner in late:
            if not owner.lost:
                self.breaks_unanswered += 1
                log.warning("client %s did not acknowledge a callback break within %g s: "
                            "disconnecting it", getattr(owner, "address", owner),
                            self.break_timeout)
                self.fs.callbacks.drop(owner)
                route = self.fs.routes.get(owner, self)
                await route.ep.disconnect(owner)
        self._send_reply(peer, rid, op, err, result)

    def _send_breaks(self, owner: Any, entries: list[BreakEntry], *, ack: bool) -> list[Any]:
        """BREAK messages to *owner* through the endpoint it came in on; with *ack*, the
        receives of their acknowledgements (already posted)."""
        route = self.fs.routes.get(owner)
        if route is None or owner.lost:
            return []
        acks = []
        for i in range(0, len(entries), BREAK_BATCH):
            seq = next(_break_seqs) if ack else 0
            try:
                if ack:
                    acks.append(route.ep.irecv([mxnet.user(bytearray(0))],
                                               make_match(Kind.BREAK_ACK, seq), MASK_ALL,
                                               peer=owner))
                route.ep.isend(owner, [mxnet.user(encode_breaks(entries[i:i + BREAK_BATCH]))],
                               make_match(Kind.BREAK, seq))
                route.breaks_sent += 1
            except mxnet.MxError as e:  # its queue is full or it is gone: it must not
                log.warning("cannot send a callback break to %s (%s)",  # keep trusting
                            getattr(owner, "address", owner), e)  # its cache
                self.fs.callbacks.drop(owner)
                self._nursery.start_soon(route.ep.disconnect, owner)
                break
        return acks

    def _send_reply(self, peer: Any, rid: int, op: int, err: int, result: Any) -> None:
        if peer.lost:
            if not err and op in _OPENING:
                self.fs.handles.close_owner(peer)  # opened for a client that is already gone
            return
        if rid & POSTED:  # nobody waits for this answer
            self.posted += 1
            return
        self.ep.isend(peer, [mxnet.user(encode_reply(err, None if err else result))],
                      make_match(Kind.REPLY, rid))

    async def _dispatch(self, peer: Any, rid: int, op: int, cred: Any, args: list[Any],
                        inline: memoryview) -> Any:
        if op == Op.WRITE:
            return await self._write(peer, rid, inline, *_write_args(args))
        if op == Op.FSYNC:
            if len(args) != 2 or type(args[0]) is not int:
                raise OSError(errno.EINVAL, "malformed FSYNC")
            hid, datasync = args
            fd = self.fs.fsync_fd(peer, hid)
            try:
                await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)
            finally:
                os.close(fd)
            return None
        if op == Op.STATS:
            return self.statistics()
        return self.fs.serve(peer, op, cred, args)

    def _read_plan(self, peer: Any, args: list[Any], probe: bool = True
                   ) -> tuple[int, int, int, int, bool] | None:
        """(fd, off, n, errno, checksum wanted) for a READ (errno set when it fails at
        once). With ``probe``, None when its pages are not cached and must be read first."""
        try:
            if len(args) not in (3, 4) or not all(type(a) is int for a in args):
                raise OSError(errno.EPROTO, "malformed READ")
            hid, off, size = args[:3]
            want = len(args) == 4 and args[3] == 1
            fd, n = self.fs.read_plan(peer, hid, off, min(size, MAX_READ))
            if probe and n and not pagecache.cached(fd, off, n):
                return None
            return fd, off, n, 0, want
        except EscapeError as e:
            self.refused += 1
            log.warning("refused READ from %s: %s", getattr(peer, "address", peer), e.strerror)
            return -1, 0, 0, errno.EACCES, False
        except OSError as e:
            return -1, 0, 0, e.errno or errno.EIO, False

    async def _read(self, peer: Any, rid: int, args: list[Any]) -> None:
        """Answer a READ; cold pages are first read in a thread, so the event loop never
        waits for the disk. Then one message, as _send_read makes it."""
        plan = self._read_plan(peer, args)
        if plan is None:
            fd, off, n, _, _ = self._read_plan(peer, args, probe=False)  # type: ignore[misc]
            try:
                await trio.to_thread.run_sync(pagecache.warm, fd, off, n)
            except OSError:
                pass  # planning again reports it
            plan = self._read_plan(peer, args, probe=False)  # the handle may be gone by now
        self._send_read(peer, rid, *plan)  # type: ignore[misc]

    def _send_read(self, peer: Any, rid: int, fd: int, off: int, n: int, err: int,
                   want_checksum: bool = False) -> None:
        """One RDATA message: READ_HDR(errno, n, checksum), then n bytes of the file straight
        from the page cache (mxnet.file: sendfile on mx, a counted copy on gm)."""
        if peer.lost:
            return
        checksum = self.hasher.file_hash(fd, off, n) if want_checksum and n and not err else 0
        segs = [mxnet.user(READ_HDR.pack(err, n, checksum))]
        if n:
            segs.append(mxnet.file(fd, off, n))
        self.ep.isend(peer, segs, make_match(Kind.RDATA, rid))

    def _append_waits(self, peer: Any, hid: Any) -> bool:
        try:
            key = self.fs.append_key(peer, hid) if type(hid) is int else None
        except OSError:
            return False  # (answered with its errno when served)
        return key is not None and self.fs.appends.busy(key)

    def _check_inline(self, data: memoryview, checksum: int | None) -> None:
        """Inline WRITE data is checked in the receive buffer, before it is written."""
        if checksum is not None and xxhash.xxh3_64_intdigest(data) != checksum:
            self.checksum_mismatches += 1
            raise OSError(CHECKSUM_MISMATCH, "write data checksum mismatch")

    async def _write(self, peer: Any, rid: int, inline: memoryview, hid: int, off: int,
                     n: int, checksum: int | None) -> list[Any]:
        try:
            key = self.fs.append_key(peer, hid)
        except OSError:
            key = None  # _write_at takes the data off the wire and answers the errno
        if key is None:
            return await self._write_at(peer, rid, inline, hid, off, n, checksum, False)
        async with self.fs.appends.hold(key):  # end of file taken and written as one step
            return await self._write_at(peer, rid, inline, hid, off, n, checksum, True)

    async def _write_at(self, peer: Any, rid: int, inline: memoryview, hid: int, off: int,
                        n: int, checksum: int | None, append: bool) -> list[Any]:
        if len(inline) == n:
            self._check_inline(inline, checksum)
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
        if checksum is not None and self.hasher.file_hash(fd, woff, st.xfer_length) != checksum:
            self.checksum_mismatches += 1
            log.warning("write data from %s at %d (%d bytes) arrived corrupted",
                        getattr(peer, "address", peer), woff, st.xfer_length)
            if append:  # (under the append lock) take the bad tail back off: the retry appends
                os.ftruncate(fd, woff)
            raise OSError(CHECKSUM_MISMATCH, "write data checksum mismatch")
        return self.fs.written(peer, hid, fd, st.xfer_length)

    def statistics(self) -> dict[str, Any]:
        d = dict(self.ep.statistics().as_dict())
        d["requests"] = self.requests
        d["refused"] = self.refused
        d["served_inline"] = self.served_inline
        d["served_in_task"] = self.served_in_task
        d["open_handles"] = len(self.fs.handles)
        d["checksum_bytes_hashed"] = self.hasher.hashed_bytes
        d["checksum_bytes_copied"] = self.hasher.copied_bytes
        d["checksum_mismatches"] = self.checksum_mismatches
        d["breaks_sent"] = self.breaks_sent
        d["breaks_waited"] = self.breaks_waited
        d["breaks_unanswered"] = self.breaks_unanswered
        d["dropped"] = self.dropped
        d["posted"] = self.posted
        d["callbacks"] = self.fs.callbacks.statistics()
        return d

