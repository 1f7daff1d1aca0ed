"""RPC client of mxfs over mxnet: many requests in flight, bounded waits, reconnection.

How this works
--------------
Every call takes a fresh request id and posts its receives (REPLY, and RDATA for a read)
*before* the request goes out, so replies land straight in their buffers; mxnet's matching on
(kind, rid) and the peer does the multiplexing, there is no dispatcher task. A call waits at
most about `timeout` seconds in total (including waiting for a connection): one watchdog task
checks every call's deadline a few times a second — cheaper than a cancel scope per call —
and drops an unresponsive connection, which fails the calls with EIO and cancels their
receives. A late reply or read data for a request nobody waits for any more
is swallowed by the unexpected-message handler (a zero-length receive), so it cannot pile up.

When the server connection is lost, pending calls fail with EIO, `epoch` is bumped once the
background task has reconnected, and server handles of older epochs are known to be gone:
callers pass `epoch=` with handle-based calls and get StaleEpoch to reopen first.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import xxhash

import mxnet
from fsproto.address import PORT_MAX, gm_port
from fsproto.errors import leaf_exception
from fsproto.rpc import (
    CHECKSUM_MISMATCH,
    CRED_OPS,
    INLINE_MAX,
    KIND_MASK,
    KIND_SHIFT,
    LARGE_REPLY_OPS,
    POSTED,
    PROTOCOL_VERSION,
    READ_HDR,
    REPLY_LARGE,
    REPLY_SMALL,
    RID_MASK,
    Cred,
    Kind,
    Op,
    ProtocolError,
    StatTuple,
    decode_breaks,
    decode_reply,
    encode_request,
    is_handle,
    make_match,
    split_match,
)
from mxnet import MASK_ALL

from .bufpool import BufferPool

log = logging.getLogger("mxfs.rpc")

RECONNECT_GRACE = 1.0  # how long a call waits for a lost server to come back
BREAK_SLOTS = 4  # BREAK receives kept posted (the server sends few at once: see callbacks)
BREAK_BUF = 64 * 1024  # a longer BREAK is truncated and taken as "forget everything"

BreakHandler = Callable[[int, "list[tuple[tuple[int, int], int, list[bytes]]] | None"], None]


class RpcError(OSError):
    """A call failed; .errno says how (EIO for transport trouble)."""

    def __init__(self, err: int, what: str = "") -> None:
        super().__init__(err, what or errno.errorcode.get(err, str(err)))


class StaleEpoch(Exception):
    """The handle belongs to a connection that is gone: reopen, then retry."""


class RpcClient:
    def __init__(self, ep: Any, host: str, port: int, *, timeout: float = 10.0,
                 transport: str = "mx", checksum: bool = False) -> None:
        self.ep = ep
        self.host = host
        self.port = port
        self.timeout = timeout
        self.transport = transport
        self.peer: Any = None
        self.epoch = 0
        self.verifier: object = None  # the server run's write verifier (PING tells it)
        self._port_known = False
        self.checksum = checksum  # -o checksum: xxh3-64 of every READ and WRITE payload
        self.checksums_verified = 0
        self.checksum_mismatches = 0
        self.checksum_failures = 0  # mismatched twice: EIO
        self.reconnects = 0
        # who asks when a call names no caller: this process (tests, the mount's own calls)
        self.own_cred: Cred = [os.geteuid(), os.getegid(), *os.getgroups()]
        self._rids = itertools.count(1)
        self.buffers = BufferPool()
        self._pending: dict[int, float] = {}  # rid -> deadline, for calls awaiting an answer
        self._expired: set[int] = set()  # calls the watchdog gave up on
        self._connected = trio.Event()
        self._lost = trio.Event()
        # callbacks (protocol 6): the server keeps promises for this connection
        self.callbacks = False
        self.opens_ahead = False  # the server's OPEN can bring the file's first bytes
        self.breaks_received = 0
        self.on_break: BreakHandler | None = None  # (seq, entries, or None: forget all)
        self.on_reset: Callable[[], None] | None = None  # connection lost or new
        self.debug = log.isEnabledFor(logging.DEBUG)  # -o debug: log every request
        # swapped in, not checked per call: 0.20 vs 0.28 µs per call (if + wrapper layer), timeit
        if self.debug:
            self.call = self._logged_call  # type: ignore[method-assign]
            self.read = self._logged_read  # type: ignore[method-assign]
            self.open_ahead = self._logged_open_ahead  # type: ignore[method-assign]
        ep.on_peer_lost(self._on_peer_lost)
        ep.set_unexpected_handler(self._on_unexpected)

    # -- connection ----------------------------------------------------------------------------
    async def connect(self, timeout: float | None = None) -> None:
        t = self.timeout if timeout is None else timeout
        peer = None
        if self.transport == "gm" and not self._port_known and gm_port(self.port) <= PORT_MAX:
            # a server of both transports listens for gm one port above the address users
            # give (mx's): try there first, so its mx side never sees a gm handshake
            try:
                peer = await self.ep.connect(self.host, gm_port(self.port), timeout=min(t, 2.0))
                self.port = gm_port(self.port)
            except (mxnet.ConnectError, OSError) as e:
                log.debug("no gm endpoint at port %d (%s): trying %d", gm_port(self.port), e,
                          self.port)
        if peer is None:
            peer = await self.ep.connect(self.host, self.port, timeout=t)
        self._port_known = True  # reconnections go where this worked
        self.peer = peer
        why: str | None = None
        with trio.move_on_after(t) as scope:
            why = await self._version_problem()
        if scope.cancelled_caught:
            why = f"it did not answer the version check within {t:g} s"
        if why is not None:
            self.peer = None
            await self.ep.disconnect(peer)
            raise mxnet.ConnectError(f"server {self.host}:{self.port} refused: {why}")
        self.epoch += 1
        if self.on_reset is not None:
            self.on_reset()  # promises of an earlier connection are void
        if self.callbacks:
            for _ in range(BREAK_SLOTS):
                self._post_break(peer)
        self._connected.set()
        log.info("connected to %s:%d (epoch %d)", self.host, self.port, self.epoch)

    async def _version_problem(self) -> str | None:
        """The server must speak this client's request/reply shapes: ask it (PING) first.
        None when it does, else why not."""
        try:
            info = await self.call(Op.PING)
        except RpcError as e:
            return f"it did not answer the version check ({e})"
        version = info.get("version") if isinstance(info, dict) else None
        if version != PROTOCOL_VERSION:
            return (f"it speaks mxfs protocol {version}, this client {PROTOCOL_VERSION}: "
                    "run the same mxfs version on both sides")
        self.verifier = info.get("verifier")
        self.callbacks = bool(info.get("callbacks"))
        self.opens_ahead = bool(info.get("open_ahead"))
        return None

    def _post_break(self, peer: Any) -> None:
        buf = bytearray(BREAK_BUF)
        rx = self.ep.irecv([mxnet.user(buf)], int(Kind.BREAK) << KIND_SHIFT, KIND_MASK,
                           peer=peer)
        rx.add_done_callback(lambda r: self._break_arrived(r.status, buf, peer))

    def _break_arrived(self, st: Any, buf: bytearray, peer: Any) -> None:
        """A BREAK landed (a completion callback: must not block). The handler drops what
        it names from the caches and acknowledges it (ack_break) once the kernel has too."""
        if peer is not self.peer or peer.lost or self.ep.closed:
            return  # a lost connection's promises are dropped all together (on_reset)
        self._post_break(peer)
        if st.code not in (mxnet.StatusCode.SUCCESS, mxnet.StatusCode.TRUNCATED):
            return
        self.breaks_received += 1
        seq = st.match & RID_MASK
        try:
            entries = decode_breaks(memoryview(buf)[:st.xfer_length]) if st.ok else None
        except ProtocolError as e:
            log.warning("malformed callback break from the server (%s): forgetting all", e)
            entries = None
        if self.on_break is not None:
            self.on_break(seq, entries)
        else:  # nothing cached here
            self.ack_break(seq)

    def ack_break(self, seq: int) -> None:
        """Tell the server a BREAK is done with (sequence 0 wants no answer)."""
        peer = self.peer
        if not seq or peer is None or peer.lost:
            return
        try:
            self.ep.isend(peer, [mxnet.user(b"")], make_match(Kind.BREAK_ACK, seq))
        except mxnet.MxError as e:
            log.debug("acknowledging break %d failed: %s", seq, e)

    def _on_peer_lost(self, peer: Any) -> None:
        if peer is self.peer:
            log.warning("lost the server %s:%d", self.host, self.port)
            self.peer = None
            self._connected = trio.Event()
            self._lost.set()
            if self.callbacks and self.on_reset is not None:
                self.on_reset()  # nobody tells us of changes now

    async def reconnector(self) -> None:
        """Background task: whenever the server is lost, connect again until it answers."""
        while True:
            await self._lost.wait()
            self._lost = trio.Event()
            delay = 0.2
            while self.peer is None:
                try:
                    await self.connect(timeout=min(self.timeout, 5.0))
                    self.reconnects += 1
                except mxnet.ConnectError as e:
                    log.debug("reconnect failed: %s", e)
                    await trio.sleep(delay)
                    delay = min(delay * 2, 1.0)

    async def watchdog(self) -> None:
        """Background task: a call past its deadline means an unresponsive server; drop the
        connection, which completes every request on it (the calls then fail with EIO) and
        starts the reconnector."""
        tick = min(0.25, self.timeout / 8) if math.isfinite(self.timeout) else 1.0
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            late = [rid for rid, deadline in self._pending.items() if deadline <= now]
            if not late:
                continue
            self._expired.update(late)
            peer = self.peer
            if peer is not None:
                log.warning("request timed out after %.1f s: dropping the connection",
                            self.timeout)
                await self.ep.disconnect(peer)

    def _on_unexpected(self, status: Any) -> None:
        kind, rid = split_match(status.match)
        if kind in (Kind.REPLY, Kind.RDATA) and rid not in self._pending:
            # a late answer to a call that gave up: take it and drop it
            self.ep.irecv([mxnet.user(bytearray(0))], status.match, MASK_ALL, peer=status.source)

    async def _wait_peer(self, deadline: float) -> Any:
        if self.peer is not None:
            return self.peer
        # while the server is away, calls wait only briefly: the kernel retries a failed read
        # page by page, and each retry must not cost a whole timeout again
        with trio.move_on_at(min(deadline, trio.current_time() + RECONNECT_GRACE)):
            await self._connected.wait()
        if self.peer is None:
            raise RpcError(errno.EIO, "server unreachable")
        return self.peer

    # -- calls ---------------------------------------------------------------------------------
    async def call(self, op: Op, *args: Any, epoch: int | None = None, inline: Any = None,
                   wdata: Any = None, cred: Cred | None = None) -> Any:
        """Send one request and return its result; raise RpcError(errno) on failure.
        An op in CRED_OPS acts as *cred* (default: this process's own ids)."""
        deadline = trio.current_time() + self.timeout
        peer = self.peer if self.peer is not None else await self._wait_peer(deadline)
        if epoch is not None and epoch != self.epoch:
            raise StaleEpoch()
        rid = next(self._rids)
        ep = self.ep
        reply_buf = bytearray(REPLY_LARGE if op in LARGE_REPLY_OPS else REPLY_SMALL)
        posted: list[Any] = []
        self._pending[rid] = deadline
        try:
            rx = ep.irecv([mxnet.user(reply_buf)], make_match(Kind.REPLY, rid), MASK_ALL,
                          peer=peer)
            posted.append(rx)
            if cred is None and op in CRED_OPS:
                cred = self.own_cred
            segs = [mxnet.user(encode_request(op, *args, cred=cred))]
            if inline is not None:
                segs += [mxnet.user(p) for p in _parts(inline) if len(p)]
            # sends need no wait: their segments stay referenced by the requests, a lost peer
            # fails the reply receive too, and the reply comes only after all WDATA arrived
            ep.isend(peer, segs, make_match(Kind.REQ, rid))
            if wdata is not None:
                ep.isend(peer, [mxnet.user(p) for p in _parts(wdata)], make_match(Kind.WDATA, rid))
            return await self._result(rx, rid, reply_buf)
        except (ProtocolError, mxnet.MxError) as e:
            raise RpcError(errno.EIO, f"transport: {e}") from None
        finally:
            del self._pending[rid]
            self._expired.discard(rid)
            for req in posted:
                if not req.done:
                    req.cancel()

    def post(self, op: Op, *args: Any, epoch: int | None = None) -> None:
        """Send a request whose answer nobody needs (RELEASE): no round trip to wait for.
        Its id says POSTED, so the server sends no answer (one an older server sends anyway
        is dropped by _on_unexpected)."""
        peer = self.peer
        if peer is None or (epoch is not None and epoch != self.epoch):
            return  # the server dropped this connection's handles by itself
        rid = next(self._rids) | POSTED
        if self.debug:
            log.debug("%s(%s) posted", op.name, ", ".join(_brief(a) for a in args))
        try:
            self.ep.isend(peer, [mxnet.user(encode_request(op, *args))],
                          make_match(Kind.REQ, rid))
        except mxnet.MxError as e:
            log.debug("posting %s failed: %s", op.name, e)

    async def _result(self, rx: Any, rid: int, reply_buf: bytearray) -> Any:
        """The result the REPLY that landed in *reply_buf* carries; RpcError for its errno."""
        st = await self._wait(rx, rid)
        if not st.ok:
            raise RpcError(errno.EIO, f"reply {st.code.name}")
        err, result = decode_reply(memoryview(reply_buf)[:st.xfer_length])
        if err:
            raise RpcError(err)
        return result

    async def _wait(self, req: Any, rid: int) -> Any:
        st = await req.wait()  # the watchdog bounds it: past the deadline it drops the peer
        if rid in self._expired:
            raise RpcError(errno.EIO, "timed out")
        return st

    async def read(self, hid: int, off: int, size: int, *, epoch: int) -> memoryview:
        """Read into a pooled buffer (zero copy on the mx path); returns a view of what came.
        One request, one answer: header and data arrive as a single RDATA message. With
        checksums, data whose xxh3-64 differs from the server's is read once more, then EIO."""
        if not self.checksum:
            return (await self._read_once(hid, off, size, epoch))[0]
        for attempt in (1, 2):
            view, expected = await self._read_once(hid, off, size, epoch)
            if xxhash.xxh3_64_intdigest(view) == expected:
                self.checksums_verified += 1
                return view
            self._mismatch("READ", off, len(view), attempt)
        raise RpcError(errno.EIO, "read data corrupted twice")

    def _mismatch(self, what: str, off: int, n: int, attempt: int) -> None:
        self.checksum_mismatches += 1
        if attempt == 1:
            log.warning("%s of %d bytes at %d: checksum mismatch, retrying", what, n, off)
        else:
            self.checksum_failures += 1
            log.error("%s of %d bytes at %d: checksum mismatch again: EIO", what, n, off)

    async def _read_once(self, hid: int, off: int, size: int, epoch: int
                         ) -> tuple[memoryview, int]:
        deadline = trio.current_time() + self.timeout
        peer = self.peer if self.peer is not None else await self._wait_peer(deadline)
        if epoch != self.epoch:
            raise StaleEpoch()
        rid = next(self._rids)
        buf = self.buffers.get(size)
        hdr = bytearray(READ_HDR.size)
        ep = self.ep
        self._pending[rid] = deadline
        rd = ep.irecv([mxnet.user(hdr), mxnet.user(buf)], make_match(Kind.RDATA, rid), MASK_ALL,
                      peer=peer)
        try:
            req = (encode_request(Op.READ, hid, off, size, 1) if self.checksum
                   else encode_request(Op.READ, hid, off, size))
            ep.isend(peer, [mxnet.user(req)], make_match(Kind.REQ, rid))
            st = await self._wait(rd, rid)
        except mxnet.MxError as e:
            raise RpcError(errno.EIO, f"transport: {e}") from None
        finally:
            del self._pending[rid]
            self._expired.discard(rid)
            if not rd.done:
                rd.cancel()
        return self._rdata(st, hdr, buf, size)

    @staticmethod
    def _rdata(st: Any, hdr: bytearray, buf: Any, size: int) -> tuple[memoryview, int]:
        """What an RDATA message brought into [hdr, buf]: the data and its checksum; RpcError
        for the errno it carries, or when it is not a well-formed answer of at most *size*."""
        if st.code is not mxnet.StatusCode.SUCCESS or st.xfer_length < READ_HDR.size:
            raise RpcError(errno.EIO, f"read answer {st.code.name}")
        err, n, checksum = READ_HDR.unpack(hdr)
        if err:
            raise RpcError(err)
        if n > size or READ_HDR.size + n != st.xfer_length:
            raise RpcError(errno.EIO, "read answer of the wrong length")
        return memoryview(buf)[:n], checksum

    async def open_ahead(self, ref: Any, flags: int, ahead: int, cred: Cred | None
                         ) -> tuple[int, StatTuple, memoryview | None]:
        """OPEN that asks for the file's first *ahead* bytes too (the server has open_ahead):
        (handle, attributes, those bytes as they were at the open, or None when the server
        did not send them: pages not cached there). They land in a pooled buffer as a READ's
        do, zero copy on mx. Raises RpcError as call does."""
        deadline = trio.current_time() + self.timeout
        peer = self.peer if self.peer is not None else await self._wait_peer(deadline)
        rid = next(self._rids)
        reply_buf = bytearray(REPLY_SMALL)
        hdr = bytearray(READ_HDR.size)
        buf = self.buffers.get(ahead)
        ep = self.ep
        self._pending[rid] = deadline
        rx = rd = None
        try:
            rx = ep.irecv([mxnet.user(reply_buf)], make_match(Kind.REPLY, rid), MASK_ALL,
                          peer=peer)
            rd = ep.irecv([mxnet.user(hdr), mxnet.user(buf)], make_match(Kind.RDATA, rid),
                          MASK_ALL, peer=peer)
            req = encode_request(Op.OPEN, ref, flags, ahead,
                                 cred=self.own_cred if cred is None else cred)
            ep.isend(peer, [mxnet.user(req)], make_match(Kind.REQ, rid))
            hid, attrs, n = await self._result(rx, rid, reply_buf)
            if type(n) is not int or n < 0:
                return hid, attrs, None
            try:
                data, _ = self._rdata(await self._wait(rd, rid), hdr, buf, ahead)
            except RpcError:  # (the open stands: its READs go to the server)
                return hid, attrs, None
            return hid, attrs, data if len(data) == n else None
        except (ProtocolError, mxnet.MxError, ValueError, TypeError) as e:
            raise RpcError(errno.EIO, f"transport: {e}") from None
        finally:
            del self._pending[rid]
            self._expired.discard(rid)
            for req in (rx, rd):
                if req is not None and not req.done:
                    req.cancel()

    async def write(self, hid: int, off: int, data: Any, *, epoch: int) -> tuple[int, StatTuple]:
        """Write one buffer, or a list of buffers back to back (sent as one vector). Returns
        the bytes written and the file's attributes right after."""
        n = sum(len(p) for p in data) if isinstance(data, list) else len(data)
        where = "inline" if n <= INLINE_MAX else "wdata"
        if not self.checksum:
            done, st = await self.call(Op.WRITE, hid, off, n, epoch=epoch, **{where: data})
            return done, st
        h = xxhash.xxh3_64()
        for part in _parts(data):
            h.update(part)
        checksum = h.intdigest()
        for attempt in (1, 2):
            try:
                done, st = await self.call(Op.WRITE, hid, off, n, checksum, epoch=epoch,
                                           **{where: data})
            except RpcError as e:
                if e.errno != CHECKSUM_MISMATCH:
                    raise
                self._mismatch("WRITE", off, n, attempt)
                continue
            self.checksums_verified += 1
            return done, st
        raise RpcError(errno.EIO, "write data corrupted twice")

    # -- -o debug ------------------------------------------------------------------------------
    async def _logged_call(self, op: Op, *args: Any, **kw: Any) -> Any:
        return await self._logged(op, args, RpcClient.call(self, op, *args, **kw))

    async def _logged_read(self, hid: int, off: int, size: int, *, epoch: int) -> memoryview:
        return await self._logged(Op.READ, (hid, off, size),
                                  RpcClient.read(self, hid, off, size, epoch=epoch))

    async def _logged_open_ahead(self, ref: Any, flags: int, ahead: int, cred: Cred | None
                                 ) -> tuple[int, StatTuple, memoryview | None]:
        return await self._logged(Op.OPEN, (ref, flags, ahead),
                                  RpcClient.open_ahead(self, ref, flags, ahead, cred))

    async def _logged(self, op: Op, args: tuple[Any, ...], call: Any) -> Any:
        t0 = trio.current_time()
        outcome = "ok"
        try:
            return await call
        except RpcError as e:
            outcome = errno.errorcode.get(e.errno, str(e.errno))
            raise
        except StaleEpoch:
            outcome = "stale handle (reconnects)"
            raise
        finally:
            log.debug("%s(%s) -> %s in %.0f us", op.name, ", ".join(_brief(a) for a in args),
                      outcome, (trio.current_time() - t0) * 1e6)

    def statistics(self) -> dict[str, Any]:
        d = dict(self.ep.statistics().as_dict())
        d["epoch"] = self.epoch
        d["reconnects"] = self.reconnects
        d["connected"] = self.peer is not None
        d["checksum"] = self.checksum
        d["checksums_verified"] = self.checksums_verified
        d["checksum_mismatches"] = self.checksum_mismatches
        d["checksum_failures"] = self.checksum_failures
        d["breaks_received"] = self.breaks_received
        return d


def _brief(arg: Any) -> str:
    """An argument as a debug log line shows it: paths in full, a file handle by a short
    digest of it, a directory entry as [handle, name], payloads by their size."""
    if isinstance(arg, bytes) and len(arg) <= 200:
        return repr(arg)
    if is_handle(arg):
        return f"fh:{hashlib.blake2b(arg.data, digest_size=4).hexdigest()}"
    if type(arg) is list and len(arg) == 2 and is_handle(arg[0]):
        return f"[{_brief(arg[0])}, {_brief(arg[1])}]"
    if isinstance(arg, bytes | bytearray | memoryview | list):
        return f"<{len(arg)} {type(arg).__name__}>"
    return repr(arg)


def _parts(data: Any) -> list[Any]:
    return data if isinstance(data, list) else [data]


@asynccontextmanager
async def open_client(host: str, port: int, *, key: bytes, transport: str = "mx",
                      timeout: float = 10.0, checksum: bool = False
                      ) -> AsyncIterator[RpcClient]:
    """Connect to an mxfs server (raises mxnet.ConnectError if it cannot) and keep connected."""
    connected = False
    try:
        async with mxnet.open_endpoint(None, 0, key=key, transport=transport,
                                       listen=False) as ep:
            client = RpcClient(ep, host, port, timeout=timeout, transport=transport,
                               checksum=checksum)
            await client.connect(timeout=min(timeout, 10.0) if math.isfinite(timeout) else 10.0)
            connected = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.reconnector)
                nursery.start_soon(client.watchdog)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as eg:
        leaf = leaf_exception(eg)
        if not connected and isinstance(leaf, mxnet.ConnectError | OSError):
            raise leaf from None  # a plain error for the caller, not a trio exception group
        raise

