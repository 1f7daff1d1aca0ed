"""The trio shell around the protocol engine: listening, connecting, reading, writing.

How this works
--------------
``open_endpoint`` binds a listening TCP socket (IPv4 and IPv6 when the host allows) and
runs, in one nursery: an accept loop, and per peer a reader task, a writer task and a
keepalive task, all inside the peer's own cancel scope. Every connection starts with the
HMAC handshake (handshake.py).

The reader reads one 32-byte header with ``recv_into``, asks the engine where the payload
goes, and reads it straight there: ``recv_into`` into the posted segments' memoryviews,
``os.splice`` into file ranges. Anything a peer does wrong (bad frame, unknown handle,
oversized message, EOF mid-frame, silence past ``peer_timeout``) ends that peer only: its
socket closes, its requests complete with PEER_LOST, ``on_peer_lost`` callbacks run.

Flow control (see protocol.py): the handshake tells each side the other's credit window,
so an mx peer never sends more than the receiver's queue holds for it and the reader never
has to stop. A peer that sends past its share anyway (or any gm peer past it) is paused:
its reader waits for room, reading nothing more from that socket. Sends to one peer that
are not on the wire yet are bounded by ``send_buffer_max``: ``isend`` raises QueueFull,
``await send`` waits for room.

The engine is either the MX engine (protocol.Engine) or the GM engine (gm_engine.GMEngine);
this shell does not care which. The engine returns frames to put on the wire and, for a
header, where its payload goes (or *paused*); what else it has to say waits in
``engine.events`` (completed requests, room), which the shell takes after each call
(``_take_events``): tasks parked in ``wait`` are woken here, the engine knows no trio.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from . import handshake
from .config import Config
from .errors import ConnectError, MxError, ProtocolError, Timeout
from .matching import MASK_ALL
from .peer import Peer
from .protocol import Engine, OutFrame, Request
from .segments import FileRange
from .sockio import PeerGone, Splicer, discard, recv_exact_into, recv_vector_into
from .stats import Statistics
from .status import Status, StatusCode
from .wire import HEADER_LEN, PING, FrameError, unpack_header

log = logging.getLogger("mxnet")
_YIELD_EVERY = 256 << 10  # after this many bytes read without sleeping, the reader yields

__all__ = ["Endpoint", "Peer", "Request", "open_endpoint"]


class Endpoint:
    def __init__(self, nursery: trio.Nursery, key: bytes, transport: str, config: Config) -> None:
        if transport not in ("mx", "gm"):
            raise ValueError(f"unknown transport {transport!r} (use 'mx' or 'gm')")
        if not key:
            raise ValueError("an endpoint needs a non-empty key")
        self._key = key  # the shared secret: used by the handshake, never exposed
        self.transport = transport
        self.config = config
        self.stats = Statistics(transport=transport)
        if transport == "gm":
            from .gm_engine import GMEngine

            self._engine: Any = GMEngine(config, self.stats)
        else:
            self._engine = Engine(config, self.stats)
        self._engine.shell = self  # Request.wait and Request.cancel come here
        self._events = self._engine.events
        self._parked: dict[Request, list[Any]] = {}  # tasks waiting in wait(), by request
        self._window = (config.unexpected_max_count, config.unexpected_max_bytes)
        self._nursery = nursery
        self._listeners: list[socket.socket] = []
        self.address: tuple[str, int] = ("", 0)
        self._peers: set[Peer] = set()
        self._completed: OrderedDict[Request, None] = OrderedDict()
        self._any_event = trio.Event()
        self._event_waiters = 0  # tasks in probe()/wait_any(): only then is _any_event set
        self._spin = config.poll_us / 1e6
        self._track_any = False  # wait_any in use: remember completions not yet observed
        self._room_event = trio.Event()
        self._lost_callbacks: list[Callable[[Peer], None]] = []
        self._accept_callbacks: list[Callable[[Peer], None]] = []
        self.closed = False

    # -- public API ----------------------------------------------------------------------
    @property
    def peers(self) -> frozenset[Peer]:
        """The peers connected now (a snapshot)."""
        return frozenset(self._peers)

    def on_peer_lost(self, callback: Callable[[Peer], None]) -> None:
        self._lost_callbacks.append(callback)

    def on_peer_accepted(self, callback: Callable[[Peer], None]) -> None:
        self._accept_callbacks.append(callback)

    def set_unexpected_handler(self, handler: Callable[[Status], None] | None) -> None:
        """Called (like mx_register_unexp_handler) when a message arrives that no posted
        receive matches, before it is queued; the handler may post a receive for it."""
        self._engine.on_unexpected = handler

    async def connect(self, host: str, port: int, timeout: float = 10.0) -> Peer:
        try:
            with trio.fail_after(timeout):
                sock = await _connect_tcp(host, port)
                try:
                    window = await handshake.client_side(sock, self._key, self.transport,
                                                         self._window)
                except BaseException:
                    sock.close()
                    raise
        except trio.TooSlowError:
            raise ConnectError(f"connecting to {host}:{port} timed out after {timeout} s") from None
        except OSError as e:
            raise ConnectError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        peer = self._add_peer(sock, (host, port), window)
        return peer

    def isend(self, peer: Peer, segments: Any, match: int) -> Request:
        """Send without blocking. Raises QueueFull when ``send_buffer_max`` messages to this
        peer are already waiting to go out (``await send`` waits for room instead)."""
        return self._send(peer, segments, match, False)

    async def send(self, peer: Peer, segments: Any, match: int, *, sync: bool = False
                   ) -> Request:
        """isend (issend with ``sync``) that first waits for room in the peer's send queue:
        the backpressure of ``send_buffer_max``. Returns the request, which completes as
        isend's does."""
        engine = self._engine
        while not peer.lost and engine.send_queue_length(peer) >= self.config.send_buffer_max:
            if peer.send_room.is_set():
                peer.send_room = trio.Event()
            await peer.send_room.wait()
        return self._send(peer, segments, match, sync)

    def send_queue_length(self, peer: Peer) -> int:
        """Messages to ``peer`` accepted by isend and not yet on the wire."""
        return self._engine.send_queue_length(peer)

    def issend(self, peer: Peer, segments: Any, match: int) -> Request:
        """Synchronous send: completes only once a receive has matched and taken it."""
        return self._send(peer, segments, match, True)

    def irecv(self, segments: Any, match: int = 0, mask: int = MASK_ALL, *,
              peer: Peer | None = None) -> Request:
        req, frames = self._engine.irecv(segments, match, mask, peer)
        self._take_events()
        self._emit(req.peer, frames)
        return req

    def iprobe(self, match: int = 0, mask: int = 0, *, peer: Peer | None = None) -> Status | None:
        """Is a message waiting in the unexpected queue that a receive (match, mask) would take?"""
        return self._engine.probe(match, mask, peer)

    async def probe(self, match: int = 0, mask: int = 0, *, peer: Peer | None = None,
                    timeout: float | None = None) -> Status:
        with _deadline(timeout):
            while True:
                st = self.iprobe(match, mask, peer=peer)
                if st is not None:
                    return st
                await self._wait_event()
        raise AssertionError  # pragma: no cover

    async def wait_any(self, match: int = 0, mask: int = 0, timeout: float | None = None) -> Request:
        """Wait for any request whose match info fits (match, mask) to complete (mx_wait_any).
        Returns the request (taken off the completed list). Completions are tracked
        from the first call on (and for requests still pending at that moment)."""
        self._track_any = True
        with _deadline(timeout):
            while True:
                for req in self._completed:
                    if req.match & mask == match:
                        del self._completed[req]
                        return req
                await self._wait_event()
        raise AssertionError  # pragma: no cover

    async def _wait_event(self) -> None:
        """Sleep until some request completes or an unexpected message arrives."""
        ev = self._any_event = self._any_event if not self._any_event.is_set() else trio.Event()
        self._event_waiters += 1
        try:
            await ev.wait()
        finally:
            self._event_waiters -= 1

    def statistics(self) -> Statistics:
        """The endpoint's counters as of now (a snapshot: read it again to see more)."""
        self.stats.peers_connected = len(self._peers)
        self.stats.unexpected_now = self._engine.matcher.unexpected_count()
        return self.stats.snapshot()

    async def disconnect(self, peer: Peer) -> None:
        self._lose(peer, "closed locally")

    # -- the raw GM API (transport="gm" only) --------------------------------------------
    def _gm(self) -> Any:
        if self.transport != "gm":
            raise MxError("the raw GM API exists only on transport='gm' endpoints")
        return self._engine

    def register(self, buffer: Any) -> Any:
        """GM: pin and register memory (mlock + registration table). Returns a Region."""
        return self._gm().register(buffer)

    def deregister(self, region: Any) -> None:
        self._gm().deregister(region)

    def provide_receive_buffer(self, region: Any, size_class: int) -> Request:
        """GM: pre-post a registered buffer for one message of ``size_class`` (2**k bytes).
        The returned request completes when a message lands in it."""
        req = self._gm().provide_receive_buffer(region, size_class)
        self._take_events()
        return req

    def gm_send(self, peer: Peer, region: Any, offset: int, length: int) -> Request:
        """GM: send one contiguous range of a registered region (uses a send token)."""
        req, frames = self._gm().gm_send(peer, region, offset, length)
        self._take_events()
        self._emit(peer, frames)
        return req

    # -- the engine side -----------------------------------------------------------------
    def _send(self, peer: Peer, segments: Any, match: int, sync: bool) -> Request:
        if peer.lost:
            req = Request("send", (), match, MASK_ALL, peer, self._engine, sync)
            req._complete(StatusCode.PEER_LOST, 0, 0)
            self._take_events()
            return req
        req, frames = self._engine.isend(peer, segments, match, sync)
        self._emit(peer, frames)
        return req

    def _emit(self, peer: Any, frames: list[Any]) -> None:
        if frames and isinstance(peer, Peer) and not peer.lost:
            peer.send(frames)

    def _frame_sent(self, frame: Any, short: int) -> None:
        """A frame is on the wire: tell the engine, send what that lets go (gm: a frame that
        waited for the send token this one held)."""
        released = self._engine.frame_sent(frame, short)
        self._take_events()
        for peer, f in released:
            self._emit(peer, [f])

    def _take_events(self) -> None:
        """Act on what the engine queued in ``events`` during the call just made: wake the
        tasks waiting for completed requests, paused readers, senders waiting for room."""
        ev = self._events
        done = ev.completed
        if done:
            parked = self._parked
            for req in done:
                tasks = parked.pop(req, None) if parked else None
                if tasks:
                    for task in tasks:
                        trio.lowlevel.reschedule(task)
                if self._track_any:
                    self._completed[req] = None
                    while len(self._completed) > 4096:  # only wait_any reads it: bounded
                        self._completed.popitem(last=False)
            done.clear()
            if self._event_waiters:
                self._any_event.set()
        if ev.room:
            ev.room = False
            self._room_event.set()
        if ev.send_room:
            for peer in ev.send_room:
                peer.send_room.set()
            ev.send_room.clear()

    def cancel(self, req: Request) -> bool:
        """Request.cancel: the engine cancels, the shell wakes whoever waits for it."""
        cancelled = self._engine.cancel(req)
        self._take_events()
        return cancelled

    async def wait(self, req: Request, timeout: float | None) -> Status:
        """Request.wait: park the task until the request completes (``_take_events``)."""
        if req.status is None and self._spin:
            # MX polls a while before blocking: yielding keeps trio polling epoll with a zero
            # timeout, so a quick answer is picked up without this vCPU halting and paying a
            # wake-up. Bounded by poll_us per wait.
            end = time.perf_counter() + self._spin
            while req.status is None and time.perf_counter() < end:
                os.sched_yield()  # the peer process may share this vCPU: let it run
                await trio.lowlevel.cancel_shielded_checkpoint()
        if req.status is None:
            # park until the completion reschedules us: cheaper than an Event per request
            task = trio.lowlevel.current_task()
            tasks = self._parked.get(req)
            if tasks is None:
                self._parked[req] = [task]
            else:
                tasks.append(task)
            if timeout is None:
                await trio.lowlevel.wait_task_rescheduled(self._aborter(req, task))
            else:
                with _deadline(timeout):
                    await trio.lowlevel.wait_task_rescheduled(self._aborter(req, task))
        # (an already-completed request returns without yielding: one scheduler pass less
        # on the latency path; callers that loop on wait() still yield when they block)
        if self._track_any:
            self._completed.pop(req, None)
        return req.status  # type: ignore[return-value]

    def _aborter(self, req: Request, task: Any) -> Callable[[Any], trio.lowlevel.Abort]:
        """The abort hook of a parked wait: forget the task (timeout or cancellation)."""

        def abort(_: Any) -> trio.lowlevel.Abort:
            tasks = self._parked.get(req)
            if tasks is not None and task in tasks:
                tasks.remove(task)
                if not tasks:
                    del self._parked[req]
            return trio.lowlevel.Abort.SUCCEEDED

        return abort

    # -- peers ---------------------------------------------------------------------------
    def _add_peer(self, sock: socket.socket, address: Any,
                  window: tuple[int, int] | None = None) -> Peer:
        if self.closed:
            sock.close()
            raise ConnectError("endpoint is closed")
        peer = Peer(sock, address, self.stats)
        peer.on_sent = self._frame_sent
        self._engine.add_peer(peer, window)
        self._peers.add(peer)
        self.stats.peers_connected = len(self._peers)
        self._nursery.start_soon(self._run_peer, peer)
        return peer

    async def _run_peer(self, peer: Peer) -> None:
        try:
            with trio.CancelScope() as scope:
                peer.cancel_scope = scope
                async with trio.open_nursery() as n:
                    n.start_soon(self._guard, peer, self._writer)
                    n.start_soon(self._guard, peer, self._keepalive)
                    n.start_soon(self._guard, peer, self._reader)
        finally:  # also when the whole endpoint is being cancelled
            self._lose(peer, peer.lost_reason or "closed")
            peer._sock.close()  # only now: no task of this peer waits on the socket any more
            if peer.splicer is not None:
                peer.splicer.close()

    async def _guard(self, peer: Peer, task: Callable[[Peer], Any]) -> None:
        """Run one of a peer's tasks; whatever ends it ends the peer, never the endpoint."""
        try:
            await task(peer)
            reason = "closed"
        except PeerGone as e:
            reason = f"connection lost: {e}"
        except (ProtocolError, FrameError, ValueError) as e:
            self.stats.protocol_errors += 1
            reason = f"protocol error: {e}"
            log.warning("mxnet: dropping peer %s: %s", peer.address, e)
        except (OSError, trio.ClosedResourceError, trio.BrokenResourceError) as e:
            reason = f"socket error: {e}"
        self._lose(peer, peer.lost_reason or reason)

    def _lose(self, peer: Peer, reason: str) -> None:
        if peer.lost:
            return
        peer.lost = True
        peer.lost_reason = reason
        if peer.cancel_scope is not None:
            peer.cancel_scope.cancel()
        else:  # never started: nothing waits on the socket
            peer._sock.close()
        peer.drop_queues()
        peer.send_room.set()  # a send() waiting for room sees the peer is gone
        self._peers.discard(peer)
        self.stats.peers_lost += 1
        released = self._engine.peer_lost(peer)
        self._take_events()
        for other, f in released:
            self._emit(other, [f])
        peer.lost_event.set()
        log.info("mxnet: peer %s lost (%s)", peer.address, reason)
        for cb in list(self._lost_callbacks):
            try:
                cb(peer)
            except Exception:  # a callback bug must not take the endpoint down
                log.exception("mxnet: on_peer_lost callback failed")

    async def _reader(self, peer: Peer) -> None:
        """Read frames forever. Replies the engine produces (PULL, NOTIFY, PONG) go out at
        once: each one restarts or completes a bulk transfer on the other side. (Holding
        them until the socket ran dry let a streaming sender's window drain while its
        NOTIFYs waited behind the data: 0.6 sleeps per 1 MiB message, now 0.2.)"""
        sock = peer._sock
        recv_into = sock.recv_into
        hbuf = bytearray(HEADER_LEN)
        hview = memoryview(hbuf)
        engine = self._engine
        events = self._events
        flush = peer.kick
        unyielded = 0  # payload bytes read since this task last let others run
        while True:
            # one recv_into in the common case; recv_exact_into handles EAGAIN and partials
            k = _recv_now(recv_into, hview)
            while k < 0:
                flush()
                await trio.lowlevel.wait_readable(sock)
                unyielded = 0
                k = _recv_now(recv_into, hview)
            if k != HEADER_LEN and await recv_exact_into(sock, hview[k:], flush):
                unyielded = 0
            peer.rx_frames += 1
            h = unpack_header(hbuf)
            inbound = engine.receive_header(peer, h)
            if inbound.paused:  # its share of the unexpected queue is full: stop reading it
                self.stats.pauses += 1
            while inbound.paused:
                peer.paused = True
                flush()
                if self._room_event.is_set():
                    self._room_event = trio.Event()
                with trio.move_on_after(self.config.keepalive):
                    await self._room_event.wait()
                _check_alive(sock)  # a paused peer that hung up must still be reaped
                inbound = engine.receive_header(peer, h)
            peer.paused = False
            ps = inbound.pieces
            if len(ps) == 1 and type(ps[0]) is memoryview:
                v = ps[0]
                k = _recv_now(recv_into, v)
                if k != v.nbytes and await recv_exact_into(sock, v[k:] if k > 0 else v, flush):
                    unyielded = 0
            elif ps:
                await self._receive_pieces(peer, ps, flush)
            if inbound.discard:
                await discard(sock, inbound.discard)
            frames = engine.receive_done(peer)
            if events.completed or events.room or events.send_room:
                self._take_events()
            if frames:
                peer.send(frames)
                if peer.backlog() > 2 * self.config.send_buffer_max:
                    await self._wait_backlog(peer, flush)
            if self._event_waiters and engine.matcher._unexpected:  # wake probe() callers
                self._any_event.set()
            unyielded += HEADER_LEN + h.length
            if unyielded >= _YIELD_EVERY:  # a bulk transfer must let other peers run
                unyielded = 0
                await trio.lowlevel.checkpoint()

    async def _wait_backlog(self, peer: Peer, flush: Callable[[], None]) -> None:
        """The peer makes us answer (PONG, PULL, NOTIFY, CREDIT) faster than it reads what
        we send: stop reading it until the answers have drained to send_buffer_max, so a
        peer that never reads cannot grow our queue (TCP then holds it back)."""
        self.stats.pauses += 1
        while peer.backlog() > self.config.send_buffer_max and not peer.lost:
            flush()
            await trio.sleep(0.002)
            _check_alive(peer._sock)

    async def _receive_pieces(self, peer: Peer, ps: list[Any], flush: Callable[[], None]
                              ) -> None:
        """Memory pieces land with recvmsg_into (many per call); file pieces are spliced."""
        run: list[memoryview] = []
        for piece in ps:
            if isinstance(piece, FileRange):
                if run:
                    await recv_vector_into(peer._sock, run, flush)
                    run = []
                flush()
                await self._splice(peer, piece)
            elif piece.nbytes:
                run.append(piece)
        if run:
            await recv_vector_into(peer._sock, run, flush)

    async def _splice(self, peer: Peer, fr: FileRange) -> None:
        if peer.splicer is None:
            peer.splicer = Splicer()
        sp = peer.splicer
        sp.error = None
        before = sp.calls
        await sp.into_file(peer._sock, fr)
        peer.rx_frames += 1
        self.stats.splice_calls += sp.calls - before
        if sp.copied:
            self.stats.payload_bytes_copied += sp.copied
            self.stats.payload_copies += 1
            sp.copied = 0
        if sp.error is not None:
            self._engine.fail_current(peer, sp.error.errno or 5)
            self._take_events()

    async def _writer(self, peer: Peer) -> None:
        while True:
            await peer.wake_writer.wait()
            peer.wake_writer = trio.Event()
            while not peer._pump():
                await trio.lowlevel.wait_writable(peer._sock)
            peer.blocked = False

    async def _keepalive(self, peer: Peer) -> None:
        interval = self.config.keepalive
        seen, last_rx = peer.rx_frames, trio.current_time()
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            if peer.rx_frames != seen or peer.paused:
                seen, last_rx = peer.rx_frames, now
                continue
            idle = now - last_rx
            if idle > self.config.peer_timeout:
                peer.lost_reason = f"silent for {idle:.1f} s (peer_timeout)"
                raise PeerGone(peer.lost_reason)
            peer.enqueue([OutFrame(PING)])
            peer.kick()

    # -- listening -----------------------------------------------------------------------
    async def _serve(self, lsock: socket.socket) -> None:
        while True:
            try:
                sock, addr = lsock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(lsock)
                continue
            except OSError as e:
                log.warning("mxnet: accept failed: %s", e)
                await trio.sleep(0.05)
                continue
            _tune(sock)
            self._nursery.start_soon(self._accept_one, sock, addr)

    async def _accept_one(self, sock: socket.socket, addr: Any) -> None:
        try:
            with trio.fail_after(self.config.handshake_timeout):
                window = await handshake.server_side(sock, self._key, self.transport,
                                                     self._window)
        except (ConnectError, trio.TooSlowError, OSError) as e:
            sock.close()
            self.stats.handshake_failures += 1
            msg = "handshake timed out" if isinstance(e, trio.TooSlowError) else str(e)
            quiet = isinstance(e, handshake.NoHandshake)
            (log.debug if quiet else log.warning)(
                "mxnet: refused connection from %s: %s", addr[:2], msg)
            return
        peer = self._add_peer(sock, addr[:2], window)
        for cb in list(self._accept_callbacks):
            cb(peer)

    async def _listen(self, host: str | None, port: int) -> None:
        infos = await trio.socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                              flags=socket.AI_PASSIVE)
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        bound_port = port
        for family, type_, proto, _, sockaddr in infos:
            s = socket.socket(family, type_, proto)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if bound_port:
                sockaddr = (sockaddr[0], bound_port, *sockaddr[2:])
            try:
                s.bind(sockaddr)
            except OSError:
                s.close()
                if self._listeners:
                    continue  # e.g. IPv6 unavailable: IPv4 alone is fine
                raise
            s.listen(128)
            s.setblocking(False)
            bound_port = s.getsockname()[1]
            if not self._listeners:
                self.address = (sockaddr[0], bound_port)
            self._listeners.append(s)
        for s in self._listeners:
            self._nursery.start_soon(self._serve, s)

    def close(self) -> None:
        """Drop every peer (their requests complete with PEER_LOST) and stop accepting.
        Sockets are closed by their tasks as they exit."""
        self.closed = True
        for peer in list(self._peers):
            self._lose(peer, "endpoint closed")


@asynccontextmanager
async def open_endpoint(host: str | None = "127.0.0.1", port: int = 0, *, key: bytes,
                        transport: str = "mx", config: Config | None = None,
                        listen: bool = True) -> AsyncIterator[Endpoint]:
    """Open an endpoint listening on (host, port) — port 0 picks a free port — and yield it.
    ``host`` None or "" listens on every address, IPv4 and IPv6."""
    if isinstance(key, str):
        key = key.encode()
    async with trio.open_nursery() as nursery:
        ep = Endpoint(nursery, key, transport, config or Config())
        try:
            if listen:
                await ep._listen(host, port)
            yield ep
        finally:
            ep.close()
            nursery.cancel_scope.cancel()
    for s in ep._listeners:  # every task is gone now
        s.close()


# -- helpers -------------------------------------------------------------------------------
def _recv_now(recv_into: Callable[[memoryview], int], view: memoryview) -> int:
    """One non-blocking recv_into of a non-empty view: bytes read, -1 when the socket has
    nothing now; PeerGone on EOF or a socket error."""
    try:
        k = recv_into(view)
    except (BlockingIOError, InterruptedError):
        return -1
    except OSError as e:
        raise PeerGone(str(e)) from None
    if k == 0:
        raise PeerGone("connection closed by peer")
    return k


class _deadline:
    """``with _deadline(t):`` raises mxnet.Timeout after t seconds (None: no limit)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.scope: trio.CancelScope | None = None

    def __enter__(self) -> None:
        if self.timeout is not None:
            self.scope = trio.move_on_after(self.timeout)
            self.scope.__enter__()

    def __exit__(self, *exc: Any) -> bool:
        if self.scope is None:
            return False
        swallowed = self.scope.__exit__(*exc)
        if self.scope.cancelled_caught:
            raise Timeout(f"not completed within {self.timeout} s")
        return bool(swallowed)


_TCP_ESTABLISHED = 1


def _check_alive(sock: socket.socket) -> None:
    """Without consuming anything, raise PeerGone if the peer closed or reset the connection
    (TCP state leaves ESTABLISHED once its FIN arrived, even with unread data queued)."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        if state != _TCP_ESTABLISHED:
            raise PeerGone("connection closed by peer (while paused)")
        if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
            raise PeerGone("connection closed by peer (while paused)")
    except (BlockingIOError, InterruptedError):
        return
    except OSError as e:
        raise PeerGone(str(e)) from None


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


async def _connect_tcp(host: str, port: int) -> socket.socket:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError = OSError(f"cannot resolve {host}")
    for family, type_, proto, _, sockaddr in infos:
        sock = socket.socket(family, type_, proto)
        _tune(sock)
        try:
            try:
                sock.connect(sockaddr)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err)) from None
            return sock
        except OSError as e:
            sock.close()
            last = e
        except BaseException:
            sock.close()
            raise
    raise last

