"""Connection set-up and liveness: HMAC handshake, transport checks, keepalive."""

from __future__ import annotations

import socket

import pytest
import trio
from mx_helpers import KEY, endpoint_pair, raw_client, send_all, until

import mxnet
from mxnet import Config, StatusCode, wire

T = 30


async def ping_pong(server, client, c2s):
    buf = bytearray(4)
    rx = server.irecv(buf, 0x99)
    client.isend(c2s, b"ping", 0x99)
    with trio.fail_after(T):
        assert (await rx.wait()).ok
    assert buf == b"ping"


@pytest.mark.parametrize("transport", ["mx", "gm"])
async def test_wrong_key(transport):
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as server:
        async with mxnet.open_endpoint("127.0.0.1", 0, key=b"not-the-key",
                                       transport=transport) as bad:
            with pytest.raises(mxnet.ConnectError, match="key"):
                await bad.connect(*server.address)
            assert not bad.peers
        await until(lambda: server.statistics().handshake_failures == 1, T)
        assert not server.peers
        # the server keeps working
        async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as good:
            peer = await good.connect(*server.address)
            await ping_pong(server, good, peer)
        assert server.statistics().handshake_failures == 1


async def test_transport_mismatch():
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport="mx") as server:
        async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport="gm") as client:
            with pytest.raises(mxnet.ConnectError, match="transport"):
                await client.connect(*server.address)
        await until(lambda: server.statistics().handshake_failures == 1, T)
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport="gm") as server:
        async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport="mx") as client:
            with pytest.raises(mxnet.ConnectError, match="transport"):
                await client.connect(*server.address)


async def test_raw_client_with_wrong_key_is_refused():
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY) as server:
        with pytest.raises(mxnet.ConnectError):
            await raw_client(server, key=b"other")
        await until(lambda: server.statistics().handshake_failures == 1, T)


@pytest.mark.parametrize("junk", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not mxnet at all
    wire.HELLO.pack(wire.MAGIC, wire.VERSION + 1, 1, bytes(16)),  # future wire version
    wire.HELLO.pack(wire.MAGIC, wire.VERSION, 77, bytes(16)),  # unknown transport id
])
async def test_bad_hello(junk):
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY) as server:
        with socket.create_connection(server.address[:2]) as s:
            s.setblocking(False)
            await send_all(s, junk)
            await until(lambda: server.statistics().handshake_failures == 1, T)
        assert not server.peers
        async with endpoint_pair() as pair:
            await ping_pong(pair.server, pair.client, pair.c2s)


async def test_handshake_timeout():
    cfg = Config(handshake_timeout=0.2)
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, config=cfg) as server:
        with socket.create_connection(server.address[:2]):  # connects, says nothing
            await until(lambda: server.statistics().handshake_failures == 1, T)
        assert not server.peers


@pytest.mark.parametrize(("challenge", "reason"), [
    (wire.CHALLENGE.pack(wire.MAGIC, wire.VERSION + 1, 1, bytes(16), bytes(32)), "version"),
    (wire.CHALLENGE.pack(b"HTTP", wire.VERSION, 1, bytes(16), bytes(32)), "magic"),
    (wire.CHALLENGE.pack(wire.MAGIC, wire.VERSION, 1, bytes(16), bytes(32)), "key"),
    (wire.REPLY.pack(b"NOPE", 2), "version"),
])
async def test_client_checks_the_server(challenge, reason):
    """A fake server answering the HELLO badly: the client refuses with a reason."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.setblocking(False)

    async def fake_server():
        await trio.lowlevel.wait_readable(lsock)
        s, _ = lsock.accept()
        with s:
            s.setblocking(False)
            got = b""
            while len(got) < wire.HELLO.size:
                await trio.lowlevel.wait_readable(s)
                got += s.recv(64)
            await send_all(s, challenge)
            await trio.lowlevel.wait_readable(s)  # the client's REJECT, or its close

    try:
        async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, listen=False) as ep:
            async with trio.open_nursery() as n:
                n.start_soon(fake_server)
                with pytest.raises(mxnet.ConnectError, match=reason):
                    await ep.connect(*lsock.getsockname())
    finally:
        lsock.close()


async def test_connect_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, listen=False) as ep:
        with pytest.raises(mxnet.ConnectError):
            await ep.connect("127.0.0.1", port)


def test_bad_endpoint_arguments():
    with pytest.raises(ValueError):
        mxnet.Endpoint(None, KEY, "tcp", Config())
    with pytest.raises(ValueError):
        mxnet.Endpoint(None, b"", "mx", Config())


@pytest.mark.parametrize("transport", ["mx", "gm"])
async def test_silent_peer_is_dropped(transport):
    """A peer that completes the handshake then goes quiet (no PONGs) is declared lost;
    a well-behaved idle peer on the same endpoint is not."""
    cfg = Config(keepalive=0.2, peer_timeout=0.6)
    async with endpoint_pair(transport, cfg) as pair:
        lost = []
        pair.server.on_peer_lost(lost.append)
        sock, silent = await raw_client(pair.server, transport)
        try:
            rx = pair.server.irecv(bytearray(1), 1, peer=silent)
            with trio.fail_after(T):
                assert (await rx.wait()).code is StatusCode.PEER_LOST
            assert lost == [silent] and "silent" in silent.lost_reason
            # the raw socket got PINGs while it was alive
            data = sock.recv(1 << 16)
            assert data[:1] == bytes([wire.PacketType.PING])
        finally:
            sock.close()
        assert not pair.s2c.lost and not pair.c2s.lost
        await ping_pong(pair.server, pair.client, pair.c2s)


async def test_raw_peer_answering_pings_stays():
    cfg = Config(keepalive=0.05, peer_timeout=0.3)
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, config=cfg) as server:
        sock, peer = await raw_client(server)
        try:
            hbuf = bytearray(wire.HEADER_LEN)
            pongs = 0
            with trio.fail_after(T):
                while pongs < 8:  # about 0.4 s: past peer_timeout
                    await trio.lowlevel.wait_readable(sock)
                    n = sock.recv_into(hbuf)
                    assert n == wire.HEADER_LEN  # TCP_NODELAY, tiny frames: whole headers
                    assert wire.unpack_header(hbuf).type is wire.PacketType.PING
                    await send_all(sock, wire.Control(wire.PacketType.PONG).pack())
                    pongs += 1
            assert not peer.lost
        finally:
            sock.close()


async def test_a_port_probe_is_not_a_warning(caplog):
    """A readiness check connects and closes without a byte (docker's entrypoint does): it is
    counted, logged at debug, never a WARNING; a client that says something wrong still is."""
    import logging
    import socket

    caplog.set_level(logging.DEBUG, logger="mxnet")
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY) as server:
        socket.create_connection(server.address[:2]).close()
        await until(lambda: server.statistics().handshake_failures == 1, T)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        s = socket.create_connection(server.address[:2])
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
        await until(lambda: server.statistics().handshake_failures == 2, T)
        s.close()
        assert [r for r in caplog.records if r.levelno == logging.WARNING]
