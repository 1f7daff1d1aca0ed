"""The read-buffer pool hands out a buffer again only once nothing else holds it."""

from mxfs.bufpool import MAX_POOLED, BufferPool


def test_reuse_only_when_free() -> None:
    pool = BufferPool()
    a = pool.get(4096)
    view = memoryview(a)[:10]  # what read() returns to pyfuse3
    b = pool.get(4096)
    assert b is not a  # a is still exported
    del view
    a_id = id(a)
    del a
    c = pool.get(4096)
    assert id(c) == a_id and pool.reused == 1
    assert pool.get(8192) is not c  # sizes never mix


def test_large_reads_are_not_pooled() -> None:
    pool = BufferPool()
    big = pool.get(MAX_POOLED + 1)
    del big
    assert pool.get(MAX_POOLED + 1) is not None and pool.reused == 0
