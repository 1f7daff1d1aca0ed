"""Mount options: parsing `HOST:PORT` and `-o a,b=c` into a MountOptions value (pure)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from fsproto.address import parse_address
from fsproto.errors import OptionError
from fsproto.secret import read_secret

DEFAULT_SECRET_FILES = ("/etc/mxfs/secret",)

# Options mount(8) hands to helpers; accepted and ignored (or mapped) so `mount -t fuse.mxfs` works.
_IGNORED = frozenset({
    "rw", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail",
    "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
    "strictatime", "nodiratime", "diratime", "async", "sync", "loud", "silent", "x-systemd.automount",
})


@dataclass
class MountOptions:
    host: str
    port: int
    mountpoint: str
    transport: str = "mx"
    secret_file: str | None = None
    ro: bool = False
    allow_other: bool = False
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    timeout: float = 10.0
    foreground: bool = False
    debug: bool = False
    checksum: bool = False  # xxh3-64 of every READ and WRITE payload, checked where it lands
    lease_timeout: float = 10.0  # cache lifetime while the server keeps callbacks (0: off)
    cache_max: int = 65536  # attributes, names, listed entries the client keeps (each)

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def read_secret(self) -> bytes:
        candidates = [self.secret_file] if self.secret_file else [
            os.environ.get("MXFS_SECRET_FILE", ""), *DEFAULT_SECRET_FILES]
        for path in candidates:
            if not path:
                continue
            try:
                return read_secret(path)
            except OSError as e:
                if self.secret_file:
                    raise OptionError(f"cannot read secret file {path}: {e.strerror}") from None
        raise OptionError("no secret: give -o secret_file=FILE (or set MXFS_SECRET_FILE)")


# Numeric options: the smallest value each accepts. Every one must be a finite number.
# (timeout: below 0.1 s every request would time out and the watchdog would spin)
NUMERIC_MINIMUM = {"timeout": 0.1, "attr_timeout": 0.0, "entry_timeout": 0.0,
                   "lease_timeout": 0.0, "cache_max": 0.0}
COUNTS = frozenset({"cache_max"})  # whole numbers of items, not seconds


def parse_number(name: str, value: str) -> float:
    """The value of numeric option *name*: a finite number, at least its minimum."""
    unit = "" if name in COUNTS else " seconds"
    try:
        v = float(value) if unit else int(value)
    except ValueError:
        want = "a number" if unit else "a whole number"
        raise OptionError(f"option {name} wants {want}, not {value!r}") from None
    if not math.isfinite(v):
        raise OptionError(f"option {name} must be a finite number of seconds, not {value!r}")
    low = NUMERIC_MINIMUM[name]
    if v < low:
        what = "0 or more" if low == 0 else f"at least {low:g}"
        raise OptionError(f"option {name} must be {what}{unit}, not {value!r}")
    return v


def parse_options(server: str, mountpoint: str, opts: list[str], *,
                  foreground: bool = False) -> MountOptions:
    """Build MountOptions from the server spec, the mount point and every -o string given."""
    host, port = parse_address(server)
    mo = MountOptions(host=host, port=port, mountpoint=mountpoint, foreground=foreground)
    for chunk in opts:
        for item in chunk.split(","):
            item = item.strip()
            if not item:
                continue
            name, eq, value = item.partition("=")
            if name == "transport":
                if value not in ("mx", "gm"):
                    raise OptionError(f"transport must be mx or gm, not {value!r}")
                mo.transport = value
            elif name == "secret_file":
                if not value:
                    raise OptionError("secret_file wants a file name")
                mo.secret_file = value
            elif name in ("ro", "allow_other", "debug", "checksum") and not eq:
                setattr(mo, name, True)
            elif name in NUMERIC_MINIMUM:
                if not eq:
                    raise OptionError(f"option {name} wants a value ({name}=SECONDS)")
                setattr(mo, name, parse_number(name, value))
            elif name in _IGNORED or name.startswith("x-"):
                continue
            else:
                raise OptionError(f"unknown mount option {item!r}")
    return mo
