"""The connection handshake's decisions, sans-IO: bytes in, bytes to send and a verdict out.

How this works
--------------
``ClientHandshake`` and ``ServerHandshake`` each say what to send first (``start``), how
many bytes they need next (``want``), and what those bytes lead to (``feed``): a Step with
the bytes to send now, and either nothing more (read ``want`` bytes again), the credit
window the other side granted (done), or a ConnectError (send ``send`` — a REJECT with
the reason, or nothing — then fail). No socket, no trio: handshake.py does the awaits and
the tests drive both sides against each other in memory.

The wire (wire.py): HELLO → CHALLENGE → AUTH + WINDOW → OKAY + WINDOW; either side that
finds a problem answers NOPE with a reason code instead. The key never crosses the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import NamedTuple

from . import wire
from .config import Config
from .errors import ConnectError

# reason codes of a REJECT (wire.REASON_TEXT)
WRONG_KEY, VERSION_MISMATCH, TRANSPORT_MISMATCH, MALFORMED = 1, 2, 3, 4


class Step(NamedTuple):
    send: bytes = b""  # to send now (on an error: the REJECT, best effort)
    window: tuple[int, int] | None = None  # done: the credit window the other side grants
    error: ConnectError | None = None  # failed: send ``send``, then raise this


def mac(key: bytes, label: bytes, cn: bytes, sn: bytes) -> bytes:
    return hmac.new(key, label + cn + sn, hashlib.sha256).digest()


def reject(reason: int, message: str) -> Step:
    return Step(wire.REPLY.pack(b"NOPE", reason), error=ConnectError(message))


def reason_text(code: int) -> str:
    return wire.REASON_TEXT.get(code, f"rejected (reason {code})")


def window_bytes(window: tuple[int, int] | None) -> bytes:
    if window is None:
        cfg = Config()
        window = (cfg.unexpected_max_count, cfg.unexpected_max_bytes)
    return wire.WINDOW.pack(b"WNDW", *window)


def parse_window(data: bytes) -> tuple[int, int] | None:
    """The credit window in a WINDOW message, or None if it is malformed."""
    magic, count, nbytes = wire.WINDOW.unpack(data)
    if magic != b"WNDW" or count < 1 or nbytes < 1:
        return None
    return count, nbytes


_MALFORMED_WINDOW = "malformed handshake (credit window)"


class _Handshake:
    """A side's progress: ``want`` bytes to read next, handed to the state's method."""

    me, other = "", ""  # which side this is, and the side we talk to (for messages)

    def __init__(self, key: bytes, transport: str, window: tuple[int, int] | None,
                 nonce: bytes | None) -> None:
        self.key = key
        self.tid = wire.TRANSPORT_IDS[transport]
        self.window = window  # the one we grant
        self.nonce = nonce if nonce is not None else os.urandom(wire.NONCE_LEN)
        self.want = 0
        self._head = b""
        self._state = self._done

    def feed(self, data: bytes) -> Step:
        """The ``want`` bytes just read."""
        assert len(data) == self.want, "feed exactly the bytes asked for"
        return self._state(data)

    def _expect(self, n: int, state: object) -> None:
        self.want, self._state = n, state  # type: ignore[assignment]

    def _done(self, data: bytes) -> Step:
        raise AssertionError("the handshake is over")

    def _refused(self, data: bytes) -> Step:
        return Step(error=ConnectError(
            f"{self.other} refused the connection: {reason_text(data[0])}"))

    def _check(self, magic: bytes, version: int, tid: int) -> Step | None:
        """The other side's greeting (HELLO or CHALLENGE): a REJECT if we cannot talk."""
        if magic != wire.MAGIC:
            return reject(MALFORMED, f"not an mxnet {self.other} (bad magic)")
        if version != wire.VERSION:
            return reject(VERSION_MISMATCH, f"wire version mismatch: {self.other} {version}, "
                                            f"{self.me} {wire.VERSION}")
        if tid != self.tid:
            return reject(TRANSPORT_MISMATCH, f"transport mismatch: {self.other} and {self.me} "
                                              "use different transports")
        return None

    def _their_window(self, data: bytes) -> Step:
        """The last message: the credit window the other side grants (None: malformed)."""
        self._expect(0, self._done)
        return self._agreed(parse_window(data))

    def _agreed(self, theirs: tuple[int, int] | None) -> Step:
        raise NotImplementedError

    def _head_or_refusal(self, head: bytes, size: int, state: object) -> Step:
        """The first 4 bytes of the other side's answer: NOPE (1 reason byte follows) or
        the start of the ``size``-byte message ``state`` reads."""
        if head == b"NOPE":
            self._expect(1, self._refused)
        else:
            self._head = head
            self._expect(size - 4, state)
        return Step()


class ClientHandshake(_Handshake):
    me, other = "client", "server"

    def __init__(self, key: bytes, transport: str, window: tuple[int, int] | None = None,
                 nonce: bytes | None = None) -> None:
        super().__init__(key, transport, window, nonce)

    def start(self) -> Step:
        self._expect(4, self._challenge_head)
        return Step(wire.HELLO.pack(wire.MAGIC, wire.VERSION, self.tid, self.nonce))

    def _challenge_head(self, head: bytes) -> Step:
        return self._head_or_refusal(head, wire.CHALLENGE.size, self._challenge)

    def _challenge(self, rest: bytes) -> Step:
        magic, version, stid, sn, smac = wire.CHALLENGE.unpack(self._head + rest)
        refused = self._check(magic, version, stid)
        if refused is not None:
            return refused
        if not hmac.compare_digest(smac, mac(self.key, b"srv", self.nonce, sn)):
            return reject(WRONG_KEY,
                          "wrong key: the server could not prove it holds the shared secret")
        self._expect(wire.REPLY.size, self._reply)
        return Step(wire.AUTH.pack(b"AUTH", mac(self.key, b"cli", self.nonce, sn))
                    + window_bytes(self.window))

    def _reply(self, data: bytes) -> Step:
        magic, code = wire.REPLY.unpack(data)
        if magic != b"OKAY":
            return Step(error=ConnectError(f"server refused the connection: {reason_text(code)}"))
        self._expect(wire.WINDOW.size, self._their_window)
        return Step()

    def _agreed(self, theirs: tuple[int, int] | None) -> Step:
        if theirs is None:
            return Step(error=ConnectError(_MALFORMED_WINDOW))
        return Step(window=theirs)


class ServerHandshake(_Handshake):
    me, other = "server", "client"

    def __init__(self, key: bytes, transport: str, window: tuple[int, int] | None = None,
                 nonce: bytes | None = None) -> None:
        super().__init__(key, transport, window, nonce)
        self._cn = b""

    def start(self) -> Step:
        self._expect(wire.HELLO.size, self._hello)
        return Step()

    def _hello(self, data: bytes) -> Step:
        magic, version, tid, cn = wire.HELLO.unpack(data)
        refused = self._check(magic, version, tid)
        if refused is not None:
            return refused
        self._cn = cn
        self._expect(4, self._auth_head)
        sn = self.nonce
        return Step(wire.CHALLENGE.pack(wire.MAGIC, wire.VERSION, tid, sn,
                                        mac(self.key, b"srv", cn, sn)))

    def _auth_head(self, head: bytes) -> Step:
        return self._head_or_refusal(head, wire.AUTH.size, self._auth)

    def _auth(self, rest: bytes) -> Step:
        _, cmac = wire.AUTH.unpack(self._head + rest)
        if self._head != b"AUTH" or not hmac.compare_digest(
                cmac, mac(self.key, b"cli", self._cn, self.nonce)):
            return reject(WRONG_KEY,
                          "wrong key: the client could not prove it holds the shared secret")
        self._expect(wire.WINDOW.size, self._their_window)
        return Step()

    def _agreed(self, theirs: tuple[int, int] | None) -> Step:
        if theirs is None:
            return reject(MALFORMED, _MALFORMED_WINDOW)
        return Step(wire.REPLY.pack(b"OKAY", 0) + window_bytes(self.window), window=theirs)
