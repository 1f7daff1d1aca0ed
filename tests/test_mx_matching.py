"""mxnet.matching: the posted/unexpected queues against a simple reference model (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxnet import MASK_ALL, MatchError
from mxnet.matching import Matcher, check_match, matches


class Item:
    """Stands in for a receive request (the matcher stores ``_posted`` on it)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._posted = None

    def __repr__(self) -> str:
        return f"Item({self.n})"


class Reference:
    """The rule, written the obvious way: earliest posted receive that accepts the message;
    earliest unexpected message that a new receive accepts."""

    def __init__(self) -> None:
        self.posted: list[tuple[int, int, object, Item]] = []
        self.unexpected: list[tuple[int, object, object]] = []

    def post(self, match, mask, peer, item):
        for i, (m, p, rec) in enumerate(self.unexpected):
            if (peer is None or p == peer) and m & mask == match:
                del self.unexpected[i]
                return rec
        self.posted.append((match, mask, peer, item))
        return None

    def arrive(self, m, peer):
        for i, (match, mask, want, item) in enumerate(self.posted):
            if (want is None or want == peer) and m & mask == match:
                del self.posted[i]
                return item
        return None

    def cancel(self, item):
        for i, entry in enumerate(self.posted):
            if entry[3] is item:
                del self.posted[i]
                return True
        return False


# small value spaces so that collisions (and therefore matches) are frequent
MATCHES = st.sampled_from([0, 1, 2, 3, 0x10, 0x11, 0xFFFF_FFFF_FFFF_FFFF, 1 << 63])
MASKS = st.sampled_from([MASK_ALL, MASK_ALL, 0, 0xF, 0xF0, 0x1, 1 << 63, MASK_ALL ^ 1])
PEERS = st.sampled_from(["p", "q", "r"])

ops = st.lists(
    st.one_of(
        st.tuples(st.just("post"), MATCHES, MASKS, st.none() | PEERS),
        st.tuples(st.just("arrive"), MATCHES, PEERS),
        st.tuples(st.just("cancel"), st.integers(0, 40)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_matcher_agrees_with_reference(seq):
    m: Matcher = Matcher()
    ref = Reference()
    items: list[Item] = []
    n = 0
    for op in seq:
        if op[0] == "post":
            _, match, mask, peer = op
            match &= mask  # a receive must be satisfiable
            item = Item(n)
            n += 1
            items.append(item)
            got = m.post(match, mask, peer, item)
            want = ref.post(match, mask, peer, item)
            assert (got.item if got else None) is want
            if got:
                assert (peer is None or got.peer == peer) and got.match & mask == match
        elif op[0] == "arrive":
            _, match, peer = op
            got = m.arrive(match, peer)
            want = ref.arrive(match, peer)
            assert got is want
            if got is None:
                rec = ("msg", n)
                n += 1
                m.add_unexpected(match, peer, 1, rec)
                ref.unexpected.append((match, peer, rec))
        else:
            if not items:
                continue
            item = items[op[1] % len(items)]
            assert m.cancel(item) == ref.cancel(item)
        assert m.posted_count() == len(ref.posted)
        assert m.unexpected_count() == len(ref.unexpected)
        assert m.unexpected_bytes == len(ref.unexpected)


@given(st.lists(st.tuples(PEERS, st.integers(0, 3)), max_size=40))
def test_per_peer_order_preserved(msgs):
    """Unexpected messages from one peer are taken in the order they arrived."""
    m: Matcher = Matcher()
    for i, (peer, tag) in enumerate(msgs):
        assert m.arrive(tag, peer) is None
        m.add_unexpected(tag, peer, 0, (peer, i))
    for peer in ("p", "q", "r"):
        got = []
        while (u := m.post(0, 0, peer, Item(-1))) is not None:
            got.append(u.item[1])
        assert got == [i for i, (p, _) in enumerate(msgs) if p == peer]


def test_posted_order_between_exact_and_wildcard():
    m: Matcher = Matcher()
    a, b, c = Item(0), Item(1), Item(2)
    m.post(0x10, 0xF0, None, a)  # wildcard first
    m.post(0x11, MASK_ALL, None, b)  # exact second
    m.post(0x11, MASK_ALL, None, c)
    assert m.arrive(0x11, "p") is a
    assert m.arrive(0x11, "p") is b
    assert m.arrive(0x11, "p") is c
    assert m.arrive(0x11, "p") is None


def test_exact_posted_before_wildcard_wins():
    m: Matcher = Matcher()
    a, b = Item(0), Item(1)
    m.post(5, MASK_ALL, None, a)
    m.post(0, 0, None, b)
    assert m.arrive(5, "p") is a
    assert m.arrive(5, "p") is b


@pytest.mark.parametrize(("match", "mask"), [
    (1, 0), (0x100, 0xFF), (1 << 63, (1 << 63) - 1), (MASK_ALL, MASK_ALL - 1),
])
def test_unsatisfiable_receive_refused(match, mask):
    with pytest.raises(MatchError):
        check_match(match, mask)
    m: Matcher = Matcher()
    with pytest.raises(MatchError):
        m.post(match, mask, None, Item(0))
    with pytest.raises(MatchError):
        m.probe(match, mask)
    assert m.posted_count() == 0


@pytest.mark.parametrize(("match", "mask"), [(-1, MASK_ALL), (0, -1), (1 << 64, MASK_ALL),
                                             (0, 1 << 64)])
def test_out_of_range_refused(match, mask):
    with pytest.raises(MatchError):
        check_match(match, mask)
    assert issubclass(MatchError, ValueError)


@given(st.integers(0, MASK_ALL), st.integers(0, MASK_ALL), st.integers(0, MASK_ALL))
def test_matches_rule(msg, match, mask):
    match &= mask
    check_match(match, mask)
    assert matches(msg, match, mask) == (msg & mask == match)
    assert matches(msg, msg & mask, mask)


def test_peer_filter():
    m: Matcher = Matcher()
    a, b = Item(0), Item(1)
    m.post(7, MASK_ALL, "q", a)
    m.post(7, MASK_ALL, None, b)
    assert m.arrive(7, "p") is b  # a only takes q's messages
    assert m.arrive(7, "p") is None
    m.add_unexpected(7, "p", 3, "from-p")
    assert m.arrive(7, "q") is a
    # a receive filtered on q does not take p's unexpected message, an open one does
    assert m.post(7, MASK_ALL, "q", Item(2)) is None
    assert m.probe(7, MASK_ALL, "q") is None
    assert m.probe(7, MASK_ALL, "p").item == "from-p"
    assert m.post(7, MASK_ALL, None, Item(3)).item == "from-p"


def test_cancel():
    m: Matcher = Matcher()
    a = Item(0)
    assert not m.cancel(a)  # never posted
    m.post(1, MASK_ALL, None, a)
    assert m.cancel(a)
    assert not m.cancel(a)
    assert m.arrive(1, "p") is None
    b = Item(1)
    m.post(0, 0, None, b)
    assert m.arrive(9, "p") is b
    assert not m.cancel(b)  # already matched


def test_bounded_unexpected_queue():
    m: Matcher = Matcher(max_count=3, max_bytes=100)
    assert m.has_room(100)
    assert not m.has_room(101)
    m.add_unexpected(1, "p", 60, "a")
    assert m.has_room(40) and not m.has_room(41)
    m.add_unexpected(1, "p", 0, "b")
    m.add_unexpected(1, "p", 0, "c")
    assert not m.has_room(0)  # count limit
    assert m.high_water == 3
    assert m.post(1, MASK_ALL, None, Item(0)).item == "a"
    assert m.unexpected_bytes == 0 and m.has_room(100)
    assert m.high_water == 3


def test_drop_peer():
    m: Matcher = Matcher()
    a, b, c = Item(0), Item(1), Item(2)
    m.post(1, MASK_ALL, "p", a)
    m.post(0, 0, "p", b)
    m.post(0, 0, None, c)
    m.add_unexpected(5, "p", 10, "p5")
    m.add_unexpected(5, "q", 20, "q5")
    doomed = m.drop_peer("p")
    assert set(map(id, doomed)) == {id(a), id(b)}
    assert m.posted_count() == 1 and m.unexpected_count() == 1 and m.unexpected_bytes == 20
    assert not m.cancel(a)
    assert m.arrive(1, "q") is c
