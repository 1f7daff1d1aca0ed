"""The mxfs RPC protocol: ops, match layout, codecs, stat fields and limits of both sides.

The client (mxfs/) and the I/O server (server/) both import it; neither owns it.

How this works
--------------
Every exchange is a handful of mxnet messages told apart by their 64-bit match value:

    match = kind << 56 | rid          kind: REQ, REPLY, RDATA, WDATA;  rid: 56-bit request id

The client picks rids (unique per connection); the server filters by peer, so rids of two
clients never meet.

    REQ    client -> server   [u32 header length][msgpack header][inline write data]
                              header = [op, cred, arg...]. The server keeps REQ_SLOTS receives
                              posted (match REQ<<56, mask KIND_MASK) of REQ_BUF_SIZE bytes,
                              so a write of <= INLINE_MAX bytes travels inside the request and
                              is written with os.pwrite(fd, memoryview-slice): no copy.
    REPLY  server -> client   msgpack [errno, result]; errno 0 means success. The client
                              posts this receive (peer=server) before it sends REQ.
    RDATA  server -> client   the whole answer to a READ, in ONE message: a fixed
                              READ_HDR (errno, n, hash) then the data. The client posts one receive
                              [header buffer, data buffer] before sending REQ; the server sends
                              [header, mxnet.file(fd, off, n)] (sendfile on the mx path): the
                              data lands in the client's buffer, no REPLY message.
                              A READ with a 4th argument 1 asks for the data's xxh3-64 in
                              hash (-o checksum); otherwise hash is 0.
    WDATA  client -> server   WRITE data larger than INLINE_MAX: sent right after REQ; the
                              server posts mxnet.file(fd, off, len) (spliced into the file).
                              A WRITE [hid, off, n, hash] carries the data's xxh3-64: the
                              server checks what landed and answers EBADMSG if it differs.

Who asks: every operation in CRED_OPS (those that name a file or an entry, open one, or change
one through a handle) carries the caller's credentials as ``cred = [uid, gid, group...]``
(at most MAX_GROUPS supplementary groups); other operations carry nil. The server acts with
them (server/creds.py), after squashing them as its export options say (server/exports.py).
An op in CRED_OPS that arrives without credentials is served as the anonymous user.

Files are named by handle (protocol 5): a LOOKUP, a create or a READDIR entry answers with
the object's handle, an opaque msgpack ext value (type FH_EXT) that the client sends back
as it got it; a directory entry is named [directory, name]. Where a server cannot issue
handles (not root, or no handles on its file system) they come back nil and the client names
files by path instead. Paths are bytes, "/"-separated and relative to the export root
(b"" is the root). Stats
travel as the tuple STAT_FIELDS. Nothing here does I/O.

Callbacks (protocol 6): every answer that tells a client about an object (its attributes, a
directory's names, including a name that does not exist, a file opened for its data) is also
a promise: the server remembers it (server/callbacks.py) and, before it answers any change
of that object by another client, sends the holder a BREAK message, msgpack
[[st_dev, st_ino, flags, names or nil], ...], and waits for its BREAK_ACK (bounded: a client
that does not answer in time is disconnected, and a client drops everything it cached when
its connection ends). The client may therefore answer from its cache, and let its kernel
cache, for as long as it holds the promise. Flags say what changed: BREAK_ATTR the
attributes, BREAK_DATA the file's data, BREAK_NAMES the names listed (of a directory),
BREAK_ALL anything (the promise was dropped: forget all of it).
"""

from __future__ import annotations

import enum
import operator
import os
import struct
from collections.abc import Sequence
from typing import Any

import msgpack

import mxnet

# 2: namespace changes answer with the parent directory's post-op attributes
# 3: READ_HDR carries a checksum; WRITE may; PING tells the server's write verifier
# 4: every request carries the caller's credentials (nil when the op needs none); no uid/gid
#    arguments on CREATE/MKNOD/MKDIR/SYMLINK; handle-based xattr ops; SETATTR times "now"
# 5: file handles (msgpack ext type FH_EXT): LOOKUP answers [stat, handle]; MKNOD, MKDIR,
#    SYMLINK, LINK, CREATE and READDIR entries carry the new object's handle too (nil when the
#    server cannot issue handles); a file is named by its handle, a directory entry by
#    [directory handle or path, name]; paths (bytes) are still understood
# 6: callbacks: PING tells "callbacks"; the server sends BREAK messages, the client answers
#    each with a BREAK_ACK (see "Callbacks" above)
#    Within 6, additions a peer of the same version may lack (PING tells the server's):
#    stat tuples may carry ST_XATTRS; "open_ahead": an OPEN may carry a third argument,
#    bytes wanted from the file's start: its answer is then [handle, stat, n], and n >= 0
#    says an RDATA message of the request's id (as a READ's answer) brings them
PROTOCOL_VERSION = 6
OPEN_AHEAD_MAX = 128 * 1024  # the most an OPEN brings of its file

KIND_SHIFT = 56
KIND_MASK = 0xFF << KIND_SHIFT
RID_MASK = (1 << KIND_SHIFT) - 1
# a request id with this bit is posted: nobody waits for its answer, so the server sends none
# (RELEASE; an older server answers anyway and the client drops the stray reply)
POSTED = 1 << (KIND_SHIFT - 1)


class Kind(enum.IntEnum):
    REQ = 1
    REPLY = 2
    RDATA = 3
    WDATA = 4
    BREAK = 5      # server -> client: what you cached changed (rid: the break's sequence)
    BREAK_ACK = 6  # client -> server: done with that break (same sequence)


class Op(enum.IntEnum):
    PING = 1
    STATFS = 2
    GETATTR = 3
    FGETATTR = 4
    SETATTR = 5
    READLINK = 6
    MKNOD = 7
    MKDIR = 8
    SYMLINK = 9
    LINK = 10
    UNLINK = 11
    RMDIR = 12
    RENAME = 13
    OPEN = 14
    CREATE = 15
    READ = 16
    WRITE = 17
    RELEASE = 18
    FSYNC = 19
    OPENDIR = 20
    READDIR = 21
    GETXATTR = 22
    SETXATTR = 23
    LISTXATTR = 24
    REMOVEXATTR = 25
    ACCESS = 26
    STATS = 27
    FGETXATTR = 28
    FSETXATTR = 29
    FLISTXATTR = 30
    FREMOVEXATTR = 31
    LOOKUP = 32


# the client's endpoint runs with mxnet's default Config: it sends messages up to this eagerly
EAGER_LIMIT = mxnet.Config().eager_max
INLINE_MAX = EAGER_LIMIT - 1024   # write data up to this size rides inside the request
REQ_BUF_SIZE = 64 * 1024          # size of each receive the server keeps posted
REQ_SLOTS = 32                    # how many of them
REPLY_SMALL = 4096                # reply buffer for ordinary operations
REPLY_LARGE = 256 * 1024          # reply buffer for READDIR / xattr / STATS
READDIR_MAX_ENTRIES = 512
READDIR_MAX_BYTES = 160 * 1024    # server stops a READDIR batch before this much encoded data
MAX_READ = 16 * 1024 * 1024

# RENAME flags: Linux's renameat2 values, which the server hands to renameat2 as they come
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

LARGE_REPLY_OPS = frozenset({Op.READDIR, Op.GETXATTR, Op.LISTXATTR, Op.STATS, Op.READLINK,
                             Op.FGETXATTR, Op.FLISTXATTR})

# operations performed as the caller: the request carries its credentials
CRED_OPS = frozenset({
    Op.GETATTR, Op.SETATTR, Op.READLINK, Op.MKNOD, Op.MKDIR, Op.SYMLINK, Op.LINK, Op.UNLINK,
    Op.RMDIR, Op.RENAME, Op.OPEN, Op.CREATE, Op.OPENDIR, Op.GETXATTR, Op.SETXATTR,
    Op.LISTXATTR, Op.REMOVEXATTR, Op.ACCESS, Op.FGETXATTR, Op.FSETXATTR, Op.FLISTXATTR,
    Op.FREMOVEXATTR, Op.LOOKUP,
})
MAX_GROUPS = 1024  # supplementary groups carried per request (Linux allows 65536)
Cred = list[int]  # [uid, gid, group...]
TIME_NOW = "now"  # a SETATTR time: the server's current time (write permission suffices)

class St(enum.IntEnum):
    """Where each field sits in a stat tuple, in wire order: ``st[St.SIZE]`` is its st_size."""

    DEV = 0
    INO = 1
    MODE = 2
    NLINK = 3
    UID = 4
    GID = 5
    RDEV = 6
    SIZE = 7
    BLOCKS = 8
    BLKSIZE = 9
    ATIME_NS = 10
    MTIME_NS = 11
    CTIME_NS = 12


STAT_FIELDS = tuple(f"st_{f.name.lower()}" for f in St)  # os.stat_result's names, wire order
# After the stat fields, a stat tuple the server sends may carry one more: whether the object
# has extended attributes (0: none at all, so any name is ENODATA; 1: some, or it could not
# tell). LOOKUP, READDIR, OPEN/CREATE and MKDIR/MKNOD/SYMLINK answers carry it; under a
# promise the client answers getxattr and listxattr of an object that has none from memory.
ST_XATTRS = len(St)
StatTuple = Sequence[int]
_STAT_GET = operator.attrgetter(*STAT_FIELDS)

_HLEN = struct.Struct("<I")


READ_HDR = struct.Struct("<iIQ")  # errno, bytes of data that follow, their xxh3-64 (or 0)
CHECKSUM_MISMATCH = 74  # errno.EBADMSG: a WRITE's data did not arrive as it was sent


_KIND_BASE = {k: int(k) << KIND_SHIFT for k in Kind}


def make_match(kind: Kind, rid: int) -> int:
    return _KIND_BASE[kind] | (rid & RID_MASK)


def split_match(match: int) -> tuple[int, int]:
    return match >> KIND_SHIFT, match & RID_MASK


def stat_tuple(st: os.stat_result) -> list[int]:
    return list(_STAT_GET(st))


def stat_dict(t: StatTuple) -> dict[str, int]:
    return dict(zip(STAT_FIELDS, t[:ST_XATTRS], strict=True))


def encode_request(op: Op, *args: Any, cred: Cred | None = None) -> bytes:
    """The REQ header segment (length prefix included); inline data goes in a second segment."""
    body = msgpack.packb([int(op), cred, *args], use_bin_type=True)
    return _HLEN.pack(len(body)) + body


class ProtocolError(Exception):
    pass


def _unpack(buf: memoryview | bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(buf, raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:  # bad msgpack, bad UTF-8,
        raise ProtocolError(f"malformed {what}: {e}") from None  # an unhashable map key...


def decode_request(buf: memoryview) -> tuple[int, Any, list[Any], memoryview]:
    """Split a received REQ message into (op, cred, args, inline-data view). No payload copy.
    The credentials are returned as they came (server/exports.py checks them)."""
    if len(buf) < _HLEN.size:
        raise ProtocolError("short request")
    (hlen,) = _HLEN.unpack_from(buf)
    end = _HLEN.size + hlen
    if end > len(buf):
        raise ProtocolError("request header overruns message")
    header = _unpack(buf[_HLEN.size:end], "request header")
    if not isinstance(header, list) or len(header) < 2 or not isinstance(header[0], int):
        raise ProtocolError("malformed request header")
    return header[0], header[1], header[2:], buf[end:]


def encode_reply(err: int, result: Any = None) -> bytes:
    return msgpack.packb([err, result], use_bin_type=True)


def decode_reply(buf: memoryview | bytes) -> tuple[int, Any]:
    reply = _unpack(buf, "reply")
    if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[0], int):
        raise ProtocolError("malformed reply")
    return reply[0], reply[1]


BREAK_ATTR = 1
BREAK_DATA = 2
BREAK_NAMES = 4
BREAK_ALL = 8
BREAK_BATCH = 256  # entries per BREAK message
BreakEntry = list[Any]  # [st_dev, st_ino, flags, names or nil]


def encode_breaks(entries: Sequence[BreakEntry]) -> bytes:
    return msgpack.packb(list(entries), use_bin_type=True)


def decode_breaks(buf: memoryview | bytes) -> list[tuple[tuple[int, int], int, list[bytes]]]:
    """[((st_dev, st_ino), flags, names), ...] of a BREAK message, or ProtocolError."""
    entries = _unpack(buf, "break")
    out = []
    if not isinstance(entries, list):
        raise ProtocolError("malformed break")
    for e in entries:
        if (not isinstance(e, list) or len(e) != 4
                or not all(type(x) is int for x in e[:3])
                or not (e[3] is None or (isinstance(e[3], list)
                                         and all(isinstance(n, bytes) for n in e[3])))):
            raise ProtocolError("malformed break entry")
        out.append(((e[0], e[1]), e[2], e[3] or []))
    return out


FH_EXT = 1  # msgpack ext type of a file handle (server/fhandle.py says what is inside)


def is_handle(ref: Any) -> bool:
    return isinstance(ref, msgpack.ExtType) and ref.code == FH_EXT


def join_path(parent: bytes, name: bytes) -> bytes:
    return name if not parent else parent + b"/" + name
