"""The client's callback caches (mxfs/leases.py): pure, no server, no FUSE."""

from __future__ import annotations

from fsproto.rpc import BREAK_ALL, BREAK_ATTR, BREAK_DATA, BREAK_NAMES
from mxfs.leases import ABSENT, Drop, Leases


def st(ino: int, size: int = 0, dev: int = 7) -> list[int]:
    return [dev, ino, 0o100644, 1, 0, 0, 0, size, 0, 4096, 0, 0, 0]


def active(**kw) -> Leases:
    le = Leases(**kw)
    le.active = True
    return le


def test_nothing_is_cached_without_callbacks_or_with_timeout_zero():
    for le in (Leases(), active(timeout=0)):
        le.know(5, st(50))
        le.put_attrs(st(50), le.generation)
        assert le.attrs((7, 50)) is None and le.key(5) is None
        assert le.lookup((7, 1), b"x")[:2] == (False, None)


def test_an_answer_that_crossed_a_break_is_not_kept():
    le = active()
    gen = le.generation
    le.apply_break([((7, 99), BREAK_ATTR, [])])  # about anything at all
    le.put_attrs(st(50), gen)
    assert le.attrs((7, 50)) is None
    le.put_attrs(st(50), le.generation)
    assert le.attrs((7, 50)) == st(50)


def test_a_break_drops_attributes_names_and_tells_the_kernel():
    le = active()
    g = le.generation
    le.know(1, st(10))  # a directory, inode 1
    le.know(2, st(20))
    le.put_attrs(st(20), g)
    le.put_entry((7, 10), b"f", ((7, 20), None), g)
    le.put_entry((7, 10), b"gone", ABSENT, g)
    assert le.lookup((7, 10), b"f")[:2] == (True, ((7, 20), None))
    assert le.lookup((7, 10), b"gone")[:2] == (True, ABSENT)
    drops = le.apply_break([((7, 20), BREAK_ATTR | BREAK_DATA, []),
                            ((7, 10), BREAK_ATTR | BREAK_NAMES, [b"gone"])])
    assert drops == [Drop(2, attr_only=False), Drop(1, attr_only=True), Drop(1, name=b"gone")]
    assert le.attrs((7, 20)) is None
    assert le.lookup((7, 10), b"gone")[:2] == (False, None)
    assert le.lookup((7, 10), b"f")[:2] == (False, None)  # its object's attributes went


def test_break_all_forgets_every_name_of_a_directory():
    le = active()
    g = le.generation
    le.know(1, st(10))
    for n in (b"a", b"b"):
        le.put_entry((7, 10), n, ABSENT, g)
    drops = le.apply_break([((7, 10), BREAK_ALL, [])])
    assert set(drops) == {Drop(1, attr_only=False), Drop(1, name=b"a"), Drop(1, name=b"b")}
    assert le.lookup((7, 10), b"a")[:2] == (False, None)


def test_a_new_directory_is_complete_until_someone_else_changes_it():
    le = active()
    g = le.generation
    le.made_dir(st(30), g)
    assert le.lookup((7, 30), b"anything")[:2] == (True, ABSENT)
    le.renamed_in((7, 30), b"f", ((7, 31), None), g)  # our own create keeps it complete
    le.put_attrs(st(31), g)
    assert le.lookup((7, 30), b"f")[:2] == (True, ((7, 31), None))
    assert le.lookup((7, 30), b"other")[:2] == (True, ABSENT)
    le.apply_break([((7, 30), BREAK_ATTR | BREAK_NAMES, [b"x"])])
    assert le.lookup((7, 30), b"other")[:2] == (False, None)


def test_the_bound_holds_and_evicting_a_name_ends_completeness():
    le = active(max_entries=3)
    g = le.generation
    le.made_dir(st(30), g)
    for i in range(5):
        le.put_entry((7, 30), b"n%d" % i, ABSENT, g)
        le.put_attrs(st(100 + i), g)
    assert le.statistics()["entries"] == 3 and le.statistics()["attrs"] == 3
    assert le.lookup((7, 30), b"n0")[:2] == (False, None)  # evicted, and no longer "complete"


def test_reset_forgets_all_and_invalidates_what_the_kernel_may_hold():
    le = active()
    g = le.generation
    le.know(1, st(10))
    le.know(2, st(20))
    le.put_attrs(st(20), g)
    le.put_entry((7, 10), b"no", ABSENT, g)
    drops = le.reset()
    assert set(drops) == {Drop(1, attr_only=False), Drop(2, attr_only=False),
                          Drop(1, name=b"no")}
    assert le.attrs((7, 20)) is None and le.lookup((7, 10), b"no")[:2] == (False, None)
    assert not le.fresh(g)


def test_everything_expires_after_the_timeout():
    """(changes made on the server's disk, not through mxfs, break no promise)"""
    now = [100.0]
    le = Leases(timeout=10, clock=lambda: now[0])
    le.active = True
    g = le.generation
    le.put_attrs(st(20), g)
    le.put_entry((7, 10), b"f", ((7, 20), None), g)
    le.made_dir(st(30), g)
    now[0] += 9.9
    assert le.attrs((7, 20)) is not None and le.lookup((7, 10), b"f")[:2][0]
    assert le.lookup((7, 30), b"x")[:2] == (True, ABSENT)
    now[0] += 0.2
    assert le.attrs((7, 20)) is None
    assert le.lookup((7, 10), b"f")[:2] == (False, None)
    assert le.lookup((7, 30), b"x")[:2] == (False, None)


def test_an_answer_from_memory_carries_what_is_left_of_its_promise():
    now = [100.0]
    le = active(timeout=10, clock=lambda: now[0])
    g = le.generation
    le.put_entry((7, 10), b"f", ((7, 20), None), g)
    now[0] = 103.0
    le.put_attrs(st(20), g)  # (a later answer about the object itself)
    le.put_entry((7, 10), b"gone", ABSENT, g)
    now[0] = 104.0
    assert le.lookup((7, 10), b"f") == (True, ((7, 20), None), st(20), 6.0)  # the older one
    assert le.lookup((7, 10), b"gone") == (True, ABSENT, None, 9.0)
    assert le.cached_attrs((7, 20)) == (st(20), 9.0)
    now[0] = 110.5  # the entry's promise ran out; the attributes' has not
    assert le.lookup((7, 10), b"f") == (False, None, None, 0.0)
    assert le.cached_attrs((7, 20)) == (st(20), 2.5)
    le.made_dir(st(30), g)
    assert le.lookup((7, 30), b"x") == (True, ABSENT, None, 10.0)


def test_an_object_said_to_have_no_xattrs_is_answered_from_memory():
    now = [100.0]
    le = active(timeout=10, clock=lambda: now[0])
    plain, tagged, unsaid = st(50) + [0], st(51) + [1], st(52)  # ST_XATTRS: 0, 1, absent
    for s in (plain, tagged, unsaid):
        le.put_attrs(s, le.generation)
    assert le.no_xattrs((7, 50))
    assert not le.no_xattrs((7, 51)) and not le.no_xattrs((7, 52))
    assert not le.no_xattrs(None) and not le.no_xattrs((7, 99))
    assert le.xattr_hits == 1
    gen = le.generation
    le.xattrs_changed((7, 50))  # our own setxattr: forgotten, and answers on their way too
    assert not le.no_xattrs((7, 50))
    le.put_attrs(plain, gen)  # (an answer sent before the change)
    assert not le.no_xattrs((7, 50))
    le.put_attrs(plain, le.generation)
    le.apply_break([((7, 50), BREAK_ATTR, [])])  # another client changed it
    assert not le.no_xattrs((7, 50))
    le.put_attrs(plain, le.generation)
    now[0] += 11  # the promise's time is up
    assert not le.no_xattrs((7, 50))
    le.put_attrs(plain, le.generation)
    le.reset()
    assert not le.no_xattrs((7, 50))


def test_our_own_changes_keep_no_xattrs_without_stretching_it():
    """Answers to our own changes carry no ST_XATTRS: they replace the attributes but leave
    "has none" as it was, with its own expiry (only a setxattr adds one)."""
    now = [100.0]
    le = active(timeout=10, clock=lambda: now[0])
    le.put_attrs(st(50) + [0], le.generation)
    now[0] += 6
    le.put_attrs(st(50, size=3), le.generation)  # our write's post-op attributes
    le.forget((7, 50))  # our chmod on its way
    assert le.no_xattrs((7, 50))
    now[0] += 5  # 11 s after the answer that said so, 5 s after our own change
    assert not le.no_xattrs((7, 50))
    le.put_attrs(st(50) + [0], le.generation)
    le.put_attrs(st(50) + [1], le.generation)  # a newer answer says it has some now
    assert not le.no_xattrs((7, 50))


def _listed(le: Leases, dir_key, n: int, mark=None) -> None:
    for i in range(n):
        le.put_attrs(st(100 + i) + [0], le.generation)
    le.put_listing(dir_key, [(b"n%d" % i, (7, 100 + i), None) for i in range(n)],
                   le.listing_mark() if mark is None else mark)


def test_a_whole_listing_is_answered_from_memory_while_nothing_in_it_changed():
    now = [100.0]
    le = active(timeout=10, clock=lambda: now[0])
    d = (7, 1)
    _listed(le, d, 3)
    got = le.listing(d)
    assert [(name, s[1], left) for name, s, _, left in got] == \
        [(b"n0", 100, 10.0), (b"n1", 101, 10.0), (b"n2", 102, 10.0)]
    le.names_changed(d)  # our own create/unlink/rename in it
    assert le.listing(d) is None
    _listed(le, d, 3)
    le.apply_break([((7, 101), BREAK_ATTR, [])])  # another client changed an entry
    assert le.listing(d) is None  # (its attributes are not cached: ask the server)
    now[0] += 4
    le.put_attrs(st(101), le.generation)  # asked again: good for 10 s, the listing for 6
    assert [left for *_, left in le.listing(d)] == [6.0, 6.0, 6.0]
    le.apply_break([(d, BREAK_ATTR, [b"n1"])])  # a name in it changed
    assert le.listing(d) is None
    _listed(le, d, 3)
    now[0] += 10
    assert le.listing(d) is None  # expired
    _listed(le, d, 3)
    le.reset()
    assert le.listing(d) is None and le.listing_hits == 2


def test_a_listing_that_crossed_a_break_or_our_own_change_is_not_kept():
    le = active()
    d = (7, 1)
    mark = le.listing_mark()
    le.apply_break([((7, 999), BREAK_ATTR, [])])
    _listed(le, d, 2, mark)
    assert le.listing(d) is None
    mark = le.listing_mark()
    le.names_changed((7, 2))  # (any directory)
    _listed(le, d, 2, mark)
    assert le.listing(d) is None
    _listed(le, d, 2)
    assert len(le.listing(d)) == 2
    assert Leases().listing(d) is None  # no callbacks: nothing kept


def test_listings_stay_within_max_entries():
    le = active(max_entries=40)
    for k in range(10):
        _listed(le, (7, k), 8)  # 80 entries asked for, 40 allowed
    assert le.statistics()["listed"] <= 40
    assert le.listing((7, 9)) is not None and le.listing((7, 0)) is None
    _listed(le, (7, 20), 11)  # more than a quarter of the bound: not kept at all
    assert le.listing((7, 20)) is None
