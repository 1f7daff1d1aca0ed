"""Counters an endpoint keeps, so 'copies per byte delivered' is a number, not a claim."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Statistics:
    transport: str = "mx"
    msgs_sent: Counter = field(default_factory=Counter)  # by size class
    bytes_sent: Counter = field(default_factory=Counter)
    msgs_received: Counter = field(default_factory=Counter)
    bytes_received: Counter = field(default_factory=Counter)
    eager_sends: int = 0
    rendezvous_sends: int = 0
    payload_bytes_copied: int = 0  # payload bytes copied by user-space code (bounce/unexpected)
    payload_copies: int = 0  # number of such copy operations
    registrations: int = 0  # gm: register() calls
    registered_bytes: int = 0  # gm: total bytes ever registered
    registered_now: int = 0  # gm: bytes registered at present
    unexpected_high_water: int = 0
    unexpected_now: int = 0
    pauses: int = 0  # times a reader stopped reading a peer (its share of the queue was full)
    credit_waits: int = 0  # mx: sends that waited for credits before going on the wire
    send_queue_high_water: int = 0  # most sends ever waiting to go to one peer (send_buffer_max)
    peers_connected: int = 0
    peers_lost: int = 0
    handshake_failures: int = 0
    protocol_errors: int = 0
    frames_sent: int = 0
    sendmsg_calls: int = 0
    sendfile_calls: int = 0
    splice_calls: int = 0

    def count_send(self, size_class: str, nbytes: int) -> None:
        self.msgs_sent[size_class] += 1
        self.bytes_sent[size_class] += nbytes

    def count_receive(self, size_class: str, nbytes: int) -> None:
        self.msgs_received[size_class] += 1
        self.bytes_received[size_class] += nbytes

    @property
    def payload_bytes_delivered(self) -> int:
        return sum(self.bytes_received.values())

    @property
    def copies_per_byte(self) -> float:
        moved = self.payload_bytes_delivered + sum(self.bytes_sent.values())
        return self.payload_bytes_copied / moved if moved else 0.0

    def snapshot(self) -> Statistics:
        """A copy as of now: later traffic does not change it, and changing it changes
        nothing in the endpoint."""
        copy = dataclasses.replace(self)
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Counter):
                setattr(copy, name, Counter(value))
        return copy

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, Counter) else value
        out["messages_sent"] = sum(self.msgs_sent.values())
        out["messages_received"] = sum(self.msgs_received.values())
        out["payload_bytes_sent"] = sum(self.bytes_sent.values())
        out["payload_bytes_received"] = self.payload_bytes_delivered
        out["copies_per_byte"] = round(self.copies_per_byte, 4)
        return out
