"""The GM engine: GM's rules on the wire, plus mx-shaped calls that pay GM's copies.

How this works
--------------
Every GM message is one GM frame (wire.PacketType.GM) carrying its size class; there is
no match info on the wire, no rendezvous, no pull: the whole message goes out in one piece
from one registered contiguous buffer and lands in one pre-posted registered buffer of its
size class. Two users share the engine:

* the raw GM API (frame flag RAW): ``register``/``deregister``, ``provide_receive_buffer``
  (returns a Request completed when a message lands there) and ``gm_send`` (a registered
  contiguous range; needs a send token). No buffer of the class posted → the connection
  stalls until one is, as GM does.
* the convenience layer (isend/issend/irecv with 64-bit match, the same calls as mx) used
  by mxfs on ``transport=gm``. It does what a GM file system must do: copy the caller's
  segments (page cache, via os.preadv for file ranges) into a registered bounce buffer,
  send that; on arrival the message sits in a registered receive buffer, is matched in
  software against posted receives by a small header it carries, and is copied out into
  the receive's segments. Both copies are counted in ``payload_bytes_copied``; bounce and
  receive buffers come from a registration cache, and each registration is counted.

A receive whose segments cannot take the copy (a file segment: ENOSPC, EBADF) completes with
LOCAL_ERROR and that errno; the message was already whole in its receive buffer, so the
connection stays in step and lives on. Sends waiting for the socket or a send token count
against ``send_buffer_max`` per peer, as on mx. GM has no rendezvous, so no credits: a
message in the unexpected queue is whole, and a receive that takes it needs nothing more
from the wire (a peer past its share of the queue is paused, as GM stalls).
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .errors import ProtocolError
from .gm import ReceivePool, Region, RegistrationTable, SendTokens, size_class
from .matching import MASK_ALL, Matcher, check_match
from .protocol import EngineBase, Events, Inbound, OutFrame, Request
from .segments import FileRange, as_vector, pieces
from .stats import Statistics
from .status import Status, StatusCode
from .wire import PONG, Gm, Header, PacketType

CONV = struct.Struct("<QQII")  # match, payload length, kind, sync id
KIND_DATA, KIND_ACK = 0, 1
RAW = 1  # frame flag: a raw GM message (no convenience header)
_CACHE_PER_CLASS = 8


@dataclass(slots=True)
class _Held:
    """A convenience message kept in its registered receive buffer until a receive takes it."""

    region: Region
    klass: int
    length: int
    sync_id: int


@dataclass(slots=True)
class _PeerState:
    sync_waiting: dict[int, Request] = field(default_factory=dict)
    inflight: set[Request] = field(default_factory=set)
    raw_waiting: deque[Any] = field(default_factory=deque)
    queued: int = 0  # sends accepted and not yet written (send_buffer_max bounds it)
    current: tuple[Header, Any] | None = None
    next_sync: int = 1


class GMEngine(EngineBase):
    def __init__(self, config: Config | None = None, stats: Statistics | None = None) -> None:
        self.config = config or Config()
        self.stats = stats or Statistics(transport="gm")
        self.matcher: Matcher[Any] = Matcher(
            self.config.unexpected_max_count, self.config.unexpected_max_bytes
        )
        self.table = RegistrationTable(self.stats)
        self.tokens = SendTokens(self.config.gm_send_tokens)
        self.user_pool = ReceivePool()  # raw API: buffers the application provided
        self._raw_recvs: dict[int, Request] = {}  # region id -> raw receive request
        self._cache: dict[int, list[Region]] = {}  # registration cache, by size class
        self._token_wait: deque[tuple[Any, OutFrame]] = deque()
        self._holding: dict[int, tuple[Any, OutFrame]] = {}  # frames holding a send token
        self.peers: dict[Hashable, _PeerState] = {}
        self.events = Events()

    # -- registration cache --------------------------------------------------------------
    def _region(self, klass: int) -> Region:
        if klass > self.config.gm_max_size_class:
            raise ValueError(f"message needs size class {klass}, GM max is "
                             f"{self.config.gm_max_size_class}")
        free = self._cache.get(klass)
        if free:
            return free.pop()
        return self.table.register(bytearray(1 << klass))

    def _release(self, region: Region, klass: int) -> None:
        free = self._cache.setdefault(klass, [])
        # a registration cache, as GM file systems kept: up to 8 buffers per class up to
        # 4 MiB (a 1 MiB payload plus its header needs the 2 MiB class), 2 above
        keep = _CACHE_PER_CLASS if klass <= 22 else 2
        if len(free) < keep:
            free.append(region)
        else:
            self.table.deregister(region)

    # -- peers ---------------------------------------------------------------------------
    def add_peer(self, peer: Hashable, window: tuple[int, int] | None = None) -> None:
        self.peers[peer] = _PeerState()  # (no credits on gm: the window is not used)

    def _state(self, peer: Hashable) -> _PeerState:
        try:
            return self.peers[peer]
        except KeyError:
            raise ProtocolError("peer is not connected") from None

    def peer_lost(self, peer: Hashable) -> list[tuple[Hashable, OutFrame]]:
        """Complete everything that depended on ``peer`` with PEER_LOST. Returns the frames
        of other peers that the send tokens its frames held let go now (in queue order)."""
        st = self.peers.pop(peer, None)
        for u in list(self.matcher._unexpected):
            if u.peer == peer and isinstance(u.item, _Held):
                self._release(u.item.region, u.item.klass)
        doomed = self.matcher.drop_peer(peer)
        if st is not None:
            doomed += list(st.sync_waiting.values()) + list(st.inflight)
            if st.current is not None:
                target = st.current[1]
                if isinstance(target, tuple) and isinstance(target[1], Request):
                    doomed.append(target[1])
        kept = deque()
        for p, frame in self._token_wait:
            if p is peer:
                self._drop_frame(frame)
            else:
                kept.append((p, frame))
        self._token_wait = kept
        freed = 0
        for key, (p, frame) in list(self._holding.items()):  # handed out, never sent
            if p is peer:
                del self._holding[key]
                self._drop_frame(frame)
                freed += 1
        for req in doomed:
            req._complete(StatusCode.PEER_LOST, req.length, 0)
        self._room()
        # the tokens come back after the completions: a frame their callbacks send waits
        # behind those already waiting for a token, so no frame overtakes an older one
        released: list[tuple[Hashable, OutFrame]] = []
        for _ in range(freed):
            released += self._give_token()
        return released

    # -- raw GM API ----------------------------------------------------------------------
    def register(self, buf: Any) -> Region:
        return self.table.register(buf)

    def deregister(self, region: Region) -> None:
        self.table.deregister(region)

    def provide_receive_buffer(self, region: Region, klass: int) -> Request:
        """Pre-post a registered buffer for messages of size class ``klass`` (raw GM)."""
        self.table.check(region)
        self.user_pool.provide(region, klass)
        req = Request("recv", (), 0, 0, None, self)
        req.length = region.size
        self._raw_recvs[region.rid] = req
        self._room()
        return req

    def gm_send(self, peer: Hashable, region: Region, offset: int, length: int
                ) -> tuple[Request, list[OutFrame]]:
        """Send ``length`` bytes of a registered region, contiguous (raw GM)."""
        self.table.check(region)
        view = region.span(offset, length)
        req = Request("send", (), 0, MASK_ALL, peer, self)
        req.length = length
        if peer not in self.peers:  # lost: like isend on a lost peer, not an exception
            req._complete(StatusCode.PEER_LOST, length, 0)
            return req, []
        st = self.peers[peer]
        self._admit(st)
        self.stats.count_send(self.config.size_class(length), length)
        klass = size_class(length)
        frame = OutFrame(Gm(length=length, size_class=klass, msg_length=length, flags=RAW).pack(),
                         [view] if length else [], length, req, head=req)
        st.inflight.add(req)
        self._enqueued(st)
        return req, self._with_token(peer, frame)

    # -- convenience (mx-shaped) API -----------------------------------------------------
    def isend(self, peer: Hashable, segments: Any, match: int, sync: bool = False
              ) -> tuple[Request, list[OutFrame]]:
        check_match(match, MASK_ALL)
        vec = as_vector(segments)
        st = self._state(peer)
        req = Request("send", vec, match, MASK_ALL, peer, self, sync)
        n = req.length
        if n > self.config.max_message:
            raise ValueError(f"message of {n} bytes exceeds max_message {self.config.max_message}")
        self._admit(st)
        total = CONV.size + n
        klass = size_class(total)
        region = self._region(klass)
        view = region.span(0, total)
        sync_id = 0
        if sync:
            sync_id = st.next_sync
            st.next_sync += 1
            st.sync_waiting[sync_id] = req
        CONV.pack_into(view, 0, match, n, KIND_DATA, sync_id)
        req.short = self._bounce_in(vec, view[CONV.size:])
        self.stats.count_send(self.config.size_class(n), n)
        self.stats.eager_sends += 1
        frame = OutFrame(Gm(length=total, size_class=klass, msg_length=total).pack(), [view], total, req,
                         region=region, head=req)
        st.inflight.add(req)
        self._enqueued(st)
        return req, self._with_token(peer, frame)

    def _bounce_in(self, vec: Any, dst: memoryview) -> int:
        """Copy a vector into a registered buffer (the copy GM forces). Returns short bytes."""
        pos, short = 0, 0
        for piece in pieces(vec, 0, dst.nbytes):
            if isinstance(piece, FileRange):
                want = piece.length
                got = os.preadv(piece.fd, [dst[pos : pos + want]], piece.offset)
                while 0 < got < want:
                    more = os.preadv(piece.fd, [dst[pos + got : pos + want]], piece.offset + got)
                    if more == 0:
                        break
                    got += more
                if got < want:
                    dst[pos + got : pos + want] = bytes(want - got)
                    short += want - got
                pos += want
            else:
                dst[pos : pos + piece.nbytes] = piece
                pos += piece.nbytes
        if dst.nbytes:
            self.stats.payload_bytes_copied += dst.nbytes
            self.stats.payload_copies += 1
        return short

    def irecv(self, segments: Any, match: int, mask: int, peer: Hashable | None = None
              ) -> tuple[Request, list[OutFrame]]:
        req, u = self._post(segments, match, mask, peer)
        if u is None:
            return req, []
        frames = self._deliver(req, u.item)
        self._room()
        return req, frames

    def probe(self, match: int, mask: int, peer: Hashable | None = None) -> Status | None:
        u = self.matcher.probe(match, mask, peer)
        if u is None:
            return None
        return Status(StatusCode.SUCCESS, u.peer, u.match, u.item.length, 0)

    # -- frames out ----------------------------------------------------------------------
    def _with_token(self, peer: Any, frame: OutFrame) -> list[OutFrame]:
        if self.tokens.take():
            self._holding[id(frame)] = (peer, frame)
            return [frame]
        self._token_wait.append((peer, frame))
        return []

    def _drop_frame(self, frame: OutFrame) -> None:
        if frame.region is not None:
            self._release(frame.region, size_class(frame.region.size))
            frame.region = None

    def frame_sent(self, frame: OutFrame, short: int = 0) -> list[tuple[Hashable, OutFrame]]:
        """The shell wrote ``frame``. Returns the frame (and its peer) that the send token
        it held lets go now, if one waited for a token: the shell sends it."""
        if frame.head is not None:
            self._head_sent(frame.head)
        self._drop_frame(frame)
        released = self._give_token() if self._holding.pop(id(frame), None) is not None else []
        req = frame.request
        if req is None:
            return released
        st = self.peers.get(req.peer)
        if st is not None:
            st.inflight.discard(req)
        if req.sync:
            return released  # completes on the receiver's ACK
        code = StatusCode.SHORT_SOURCE if req.short else StatusCode.SUCCESS
        req._complete(code, req.length, req.length - req.short)
        return released

    def _give_token(self) -> list[tuple[Hashable, OutFrame]]:
        """A send token comes back: the oldest frame waiting for one takes it."""
        self.tokens.give()
        if self._token_wait and self.tokens.take():
            peer, nxt = self._token_wait.popleft()
            self._holding[id(nxt)] = (peer, nxt)
            return [(peer, nxt)]
        return []

    # -- frames in -----------------------------------------------------------------------
    def receive_header(self, peer: Hashable, h: Header) -> Inbound:
        st = self._state(peer)
        if h.type is PacketType.PING or h.type is PacketType.PONG or h.type is PacketType.BYE:
            st.current = (h, None)
            return Inbound()
        if h.type is not PacketType.GM:
            raise ProtocolError(f"{h.type.name} frame on a gm connection")
        klass, n = h.size_class, h.length
        if n > self.config.max_message:  # (mx checks its lengths per type, in its engine)
            raise ProtocolError(f"frame of {n} bytes exceeds max_message")
        # the class must be the one the length needs: a larger class would make us register
        # a buffer of 2**class bytes for a tiny frame (memory a peer could pile up at will)
        if klass > self.config.gm_max_size_class or klass != size_class(n) or n != h.msg_length:
            raise ProtocolError(f"bad GM frame: class {klass}, length {n}")
        if h.flags & RAW:
            region = self.user_pool.take(klass)
            if region is None:
                return Inbound(paused=True)  # GM: the message waits for a buffer
            st.current = (h, (region, self._raw_recvs.pop(region.rid, None)))
            return Inbound([region.span(0, n)] if n else [])
        if n < CONV.size:
            raise ProtocolError("GM convenience message shorter than its header")
        if not self.matcher.peer_has_room(peer, 0):  # its share is full: stall this peer;
            return Inbound(paused=True)   # one message may overshoot max_bytes, not more
        region = self._region(klass)
        st.current = (h, (region, None))
        return Inbound([region.span(0, n)])

    def fail_current(self, peer: Hashable, err: int) -> None:  # nothing is spliced on gm
        return None

    def receive_done(self, peer: Hashable) -> list[OutFrame]:
        st = self._state(peer)
        assert st.current is not None
        h, target = st.current
        st.current = None
        if h.type is PacketType.PING:
            return [OutFrame(PONG)]
        if h.type is not PacketType.GM:
            return []
        region, raw_req = target
        if h.flags & RAW:
            self.stats.count_receive(self.config.size_class(h.length), h.length)
            if raw_req is not None:
                raw_req.peer = peer
                raw_req._complete(StatusCode.SUCCESS, h.length, h.length)
            return []
        match, n, kind, sync_id = CONV.unpack_from(region.view, 0)
        if n != h.length - CONV.size:
            self._release(region, h.size_class)
            raise ProtocolError("GM convenience header disagrees with frame length")
        if kind == KIND_ACK:
            self._release(region, h.size_class)
            req = st.sync_waiting.pop(sync_id, None)
            if req is not None:
                req._complete(StatusCode.SUCCESS, req.length, req.length - req.short)
            return []
        self.stats.count_receive(self.config.size_class(n), n)
        held = _Held(region, h.size_class, n, sync_id)
        req = self.matcher.arrive(match, peer)
        if req is None and self.on_unexpected is not None:
            self.on_unexpected(Status(StatusCode.SUCCESS, peer, match, n, 0))
            req = self.matcher.arrive(match, peer)
        if req is None:
            self.matcher.add_unexpected(match, peer, n, held)
            self.stats.unexpected_high_water = self.matcher.high_water
            return []
        req.peer, req.match = peer, match
        return self._deliver(req, held)

    def _deliver(self, req: Request, held: _Held) -> list[OutFrame]:
        """Copy a held message out of its registered buffer into the receive (counted); a
        segment that cannot be written fails this receive only (LOCAL_ERROR, errno)."""
        take = min(held.length, req.length)
        try:
            self._copy_out(req, held.region.span(CONV.size, take), held.length)
        finally:
            self._release(held.region, held.klass)
        if not held.sync_id or req.peer not in self.peers:
            return []
        return self._ack(req.peer, held.sync_id)

    def _ack(self, peer: Any, sync_id: int) -> list[OutFrame]:
        klass = size_class(CONV.size)
        region = self._region(klass)
        view = region.span(0, CONV.size)
        CONV.pack_into(view, 0, 0, 0, KIND_ACK, sync_id)
        frame = OutFrame(Gm(length=CONV.size, size_class=klass, msg_length=CONV.size).pack(), [view],
                         CONV.size, region=region)
        return self._with_token(peer, frame)
