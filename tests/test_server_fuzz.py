"""A confused or hostile client that holds the key: requests with random operations and
arguments of every wrong type and size, and raw garbage where a request should be. Each one
gets an errno back (never a hang, never an "internal error"), nothing escapes the export,
and the server keeps serving."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import random

import msgpack
import pytest
import trio
from test_server_service import KEY, _serve

import mxnet
from fsproto.rpc import (
    READ_HDR,
    REPLY_SMALL,
    Kind,
    Op,
    decode_reply,
    encode_request,
    make_match,
)
from mxfs.rpc import RpcError, open_client
from mxnet import MASK_ALL


def _wild(rnd: random.Random, depth: int = 0) -> object:
    pick = rnd.randrange(12 if depth < 2 else 10)
    if pick == 0:
        return None
    if pick == 1:
        return rnd.choice([0, 1, -1, 2**31, -(2**31), 2**63 - 1, -(2**63), 2**64 - 1])
    if pick == 2:
        return rnd.randrange(-5, 70000)
    if pick == 3:
        return rnd.choice([b"", b".", b"..", b"../..", b"/etc/passwd", b"a\x00b", b"x" * 5000,
                           b"f", b"d", b"d/g", b"//", b"d/../../etc"])
    if pick == 4:
        return rnd.randbytes(rnd.randrange(0, 40))
    if pick == 5:
        return "text"
    if pick == 6:
        return rnd.random() * 1e6
    if pick == 7:
        return True
    if pick == 8:
        return rnd.choice([os.O_RDONLY, os.O_RDWR | os.O_CREAT, os.O_WRONLY | os.O_TRUNC,
                           0o777, 0o4755, -1])
    if pick == 9:
        return rnd.choice([0, 1, 2, 3, 4096, 1 << 40])
    if pick == 10:
        return [_wild(rnd, depth + 1) for _ in range(rnd.randrange(3))]
    return {"k": _wild(rnd, depth + 1)}


async def _raw_request(ep: mxnet.Endpoint, peer: mxnet.Peer, rid: int, payload: bytes) -> int:
    """Send ``payload`` as a REQ and return the errno of the reply."""
    buf = bytearray(REPLY_SMALL)
    rx = ep.irecv([buf], make_match(Kind.REPLY, rid), MASK_ALL, peer=peer)
    ep.isend(peer, [payload], make_match(Kind.REQ, rid))
    st = await rx.wait(timeout=5)
    assert st.ok, st
    err, _ = decode_reply(memoryview(buf)[: st.xfer_length])
    return err


async def _raw_read(ep: mxnet.Endpoint, peer: mxnet.Peer, rid: int, args: list) -> int:
    """A READ with arbitrary arguments; returns the errno of its RDATA answer."""
    hdr, data = bytearray(READ_HDR.size), bytearray(1 << 16)
    rx = ep.irecv([hdr, data], make_match(Kind.RDATA, rid), MASK_ALL, peer=peer)
    ep.isend(peer, [encode_request(Op.READ, *args)], make_match(Kind.REQ, rid))
    st = await rx.wait(timeout=5)
    assert st.code in (mxnet.StatusCode.SUCCESS, mxnet.StatusCode.TRUNCATED), st
    return READ_HDR.unpack(hdr)[0]


@pytest.mark.parametrize("transport", ["mx", "gm"])
async def test_hostile_requests_get_an_errno_and_the_server_keeps_serving(
        tmp_path, transport, caplog):
    export = tmp_path / "export"
    export.mkdir()
    (export / "f").write_bytes(b"content")
    (export / "d").mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    before = sorted(p.name for p in tmp_path.iterdir())
    rnd = random.Random(20261130)
    # READ answers with RDATA, not REPLY: it gets its own raw requests below
    # (and a WRITE whose data never follows waits data_timeout for it: malformed WRITEs are
    # sent on purpose below instead)
    ops = [int(o) for o in Op if o not in (Op.READ, Op.STATS, Op.WRITE)] + [0, 99, -3, 2**40]
    caplog.set_level(logging.WARNING, logger="mxfs.server")
    async with trio.open_nursery() as nursery:
        ep, svc = await _serve(nursery, export, transport)
        async with open_client("127.0.0.1", ep.address[1], key=KEY, transport=transport,
                               timeout=5) as rpc:
            errs = set()
            for _ in range(1500):
                op = rnd.choice(ops)
                args = [_wild(rnd) for _ in range(rnd.randrange(5))]
                with trio.fail_after(10):
                    try:
                        await rpc.call(op, *args)
                    except RpcError as e:
                        errs.add(e.errno)
            assert errno.EIO not in errs  # EIO would mean a transport or internal failure
            # raw garbage where a request should be: each still gets an errno
            rids = itertools.count(1 << 40)  # far above the client's own rids
            for junk in [b"", b"\x01", b"\xff\xff\xff\xff", b"\x05\x00\x00\x00\x91",
                         (3).to_bytes(4, "little") + b"\xc1\xc1\xc1",
                         (2).to_bytes(4, "little") + msgpack.packb("x"),
                         (1).to_bytes(4, "little") + msgpack.packb([]),
                         rnd.randbytes(300)]:
                with trio.fail_after(10):
                    err = await _raw_request(rpc.ep, rpc.peer, next(rids), junk)
                assert err in (errno.EPROTO, errno.EINVAL, errno.ENOSYS), (junk, err)
            bad = 10**9  # no such handle: a WRITE that passes the checks fails with EBADF
            for args, inline in [((), b""), ((bad,), b""), ((bad, 0, 5, 9), b""),
                                 ((b"f", 0, 3), b"abc"), ((bad, -1, 3), b"abc"),
                                 ((bad, 0, 3), b"abcdef"), ((bad, 0, 2**63 - 1), b""),
                                 ((bad, 0, -3), b"")]:
                with trio.fail_after(10):
                    err = await _raw_request(rpc.ep, rpc.peer, next(rids),
                                             encode_request(Op.WRITE, *args) + inline)
                assert err in (errno.EINVAL, errno.EPROTO, errno.EBADF), (args, err)
            hid, *_ = await rpc.call(Op.CREATE, b"w", os.O_RDWR, 0o644)  # a real handle:
            for args in [(hid, "x", 3), (hid, -1, 3), (hid, 0.5, 3)]:  # inline, bad offsets
                with trio.fail_after(10):
                    err = await _raw_request(rpc.ep, rpc.peer, next(rids),
                                             encode_request(Op.WRITE, *args) + b"abc")
                assert err == errno.EINVAL, (args, err)
            for _ in range(200):
                args = [_wild(rnd) for _ in range(rnd.randrange(5))]
                with trio.fail_after(10):
                    err = await _raw_read(rpc.ep, rpc.peer, next(rids), args)
                assert err != errno.EIO, args
            # still serving, and nothing outside the export was touched
            assert await rpc.call(Op.PING)
            assert (await rpc.call(Op.GETATTR, b""))[2] & 0o170000 == 0o040000
            assert outside.read_bytes() == b"secret"
            assert sorted(p.name for p in tmp_path.iterdir()) == before
        nursery.cancel_scope.cancel()
    internal = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert not internal, internal[0].getMessage()
