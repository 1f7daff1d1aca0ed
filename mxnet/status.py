"""Completion status of a request (what mx_test/mx_wait report)."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple


class StatusCode(enum.Enum):
    SUCCESS = "success"
    TRUNCATED = "truncated"  # receive shorter than the message: the prefix was delivered
    CANCELLED = "cancelled"
    PEER_LOST = "peer lost"  # the connection died before the request completed
    SHORT_SOURCE = "short source"  # a file send segment ended early; the rest was zero-filled
    LOCAL_ERROR = "local error"  # a receive's file segment could not be written (ENOSPC, EBADF)


class Status(NamedTuple):
    code: StatusCode
    source: Any = None  # the Peer a message came from (receives) or went to (sends)
    match: int = 0
    msg_length: int = 0
    xfer_length: int = 0
    error: int = 0  # errno for LOCAL_ERROR

    @property
    def ok(self) -> bool:
        return self.code is StatusCode.SUCCESS
