"""Where a server is: HOST:PORT as users write it, and the port each transport listens on.

An mxnet endpoint speaks one transport. A server of both transports listens for mx on the
PORT users give and for gm one port above it (PORT+1); a gm client tries PORT+1 first, so a
server's mx side never sees a gm handshake. A server of one transport listens on PORT.
"""

from __future__ import annotations

from .errors import OptionError

GM_PORT_OFFSET = 1  # serving both transports, gm listens this far above mx
PORT_MAX = 65535


def gm_port(port: int) -> int:
    """Where a server of both transports listens for gm, given its (mx) PORT."""
    return port + GM_PORT_OFFSET


def listen_port(port: int, transport: str, both: bool) -> int:
    """Where a server given --listen PORT listens for *transport* (port 0: any free one)."""
    return gm_port(port) if both and transport == "gm" and port else port


def highest_port(both: bool) -> int:
    """The highest PORT a server can be given: with both transports gm's must be a port too."""
    return PORT_MAX - GM_PORT_OFFSET if both else PORT_MAX


def parse_address(spec: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """'host:port', '[v6]:port' -> (host, port). Port 0 ("any free port") only with
    *allow_zero*."""
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise OptionError(f"bad address {spec!r} (want HOST:PORT)")
        port_s = rest[1:]
    else:
        host, sep, port_s = spec.rpartition(":")
        if not sep:
            raise OptionError(f"bad address {spec!r} (want HOST:PORT)")
    if not host:
        raise OptionError(f"bad address {spec!r}: no host")
    if not (port_s.isascii() and port_s.isdigit()):
        raise OptionError(f"bad port in {spec!r}: {port_s!r} is not a port number")
    port = int(port_s)
    low = 0 if allow_zero else 1
    if not low <= port <= PORT_MAX:
        raise OptionError(f"port out of range in {spec!r}: want {low}..{PORT_MAX}")
    return host, port
