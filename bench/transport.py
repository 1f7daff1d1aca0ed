"""mxnet benchmark: ping-pong latency and one-way bandwidth for mx, gm and raw sockets.

    python -m bench.transport [--rounds 5] [--max-size 16M] [--out bench/results/mxnet]

It lives in bench/ with the rest of `make bench` (bench/run.py runs it, bench/NOTEBOOK.md reads
its figures), not in mxnet/: the transport library ships no benchmark. The Docker image
carries this file alone (docker/entrypoint.sh, role `bench mxnet`).

A server process (the same module with --serve) hosts a raw TCP echo/sink, an mx endpoint
and a gm endpoint; this process is the client. Every size is measured for every transport
in each round, transports interleaved, so they see the same machine state; the report gives
the median over rounds and the spread (min–max). Latency is half the ping-pong round trip,
as in the paper's figures; bandwidth is one-way streaming with 8 messages in flight.
mx's ping-pong runs twice: a task waiting for each reply (``mx``), and driven by completion
callbacks (``mx cb``: the reply's callback sends the next ping, no task wakes per message).
Writes a markdown table, JSON lines and a PNG (latency and bandwidth vs size, log axes).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

import mxnet
from mxnet.sockio import recv_exact_into

KEY = b"mxnet-bench"
CTRL, DATA, BACK = 1 << 60, 2 << 60, 3 << 60
CMD = struct.Struct("<QQQ")  # mode, size, count
PING, STREAM, QUIT = 1, 2, 3
WINDOW = 8
TRANSPORTS = ("raw", "mx", "gm")


def parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B")
    return int(float(t[:-1]) * mult[t[-1]]) if t and t[-1] in mult else int(t)


def default_sizes(max_size: int) -> list[int]:
    sizes, n = [], 8
    while n <= max_size:
        sizes.append(n)
        n *= 4 if n < 1024 else 2
    for extra in (32 << 10, (32 << 10) + 1):
        if extra <= max_size and extra not in sizes:
            sizes.append(extra)
    return sorted(sizes)


def pingpong_iters(size: int) -> int:
    return max(20, min(2000, (64 << 20) // max(size, 1)))


def stream_count(size: int) -> int:
    return max(16, min(20000, (512 << 20) // max(size, 1)))


# -- server side -----------------------------------------------------------------------------
async def _mx_server(ep: mxnet.Endpoint) -> None:
    cbuf = bytearray(CMD.size)
    while True:
        st = await ep.irecv([cbuf], CTRL, mxnet.MASK_ALL).wait()
        mode, size, count = CMD.unpack(cbuf)
        peer = st.source
        if mode == QUIT:
            return
        if mode == PING:
            await _echo(ep, peer, size, count)
        elif mode == STREAM:
            await _sink(ep, peer, size, count)


# The echo and the sink answer from completion callbacks (MX's in-kernel style), so like the
# raw server's loop they take one wake-up per message, not two (reader task, then this task).
async def _echo(ep: mxnet.Endpoint, peer: mxnet.Peer, size: int, count: int) -> None:
    buf = _touched(size)
    left = count
    finished = trio.Event()

    def echo(_: Any) -> None:
        nonlocal left
        left -= 1
        if left:
            ep.irecv([buf], DATA, mxnet.MASK_ALL, peer=peer).add_done_callback(echo)
        ep.isend(peer, [buf], BACK)
        if not left:
            finished.set()

    ep.irecv([buf], DATA, mxnet.MASK_ALL, peer=peer).add_done_callback(echo)
    await finished.wait()


async def _sink(ep: mxnet.Endpoint, peer: mxnet.Peer, size: int, count: int) -> None:
    await ep.isend(peer, [b"redy"], BACK).wait()
    posted = done = 0
    finished = trio.Event()

    def post(buf: bytearray) -> None:
        nonlocal posted
        posted += 1
        ep.irecv([buf], DATA, mxnet.MASK_ALL, peer=peer).add_done_callback(lambda _: sink(buf))

    def sink(buf: bytearray) -> None:
        nonlocal done
        done += 1
        if posted < count:
            post(buf)  # the buffer is free again: the next message lands in it
        if done == count:
            finished.set()

    for b in [_touched(size) for _ in range(min(WINDOW, count))]:
        post(b)
    await finished.wait()
    await ep.isend(peer, [b"done"], BACK).wait()


def _touched(size: int) -> bytearray:
    """A buffer whose pages are already faulted in, so no transport pays for page faults."""
    buf = bytearray(size)
    buf[::4096] = bytes(len(range(0, size, 4096)))
    return buf


async def _send_all(sock: socket.socket, view: memoryview) -> None:
    while view.nbytes:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


async def _raw_conn(sock: socket.socket) -> None:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cbuf = bytearray(CMD.size)
    while True:
        try:
            await recv_exact_into(sock, memoryview(cbuf))
        except Exception:
            return
        mode, size, count = CMD.unpack(cbuf)
        if mode == QUIT:
            return
        bufs = [memoryview(_touched(size)) for _ in range(WINDOW if mode == STREAM else 1)]
        buf = bufs[0]
        if mode == PING:
            for _ in range(count):
                await recv_exact_into(sock, buf)
                await _send_all(sock, buf)
        else:
            await _send_all(sock, memoryview(b"redy"))
            for i in range(count):
                await recv_exact_into(sock, bufs[i % WINDOW])
            await _send_all(sock, memoryview(b"done"))


async def _raw_server(lsock: socket.socket) -> None:
    async with trio.open_nursery() as n:
        while True:
            try:
                s, _ = lsock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(lsock)
                continue
            n.start_soon(_raw_conn, s)


async def serve(ready_fd: int) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.setblocking(False)
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport="mx") as mx, \
            mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport="gm") as gm:
        ports = {"raw": lsock.getsockname()[1], "mx": mx.address[1], "gm": gm.address[1]}
        os.write(ready_fd, json.dumps(ports).encode() + b"\n")
        os.close(ready_fd)
        async with trio.open_nursery() as n:
            n.start_soon(_raw_server, lsock)
            n.start_soon(_mx_server, gm)
            await _mx_server(mx)
            n.cancel_scope.cancel()


# -- client side -----------------------------------------------------------------------------
class MxClient:
    def __init__(self, ep: mxnet.Endpoint, peer: mxnet.Peer) -> None:
        self.ep, self.peer = ep, peer

    async def pingpong(self, size: int, iters: int) -> float:
        ep, peer = self.ep, self.peer
        ep.isend(peer, [CMD.pack(PING, size, iters)], CTRL)
        sbuf, rbuf = _touched(size), _touched(size)
        t0 = time.perf_counter()
        for _ in range(iters):
            r = ep.irecv([rbuf], BACK, mxnet.MASK_ALL, peer=peer)
            ep.isend(peer, [sbuf], DATA)
            await r.wait()
        return (time.perf_counter() - t0) / iters

    async def pingpong_callbacks(self, size: int, iters: int) -> float:
        """The same ping-pong driven by completion callbacks: the reply's callback sends the
        next ping from inside the reader, so no task waits per message (the echo server's
        style, and the mxfs server's). Shows what the reader->waiter hand-off costs."""
        ep, peer = self.ep, self.peer
        ep.isend(peer, [CMD.pack(PING, size, iters)], CTRL)
        sbuf, rbuf = _touched(size), _touched(size)
        left = iters
        finished = trio.Event()

        def ping() -> None:
            ep.irecv([rbuf], BACK, mxnet.MASK_ALL, peer=peer).add_done_callback(pong)
            ep.isend(peer, [sbuf], DATA)

        def pong(_: Any) -> None:
            nonlocal left
            left -= 1
            if left:
                ping()
            else:
                finished.set()

        t0 = time.perf_counter()
        ping()
        await finished.wait()
        return (time.perf_counter() - t0) / iters

    async def stream(self, size: int, count: int) -> float:
        ep, peer = self.ep, self.peer
        ready = ep.irecv([bytearray(4)], BACK, mxnet.MASK_ALL, peer=peer)
        await ep.isend(peer, [CMD.pack(STREAM, size, count)], CTRL).wait()
        buf = _touched(size)
        await ready.wait()
        done = ep.irecv([bytearray(4)], BACK, mxnet.MASK_ALL, peer=peer)
        t0 = time.perf_counter()
        window: list[Any] = []
        for _ in range(count):
            if len(window) >= WINDOW:
                await window.pop(0).wait()
            window.append(ep.isend(peer, [buf], DATA))
        await done.wait()
        return size * count / (time.perf_counter() - t0)


class RawClient:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def pingpong(self, size: int, iters: int) -> float:
        sock = self.sock
        await _send_all(sock, memoryview(CMD.pack(PING, size, iters)))
        sbuf = memoryview(_touched(size))
        rbuf = memoryview(_touched(size))
        t0 = time.perf_counter()
        for _ in range(iters):
            await _send_all(sock, sbuf)
            await recv_exact_into(sock, rbuf)
        return (time.perf_counter() - t0) / iters

    async def stream(self, size: int, count: int) -> float:
        sock = self.sock
        await _send_all(sock, memoryview(CMD.pack(STREAM, size, count)))
        buf = memoryview(_touched(size))
        await recv_exact_into(sock, memoryview(bytearray(4)))
        t0 = time.perf_counter()
        for _ in range(count):
            await _send_all(sock, buf)
        await recv_exact_into(sock, memoryview(bytearray(4)))
        return size * count / (time.perf_counter() - t0)


async def run_client(ports: dict[str, int], sizes: list[int], rounds: int,
                     progress: bool) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    async with mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport="mx", listen=False) as mx, \
            mxnet.open_endpoint("127.0.0.1", 0, key=KEY, transport="gm", listen=False) as gm:
        raw = socket.create_connection(("127.0.0.1", ports["raw"]))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setblocking(False)
        clients: dict[str, Any] = {
            "raw": RawClient(raw),
            "mx": MxClient(mx, await mx.connect("127.0.0.1", ports["mx"])),
            "gm": MxClient(gm, await gm.connect("127.0.0.1", ports["gm"])),
        }
        for c in clients.values():  # warm up every path once
            await c.pingpong(8, 50)
            await c.stream(1 << 20, 16)
        for rnd in range(rounds):
            for size in sizes:
                for name in TRANSPORTS:
                    c = clients[name]
                    rtt = await c.pingpong(size, pingpong_iters(size))
                    bw = await c.stream(size, stream_count(size))
                    results.append({"round": rnd, "transport": name, "size": size,
                                    "latency_us": rtt / 2 * 1e6, "bandwidth_MBps": bw / 1e6})
                    if name == "mx":
                        rtt = await c.pingpong_callbacks(size, pingpong_iters(size))
                        results.append({"round": rnd, "transport": "mx-cb", "size": size,
                                        "latency_us": rtt / 2 * 1e6})
                if progress:
                    print(f"\r  round {rnd + 1}/{rounds}  size {size:>9} B", end="",
                          file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        for name in ("mx", "gm"):
            clients[name].ep.isend(clients[name].peer, [CMD.pack(QUIT, 0, 0)], CTRL)
        await _send_all(raw, memoryview(CMD.pack(QUIT, 0, 0)))
        await trio.sleep(0.1)
        stats = {name: clients[name].ep.statistics().as_dict() for name in ("mx", "gm")}
        raw.close()
    for name in ("mx", "gm"):
        results.append({"transport": name, "client_stats": stats[name]})
    return results


def summarize(results: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, float]]:
    table: dict[tuple[str, int], dict[str, list[float]]] = {}
    for r in results:
        if "size" not in r:
            continue
        cell = table.setdefault((r["transport"], r["size"]), {"lat": [], "bw": []})
        cell["lat"].append(r["latency_us"])
        if "bandwidth_MBps" in r:
            cell["bw"].append(r["bandwidth_MBps"])
    return {k: {**_spread("lat", v["lat"]), **_spread("bw", v["bw"] or [0])}
            for k, v in table.items()}


def _spread(name: str, xs: list[float]) -> dict[str, float]:
    return {name: statistics.median(xs), f"{name}_min": min(xs), f"{name}_max": max(xs)}


def human(n: int) -> str:
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def markdown(summary: dict[tuple[str, int], dict[str, float]], sizes: list[int]) -> str:
    lines = ["| size | raw lat µs | mx lat µs | mx cb lat µs | gm lat µs | raw MB/s | mx MB/s "
             "| gm MB/s | mx/raw bw | gm/mx bw |", "|---" * 10 + "|"]
    for s in sizes:
        c = {t: summary[(t, s)] for t in (*TRANSPORTS, "mx-cb")}
        lines.append(
            f"| {human(s)} | {c['raw']['lat']:.1f} | {c['mx']['lat']:.1f} "
            f"| {c['mx-cb']['lat']:.1f} | {c['gm']['lat']:.1f} "
            f"| {c['raw']['bw']:.0f} | {c['mx']['bw']:.0f} | {c['gm']['bw']:.0f} "
            f"| {c['mx']['bw'] / c['raw']['bw']:.2f} | {c['gm']['bw'] / c['mx']['bw']:.2f} |")
    return "\n".join(lines)


def plot(summary: dict[tuple[str, int], dict[str, float]], sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for t, style in zip(TRANSPORTS, ("k--", "b-o", "r-s"), strict=True):
        ax1.plot(sizes, [summary[(t, s)]["lat"] for s in sizes], style, label=t, markersize=3)
        ax2.plot(sizes, [summary[(t, s)]["bw"] for s in sizes], style, label=t, markersize=3)
    ax1.plot(sizes, [summary[("mx-cb", s)]["lat"] for s in sizes], "c:^",
             label="mx (callbacks)", markersize=3)
    ax1.set(xscale="log", yscale="log", xlabel="message size (bytes)",
            ylabel="one-way latency (µs, half ping-pong)", title="Latency")
    ax2.set(xscale="log", yscale="log", xlabel="message size (bytes)",
            ylabel="bandwidth (MB/s)", title="One-way bandwidth")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("mxnet: MX-like vs GM-like vs raw TCP (loopback, medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.transport", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-size", default="16M")
    ap.add_argument("--sizes", help="comma-separated sizes (e.g. 8,4K,1M)")
    ap.add_argument("--out", default="bench/results/mxnet")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: server mode
    args = ap.parse_args(argv)
    if args.serve is not None:
        trio.run(serve, args.serve)
        return 0
    sizes = ([parse_size(s) for s in args.sizes.split(",")] if args.sizes
             else default_sizes(parse_size(args.max_size)))
    r, w = os.pipe()
    server = subprocess.Popen([sys.executable, "-m", "bench.transport", "--serve", str(w)],
                              pass_fds=(w,))
    os.close(w)
    try:
        with os.fdopen(r) as ready:
            line = ready.readline()
        if not line:
            raise SystemExit("bench.transport: the server process failed to start")
        ports = json.loads(line)
        if not args.quiet:
            print(f"bench.transport: {len(sizes)} sizes x {len(TRANSPORTS)} transports x "
                  f"{args.rounds} rounds", file=sys.stderr)
        results = trio.run(run_client, ports, sizes, args.rounds, not args.quiet)
    finally:
        server.terminate()
        server.wait(timeout=10)
    summary = summarize(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "mxnet.jsonl", "w") as f:
        for row in results:
            f.write(json.dumps(row) + "\n")
    table = markdown(summary, sizes)
    (out / "mxnet.md").write_text(table + "\n")
    try:
        plot(summary, sizes, out / "mxnet.png")
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
    print(table)
    print(f"\nwritten: {out}/mxnet.md, mxnet.jsonl, mxnet.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
