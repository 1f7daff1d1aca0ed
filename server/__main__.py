"""mxfs-server EXPORT_DIR --listen HOST:PORT --secret-file FILE [--transport both|mx|gm] [-o OPTS]

Serves one export to many clients. mxnet endpoints speak one transport each, so by default the
server listens for mx clients on PORT and for gm clients on PORT+1 (clients mounting with
transport=gm find it there by themselves). Prints one line "mxfs-server: listening on
HOST:PORT ..." on stdout once it accepts connections. Export options (-o) as NFS's:
server/exports.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from contextlib import AsyncExitStack
from typing import NoReturn

import trio

import mxnet
from fsproto.address import gm_port, highest_port, listen_port, parse_address
from fsproto.errors import OptionError, leaf_exception
from fsproto.secret import read_secret

from .confine import Export
from .creds import prepare_process
from .exports import ExportOptionError, ExportOptions, parse_export_options
from .handles import HandleTable
from .ops import FileServer
from .service import Service

log = logging.getLogger("mxfs.server")

PROG = "mxfs-server"
# Read data goes to a receive the client posted before asking, so the server may send it
# eagerly: no RNDV/PULL/NOTIFY round trip per read. (The client keeps the default 32 KiB
# threshold, so its large writes still wait in the unexpected queue as a rendezvous only.)
EAGER_MAX_ENV = "MXFS_SERVER_EAGER_MAX"
DEFAULT_EAGER_MAX = 4 << 20


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a number of seconds, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="mxfs I/O server")
    p.add_argument("export", help="directory to export")
    p.add_argument("--listen", default="127.0.0.1:7070", metavar="HOST:PORT",
                   help="address to listen on (port 0: any free port); default %(default)s")
    p.add_argument("--secret-file", required=True, metavar="FILE",
                   help="file holding the shared secret (clients must use the same)")
    p.add_argument("--transport", choices=("both", "mx", "gm"), default="both",
                   help="transports to serve; with both, gm listens on PORT+1 (default both)")
    p.add_argument("--max-handles", type=_positive_int, default=4096,
                   help="open handles per client, at least 1 (default %(default)s)")
    p.add_argument("--break-timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                   help="how long a change waits for other clients to acknowledge that "
                        "their cached copies are void before it disconnects the silent ones "
                        "(default %(default)s)")
    p.add_argument("--callbacks-max", type=_positive_int, default=65536, metavar="N",
                   help="promises (cached objects) remembered per client (default %(default)s)")
    p.add_argument("-o", dest="export_options", action="append", default=[], metavar="OPTS",
                   help="export options, as NFS's: root_squash (default), no_root_squash, "
                        "all_squash, anonuid=N, anongid=N, ro, rw (comma-separated)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def export_options(args: argparse.Namespace) -> ExportOptions:
    try:
        return parse_export_options(",".join(args.export_options))
    except ExportOptionError as e:
        raise OptionError(f"-o: {e}") from None


def _free_port_pair(host: str) -> int:
    """A port p such that p and p+1 are both free right now (for port 0 with two transports)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(family) as s2:
                s2.bind((host, gm_port(port)))
            return port
        except OSError:
            continue
    raise OSError("no two consecutive free ports found")


class ListenError(Exception):
    """An endpoint could not listen: the message names the address, port and transport."""


def server_config() -> mxnet.Config:
    raw = os.environ.get(EAGER_MAX_ENV, str(DEFAULT_EAGER_MAX))
    if not (raw.isascii() and raw.isdigit()):
        raise OptionError(f"{EAGER_MAX_ENV} wants a byte count (0 or more), not {raw!r}")
    return mxnet.Config(eager_max=int(raw))


def parse_listen(spec: str, transports: list[str]) -> tuple[str, int]:
    """--listen HOST:PORT -> (host, port), checked before anything opens: the host resolves
    and, with both transports, PORT+1 (gm's) is a port too. Port 0: any free port (pair)."""
    try:
        host, port = parse_address(spec, allow_zero=True)
    except OptionError as e:
        raise OptionError(f"--listen: {e}") from None
    top = highest_port(len(transports) > 1)
    if port > top:
        why = f"gm listens on PORT+1 = {gm_port(port)}" if len(transports) > 1 else "no such port"
        raise OptionError(f"--listen {spec}: port must be 1..{top} (or 0 for any): {why}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise OptionError(f"--listen {spec}: cannot resolve host {host!r}: {why}") from None
    return host, port


def _listen_error(host: str, port: int, transport: str, transports: list[str],
                  e: OSError) -> ListenError:
    why = e.strerror or str(e)
    shown = f"[{host}]" if ":" in host else host
    hint = " (gm listens on PORT+1 when serving both transports)" if (
        transport == "gm" and len(transports) > 1) else ""
    return ListenError(f"cannot listen for {transport} clients on {shown}:{port}: {why}{hint}")


async def _open_endpoints(stack: AsyncExitStack, host: str, port: int, key: bytes,
                          transports: list[str]) -> list[object]:
    """Open one endpoint per transport on consecutive ports."""
    config = server_config()
    for attempt in range(10):
        base = port or (_free_port_pair(host or "0.0.0.0") if len(transports) > 1 else 0)
        inner = AsyncExitStack()
        eps: list[object] = []
        for t in transports:
            tport = listen_port(base, t, both=len(transports) > 1)
            try:
                ep = await inner.enter_async_context(
                    mxnet.open_endpoint(host, tport, key=key, transport=t, config=config))
            except BaseException as e:
                await inner.aclose()
                leaf = leaf_exception(e)
                if not isinstance(leaf, OSError):
                    raise leaf from None
                if port or attempt == 9:
                    raise _listen_error(host, tport, t, transports, leaf) from None
                break  # someone took the port meanwhile: pick another pair
            eps.append(ep)
        else:
            stack.push_async_exit(inner)
            return eps
    raise OSError("cannot open the endpoints")


async def serve(args: argparse.Namespace, key: bytes, host: str, port: int,
                transports: list[str]) -> None:
    export = Export(args.export, secret=key)
    if export.codec is None:
        log.warning("no file handles: %s; clients name files by path (a file renamed by "
                    "another client is reopened by name after a reconnect)", export.no_handles)
    exports = export_options(args)
    prepare_process()  # umask 0: the client's kernel applied the caller's
    fs = FileServer(export, HandleTable(max_per_owner=args.max_handles), exports)
    fs.callbacks.per_client = args.callbacks_max
    log.info("export options: %s%s", exports.describe(),
             "" if fs.is_root else " (not root: acting as itself, not as each caller)")
    try:
        async with AsyncExitStack() as stack:
            eps = await _open_endpoints(stack, host, port, key, transports)
            where = ", ".join(f"{ep.address[0]}:{ep.address[1]} ({ep.transport})"  # type: ignore[attr-defined]
                              for ep in eps)
            print(f"mxfs-server: exporting {export.root}; listening on {where}", flush=True)
            async with trio.open_nursery() as nursery:
                for ep in eps:
                    nursery.start_soon(Service(ep, fs, break_timeout=args.break_timeout).run)
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
        key = read_secret(args.secret_file)
        transports = ["mx", "gm"] if args.transport == "both" else [args.transport]
        host, port = parse_listen(args.listen, transports)
        server_config()
        export_options(args)
        trio.run(serve, args, key, host, port, transports)
    except (OptionError, ListenError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        fn = getattr(e, "filename", None)
        print(f"{PROG}: {msg}{f': {fn}' if fn else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
