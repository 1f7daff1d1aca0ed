"""mxfs/openahead.py: what an OPEN brought of its file, and when it is old (pure)."""

from __future__ import annotations

from fsproto.rpc import OPEN_AHEAD_MAX
from mxfs.openahead import OpenAhead


def _view(n: int) -> memoryview:
    return memoryview(bytes(range(256)) * (n // 256 + 1))[:n]


def test_a_small_file_is_read_whole_from_what_its_open_brought():
    oa = OpenAhead()
    assert oa.want(5, -1) == OPEN_AHEAD_MAX
    oa.keep(1, 5, _view(10_000), OPEN_AHEAD_MAX, 10_000)
    assert oa.held == 10_000
    got = oa.take(1, 0, 12_288)  # the kernel asks for whole pages: a short read is EOF
    assert bytes(got) == bytes(_view(10_000)) and oa.hits == 1
    assert oa.held == 0 and oa.take(1, 0, 4096) is None  # read past: done with


def test_part_of_a_bigger_file_answers_only_reads_within_it():
    oa = OpenAhead()
    oa.keep(1, 5, _view(4096), 4096, 1 << 20)  # asked 4 KiB of a 1 MiB file
    assert bytes(oa.take(1, 1000, 100)) == bytes(_view(4096)[1000:1100])
    assert oa.take(1, 0, 8192) is None  # goes past what came, and the file goes on
    assert oa.held == 0


def test_what_could_be_old_is_dropped():
    oa = OpenAhead()
    for fh, ino in ((1, 5), (2, 5), (3, 6)):
        oa.keep(fh, ino, _view(100), OPEN_AHEAD_MAX, 100)
    oa.changed(5)  # a write or truncate here, a BREAK of its data
    assert oa.take(1, 0, 10) is None and oa.take(2, 0, 10) is None
    assert oa.take(3, 0, 10) is not None
    oa.keep(4, 7, _view(100), OPEN_AHEAD_MAX, 100)
    oa.drop(4)  # released unread
    oa.keep(5, 8, _view(100), OPEN_AHEAD_MAX, 100)
    oa.changed(None)  # the connection's promises are gone
    assert oa.take(5, 0, 10) is None and oa.held == 0


def test_it_asks_only_when_it_helps_and_within_budget():
    oa = OpenAhead(budget=2 * OPEN_AHEAD_MAX)
    assert oa.want(5, OPEN_AHEAD_MAX + 1) == 0  # bigger: the kernel reads it in big READs
    oa.kernel_has(5)
    assert oa.want(5, 100) == 0  # the kernel has its pages: it will not READ
    oa.changed(5)
    assert oa.want(5, 100) == OPEN_AHEAD_MAX  # (they were dropped)
    oa.keep(1, 6, _view(OPEN_AHEAD_MAX), OPEN_AHEAD_MAX, OPEN_AHEAD_MAX)
    oa.keep(2, 7, _view(OPEN_AHEAD_MAX), OPEN_AHEAD_MAX, OPEN_AHEAD_MAX)
    assert oa.want(8, 100) == 0  # the budget is held
    oa.drop(1)
    assert oa.want(8, 100) == OPEN_AHEAD_MAX
