"""mxfs-server EXPORT_DIR --listen HOST:PORT --secret-file FILE [--transport both|mx|gm]

Serves one export to many clients. mxnet endpoints speak one transport each, so by default the
server listens for mx clients on PORT and for gm clients on PORT+1 (clients mounting with
transport=gm find it there by themselves). Prints one line "mxfs-server: listening on
HOST:PORT ..." on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from contextlib import AsyncExitStack

import trio

import mxnet
from mxfs.gctune import tune_gc
from mxfs.options import OptionError, parse_address
from mxfs.rpc import leaf_exception

from .confine import Export
from .handles import HandleTable
from .ops import FileServer
from .service import Service

log = logging.getLogger("mxfs.server")

# Read data goes to a receive the client posted before asking, so the server may send it
# eagerly: no RNDV/PULL/NOTIFY round trip per read. (The client keeps the default 32 KiB
# threshold, so its large writes still wait in the unexpected queue as a rendezvous only.)
SERVER_CONFIG = mxnet.Config(eager_max=int(os.environ.get("MXFS_SERVER_EAGER_MAX", 4 << 20)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mxfs-server", description="mxfs I/O server")
    p.add_argument("export", help="directory to export")
    p.add_argument("--listen", default="127.0.0.1:7070", metavar="HOST:PORT",
                   help="address to listen on (port 0: any free port); default %(default)s")
    p.add_argument("--secret-file", required=True, metavar="FILE",
                   help="file holding the shared secret (clients must use the same)")
    p.add_argument("--transport", choices=("both", "mx", "gm"), default="both",
                   help="transports to serve; with both, gm listens on PORT+1 (default both)")
    p.add_argument("--max-handles", type=int, default=4096, help="open handles per client")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def _free_port_pair(host: str) -> int:
    """A port p such that p and p+1 are both free right now (for port 0 with two transports)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(family) as s2:
                s2.bind((host, port + 1))
            return port
        except OSError:
            continue
    raise OSError("no two consecutive free ports found")


async def _open_endpoints(stack: AsyncExitStack, host: str, port: int, key: bytes,
                          transports: list[str]) -> list[object]:
    """Open one endpoint per transport on consecutive ports."""
    for attempt in range(10):
        base = port or (_free_port_pair(host or "0.0.0.0") if len(transports) > 1 else 0)
        inner = AsyncExitStack()
        eps: list[object] = []
        try:
            for i, t in enumerate(transports):
                ep = await inner.enter_async_context(
                    mxnet.open_endpoint(host, base + i if base else 0, key=key, transport=t,
                                        config=SERVER_CONFIG))
                eps.append(ep)
        except BaseException as e:
            await inner.aclose()
            leaf = leaf_exception(e)
            if port or attempt == 9 or not isinstance(leaf, OSError):
                raise leaf from None
            continue  # someone took the port meanwhile: pick another pair
        stack.push_async_exit(inner)
        return eps
    raise OSError("cannot open the endpoints")


async def serve(args: argparse.Namespace, key: bytes) -> None:
    host, port = parse_address(args.listen) if not args.listen.endswith(":0") else (
        args.listen.rpartition(":")[0].strip("[]"), 0)
    export = Export(args.export)
    fs = FileServer(export, HandleTable(max_per_owner=args.max_handles))
    transports = ["mx", "gm"] if args.transport == "both" else [args.transport]
    try:
        async with AsyncExitStack() as stack:
            eps = await _open_endpoints(stack, host, port, key, transports)
            where = ", ".join(f"{ep.address[0]}:{ep.address[1]} ({ep.transport})"  # type: ignore[attr-defined]
                              for ep in eps)
            print(f"mxfs-server: exporting {export.root}; listening on {where}", flush=True)
            async with trio.open_nursery() as nursery:
                for ep in eps:
                    nursery.start_soon(Service(ep, fs).run)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        log.info("signal received, stopping")
                        nursery.cancel_scope.cancel()
                        break
    finally:
        fs.handles.close_all()
        export.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        if not os.path.isdir(args.export):
            raise OptionError(f"export {args.export!r} is not a directory")
        with open(args.secret_file, "rb") as f:
            key = f.read().strip()
        if not key:
            raise OptionError(f"secret file {args.secret_file} is empty")
        if not args.listen.endswith(":0"):
            parse_address(args.listen)
        tune_gc()
        trio.run(serve, args, key)
    except (OptionError, OSError) as e:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        fn = getattr(e, "filename", None)
        print(f"mxfs-server: {msg}{f': {fn}' if fn else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
