"""Running a mount: connect, mount with pyfuse3, tune the bdi, serve until unmounted.

`run_mount(opts, ready)` is what the (daemonized or foreground) mount process runs; `ready` is
called with None once the mount is usable, or with an error line if it could not be set up.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import pyfuse3
import trio

import mxnet
from fsproto.errors import leaf_exception

from . import fusereaders
from .fs import MxfsOperations
from .mounttab import find_mounts, mountpoint_problem, topmost
from .options import MountOptions, OptionError
from .rpc import RpcError, open_client

log = logging.getLogger("mxfs")

READ_AHEAD_KB = 1024


class MountError(Exception):
    pass


def mount_device(mountpoint: str) -> str | None:
    """'major:minor' of the file system mounted at *mountpoint*, from /proc/self/mountinfo
    (no stat() of the mount point: that would ask our own, not yet serving, file system)."""
    try:
        _, found = find_mounts(mountpoint)
    except OSError:
        return None
    return topmost(found).device if found else None


def raise_read_ahead(mountpoint: str, kb: int = READ_AHEAD_KB) -> bool:
    dev = mount_device(mountpoint)
    if dev is None:
        return False
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kb))
        return True
    except OSError as e:
        # a container's /sys is read-only: say so, reads run 2-3x slower (README, Docker)
        log.warning("could not raise read_ahead_kb of %s to %d: %s; sequential reads will be "
                    "slower (in a container: see README, Docker)", dev, kb, e)
        return False


def fuse_options(opts: MountOptions) -> set[str]:
    out = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    out.add("nodev")  # device nodes on the export are not devices of this machine
    out.add(f"fsname={opts.host}:{opts.port}")
    out.add("subtype=mxfs")
    if opts.ro:
        out.add("ro")
    if opts.allow_other:
        out.add("allow_other")
    return out


async def run_mount(opts: MountOptions, ready: Callable[[str | None], None]) -> None:
    try:
        key = opts.read_secret()
    except OptionError as e:
        ready(str(e))
        return
    problem = mountpoint_problem(opts.mountpoint)  # again: time passed since `mxfs mount`
    if problem:
        ready(problem)
        return
    try:
        async with open_client(opts.host, opts.port, key=key, transport=opts.transport,
                               timeout=opts.timeout, checksum=opts.checksum) as rpc:
            ops = MxfsOperations(rpc, opts)
            try:
                await ops.prime()
            except RpcError as e:
                ready(f"server {opts.server} answered badly: {e.strerror}")
                return
            try:
                pyfuse3.init(ops, opts.mountpoint, fuse_options(opts))
            except RuntimeError as e:
                ready(f"cannot mount on {opts.mountpoint}: {e}")
                return
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_stop_on_signal, nursery.cancel_scope)

                    async def fuse_main() -> None:
                        ops.readers = fusereaders.install()
                        await pyfuse3.main(max_tasks=128)
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(fuse_main)
                    nursery.start_soon(ops.writer.run)
                    nursery.start_soon(ops.invalidator.run)
                    # the kernel caps read-ahead while it handles FUSE_INIT: raise it after
                    with trio.move_on_after(5):
                        await ops.initialized.wait()
                    await trio.sleep(0.02)
                    raise_read_ahead(opts.mountpoint)
                    ready(None)
            finally:
                pyfuse3.close(unmount=True)
    except (mxnet.ConnectError, OSError, BaseExceptionGroup) as eg:
        e = leaf_exception(eg)
        if isinstance(e, mxnet.ConnectError):
            msg = str(e)
            ready(msg if msg.startswith("cannot connect") else
                  f"cannot connect to {opts.server}: {msg}")
        elif isinstance(e, OSError):
            ready(f"{opts.server}: {e.strerror or e}")
        else:
            raise


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("signal received: unmounting")
            scope.cancel()
            return
