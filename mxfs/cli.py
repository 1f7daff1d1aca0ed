"""The mxfs command: mount, umount, stats, install-helper.

    mxfs mount HOST:PORT MOUNTPOINT [-o OPT[,OPT...]] [-f]
    mxfs umount [-z] MOUNTPOINT
    mxfs stats [--json] MOUNTPOINT
    mxfs install-helper [--dir /sbin]     # mount.fuse.mxfs, so `mount -t fuse.mxfs` works

`mount` returns once the file system is usable: it forks the mount process and waits on a pipe
for its "ready" (or its one-line error). With -f it stays in the foreground.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from typing import Any, NoReturn

from .mounttab import (
    MOUNTINFO,
    MXFS_FSTYPE,
    STATS_XATTR,
    find_mounts,
    mountpoint_problem,
    topmost,
)
from .options import MountOptions, OptionError, parse_options

PROG = "mxfs"


def _err(msg: str) -> int:
    print(f"{PROG}: {msg}", file=sys.stderr)
    return 1


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser(command: str) -> argparse.ArgumentParser:
    return _Parser(prog=f"{PROG} {command}")


# -- mount -------------------------------------------------------------------------------------
def _setup_logging(opts: MountOptions, to_stderr: bool) -> None:
    level = logging.DEBUG if opts.debug else logging.WARNING
    if not opts.debug and os.environ.get("MXFS_LOG_LEVEL"):  # e.g. info, in docker/Dockerfile
        level = logging.getLevelName(os.environ["MXFS_LOG_LEVEL"].upper())
        level = level if isinstance(level, int) else logging.WARNING
    logfile = os.environ.get("MXFS_LOG_FILE")
    handler: logging.Handler
    if logfile:
        handler = logging.FileHandler(logfile)
    elif to_stderr:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _run_in_process(opts: MountOptions, notify: Any) -> int:
    import trio

    from .mount import run_mount

    state = {"said": False, "ok": False}

    def ready(error: str | None) -> None:
        if state["said"]:
            return
        state["said"] = True
        state["ok"] = error is None
        notify(error)

    trio.run(run_mount, opts, ready)
    if not state["said"]:
        notify("mount process ended before the mount was ready")
        return 1
    return 0 if state["ok"] else 1


def do_mount(opts: MountOptions) -> int:
    if opts.foreground:
        _setup_logging(opts, to_stderr=True)

        def notify(error: str | None) -> None:
            if error:
                _err(error)

        return _run_in_process(opts, notify)

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the mount process
        os.close(r)
        code = 1
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.close(devnull)
            _setup_logging(opts, to_stderr=False)

            def notify(error: str | None) -> None:
                try:
                    os.write(w, b"ok\n" if error is None else f"err {error}\n".encode())
                    os.close(w)
                except OSError:
                    pass

            code = _run_in_process(opts, notify)
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n"):
            break
    os.close(r)
    line = data.decode(errors="replace").strip()
    if line == "ok":
        return 0
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    return _err(line[4:] if line.startswith("err ") else "mount process died before it was ready")


def _mount_main(argv: list[str]) -> int:
    p = _parser("mount")
    p.add_argument("server", metavar="HOST:PORT")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="opts", action="append", default=[], metavar="OPTIONS")
    p.add_argument("-f", "--foreground", action="store_true")
    # flags mount(8) passes to helpers: accepted, ignored
    p.add_argument("-n", "-s", "-v", dest="_ignored", action="count", default=0,
                   help=argparse.SUPPRESS)
    p.add_argument("-t", dest="_type", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        opts = parse_options(args.server, args.mountpoint, args.opts, foreground=args.foreground)
        opts.read_secret()  # fail early, in the foreground, with a clear line
    except OptionError as e:
        return _err(str(e))
    problem = mountpoint_problem(opts.mountpoint)
    if problem:
        return _err(problem)
    return do_mount(opts)


# -- umount / stats ----------------------------------------------------------------------------
def _umount_problem(path: str) -> tuple[str, str | None]:
    """(the mount point to hand to fusermount, or why *path* must not be unmounted)."""
    try:
        where, found = find_mounts(path)
    except OSError as e:
        return path, f"cannot read {MOUNTINFO}: {e.strerror}"
    if not found:
        if not os.path.lexists(where):
            return where, f"cannot unmount {path}: no such file or directory"
        return where, f"cannot unmount {path}: not mounted"
    top = topmost(found)
    if top.fstype != MXFS_FSTYPE:
        return where, (f"cannot unmount {path}: not an mxfs mount ({top.describe()}); "
                       "left mounted")
    return where, None


def _umount_main(argv: list[str]) -> int:
    p = _parser("umount")
    p.add_argument("-z", "--lazy", action="store_true")
    p.add_argument("mountpoint")
    args = p.parse_args(argv)
    where, problem = _umount_problem(args.mountpoint)
    if problem:
        return _err(problem)
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u"] + (["-z"] if args.lazy else []) if tool else \
        ["umount"] + (["-l"] if args.lazy else [])
    r = subprocess.run([*cmd, where], capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        return _err(f"cannot unmount {args.mountpoint}: {why}")
    return 0


def format_stats(d: dict[str, Any]) -> str:
    lines = [f"mxfs {d.get('server', '?')} transport={d.get('transport', '?')}"]
    for side in ("client", "server_side"):
        s = d.get(side) or {}
        if "error" in s:
            lines.append(f"  {side}: unavailable ({s['error']})")
            continue
        delivered = s.get("payload_bytes_received", 0)
        lines.append(f"  {'client' if side == 'client' else 'server'}:")
        rows = [
            ("messages sent", s.get("messages_sent")),
            ("messages received", s.get("messages_received")),
            ("payload bytes sent", s.get("payload_bytes_sent")),
            ("payload bytes received", delivered),
            ("payload bytes copied", s.get("payload_bytes_copied")),
            ("copies per byte delivered", s.get("copies_per_byte")),
            ("registrations", s.get("registrations")),
            ("eager / rendezvous sends", f"{s.get('eager_sends')} / {s.get('rendezvous_sends')}"),
            ("sendfile / splice calls", f"{s.get('sendfile_calls')} / {s.get('splice_calls')}"),
        ]
        if side == "client":
            rows.append(("reconnects", s.get("reconnects")))
            rows.append(("FUSE reader handoffs", d.get("fuse_reader_handoffs")))
        else:
            rows.append(("requests served", s.get("requests")))
            rows.append(("  inline / in a task",
                         f"{s.get('served_inline')} / {s.get('served_in_task')}"))
        for name, value in rows:
            lines.append(f"    {name:<28}{value}")
    c = d.get("cache") or {}
    if c.get("active"):
        lines.append("  answered from memory (callbacks):")
        for name, value in (
                ("lookups and getattrs", f"{c.get('hits')} (asked: {c.get('misses')})"),
                ("xattrs known absent", c.get("xattr_hits")),
                ("directory listings", c.get("listing_hits")),
                ("reads an OPEN brought", c.get("ahead_hits")),
                ("breaks / resets", f"{c.get('breaks')} / {c.get('resets')}"),
                ("cached attrs/names/listed", f"{c.get('attrs')} / {c.get('entries')} / "
                                                  f"{c.get('listed')}")):
            lines.append(f"    {name:<28}{value}")
    return "\n".join(lines)


def _stats_main(argv: list[str]) -> int:
    p = _parser("stats")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.add_argument("mountpoint")
    args = p.parse_args(argv)
    try:
        raw = os.getxattr(args.mountpoint, STATS_XATTR)
    except OSError as e:
        return _err(f"{args.mountpoint}: not an mxfs mount or no answer ({e.strerror})")
    if args.json:
        print(raw.decode())
    else:
        print(format_stats(json.loads(raw)))
    return 0


# -- mount helper ------------------------------------------------------------------------------
HELPER = """#!/bin/sh
# mount(8) helper for `mount -t fuse.mxfs HOST:PORT MOUNTPOINT -o OPTIONS` (installed by mxfs)
exec {python} -m mxfs.cli mount "$@"
"""


def _install_helper_main(argv: list[str]) -> int:
    p = _parser("install-helper")
    p.add_argument("--dir", default="/sbin")
    args = p.parse_args(argv)
    path = os.path.join(args.dir, "mount.fuse.mxfs")
    try:
        with open(path, "w") as f:
            f.write(HELPER.format(python=sys.executable))
        os.chmod(path, 0o755)
    except OSError as e:
        return _err(f"cannot write {path}: {e.strerror}")
    print(path)
    return 0


COMMANDS = {
    "mount": _mount_main,
    "umount": _umount_main,
    "stats": _stats_main,
    "install-helper": _install_helper_main,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[1] if __doc__ else "", file=sys.stderr)
        return 0 if argv else 2
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        if ":" in argv[0] and len(argv) >= 2:  # `mxfs HOST:PORT MNT -o ...` (mount.fuse style)
            return _mount_main(argv)
        return _err(f"unknown command {argv[0]!r} (mount, umount, stats, install-helper)")
    return cmd(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
