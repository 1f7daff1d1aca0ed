"""The shared secret: both sides read it from a file the same way (mxnet's handshake key)."""

from __future__ import annotations

from .errors import OptionError


def read_secret(path: str) -> bytes:
    """The secret in the file *path*, surrounding whitespace dropped (a trailing newline is
    not part of it). OSError if the file cannot be read; OptionError if it holds nothing."""
    with open(path, "rb") as f:
        key = f.read().strip()
    if not key:
        raise OptionError(f"secret file {path} is empty")
    return key
