"""mxfs/readdir.py: the readdir buffer and "." / ".." (pure)."""

from __future__ import annotations

from mxfs.readdir import DOTS, DirBuffer, dots, server_offset

ST = [0] * 13


def _batch(*pairs: tuple[bytes, int]) -> list[list[object]]:
    """READDIR entries [name, server offset after it, stat, handle]."""
    return [[name, nxt, ST, None] for name, nxt in pairs]


def test_dots_owed_from_each_offset() -> None:
    assert dots(0, 5, 1) == [(b".", 5, 1), (b"..", 1, 2)]
    assert dots(1, 5, 1) == [(b"..", 1, 2)]
    assert dots(2, 5, 1) == []
    assert server_offset(DOTS) == 0 and server_offset(10) == 8


def test_entries_carry_their_own_and_next_offsets() -> None:
    buf = DirBuffer()
    buf.add(2, _batch((b"a", 10), (b"b", 20)), eof=False)
    assert [(e.own, e.name, e.next) for e in buf.entries] == [(2, b"a", 12), (12, b"b", 22)]
    assert not buf.eof
    buf.add(22, _batch((b"c", 30)), eof=1)
    assert buf.eof and buf.entries[-1].own == 22


def test_going_on_from_the_first_entry_keeps_them() -> None:
    buf = DirBuffer()
    buf.add(2, _batch((b"a", 10), (b"b", 20), (b"c", 30)), eof=True)
    buf.entries.pop(0)  # the kernel took "a"
    buf.rewind(12)
    assert [e.name for e in buf.entries] == [b"b", b"c"] and buf.eof


def test_a_seek_forward_drops_what_came_before() -> None:
    buf = DirBuffer()
    buf.add(2, _batch((b"a", 10), (b"b", 20), (b"c", 30)), eof=True)
    buf.rewind(22)
    assert [e.name for e in buf.entries] == [b"c"] and buf.eof


def test_an_offset_nothing_starts_at_drops_everything() -> None:
    buf = DirBuffer()
    buf.add(2, _batch((b"a", 10), (b"b", 20)), eof=True)
    buf.rewind(0)  # a rewind (from the start)
    assert buf.entries == [] and not buf.eof
    buf.add(2, _batch((b"a", 10), (b"b", 20)), eof=True)
    buf.rewind(15)  # between entries
    assert buf.entries == [] and not buf.eof


def test_the_kernels_last_readdir_at_the_end_needs_no_fetch() -> None:
    buf = DirBuffer()
    buf.add(2, _batch((b"a", 10), (b"b", 20)), eof=True)
    buf.entries.clear()  # the kernel took both
    buf.rewind(22)  # and asks once more from where the directory ends
    assert buf.entries == [] and buf.eof
    buf.rewind(12)  # a seek back into what was taken: fetch again
    assert buf.entries == [] and not buf.eof


def test_an_empty_directory_ends_where_it_starts() -> None:
    buf = DirBuffer()
    buf.add(2, [], eof=True)
    buf.rewind(2)
    assert buf.eof
    buf.rewind(0)  # rewinddir: look again
    assert not buf.eof


def test_the_end_is_not_known_before_eof() -> None:
    buf = DirBuffer()
    buf.add(2, _batch((b"a", 10)), eof=False)
    buf.entries.clear()
    buf.rewind(12)
    assert not buf.eof


def test_a_listing_from_memory_uses_the_servers_ordinals() -> None:
    buf = DirBuffer()
    buf.add_listing([(b"a", ST, None, 5.0), (b"b", ST, "fh", 4.0)])
    assert [(e.own, e.name, e.next, e.fh, e.left) for e in buf.entries] == \
        [(2, b"a", 3, None, 5.0), (3, b"b", 4, "fh", 4.0)]
    assert buf.eof and buf.end == 4
    fetched = DirBuffer()  # the same directory from the server: offsets agree
    fetched.add(2, _batch((b"a", 1), (b"b", 2)), eof=True)
    assert [(e.own, e.next) for e in fetched.entries] == [(2, 3), (3, 4)]
