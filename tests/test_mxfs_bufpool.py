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


def test_pool_bytes_bounded_across_sizes() -> None:
    """Reads of many different sizes never pool more than max_bytes in all."""
    pool = BufferPool(max_bytes=1 << 20)
    held = []
    for i in range(1, 200):
        buf = pool.get(i * 4096)
        if i % 3 == 0:
            held.append(memoryview(buf))  # some still in use
        assert pool.pooled_bytes <= pool.max_bytes
    assert sum(len(b) for bufs in pool._bufs.values() for b in bufs) == pool.pooled_bytes
    held.clear()
    for i in range(1, 200):
        pool.get(i * 4096)
        assert pool.pooled_bytes <= pool.max_bytes
