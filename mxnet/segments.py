"""Segments: the pieces a message is made of, by address kind (MX's segment types).

A message is a vector of up to MAX_SEGMENTS segments. Each segment has a kind:

* ``user``  — any buffer (bytes, bytearray, mmap, memoryview): user-virtual memory;
* ``pages`` — a list of page-sized buffers, the emulated page cache (``full`` says every
  page is exactly PAGE_SIZE, like MX's full-page flag);
* ``file``  — a byte range of an open file: its page cache, sent with ``os.sendfile``
  and received with ``os.splice``, never through a Python buffer.

Nothing here copies payload: ``pieces(vector, offset, length)`` walks a vector and yields
memoryview slices or FileRange sub-ranges that cover exactly [offset, offset+length).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

MAX_SEGMENTS = 256
PAGE_SIZE = 4096


class FileRange(NamedTuple):
    fd: int
    offset: int
    length: int


Piece = memoryview | FileRange


class Segment(NamedTuple):
    kind: str  # "user" | "pages" | "file"
    views: tuple[memoryview, ...] = ()
    frange: FileRange | None = None
    length: int = 0

    def pieces(self) -> Iterator[Piece]:
        if self.frange is not None:
            yield self.frange
        else:
            yield from self.views


def _view(buf: Any) -> memoryview:
    view = buf if type(buf) is memoryview else memoryview(buf)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


_new = tuple.__new__  # 0.10 vs 0.16 µs per Segment, timeit


def user(buf: Any) -> Segment:
    """A user-virtual segment over any buffer-protocol object (no copy)."""
    view = _view(buf)
    return _new(Segment, ("user", (view,), None, view.nbytes))


def pages(page_list: Sequence[Any], full: bool = True) -> Segment:
    """A segment made of page-sized buffers. With ``full`` every page must be PAGE_SIZE long."""
    views = tuple(_view(p) for p in page_list)
    if full and any(v.nbytes != PAGE_SIZE for v in views):
        raise ValueError(f"full-page segment needs pages of exactly {PAGE_SIZE} bytes")
    return Segment("pages", views, None, sum(v.nbytes for v in views))


def file(fd: int, offset: int, length: int) -> Segment:
    """A range of a file's page cache. Sent with sendfile, received with splice."""
    if offset < 0 or length < 0:
        raise ValueError("file segment offset and length must be >= 0")
    return Segment("file", (), FileRange(int(fd), int(offset), int(length)), int(length))


def as_vector(segments: Any, *, writable: bool = False) -> tuple[Segment, ...]:
    """Normalise what a caller passed (a Segment, a buffer, or a list of either) to a vector."""
    if type(segments) is list and len(segments) == 1:
        s0 = segments[0]
        t = type(s0)
        # the hot case, one plain buffer: 0.27 vs 0.53 µs per vector, timeit
        if t is bytearray or (t is bytes and not writable):
            return (_new(Segment, ("user", (memoryview(s0),), None, len(s0))),)
        if t is Segment and not writable:
            return (s0,)
        s0 = segments[0]
        vec: tuple[Segment, ...] = (s0 if type(s0) is Segment else user(s0),)
    elif type(segments) is Segment:
        vec = (segments,)
    elif isinstance(segments, list | tuple):
        vec = tuple(s if type(s) is Segment else user(s) for s in segments)
    else:
        vec = (user(segments),)
    if len(vec) > MAX_SEGMENTS:
        raise ValueError(f"a message has at most {MAX_SEGMENTS} segments, got {len(vec)}")
    if writable:
        for seg in vec:
            if seg.views and any(v.readonly for v in seg.views):
                raise ValueError("receive segments must be writable buffers")
    return vec


def vector_length(vec: Iterable[Segment]) -> int:
    n = 0
    for s in vec:  # a plain loop: 0.09 vs 0.18 µs (sum of a generator, 3 segments), timeit
        n += s.length
    return n


def pieces(vec: Iterable[Segment], offset: int, length: int) -> Iterator[Piece]:
    """Yield the pieces covering bytes [offset, offset+length) of a vector, as views/ranges."""
    if length <= 0:
        return
    end = offset + length
    pos = 0
    for seg in vec:
        for piece in seg.pieces():
            n = piece.length if isinstance(piece, FileRange) else piece.nbytes
            lo, hi = max(offset, pos), min(end, pos + n)
            if lo < hi:
                a, b = lo - pos, hi - pos
                if isinstance(piece, FileRange):
                    yield FileRange(piece.fd, piece.offset + a, b - a)
                elif a == 0 and b == n:
                    yield piece
                else:
                    yield piece[a:b]
            pos += n
            if pos >= end:
                return


def piece_list(vec: Sequence[Segment], offset: int, length: int) -> list[Piece]:
    """``list(pieces(...))``, with a fast path for the usual vector: one in-memory buffer
    (0.10 vs 0.65 µs per call, timeit)."""
    if len(vec) == 1:
        views = vec[0].views
        if len(views) == 1 and vec[0].frange is None and length > 0:
            v = views[0]
            return [v if offset == 0 and length == v.nbytes else v[offset : offset + length]]
    return list(pieces(vec, offset, length))


def copy_into(vec: Iterable[Segment], src: memoryview) -> int:
    """Copy ``src`` into the front of a vector (the unexpected-queue delivery path — a real,
    counted copy). File pieces are written with os.pwrite. Returns bytes copied."""
    import os

    done = 0
    for piece in pieces(vec, 0, src.nbytes):
        if isinstance(piece, FileRange):
            chunk = src[done : done + piece.length]
            written = 0
            while written < piece.length:
                written += os.pwrite(piece.fd, chunk[written:], piece.offset + written)
            done += piece.length
        else:
            n = piece.nbytes
            piece[:] = src[done : done + n]
            done += n
    return done
