"""mxfs/attrcache.py without a mount or a trio run: a clock the test moves by hand."""

from __future__ import annotations

from mxfs.attrcache import Expiring, NoCapability, PostOpAttrs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_expiring_answers_until_its_deadline() -> None:
    clock = Clock()
    m: Expiring[int, str] = Expiring(10, clock)
    m.put(1, "a", 2.0)
    assert m.get(1) == "a" and m.get(1) == "a"  # get leaves it
    clock.now += 1.9
    assert m.get(1) == "a"
    clock.now += 0.1
    assert m.get(1) is None  # at the deadline: expired
    assert m.pop(1) is None and len(m) == 0  # pop takes it either way


def test_expiring_pop_takes_a_fresh_value_once() -> None:
    m: Expiring[int, str] = Expiring(10, Clock())
    m.put(1, "a", 1.0)
    assert m.pop(1) == "a"
    assert m.pop(1) is None
    m.put(2, "b", 1.0)
    m.discard(2)
    m.discard(3)  # (unknown: no error)
    assert m.get(2) is None


def test_expiring_past_its_limit_forgets_everything() -> None:
    m: Expiring[int, int] = Expiring(3, Clock())
    for i in range(4):
        m.put(i, i, 10.0)
    assert len(m) == 4  # the limit is checked before adding: one more than it fits
    m.put(4, 4, 10.0)
    assert len(m) == 1 and m.get(4) == 4 and m.get(0) is None


def test_post_op_attributes_answer_one_getattr() -> None:
    clock = Clock()
    attrs = PostOpAttrs(1.0, clock)
    st = list(range(13))
    attrs.changed(5, st)
    assert attrs.take(5) == st
    assert attrs.take(5) is None  # used up
    attrs.changed(5, st)
    attrs.forget(5)
    assert attrs.take(5) is None
    attrs.changed(6, st)
    clock.now += 1.0
    assert attrs.take(6) is None  # older than attr_timeout


def test_post_op_attributes_off_with_attr_timeout_0() -> None:
    attrs = PostOpAttrs(0.0, Clock())
    attrs.changed(5, [0] * 13)
    assert attrs.take(5) is None


def test_no_capability_is_remembered_for_attr_timeout() -> None:
    clock = Clock()
    nc = NoCapability(1.0, clock)
    assert not nc.known(7)
    nc.remember(7)
    assert nc.known(7) and nc.known(7)
    nc.forget(7)  # its xattrs changed
    assert not nc.known(7)
    nc.remember(7)
    clock.now += 1.5
    assert not nc.known(7)
