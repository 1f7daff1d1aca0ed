"""The mxfs / mxfs-server command lines: option parsing (pure) and real invocations."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from conftest_fs import PY, ROOT, MountProc, ServerProc, env, is_mounted, needs_fuse, unmount

from mxfs.cli import format_stats
from mxfs.options import OptionError, parse_address, parse_options


def test_parse_address():
    assert parse_address("host:1234") == ("host", 1234)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("host", "host:", ":12", "host:0", "host:70000", "host:x", "[::1]80"):
        with pytest.raises(OptionError):
            parse_address(bad)


def test_parse_options():
    mo = parse_options("10.0.0.1:7070", "/mnt", [
        "transport=gm,secret_file=/s,ro", "allow_other,attr_timeout=0.5,entry_timeout=2",
        "timeout=3,rw,nosuid,nodev,_netdev"])
    assert (mo.host, mo.port, mo.mountpoint) == ("10.0.0.1", 7070, "/mnt")
    assert mo.transport == "gm" and mo.secret_file == "/s" and mo.ro and mo.allow_other
    assert (mo.attr_timeout, mo.entry_timeout, mo.timeout) == (0.5, 2.0, 3.0)
    d = parse_options("h:1", "/m", [])
    assert d.transport == "mx" and d.timeout == 10.0 and d.attr_timeout == 1.0
    for bad in (["transport=ib"], ["bogus"], ["timeout=0"], ["attr_timeout=x"], ["secret_file="],
                ["ro=1"]):
        with pytest.raises(OptionError):
            parse_options("h:1", "/m", bad)


def test_secret_lookup(tmp_path, monkeypatch):
    s = tmp_path / "s"
    s.write_bytes(b"  key\n")
    assert parse_options("h:1", "/m", [f"secret_file={s}"]).read_secret() == b"key"
    with pytest.raises(OptionError, match="cannot read"):
        parse_options("h:1", "/m", [f"secret_file={tmp_path}/nope"]).read_secret()
    monkeypatch.setenv("MXFS_SECRET_FILE", str(s))
    assert parse_options("h:1", "/m", []).read_secret() == b"key"
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(OptionError, match="empty"):
        parse_options("h:1", "/m", [f"secret_file={tmp_path}/empty"]).read_secret()


def test_format_stats():
    out = format_stats({"server": "h:1", "transport": "mx",
                        "client": {"payload_bytes_copied": 0, "copies_per_byte": 0.0},
                        "server_side": {"error": "down"}})
    assert "payload bytes copied" in out and "unavailable" in out
    assert "from memory" not in out  # no callbacks: no such section
    out = format_stats({"cache": {"active": 1, "hits": 7, "misses": 2, "xattr_hits": 40,
                                  "listing_hits": 3, "breaks": 1, "resets": 0, "attrs": 9,
                                  "entries": 8, "listed": 5}})
    assert "7 (asked: 2)" in out and "xattrs known absent" in out and "9 / 8 / 5" in out


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "mxfs.cli", *args], capture_output=True, text=True,
                          env=env(), cwd=ROOT, timeout=timeout)


def _one_error_line(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mxfs"), r.stderr
    for w in words:
        assert w in lines[0], r.stderr


def test_cli_errors(tmp_path):
    s = tmp_path / "secret"
    s.write_text("k")
    mnt = tmp_path / "m"
    mnt.mkdir()
    _one_error_line(_run("mount", "127.0.0.1:1", str(mnt), "-o", f"secret_file={s},colour=red"),
                    "unknown mount option")
    _one_error_line(_run("mount", "nohost", str(mnt)), "HOST:PORT")
    _one_error_line(_run("mount", "127.0.0.1:9", str(mnt), "-o", f"secret_file={tmp_path}/x"),
                    "secret")
    _one_error_line(_run("mount", "127.0.0.1:1", str(tmp_path / "nodir"), "-o",
                         f"secret_file={s}"), "does not exist")
    _one_error_line(_run("mount", "127.0.0.1:1", str(s), "-o", f"secret_file={s}"),
                    "not a directory")
    _one_error_line(_run("frobnicate"), "unknown command")
    _one_error_line(_run("stats", str(tmp_path)), "not an mxfs mount")


@needs_fuse
def test_cli_unreachable_server(tmp_path):
    s = tmp_path / "secret"
    s.write_text("k")
    mnt = tmp_path / "m"
    mnt.mkdir()
    t0 = time.monotonic()
    r = _run("mount", "127.0.0.1:1", str(mnt), "-o", f"secret_file={s},timeout=2")
    _one_error_line(r, "cannot connect")
    assert time.monotonic() - t0 < 15
    assert not is_mounted(mnt)


def test_server_cli_errors(tmp_path):
    s = tmp_path / "secret"
    s.write_text("k")
    r = subprocess.run([PY, "-m", "server", str(tmp_path / "nope"), "--secret-file", str(s)],
                       capture_output=True, text=True, env=env(), cwd=ROOT, timeout=30)
    assert r.returncode != 0 and "not a directory" in r.stderr
    r = subprocess.run([PY, "-m", "server", str(tmp_path), "--secret-file", str(tmp_path / "x")],
                       capture_output=True, text=True, env=env(), cwd=ROOT, timeout=30)
    assert r.returncode != 0 and r.stderr.count("\n") == 1


@needs_fuse
@pytest.mark.fuse
@needs_fuse
def test_debug_option_logs_every_request(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("sesame\n")
    server = ServerProc(export, secret).start()
    m = MountProc(server.port, tmp_path / "mnt", secret, extra="debug")
    try:
        m.start()
        (m.mnt / "f").write_bytes(b"hello")
        assert (m.mnt / "f").read_bytes() == b"hello"  # (its OPEN brings it: no READ)
        os.unlink(m.mnt / "f")
        big = os.urandom(300_000)  # too big for an OPEN to bring
        (export / "big").write_bytes(big)
        assert (m.mnt / "big").read_bytes() == big
    finally:
        m.stop()
        server.stop()
    log = m.log.read_text()
    for expected in ("LOOKUP(b'f') -> ENOENT", "CREATE(b'f', ", "WRITE(1, 0, 5) -> ok",
                     ", 131072) -> ok in ", "READ(", "RELEASE(1) posted",
                     "UNLINK(b'f') -> ok in "):
        assert expected in log, expected


def test_cli_daemon_mount_stats_umount(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "hello").write_text("hi\n")
    secret = tmp_path / "secret"
    secret.write_text("sesame\n")
    server = ServerProc(export, secret).start()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        t0 = time.monotonic()
        r = _run("mount", f"127.0.0.1:{server.port}", str(mnt), "-o",
                 f"secret_file={secret},transport=gm,attr_timeout=0.5")
        assert r.returncode == 0, r.stderr
        assert is_mounted(mnt)  # ready when the command returns
        assert time.monotonic() - t0 < 15
        assert (mnt / "hello").read_text() == "hi\n"
        with open("/proc/self/mountinfo") as f:
            line = next(ln for ln in f if ln.split()[4] == str(mnt))
            dev = line.split()[2]
        assert "fuse.mxfs" in line
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb") as f:
            assert int(f.read()) >= 1024
        r = _run("stats", str(mnt))
        assert r.returncode == 0 and "transport=gm" in r.stdout
        assert "registrations" in r.stdout and "copies per byte delivered" in r.stdout
        r = _run("umount", str(mnt))
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 5
        while is_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_mounted(mnt)
    finally:
        unmount(mnt)
        server.stop()


@needs_fuse
@pytest.mark.fuse
def test_mount_t_fuse_mxfs(tmp_path):
    """`mount -t fuse.mxfs HOST:PORT MNT -o transport=gm` through the mount.fuse.mxfs helper."""
    if not shutil.which("mount"):
        pytest.skip("no mount(8)")
    helper = "/sbin/mount.fuse.mxfs"
    installed_here = not os.path.exists(helper)
    r = _run("install-helper", "--dir", "/sbin")
    if r.returncode != 0:
        pytest.skip(f"cannot install the helper: {r.stderr}")
    export = tmp_path / "export"
    export.mkdir()
    (export / "f").write_text("via mount(8)\n")
    secret = tmp_path / "secret"
    secret.write_text("sesame\n")
    server = ServerProc(export, secret).start()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "fuse.mxfs", f"127.0.0.1:{server.port}", str(mnt),
                            "-o", f"transport=gm,secret_file={secret}"],
                           capture_output=True, text=True, env=env(), timeout=30)
        assert r.returncode == 0, r.stderr
        assert (mnt / "f").read_text() == "via mount(8)\n"
    finally:
        unmount(mnt)
        server.stop()
        if installed_here:
            os.unlink(helper)
