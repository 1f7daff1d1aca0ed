"""The handshake's decisions without sockets (mxnet/handshake_rules.py): both sides driven
against each other in memory; every refusal says why, to the right side."""

from __future__ import annotations

import pytest

from mxnet import wire
from mxnet.errors import ConnectError
from mxnet.handshake_rules import ClientHandshake, ServerHandshake, Step


def run(client: ClientHandshake, server: ServerHandshake
        ) -> tuple[Step, Step, list[tuple[str, bytes]]]:
    """Pass bytes between the two until one finishes or fails; returns each side's last
    step and the messages in order ("c"/"s", bytes)."""
    wire_log: list[tuple[str, bytes]] = []
    pending = {"c": b"", "s": b""}  # bytes sent by that side, not yet read by the other
    steps = {"c": client.start(), "s": server.start()}
    sides = {"c": client, "s": server}
    for name, step in steps.items():
        pending[name] += step.send
        if step.send:
            wire_log.append((name, step.send))
    while True:
        moved = False
        for name, other in (("c", "s"), ("s", "c")):
            me = sides[name]
            last = steps[name]
            if last.error is not None or last.window is not None:
                continue
            if me.want and len(pending[other]) >= me.want:
                data, pending[other] = pending[other][:me.want], pending[other][me.want:]
                step = steps[name] = me.feed(data)
                if step.send:
                    pending[name] += step.send
                    wire_log.append((name, step.send))
                moved = True
        if not moved:
            return steps["c"], steps["s"], wire_log


def test_both_sides_agree_and_learn_each_others_window():
    key = b"a shared secret long enough not to turn up in random bytes"
    c, s, log = run(ClientHandshake(key, "mx", (10, 1000)), ServerHandshake(key, "mx", (20, 2000)))
    assert c.window == (20, 2000) and s.window == (10, 1000)
    assert c.error is None and s.error is None
    assert [who for who, _ in log] == ["c", "s", "c", "s"]  # HELLO, CHALLENGE, AUTH, OKAY
    assert key not in b"".join(data for _, data in log)  # the key never crosses the wire


def test_wrong_key_is_refused_by_the_client_first():
    c, s, log = run(ClientHandshake(b"k1", "mx"), ServerHandshake(b"k2", "mx"))
    assert isinstance(c.error, ConnectError) and "wrong key" in str(c.error)
    assert c.send == wire.REPLY.pack(b"NOPE", 1)
    assert isinstance(s.error, ConnectError) and "client refused" in str(s.error)
    assert "wrong key" in str(s.error)


def test_transport_mismatch_refused_by_the_server():
    c, s, _ = run(ClientHandshake(b"k", "gm"), ServerHandshake(b"k", "mx"))
    assert "transport mismatch" in str(s.error) and s.send == wire.REPLY.pack(b"NOPE", 3)
    assert "server refused" in str(c.error) and "transport mismatch" in str(c.error)


@pytest.mark.parametrize("hello, reason, text", [
    (wire.HELLO.pack(b"XXXX", wire.VERSION, 1, bytes(16)), 4, "bad magic"),
    (wire.HELLO.pack(wire.MAGIC, wire.VERSION + 1, 1, bytes(16)), 2, "version mismatch"),
])
def test_server_refuses_a_bad_hello(hello, reason, text):
    s = ServerHandshake(b"k", "mx")
    s.start()
    step = s.feed(hello)
    assert step.send == wire.REPLY.pack(b"NOPE", reason) and text in str(step.error)


def test_a_malformed_window_is_refused():
    c = ClientHandshake(b"k", "mx", nonce=bytes(16))
    s = ServerHandshake(b"k", "mx", nonce=bytes(range(16)))
    hello = c.start().send
    s.start()
    challenge = s.feed(hello).send
    c.feed(challenge[:4])
    auth = c.feed(challenge[4:]).send
    s.feed(auth[:4])
    assert s.feed(auth[4:wire.AUTH.size]) == Step()
    step = s.feed(wire.WINDOW.pack(b"WNDW", 0, 100))  # no messages allowed: malformed
    assert step.send == wire.REPLY.pack(b"NOPE", 4) and "credit window" in str(step.error)
    step = c.feed(step.send[:wire.REPLY.size])
    assert "server refused" in str(step.error) and "malformed" in str(step.error)
