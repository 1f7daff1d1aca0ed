"""A TCP proxy between an mxnet client and server that flips bytes on the wire.

It follows mxnet's framing (the fixed-size handshake, then 32-byte frame headers with a
payload length) and flips one byte in the middle of the payload of data-carrying frames of at
least ``min_len`` bytes, ``budget`` times per direction (-1: always). Headers are never
touched, so the connection itself stays healthy: only an end-to-end checksum can notice.
Runs in threads with blocking sockets; used by tests only, on loopback.
"""

from __future__ import annotations

import socket
import threading

from mxnet import wire


class CorruptingProxy:
    def __init__(self, target_port: int, *, to_client: int = 0, to_server: int = 0,
                 min_len: int = 4096) -> None:
        self.target = ("127.0.0.1", target_port)
        self.budget = {"s2c": to_client, "c2s": to_server}
        self.min_len = min_len
        self.flipped = {"s2c": 0, "c2s": 0}
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._socks += [client, server]
            skip_c2s = wire.HELLO.size + wire.AUTH.size + wire.WINDOW.size
            skip_s2c = wire.CHALLENGE.size + wire.REPLY.size + wire.WINDOW.size
            threading.Thread(target=self._pump, args=(client, server, "c2s", skip_c2s),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "s2c", skip_s2c),
                             daemon=True).start()

    def _take(self, direction: str) -> bool:
        with self._lock:
            b = self.budget[direction]
            if b == 0:
                return False
            if b > 0:
                self.budget[direction] = b - 1
            self.flipped[direction] += 1
            return True

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, skip: int) -> None:
        try:
            self._copy(src, dst, skip)
            while True:
                hdr = self._exact(src, wire.HEADER_LEN)
                dst.sendall(hdr)
                ptype, _, _, length, *_ = wire.HEADER.unpack(hdr)
                payload = bytearray(self._exact(src, length)) if length else bytearray()
                if (length >= self.min_len and ptype in wire.CARRIES_PAYLOAD
                        and self._take(direction)):
                    payload[length // 2] ^= 0xFF
                if payload:
                    dst.sendall(payload)
        except (OSError, EOFError):
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def _exact(s: socket.socket, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            got = s.recv(min(n - len(out), 1 << 20))
            if not got:
                raise EOFError
            out += got
        return bytes(out)

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket, n: int) -> None:
        """Forward n bytes as they come (the handshake goes back and forth)."""
        while n > 0:
            got = src.recv(n)
            if not got:
                raise EOFError
            dst.sendall(got)
            n -= len(got)
