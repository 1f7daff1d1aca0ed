"""End to end: a full disk fails the write that hit it, never the connection (issue 11, item 4).

The export is a small tmpfs. Writes past its size give ENOSPC at fsync and close, on both
transports. On gm the write data used to be copied into the file inside mxnet's reader, and
the ENOSPC ended the whole connection: EIO instead of ENOSPC, every handle of the client
closed by the server. Now the receive alone fails (LOCAL_ERROR → ENOSPC) and the mount goes
on over the same connection: a file opened before still reads, new files work, nothing
reconnected.
"""

from __future__ import annotations

import errno
import os

import pytest
from conftest_fs import cluster, errno_of, needs_fuse, small_export

pytestmark = [needs_fuse, pytest.mark.fuse]

KB = 1024
MB = 1024 * KB
EXPORT_MB = 4  # MiB: the export's size




@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_full_disk_gives_enospc_and_the_mount_keeps_working(tmp_path, transport):
    keep_data = os.urandom(64 * KB)
    with small_export(tmp_path, f"{EXPORT_MB}m") as export, cluster(tmp_path, transport) as (server, (m,)):
        (export / "keep").write_bytes(keep_data)
        keep = os.open(m.mnt / "keep", os.O_RDONLY)  # a handle the connection must not lose
        try:
            assert os.pread(keep, 4 * KB, 0) == keep_data[: 4 * KB]
            fd = os.open(m.mnt / "big", os.O_WRONLY | os.O_CREAT, 0o644)
            errors = set()
            block = b"z" * MB  # large writes: the data goes as WDATA, not inline
            try:
                # Many writes past the end of the disk: on gm the bug needs the server to post
                # its receive before the data arrives (else the data waited in the unexpected
                # queue and the error surfaced in the server's task), a race a few percent of
                # large WDATA messages lose; 160 of them make it near certain.
                for _ in range(EXPORT_MB + 160):
                    errors.add(errno_of(os.write, fd, block))
                    if errors - {0, errno.ENOSPC}:
                        break
                synced = errno_of(os.fsync, fd)
            finally:
                closed = errno_of(os.close, fd)
            # the error is reported (at a write, or at fsync/close if every write had
            # returned before it happened), and it is ENOSPC: never EIO or EBADF, the
            # answers of a dropped connection
            seen = errors | {synced, closed}
            assert errno.ENOSPC in seen and seen <= {0, errno.ENOSPC}, (errors, synced, closed)

            # the same connection goes on: the handle opened before still reads, and the
            # server closed none of this client's handles
            assert os.pread(keep, len(keep_data), 0) == keep_data
            assert m.stats()["client"]["reconnects"] == 0
            assert "gone; closed" not in server.log_text()

            # and once there is room again, files are created, written and read as usual
            os.unlink(m.mnt / "big")
            data = os.urandom(1 * MB + 123)
            (m.mnt / "after").write_bytes(data)
            assert (m.mnt / "after").read_bytes() == data
            assert (export / "after").read_bytes() == data
        finally:
            os.close(keep)
