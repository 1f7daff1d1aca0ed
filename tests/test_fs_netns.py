"""End to end across a real network: server and client on two test hosts.

Two network namespaces joined by a veth pair stand for two machines (addresses 10.213.x.1
and .2 exist only inside these namespaces). The server runs in one (`ip netns exec`); the
FUSE client runs with its network in the other (`nsenter --net`, so the mount itself stays
visible to the test). Then the link is cut: requests must fail with EIO within `timeout`,
and work again once the link is back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_fs import PY, ROOT, SECRET, env, is_mounted, needs_fuse, sh, unmount

pytestmark = [needs_fuse, pytest.mark.skipif(
    shutil.which("ip") is None or shutil.which("nsenter") is None,
    reason="needs iproute2 and nsenter")]

TIMEOUT = 3


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[str, str, str, str]]:
    """Yield (server_ns, client_ns, server_ip, server_if) and tear everything down."""
    tag = f"{os.getpid() % 100000}"
    srv, cli = f"mxs{tag}", f"mxc{tag}"
    vs, vc = f"vs{tag}", f"vc{tag}"
    net = f"10.213.{os.getpid() % 250 + 1}"
    try:
        _ip("netns", "add", srv)
        _ip("netns", "add", cli)
        _ip("link", "add", vs, "type", "veth", "peer", "name", vc)
        _ip("link", "set", vs, "netns", srv)
        _ip("link", "set", vc, "netns", cli)
        _ip("-n", srv, "addr", "add", f"{net}.1/24", "dev", vs)
        _ip("-n", cli, "addr", "add", f"{net}.2/24", "dev", vc)
        for ns, dev in ((srv, vs), (cli, vc)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield srv, cli, f"{net}.1", vs
    finally:
        for ns in (srv, cli):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _mount(ns: str, ip: str, mnt: Path, secret: Path, transport: str) -> subprocess.Popen:
    """`mxfs mount -f` with its network in namespace *ns* (the mount stays visible here)."""
    mount = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns}", PY, "-m", "mxfs.cli", "mount",
         f"{ip}:7070", str(mnt), "-o",
         f"transport={transport},secret_file={secret},timeout={TIMEOUT}", "-f"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(),
        cwd=ROOT)
    deadline = time.monotonic() + 20
    while not is_mounted(mnt):
        assert mount.poll() is None, mount.stderr.read() if mount.stderr else ""
        assert time.monotonic() < deadline, "mount did not appear"
        time.sleep(0.05)
    return mount


def _stop(p: subprocess.Popen | None) -> None:
    if p is not None and p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@contextlib.contextmanager
def served_and_mounted(tmp: Path, transport: str, *,
                       on_server_host: Path | None = None
                       ) -> Iterator[tuple[Path, Path, str, str]]:
    """A server on one test host, a client on the other; with *on_server_host*, a second
    client mounted there, on the server's own host."""
    export, mnt, secret = tmp / "export", tmp / "mnt", tmp / "secret"
    export.mkdir()
    mnt.mkdir()
    secret.write_bytes(SECRET + b"\n")
    with two_hosts() as (srv, cli, ip, vs):
        server = mount = local = None
        try:
            server = subprocess.Popen(
                ["ip", "netns", "exec", srv, PY, "-m", "server", str(export), "--listen",
                 f"{ip}:7070", "--secret-file", str(secret), "-o", "no_root_squash"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env(),
                cwd=ROOT)
            assert server.stdout is not None
            line = server.stdout.readline()
            assert re.search(r"listening on", line), line
            mount = _mount(cli, ip, mnt, secret, transport)
            if on_server_host is not None:
                on_server_host.mkdir()
                local = _mount(srv, ip, on_server_host, secret, transport)
            yield export, mnt, srv, vs
        finally:
            for m in (mnt, on_server_host):
                if m is not None:
                    unmount(m)
            for p in (local, mount, server):
                _stop(p)
            for m in (mnt, on_server_host):
                if m is not None:
                    unmount(m)


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_two_hosts_tools_and_link_loss(tmp_path: Path, transport: str) -> None:
    with served_and_mounted(tmp_path, transport) as (export, mnt, srv, vs):
        # ordinary use across the link
        sh(f"dd if=/dev/urandom of={tmp_path}/blob bs=1M count=8 status=none")
        sh(f"cp {tmp_path}/blob {mnt}/blob && cmp {tmp_path}/blob {export}/blob")
        sh(f"mkdir -p {mnt}/d/e && echo hello > {mnt}/d/e/f && cat {export}/d/e/f")
        assert sh(f"sha256sum < {mnt}/blob").stdout == sh(f"sha256sum < {tmp_path}/blob").stdout

        # the link goes down: a request fails with EIO within the timeout, never hangs
        _ip("-n", srv, "link", "set", vs, "down")
        try:
            t0 = time.monotonic()
            with pytest.raises(OSError) as exc:
                os.stat(mnt / "new-name-never-cached")  # (d is ours: its names are known)
            took = time.monotonic() - t0
            assert exc.value.errno in (errno.EIO, errno.ENOTCONN, errno.ETIMEDOUT)
            assert took < TIMEOUT * 3 + 5
        finally:
            _ip("-n", srv, "link", "set", vs, "up")

        # the link is back: the client reconnects by itself and the mount keeps working
        deadline = time.monotonic() + 30
        while True:
            try:
                assert (mnt / "d" / "e" / "f").read_text() == "hello\n"
                break
            except OSError:
                assert time.monotonic() < deadline, "mount did not recover"
                time.sleep(0.3)
        sh(f"echo again > {mnt}/after && cat {export}/after")


@pytest.mark.parametrize("transport", ["mx", "gm"])
def test_a_change_across_the_link_is_seen_at_once(tmp_path: Path, transport: str) -> None:
    """Callbacks between two hosts: a client across the veth link and one on the server's
    host see each other's changes at their very next look (no timeout waited out)."""
    near = tmp_path / "near"
    with served_and_mounted(tmp_path, transport, on_server_host=near) as (export, far, _, _):
        (far / "f").write_text("one")
        assert (near / "f").read_text() == "one"
        os.stat(near / "f")
        os.chmod(far / "f", 0o600)
        assert os.stat(near / "f").st_mode & 0o777 == 0o600
        (near / "f").write_text("two")
        assert (far / "f").read_text() == "two"
        assert not (near / "g").exists()
        os.rename(far / "f", far / "g")
        assert (near / "g").read_text() == "two" and not (near / "f").exists()
