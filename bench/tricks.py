"""Speed tricks A/B: each speed trick in mxnet and mxfs against its plain form.

    python -m bench.tricks

timeit, best of 7 repeats, µs per operation: the figures the code's one-line comments name
and bench/NOTEBOOK.md ("Speed tricks") records. A trick whose gain is noise goes.
"""

from __future__ import annotations

import socket
import timeit
from typing import Any

from mxfs.bufpool import BufferPool
from mxnet import wire
from mxnet.peer import Peer
from mxnet.protocol import Engine, OutFrame
from mxnet.segments import Segment, as_vector, user, vector_length
from mxnet.stats import Statistics
from mxnet.status import StatusCode
from mxnet.wire import HEADER, Eager, pack_eager

ROWS: list[tuple[str, float, float]] = []


def best(stmt: str, g: dict[str, Any], number: int) -> float:
    return min(timeit.repeat(stmt, globals=g, number=number, repeat=7)) / number * 1e6


def ab(name: str, trick: str, plain: str, g: dict[str, Any], number: int = 200_000,
       per: int = 1) -> None:
    t, p = best(trick, g, number) / per, best(plain, g, number) / per
    ROWS.append((name, t, p))
    print(f"{name:62s} trick {t:7.3f} µs  plain {p:7.3f} µs  gain {p - t:+.3f} µs "
          f"({(p - t) / p * 100:+.0f} %)", flush=True)


def as_vector_plain(segments: list[Any]) -> tuple[Segment, ...]:
    return tuple(s if type(s) is Segment else user(s) for s in segments)


class PlainRequest:
    """Request as it would be without class-level defaults: every field set per request."""

    def __init__(self, kind: str, vec: Any, match: int, mask: int, peer: Any, engine: Any,
                 sync: bool = False) -> None:
        self.kind, self.vec, self.match, self.mask = kind, vec, match, mask
        self.length = vec[0].length if len(vec) == 1 else vector_length(vec)
        self.peer, self.engine, self.sync, self.status = peer, engine, sync, None
        self.handle = self.want = self.received = self.msg_length = 0
        self.short = self.send_handle = 0
        self.callbacks = self._posted = None


class Swapped:  # mxfs.rpc: the -o debug methods are swapped in at construction
    debug = False

    async def call(self, x: int) -> int:
        return x


class Checked:  # the plain form: a check and a wrapper layer on every call
    debug = False

    async def call(self, x: int) -> int:
        if self.debug:
            return await self._logged(x)
        return await self._call(x)

    async def _call(self, x: int) -> int:
        return x

    async def _logged(self, x: int) -> int:
        return x


def drive(coro: Any) -> Any:
    try:
        coro.send(None)
    except StopIteration as s:
        return s.value


def main() -> None:
    vec = as_vector([bytearray(64)])
    vec3 = as_vector([bytearray(64), bytearray(64), bytearray(64)])
    g: dict[str, Any] = dict(globals(), new=tuple.__new__, S=StatusCode.SUCCESS, vec=vec,
                             vec3=vec3, raw=Eager(length=10, match=5, msg_length=10).pack(),
                             unpack=HEADER.unpack, ET=wire.PacketType.EAGER,
                             mv=memoryview(bytearray(64)), blist=[bytearray(64)], eng=Engine())
    ab("Status: tuple.__new__ vs Status(...)", "new(Status, (S, 'p', 5, 10, 10, 0))",
       "Status(S, 'p', 5, 10, 10, 0)", g)
    ab("header unpack: tuple.__new__ vs Eager(...)",
       "t, f, r, n, a, b, c = unpack(raw); new(Eager, (ET, n, a, b, c, f))",
       "t, f, r, n, a, b, c = unpack(raw); Eager(ET, n, a, b, c, f)", g)
    ab("send header: pack_eager vs Eager(...).pack()", "pack_eager(5, 10)",
       "Eager(length=10, match=5, msg_length=10).pack()", g)
    ab("Segment: tuple.__new__ vs Segment(...)", "new(Segment, ('user', (mv,), None, 64))",
       "Segment('user', (mv,), None, 64)", g)
    ab("as_vector: hot case (one bytearray) vs general path", "as_vector(blist)",
       "as_vector_plain(blist)", g)
    ab("piece_list: one-buffer fast path vs list(pieces())", "piece_list(vec, 0, 64)",
       "list(pieces(vec, 0, 64))", g)
    ab("vector_length: plain loop vs sum(generator)", "vector_length(vec3)",
       "sum(s.length for s in vec3)", g)
    ab("isend body: one-buffer case vs piece_list + FileRange scan",
       "body = list(vec[0].views); simple = True",
       "body = piece_list(vec, 0, 64); simple = not any(type(p) is FileRange for p in body)", g)
    ab("Request length: one-segment case vs vector_length()",
       "n = vec[0].length if len(vec) == 1 else vector_length(vec)", "n = vector_length(vec)", g)
    ab("Request: class-level defaults vs every field set in __init__",
       "Request('send', vec, 5, 0, 'p', eng)", "PlainRequest('send', vec, 5, 0, 'p', eng)", g)

    e = Engine()
    e.add_peer("B", (1 << 60, 1 << 60))
    e2 = Engine()
    e2.add_peer("A", (4096, 64 << 20))
    g.update(e=e, st=e.peers["B"], e2=e2, st2=e2.peers["A"])
    ab("isend credit: inline vs _take_credit()",
       "if st.held or st.credits < 1 or 10 > st.credit_bytes:\n    pass\n"
       "else:\n    st.credits -= 1\n    st.credit_bytes -= 10",
       "if st.held or not e._take_credit(st, 10):\n    pass", g)
    ab("receive_done owe: inline vs _owe()",
       "st2.owed += 1\nst2.owed_bytes += 10\n"
       "if (st2.owed < e2._return_at and st2.owed_bytes < e2._return_bytes_at\n"
       "        and 'A' not in e2.matcher._per_peer):\n    pass\nst2.owed = st2.owed_bytes = 0",
       "e2._owe('A', st2, 10)\nst2.owed = st2.owed_bytes = 0", g)

    # Peer.send: one frame on an idle connection straight to sendmsg vs queue + kick (pump)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    peer = Peer(a, "x", Statistics())
    hdr, body, drain = pack_eager(5, 64), [memoryview(bytearray(64))], bytearray(1 << 16)

    def burst(fast: bool) -> None:
        for _ in range(100):
            frames = [OutFrame(hdr, body, 64, simple=True)]
            if fast:
                peer.send(frames)
            else:
                peer.enqueue(frames)
                peer.kick()
        while True:
            try:
                b.recv_into(drain)
            except BlockingIOError:
                return

    g.update(burst=burst)
    ab("Peer.send: idle fast path vs enqueue + kick (per frame, with sendmsg)",
       "burst(True)", "burst(False)", g, 200, per=100)

    # BufferPool: reuse a free buffer vs a fresh bytearray (zeroed, faulted in when touched)
    for size in (4096, 128 << 10, 1 << 20):
        g.update(pool=BufferPool(), size=size)
        ab(f"BufferPool.get({size >> 10} KiB) + touch: refcount reuse vs bytearray",
           "buf = pool.get(size); buf[::4096] = bytes(len(buf[::4096])); del buf",
           "buf = bytearray(size); buf[::4096] = bytes(len(buf[::4096])); del buf", g,
           20_000 if size <= 4096 else 2000)

    g.update(sw=Swapped(), ch=Checked())
    ab("rpc call: -o debug methods swapped in vs if self.debug + layer", "drive(sw.call(1))",
       "drive(ch.call(1))", g)


if __name__ == "__main__":
    main()
