"""mxnet.segments: address kinds, vectors, and ``pieces`` slicing (no sockets)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mxnet
from mxnet.segments import (
    MAX_SEGMENTS,
    PAGE_SIZE,
    FileRange,
    as_vector,
    copy_into,
    pieces,
    vector_length,
)

seg_specs = st.lists(
    st.one_of(
        st.tuples(st.just("user"), st.binary(max_size=40)),
        st.tuples(st.just("pages"), st.lists(st.binary(max_size=20), max_size=4)),
        st.tuples(st.just("file"), st.integers(0, 30), st.integers(0, 40)),
    ),
    max_size=12,
)

FILE_DATA = bytes(range(256)) * 4


@pytest.fixture(scope="module")
def data_fd(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "data"
    path.write_bytes(FILE_DATA)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


def build(spec, fd):
    vec, flat = [], b""
    for s in spec:
        if s[0] == "user":
            vec.append(mxnet.user(s[1]))
            flat += s[1]
        elif s[0] == "pages":
            vec.append(mxnet.pages(s[1], full=False))
            flat += b"".join(s[1])
        else:
            vec.append(mxnet.file(fd, s[1], s[2]))
            flat += FILE_DATA[s[1] : s[1] + s[2]]
    return vec, flat


def read(p):
    if isinstance(p, FileRange):
        return os.pread(p.fd, p.length, p.offset)
    return bytes(p)


@settings(max_examples=300, deadline=None)
@given(seg_specs, st.integers(0, 300), st.integers(-2, 300))
def test_pieces_equal_slice_of_concatenation(data_fd, spec, offset, length):
    vec, flat = build(spec, data_fd)
    assert vector_length(vec) == len(flat)
    got = list(pieces(vec, offset, length))
    assert b"".join(read(p) for p in got) == flat[offset : offset + max(length, 0)]
    for p in got:  # no empty pieces, and in-memory pieces are views, not copies
        assert (p.length if isinstance(p, FileRange) else p.nbytes) > 0
        assert isinstance(p, FileRange | memoryview)


@given(st.lists(st.binary(min_size=1, max_size=30), min_size=1, max_size=8),
       st.data())
def test_pieces_are_views_of_the_caller_buffers(chunks, data):
    bufs = [bytearray(c) for c in chunks]
    vec = [mxnet.user(b) for b in bufs]
    total = sum(map(len, bufs))
    off = data.draw(st.integers(0, total))
    n = data.draw(st.integers(0, total - off))
    for p in pieces(vec, off, n):
        p[:] = b"\xee" * p.nbytes  # writes land in the caller's buffers
    assert b"".join(bufs) == (
        b"".join(chunks)[:off] + b"\xee" * n + b"".join(chunks)[off + n :]
    )


@given(st.lists(st.integers(0, 20), max_size=8), st.binary(max_size=100))
def test_copy_into(sizes, src):
    bufs = [bytearray(n) for n in sizes]
    vec = [mxnet.user(b) for b in bufs]
    src = src[: sum(sizes)]
    assert copy_into(vec, memoryview(src)) == len(src)
    assert b"".join(bufs)[: len(src)] == src


def test_copy_into_file(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        buf = bytearray(3)
        vec = [mxnet.user(buf), mxnet.file(fd, 10, 5)]
        copy_into(vec, memoryview(b"abcdefgh"))
        assert buf == b"abc" and os.pread(fd, 5, 10) == b"defgh"
    finally:
        os.close(fd)


def test_segment_kinds():
    s = mxnet.user(b"hello")
    assert s.kind == "user" and s.length == 5
    p = mxnet.pages([bytearray(PAGE_SIZE)] * 3)
    assert p.kind == "pages" and p.length == 3 * PAGE_SIZE
    with pytest.raises(ValueError):
        mxnet.pages([bytearray(100)])
    assert mxnet.pages([bytearray(100)], full=False).length == 100
    f = mxnet.file(3, 100, 50)
    assert f.kind == "file" and f.frange == FileRange(3, 100, 50) and f.length == 50
    with pytest.raises(ValueError):
        mxnet.file(3, -1, 5)
    with pytest.raises(ValueError):
        mxnet.file(3, 0, -5)
    import array

    a = mxnet.user(array.array("i", [1, 2, 3]))  # non-byte buffers are cast, not copied
    assert a.length == 12


def test_vectors():
    assert as_vector(b"x")[0].kind == "user"
    assert len(as_vector([b"a", mxnet.user(b"b")])) == 2
    assert len(as_vector([b"a"] * MAX_SEGMENTS)) == MAX_SEGMENTS
    with pytest.raises(ValueError, match="at most"):
        as_vector([b"a"] * (MAX_SEGMENTS + 1))
    with pytest.raises(ValueError, match="writable"):
        as_vector([b"read-only"], writable=True)
    as_vector([bytearray(3)], writable=True)
