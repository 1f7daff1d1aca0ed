"""fusereaders.ReaderLock, driven exactly as pyfuse3's workers drive their read lock
(`async with lock: await trio.lowlevel.wait_readable(fd)`, then handle the request), with a
socket standing in for /dev/fuse. No FUSE here: test_fs_readers.py has the real mount."""

from __future__ import annotations

import socket

import pytest
import trio

from mxfs import fusereaders


@pytest.fixture
def device():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


class Pool:
    """Workers of pyfuse3's kind: wait under the lock, read one request, handle it."""

    def __init__(self, fd: socket.socket, handle) -> None:  # noqa: ANN001
        self.lock = fusereaders.ReaderLock()
        self.shim = fusereaders._TrioForPyfuse3(self.lock)
        self.fd = fd
        self.handle = handle
        self.log: list[tuple[str, bytes]] = []
        self.runs: dict[str, int] = {}
        self.exited = False  # pyfuse3's fuse_session_exited()

    async def worker(self, name: str, requests: int) -> None:
        for _ in range(requests):
            self.runs[name] = self.runs.get(name, 0) + 1
            try:
                async with self.lock:
                    if self.exited:
                        return
                    await self.shim.lowlevel.wait_readable(self.fd)
            except trio.ClosedResourceError:
                return
            req = self.fd.recv(1)
            self.log.append((name, req))
            await self.handle(req)


async def _settle() -> None:
    for _ in range(20):
        await trio.lowlevel.checkpoint()


async def test_a_request_answered_without_yielding_keeps_the_reader(device) -> None:
    a, b = device

    async def answer(req: bytes) -> None:
        pass  # from memory: no await

    pool = Pool(a, answer)
    trio.lowlevel.add_instrument(fusereaders._Stepped(pool.lock))
    async with trio.open_nursery() as n:
        n.start_soon(pool.worker, "first", 6)  # (a worker that ends hands over)
        await _settle()
        n.start_soon(pool.worker, "spare", 1)
        await _settle()
        for i in range(5):
            b.send(bytes([i]))
            await _settle()
        assert [w for w, _ in pool.log] == ["first"] * 5
        assert pool.lock.handoffs == 0
        assert pool.runs["spare"] == 1  # parked all along: never woken
        n.cancel_scope.cancel()


async def test_a_handler_that_blocks_hands_the_device_to_the_spare(device) -> None:
    a, b = device
    release = trio.Event()

    async def blocking(req: bytes) -> None:
        if req == b"B":  # waits (as on the server) until the test lets it go
            await release.wait()

    pool = Pool(a, blocking)
    trio.lowlevel.add_instrument(fusereaders._Stepped(pool.lock))
    async with trio.open_nursery() as n:
        n.start_soon(pool.worker, "first", 1)
        await _settle()
        n.start_soon(pool.worker, "spare", 1)
        await _settle()
        b.send(b"B")
        await _settle()
        assert pool.lock.handoffs == 1
        b.send(b"x")  # read while the first is still blocked
        await _settle()
        assert pool.log == [("first", b"B"), ("spare", b"x")]
        release.set()


async def test_a_worker_that_ends_after_reading_hands_over(device) -> None:
    a, b = device

    async def answer(req: bytes) -> None:
        pass

    pool = Pool(a, answer)
    trio.lowlevel.add_instrument(fusereaders._Stepped(pool.lock))
    async with trio.open_nursery() as n:
        n.start_soon(pool.worker, "once", 1)  # reads one request, then its task ends
        await _settle()
        n.start_soon(pool.worker, "spare", 1)
        await _settle()
        b.send(b"1")
        await _settle()
        b.send(b"2")
        await _settle()
        assert pool.log == [("once", b"1"), ("spare", b"2")]
        assert pool.lock.handoffs == 1


async def test_the_end_of_the_session_reaches_every_worker(device) -> None:
    """notify_closing wakes the reader with ClosedResourceError; that release (not after a
    readable device) hands over at once, so each parked worker sees the end too."""
    a, _ = device

    async def answer(req: bytes) -> None:
        pass

    pool = Pool(a, answer)
    trio.lowlevel.add_instrument(fusereaders._Stepped(pool.lock))
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            for name in ("w1", "w2", "w3"):
                n.start_soon(pool.worker, name, 1)
            await _settle()
            pool.exited = True
            trio.lowlevel.notify_closing(a)
    assert pool.log == []


async def test_release_by_a_task_that_does_not_own_it_is_refused() -> None:
    lock = fusereaders.ReaderLock()
    async with trio.open_nursery() as n:
        await lock.acquire()

        async def other() -> None:
            with pytest.raises(RuntimeError):
                lock.release()
        n.start_soon(other)
    lock.release()


async def test_quick_lock_taken_free_does_not_yield_and_waiters_all_get_it() -> None:
    lock = fusereaders.QuickLock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with trio.open_nursery() as n:
        n.start_soon(other)
        async with lock:  # free: no schedule point, so `other` has not run yet
            assert ran == [] and lock.locked()
        order: list[int] = []

        async def taker(i: int) -> None:
            async with lock:
                order.append(i)
                await trio.sleep(0)

        async with lock:
            for i in range(3):
                n.start_soon(taker, i)
            await _settle()  # all three wait
            assert order == []
        await _settle()
        assert sorted(order) == [0, 1, 2] and not lock.locked()
