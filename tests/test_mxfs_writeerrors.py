"""Write errors per file (errseq) and the server write verifier: pure bookkeeping."""

import errno

from mxfs.writeback import may_continue
from mxfs.writeerrors import WriteErrors


def test_every_description_sees_the_error_at_fsync_and_close() -> None:
    w = WriteErrors()
    a, b = w.sample(1), w.sample(1)
    w.record(1, errno.ENOSPC)
    assert w.for_close(1, a) == errno.ENOSPC  # a child's close of a's copy...
    assert w.for_close(1, a) == errno.ENOSPC  # ...does not take it from the parent
    assert w.for_fsync(1, a) == errno.ENOSPC
    assert w.for_fsync(1, a) == 0  # fsync reports once per description
    assert w.for_write(1, b) == errno.ENOSPC and w.for_write(1, b) == 0
    assert w.for_fsync(1, b) == errno.ENOSPC and w.for_close(1, b) == errno.ENOSPC
    late = w.sample(1)  # opened after the error: not its business
    assert w.for_fsync(1, late) == 0 and w.for_close(1, late) == 0
    assert w.for_close(2, w.sample(2)) == 0  # other files unaffected
    w.forget(1)
    assert len(w) == 0


def test_a_new_verifier_means_unsynced_writes_may_be_lost() -> None:
    w = WriteErrors()
    cur = w.sample(7)
    w.acknowledged(7, epoch=1, verifier=111)
    assert not w.needs_check(7, epoch=1) and w.needs_check(7, epoch=2)
    w.check(7, 111, epoch=2)  # same server run after a reconnect: nothing lost
    assert not w.needs_check(7, epoch=2)  # (and no need to ask again)
    assert w.for_fsync(7, cur) == 0
    w.check(7, 222)  # another run: the acknowledged writes may be gone
    assert w.for_fsync(7, cur) == errno.EIO and w.lost_by_restart == 1


def test_fsync_makes_writes_durable_unless_more_came() -> None:
    w = WriteErrors()
    w.acknowledged(3, 1, 5)
    token = w.unsynced_since(3)
    w.acknowledged(3, 1, 5)  # a write raced the fsync
    w.synced(3, token)
    assert w.unsynced_since(3) == 2
    w.synced(3, w.unsynced_since(3))
    assert w.unsynced_since(3) == -1
    cur = w.sample(3)
    w.acknowledged(3, 1, 5)
    w.acknowledged(3, 2, 6)  # answered by two server runs: the first one's may be gone
    assert w.for_close(3, cur) == errno.EIO and w.lost_by_restart == 1


def test_where_the_kernel_may_cut_a_write() -> None:
    assert may_continue(100000, 2400)  # unaligned head page: the rest follows
    assert not may_continue(102400, 97600)  # ends unaligned: the last piece
    assert may_continue(0, 1 << 20)  # a max_write chunk
    assert not may_continue(0, 4096)  # a whole aligned small write
