"""Tunables of an endpoint. Size classes follow Open-MX."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

TINY_MAX = 32
SMALL_MAX = 128
MEDIUM_MAX = 32 * 1024  # above this: rendezvous (large)


@dataclass(frozen=True, slots=True)
class Config:
    tiny_max: int = TINY_MAX
    small_max: int = SMALL_MAX
    eager_max: int = MEDIUM_MAX  # largest message sent eagerly; larger ones use rendezvous
    max_message: int = 1 << 30  # longest message accepted from a peer
    data_chunk: int = 1 << 20  # rendezvous data goes out in chunks of this size (fairness)
    # the unexpected queue holds at most this many messages / bytes *per peer*; on mx this is
    # the credit window each peer is granted at connect (protocol.py), so an honest sender
    # holds back what would not fit; a peer past it anyway is paused, not buffered
    unexpected_max_count: int = 4096
    unexpected_max_bytes: int = 64 << 20
    keepalive: float = 2.0  # send a ping after this long without traffic
    peer_timeout: float = 10.0  # declare a silent peer lost after this long
    handshake_timeout: float = 5.0
    # MX polls before blocking. Here a wait() may keep trio polling (with sched_yield) this
    # long before it sleeps. Measured on the 2-vCPU VM: client and server end up on one vCPU
    # and spinning starves the peer (latency grows with poll_us), so the default is 0.
    poll_us: float = field(default_factory=lambda: float(os.environ.get("MXNET_POLL_US", "0")))
    # sends to one peer accepted and not yet on the wire (waiting for the socket, mx
    # credits or gm send tokens); past it isend raises QueueFull, Endpoint.send waits
    send_buffer_max: int = 4096
    gm_send_tokens: int = 64  # gm: outstanding sends per endpoint
    gm_max_size_class: int = 27  # gm: largest size class, 2**27 bytes

    def size_class(self, length: int) -> str:
        if length <= self.tiny_max:
            return "tiny"
        if length <= self.small_max:
            return "small"
        if length <= self.eager_max:
            return "medium"
        return "large"
