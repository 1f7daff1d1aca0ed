"""mxnet — an emulated MX message-passing layer (Goglin et al., Cluster 2005) with a GM-like fallback.

Public API (trio):

    async with mxnet.open_endpoint("127.0.0.1", 0, key=b"secret", transport="mx") as ep:
        host, port = ep.address
        peer = await ep.connect(host, port)
        rx = ep.irecv([mxnet.user(buf)], match=0x42, mask=mxnet.MASK_ALL)
        tx = ep.isend(peer, [mxnet.user(b"hello"), mxnet.file(fd, 0, 4096)], match=0x42)
        status = await rx.wait(timeout=5)

Segments (a message is a vector of up to 256 of them):
    mxnet.user(buffer)                 any writable/readable buffer (bytes, bytearray, mmap, memoryview)
    mxnet.pages(list_of_pages, full)   page-sized buffers: the emulated page cache
    mxnet.file(fd, offset, length)     a range of a file's page cache (sendfile out, splice in)
"""

from .config import Config
from .endpoint import Endpoint, Peer, Request, open_endpoint
from .errors import (
    ConnectError,
    MatchError,
    MxError,
    PeerGone,
    ProtocolError,
    QueueFull,
    RegistrationError,
    Timeout,
)
from .matching import MASK_ALL
from .segments import MAX_SEGMENTS, Segment, file, pages, user
from .status import Status, StatusCode

__all__ = [
    "MASK_ALL", "MAX_SEGMENTS", "Config", "ConnectError", "Endpoint", "MatchError", "MxError",
    "Peer", "PeerGone", "ProtocolError", "QueueFull", "RegistrationError", "Request", "Segment", "Status", "StatusCode",
    "Timeout", "file", "open_endpoint", "pages", "user",
]
