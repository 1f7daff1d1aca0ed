"""Callbacks: the promise table alone, then two clients of one server over loopback mxnet."""

from __future__ import annotations

import contextlib
import errno
import os

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import mxnet
from fsproto.rpc import (
    BREAK_ALL,
    BREAK_ATTR,
    BREAK_DATA,
    BREAK_NAMES,
    KIND_SHIFT,
    Kind,
    Op,
    make_match,
)
from mxfs.rpc import RpcError, open_client
from server.callbacks import Callbacks
from server.confine import Export
from server.exports import ExportOptions
from server.handles import HandleTable
from server.ops import FileServer
from server.service import Service

KEY = b"callbacks-test-key"


# -- the table ---------------------------------------------------------------------------------
def test_a_change_breaks_other_holders_only():
    cb = Callbacks()
    cb.grant("a", (1, 10))
    cb.grant("b", (1, 10))
    cb.changed("a", (1, 10), BREAK_ATTR)
    breaks, evictions = cb.take()
    assert breaks == {"b": [[1, 10, BREAK_ATTR, None]]} and evictions == {}
    assert cb.holds("a", (1, 10)) and not cb.holds("b", (1, 10))
    cb.changed("a", (1, 10), BREAK_ATTR)  # b holds nothing now: owed nothing more
    assert not cb.pending()


def test_breaks_merge_flags_and_names_per_key():
    cb = Callbacks()
    cb.grant("b", (1, 2))
    cb.changed("a", (1, 2), BREAK_ATTR, [b"x"])
    assert cb.take()[0] == {"b": [[1, 2, BREAK_ATTR | BREAK_NAMES, [b"x"]]]}


def test_eviction_keeps_each_client_within_its_bound():
    cb = Callbacks(per_client=3)
    for i in range(5):
        cb.grant("a", (1, i))
    assert len(cb) == 3 and cb.evicted == 2
    breaks, evictions = cb.take()
    assert breaks == {} and evictions == {"a": [[1, 0, BREAK_ALL, None], [1, 1, BREAK_ALL, None]]}
    cb.grant("a", (1, 2))  # touching one keeps it: the next eviction takes the oldest other
    cb.grant("a", (1, 9))
    assert cb.holds("a", (1, 2)) and not cb.holds("a", (1, 3))


def test_a_client_gone_holds_nothing():
    cb = Callbacks()
    cb.grant("b", (1, 1))
    cb.changed("a", (1, 1), BREAK_DATA)
    assert cb.drop("b") == 0 and not cb.pending()  # (what it was owed goes too)
    cb.grant("b", (1, 1))
    assert cb.drop("b") == 1 and len(cb) == 0


@given(st.lists(st.tuples(st.sampled_from("grant change drop".split()),
                          st.sampled_from("abc"), st.integers(0, 3)), max_size=60))
def test_table_matches_a_model(steps):
    """Whatever happens, a client is owed a break for a key exactly when it held a promise on
    it that another client's change broke, and it holds a promise only if nothing broke it."""
    cb = Callbacks(per_client=1000)
    held: set[tuple[str, int]] = set()
    owed: dict[str, set[int]] = {}
    for action, who, k in steps:
        if action == "grant":
            cb.grant(who, (0, k))
            held.add((who, k))
        elif action == "change":
            cb.changed(who, (0, k), BREAK_ATTR)
            for other in "abc":
                if other != who and (other, k) in held:
                    held.discard((other, k))
                    owed.setdefault(other, set()).add(k)
        else:
            cb.drop(who)
            held = {h for h in held if h[0] != who}
            owed.pop(who, None)
        for c in "abc":
            for key in range(4):
                assert cb.holds(c, (0, key)) == ((c, key) in held)
    breaks, _ = cb.take()
    assert {o: {e[1] for e in es} for o, es in breaks.items()} == {o: s for o, s in owed.items() if s}


# -- two clients of one server -----------------------------------------------------------------
@pytest.fixture(params=["mx", "gm"])
def transport(request):
    return request.param


async def _endpoint(transport, task_status=trio.TASK_STATUS_IGNORED):
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport=transport) as ep:
        task_status.started(ep)
        await trio.sleep_forever()


async def _serve(nursery, export_dir, transport, **kw):
    fs = FileServer(Export(export_dir), HandleTable(), ExportOptions(squash="none"))
    ep = await nursery.start(_endpoint, transport)
    svc = Service(ep, fs, **kw)
    nursery.start_soon(svc.run)
    return ep, svc


class Recorder:
    """A client's break handler that logs what came and acknowledges it (or not)."""

    def __init__(self, rpc, log: list, *, ack: bool = True) -> None:
        self.rpc, self.log, self.ack = rpc, log, ack
        self.entries: list = []
        rpc.on_break = self.on_break

    def on_break(self, seq, entries):
        self.entries += entries or []
        self.log.append("break")
        if self.ack:
            self.log.append("ack")
            self.rpc.ack_break(seq)


@contextlib.asynccontextmanager
async def two_clients(tmp_path, transport, **kw):
    """A server on tmp_path and two RPC clients of it: (service, a, b)."""
    async with trio.open_nursery() as nursery:
        ep, svc = await _serve(nursery, tmp_path, transport, **kw)
        port = ep.address[1]
        async with open_client("127.0.0.1", port, key=KEY, transport=transport, timeout=5) as a, \
                open_client("127.0.0.1", port, key=KEY, transport=transport, timeout=5) as b:
            yield svc, a, b
        nursery.cancel_scope.cancel()


def _key(tmp_path, name):
    s = os.lstat(tmp_path / name) if name else os.stat(tmp_path)
    return (s.st_dev, s.st_ino)


async def test_a_change_waits_until_the_holder_acknowledged(tmp_path, transport):
    (tmp_path / "f").write_bytes(b"x")
    log: list[str] = []
    async with two_clients(tmp_path, transport) as (svc, a, b):
        assert a.callbacks and b.callbacks
        rb = Recorder(b, log)
        ra = Recorder(a, log)
        await b.call(Op.GETATTR, b"f")  # b caches f's attributes: a promise
        await a.call(Op.GETATTR, b"f")
        await a.call(Op.SETATTR, b"f", None, 0o600, None, None, None, None, None)
        log.append("reply")
        assert log == ["break", "ack", "reply"]  # b heard of it before a's chmod returned
        assert rb.entries == [(_key(tmp_path, "f"), BREAK_ATTR, [])]
        assert ra.entries == []  # the changer keeps its own promise
        # b's promise is gone: a second change owes b nothing
        await a.call(Op.SETATTR, b"f", None, 0o644, None, None, None, None, None)
        assert log == ["break", "ack", "reply"]
        assert svc.statistics()["breaks_waited"] == 1


async def test_names_data_and_negative_lookups_are_promised(tmp_path, transport):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old").write_bytes(b"1")
    log: list[str] = []
    async with two_clients(tmp_path, transport) as (svc, a, b):
        rb = Recorder(b, log)
        d = _key(tmp_path, "d")
        with pytest.raises(RpcError) as e:  # b learns "new" does not exist
            await b.call(Op.LOOKUP, b"d/new")
        assert e.value.errno == errno.ENOENT
        hid, *_ = await a.call(Op.CREATE, b"d/new", os.O_RDWR, 0o644)
        assert rb.entries == [(d, BREAK_ATTR | BREAK_NAMES, [b"new"])]
        rb.entries.clear()
        await b.call(Op.LOOKUP, b"d/new")  # promises on d and on new
        await a.write(hid, 0, b"data", epoch=a.epoch)
        new = _key(tmp_path, "d/new")
        assert rb.entries == [(new, BREAK_ATTR | BREAK_DATA, [])]
        rb.entries.clear()
        await b.call(Op.LOOKUP, b"d/old")
        old = _key(tmp_path, "d/old")
        await a.call(Op.RENAME, b"d/old", b"d/new", 0)  # old replaces new
        got = {k: (f, n) for k, f, n in rb.entries}
        assert got[d] == (BREAK_ATTR | BREAK_NAMES, [b"new", b"old"])
        assert got[old] == (BREAK_ATTR, [])  # its ctime
        rb.entries.clear()
        await b.call(Op.LOOKUP, b"d/new")
        await a.call(Op.UNLINK, b"d/new")
        got = {k: (f, n) for k, f, n in rb.entries}
        assert got[d] == (BREAK_ATTR | BREAK_NAMES, [b"new"]) and old in got


async def test_a_holder_that_never_answers_is_cut_off(tmp_path, transport):
    (tmp_path / "f").write_bytes(b"x")
    log: list[str] = []
    async with two_clients(tmp_path, transport, break_timeout=0.5) as (svc, a, b):
        Recorder(b, log, ack=False)
        lost = []
        b.on_reset = lambda: lost.append(b.peer is None)
        await b.call(Op.GETATTR, b"f")
        await a.call(Op.SETATTR, b"f", None, 0o600, None, None, None, None, None)
        assert log == ["break"]  # a's change went through all the same
        assert svc.statistics()["breaks_unanswered"] == 1
        with trio.fail_after(5):
            while not lost:
                await trio.sleep(0.01)
        assert lost[0] is True  # b learned its connection (and its promises) ended
        # a's next change waits for nobody
        await a.call(Op.SETATTR, b"f", None, 0o644, None, None, None, None, None)
        assert svc.statistics()["callbacks"]["clients"] == 1


async def test_a_client_that_left_is_owed_nothing(tmp_path, transport):
    (tmp_path / "f").write_bytes(b"x")
    async with trio.open_nursery() as nursery:
        ep, svc = await _serve(nursery, tmp_path, transport)
        port = ep.address[1]
        async with open_client("127.0.0.1", port, key=KEY, transport=transport, timeout=5) as a:
            async with open_client("127.0.0.1", port, key=KEY, transport=transport,
                                   timeout=5) as b:
                await b.call(Op.GETATTR, b"f")
            with trio.fail_after(5):
                while svc.statistics()["callbacks"]["clients"] > 0:
                    await trio.sleep(0.01)
            await a.call(Op.SETATTR, b"f", None, 0o600, None, None, None, None, None)
            assert svc.statistics()["breaks_sent"] == 0
        nursery.cancel_scope.cancel()


async def test_stray_acknowledgements_and_unknown_kinds_are_dropped(tmp_path, transport):
    """A confused client's BREAK_ACK nobody waits for, or a message of no known kind, must
    not sit in the server's queue for ever (nor stop it serving that client)."""
    async with trio.open_nursery() as nursery:
        ep, svc = await _serve(nursery, tmp_path, transport)
        async with open_client("127.0.0.1", ep.address[1], key=KEY, transport=transport,
                               timeout=5) as a:
            a.ep.isend(a.peer, [mxnet.user(b"")], make_match(Kind.BREAK_ACK, 12345))
            a.ep.isend(a.peer, [mxnet.user(b"junk")], (0x7F << KIND_SHIFT) | 1)
            with trio.fail_after(5):
                while svc.statistics()["dropped"] < 2:
                    await a.call(Op.PING)
            assert (await a.call(Op.PING))["version"] > 0
            assert svc.ep.statistics().as_dict()["unexpected_now"] == 0
        nursery.cancel_scope.cancel()
