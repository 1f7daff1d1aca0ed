"""Copy accounting: mx moves user and file segments without a payload copy in Python; gm pays
its bounce copies and registrations, and says so."""

from __future__ import annotations

import os

import pytest
import trio
from mx_helpers import endpoint_pair, rbytes, until

import mxnet
from mxnet import MASK_ALL

T = 30
SIZES = [0, 1, 32, 33, 128, 129, 32768, 32769, 1 << 20, 3 << 20]


def copied(pair):
    return (pair.server.statistics().payload_bytes_copied,
            pair.client.statistics().payload_bytes_copied)


async def transfer(pair, send_segs, recv_segs, match):
    rx = pair.server.irecv(recv_segs, match)  # posted before the send
    tx = pair.client.isend(pair.c2s, send_segs, match)
    with trio.fail_after(T):
        rs = await rx.wait()
        ts = await tx.wait()
    assert rs.ok and ts.ok
    return rs


async def test_mx_user_segments_zero_copy():
    async with endpoint_pair("mx") as pair:
        for i, n in enumerate(SIZES):
            data = rbytes(n)
            buf = bytearray(n)
            await transfer(pair, data, buf, i)
            assert buf == data
            # a vector of pages and user pieces
            pages = [bytearray(4096) for _ in range(2)]
            tail = bytearray(max(0, n - 8192))
            await transfer(pair, [data[: n // 2], data[n // 2 :]],
                           [mxnet.pages(pages), mxnet.user(tail)], 100 + i)
            assert (b"".join(pages) + tail)[:n] == data
        assert copied(pair) == (0, 0)
        s = pair.server.statistics()
        assert s.payload_bytes_delivered == 2 * sum(SIZES)
        assert s.copies_per_byte == 0.0


async def test_mx_file_to_file_zero_copy(tmp_path):
    sizes = [1, 129, 32769, 1 << 20, 3 << 20]
    data = rbytes(sum(sizes))
    (tmp_path / "src").write_bytes(data)
    sfd = os.open(tmp_path / "src", os.O_RDONLY)
    dfd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        async with endpoint_pair("mx") as pair:
            off = 0
            for i, n in enumerate(sizes):
                await transfer(pair, [mxnet.file(sfd, off, n)], [mxnet.file(dfd, off, n)], i)
                off += n
            assert copied(pair) == (0, 0)
            assert pair.client.statistics().sendfile_calls > 0
            assert pair.server.statistics().splice_calls > 0
        assert os.pread(dfd, len(data), 0) == data
    finally:
        os.close(sfd)
        os.close(dfd)


@pytest.mark.parametrize("n", [1, 32, 100, 32768])
async def test_mx_unexpected_eager_costs_one_copy(n):
    async with endpoint_pair("mx") as pair:
        data = rbytes(n)
        tx = pair.client.isend(pair.c2s, data, 5)
        await until(lambda: pair.server.iprobe(5, MASK_ALL) is not None, T)
        buf = bytearray(n)
        rx = pair.server.irecv(buf, 5)
        with trio.fail_after(T):
            assert (await rx.wait()).ok and (await tx.wait()).ok
        assert buf == data
        s = pair.server.statistics()
        assert s.payload_bytes_copied == n and s.payload_copies == 1
        assert pair.client.statistics().payload_bytes_copied == 0


async def test_mx_unexpected_rendezvous_costs_no_copy():
    async with endpoint_pair("mx") as pair:
        data = rbytes(200_000)
        tx = pair.client.isend(pair.c2s, data, 5)
        await until(lambda: pair.server.iprobe(5, MASK_ALL) is not None, T)
        buf = bytearray(200_000)
        rx = pair.server.irecv(buf, 5)
        with trio.fail_after(T):
            assert (await rx.wait()).ok and (await tx.wait()).ok
        assert buf == data and copied(pair) == (0, 0)


@pytest.mark.parametrize("n", [1, 4096, 100_000, 1 << 20])
async def test_gm_file_send_pays_two_copies(tmp_path, n):
    data = rbytes(n)
    (tmp_path / "src").write_bytes(data)
    fd = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        async with endpoint_pair("gm") as pair:
            buf = bytearray(n)
            await transfer(pair, [mxnet.file(fd, 0, n)], buf, 1)
            assert buf == data
            s, c = pair.server.statistics(), pair.client.statistics()
            assert s.payload_bytes_copied + c.payload_bytes_copied >= 2 * n
            assert c.payload_bytes_copied >= n and s.payload_bytes_copied >= n
            assert s.registrations > 0 and c.registrations > 0
            assert c.copies_per_byte > 0
    finally:
        os.close(fd)


async def test_gm_user_to_file(tmp_path):
    n = 50_000
    data = rbytes(n)
    fd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        async with endpoint_pair("gm") as pair:
            await transfer(pair, data, [mxnet.file(fd, 0, n)], 1)
            assert sum(copied(pair)) >= 2 * n
        assert os.pread(fd, n, 0) == data
    finally:
        os.close(fd)
