"""Command-line mistakes (issue 11, item 8): each gives one clear line on stderr, a non-zero
exit status, and leaves every mount as it was (nothing unmounted, nothing stacked).

The commands run for real (`python -m mxfs.cli`, `python -m server`); a module-wide server
serves both transports, and every mount a test makes is undone in its teardown.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_fs import PY, ROOT, SECRET, MountProc, ServerProc, env, needs_fuse, unmount

from mxfs.mounttab import lexical_path, parse_line, unescape
from mxfs.options import OptionError, parse_options

TRANSPORTS = ["mx", "gm"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")


# -- helpers -----------------------------------------------------------------------------------
def run(*args: str, module: str = "mxfs.cli", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", module, *args], capture_output=True, text=True, env=env(),
                          cwd=ROOT, timeout=timeout)


def server_cmd(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return run(*args, module="server", timeout=timeout)


def one_line(r: subprocess.CompletedProcess[str], prog: str, *words: str) -> str:
    """The command failed with exactly one stderr line, from *prog*, holding every word."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, (r.returncode, r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{prog}:") or lines[0].startswith(f"{prog} "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def mounts_on(mnt: Path) -> list[str]:
    """The fstype of every mount on *mnt*, in /proc/self/mountinfo order."""
    target = str(mnt.parent.resolve() / mnt.name)  # no stat of mnt: it may hang
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target:
                out.append(fields[fields.index("-", 6) + 1])
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    base = tmp_path_factory.mktemp("cli_errors")
    export = base / "export"
    export.mkdir()
    (export / "hello").write_text("hi\n")
    secret = base / "secret"
    secret.write_bytes(SECRET + b"\n")
    srv = ServerProc(export, secret).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "tmpfs"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        (d / "marker").write_text("still here")
        yield d
    finally:
        for _ in range(3):
            if not mounts_on(d):
                break
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    """An empty mount point; whatever mxfs mounts on it is unmounted afterwards."""
    d = tmp_path / "mnt"
    d.mkdir()
    try:
        yield d
    finally:
        unmount(d)


def mount_cmd(server: ServerProc, mnt: Path, transport: str, extra: str = "") -> list[str]:
    opts = f"transport={transport},secret_file={server.secret_file}" + (f",{extra}" if extra else "")
    return ["mount", f"127.0.0.1:{server.port}", str(mnt), "-o", opts]


# -- mount options -----------------------------------------------------------------------------
BAD_NUMBERS = [
    ("timeout", "nan"), ("timeout", "inf"), ("timeout", "-inf"), ("timeout", "-1"),
    ("timeout", "0"), ("timeout", "1e-9"), ("timeout", "soon"), ("timeout", ""),
    ("attr_timeout", "nan"), ("attr_timeout", "inf"), ("attr_timeout", "-1"),
    ("entry_timeout", "nan"), ("entry_timeout", "Infinity"), ("entry_timeout", "-0.5"),
    ("lease_timeout", "nan"), ("lease_timeout", "inf"), ("lease_timeout", "-1"),
    ("cache_max", "-1"), ("cache_max", "1.5"), ("cache_max", "inf"), ("cache_max", "many"),
]


@pytest.mark.parametrize(("name", "value"), BAD_NUMBERS)
def test_parse_rejects_bad_numbers(name: str, value: str) -> None:
    with pytest.raises(OptionError, match=name):
        parse_options("h:1", "/m", [f"{name}={value}"])


def test_parse_accepts_good_numbers() -> None:
    mo = parse_options("h:1", "/m", ["timeout=0.1,attr_timeout=0,entry_timeout=1e3"])
    assert (mo.timeout, mo.attr_timeout, mo.entry_timeout) == (0.1, 0.0, 1000.0)
    assert all(math.isfinite(v) for v in (mo.timeout, mo.attr_timeout, mo.entry_timeout))
    with pytest.raises(OptionError, match="timeout=SECONDS"):
        parse_options("h:1", "/m", ["timeout"])
    mo = parse_options("h:1", "/m", ["lease_timeout=0,cache_max=100"])
    assert (mo.lease_timeout, mo.cache_max) == (0.0, 100)
    with pytest.raises(OptionError, match="cache_max must be 0 or more, not"):
        parse_options("h:1", "/m", ["cache_max=-1"])  # (a count, not seconds)


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("name", "value"), [("timeout", "nan"), ("timeout", "inf"),
                                              ("attr_timeout", "nan"), ("entry_timeout", "inf"),
                                              ("timeout", "0"), ("attr_timeout", "-1")])
def test_mount_rejects_bad_number(server: ServerProc, mnt: Path, transport: str, name: str,
                                  value: str) -> None:
    """A reachable server and a good secret: only the option is wrong, and nothing mounts."""
    r = run(*mount_cmd(server, mnt, transport, f"{name}={value}"))
    one_line(r, "mxfs", f"option {name}", repr(value))
    assert mounts_on(mnt) == []


# -- mount on a mount point that is already mounted --------------------------------------------
@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_mount_refuses_a_tmpfs_mount_point(server: ServerProc, tmpfs: Path, transport: str) -> None:
    r = run(*mount_cmd(server, tmpfs, transport))
    one_line(r, "mxfs", str(tmpfs), "already mounted", "tmpfs")
    assert mounts_on(tmpfs) == ["tmpfs"]
    assert (tmpfs / "marker").read_text() == "still here"


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_mount_refuses_to_stack_on_mxfs(server: ServerProc, mnt: Path, transport: str) -> None:
    r = run(*mount_cmd(server, mnt, transport))
    assert r.returncode == 0, r.stderr
    assert mounts_on(mnt) == ["fuse.mxfs"]
    other = "gm" if transport == "mx" else "mx"
    for t in (transport, other):
        r = run(*mount_cmd(server, mnt, t))
        one_line(r, "mxfs", str(mnt), "already mounted", "fuse.mxfs")
        assert mounts_on(mnt) == ["fuse.mxfs"]
    assert (mnt / "hello").read_text() == "hi\n"  # the first mount still works


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_mount_refuses_a_dead_or_hung_mount(server: ServerProc, mnt: Path, how: str) -> None:
    """A FUSE mount whose process died (stat: ENOTCONN) or hangs (stat blocks) is mounted:
    no second mount on it, and no hang; `mxfs umount` still takes it away."""
    m = MountProc(server.port, mnt, server.secret_file, "mx").start()
    assert m.proc is not None
    sig = signal.SIGKILL if how == "killed" else signal.SIGSTOP
    try:
        os.kill(m.proc.pid, sig)
        if how == "killed":
            m.proc.wait(5)
            with pytest.raises(OSError):  # ENOTCONN (a stat may still be cached)
                os.listdir(mnt)
        r = run(*mount_cmd(server, mnt, "gm"), timeout=20)
        one_line(r, "mxfs", str(mnt), "already mounted")
        assert mounts_on(mnt) == ["fuse.mxfs"]
        r = run("umount", "-z", str(mnt), timeout=20)
        assert r.returncode == 0, r.stderr
        assert mounts_on(mnt) == []
    finally:
        if m.proc is not None and m.proc.poll() is None:
            os.kill(m.proc.pid, signal.SIGCONT)
            m.proc.kill()
        m.stop()


# -- umount ------------------------------------------------------------------------------------
@needs_root
@pytest.mark.parametrize("lazy", [False, True])
def test_umount_refuses_a_tmpfs(tmpfs: Path, lazy: bool) -> None:
    r = run("umount", *(["-z"] if lazy else []), str(tmpfs))
    one_line(r, "mxfs", str(tmpfs), "not an mxfs mount", "tmpfs")
    assert mounts_on(tmpfs) == ["tmpfs"]
    assert (tmpfs / "marker").read_text() == "still here"


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_umount_refuses_a_tmpfs_on_top_of_mxfs(server: ServerProc, mnt: Path,
                                               transport: str) -> None:
    """What `mxfs umount` would take away is the visible (topmost) mount: here a tmpfs."""
    r = run(*mount_cmd(server, mnt, transport))
    assert r.returncode == 0, r.stderr
    try:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
        r = run("umount", str(mnt))
        one_line(r, "mxfs", "not an mxfs mount", "tmpfs")
        assert mounts_on(mnt) == ["fuse.mxfs", "tmpfs"]
    finally:
        if mounts_on(mnt)[-1:] == ["tmpfs"]:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    r = run("umount", str(mnt))  # now the mxfs mount is on top
    assert r.returncode == 0, r.stderr
    assert mounts_on(mnt) == []


def test_umount_not_mounted_and_missing(tmp_path: Path) -> None:
    d = tmp_path / "plain"
    d.mkdir()
    line = one_line(run("umount", str(d)), "mxfs", str(d), "not mounted")
    assert "Invalid argument" not in line
    one_line(run("umount", str(tmp_path / "nope")), "mxfs", str(tmp_path / "nope"),
             "no such file or directory")
    one_line(run("umount"), "mxfs umount", "mountpoint")


# -- server command line -----------------------------------------------------------------------
@pytest.fixture
def export(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "export").mkdir()
    (tmp_path / "secret").write_bytes(SECRET)
    return str(tmp_path / "export"), str(tmp_path / "secret")


def test_server_listen_port_range(export: tuple[str, str]) -> None:
    exp, secret = export
    r = server_cmd(exp, "--secret-file", secret, "--listen", "127.0.0.1:65535")
    one_line(r, "mxfs-server", "65535", "1..65534", "PORT+1")
    r = server_cmd(exp, "--secret-file", secret, "--listen", "127.0.0.1:65536",
                   "--transport", "mx")
    one_line(r, "mxfs-server", "65536", "65535")


@pytest.mark.parametrize(("listen", "words"), [
    ("no-such-host.invalid:7070", ["cannot resolve host", "no-such-host.invalid"]),
    ("127.0.0.1:http", ["bad port", "'http'"]),
    ("127.0.0.1:-1", ["bad port", "'-1'"]),
    ("127.0.0.1", ["HOST:PORT"]),
    (":7070", ["no host"]),
])
def test_server_listen_bad_address(export: tuple[str, str], listen: str,
                                   words: list[str]) -> None:
    exp, secret = export
    r = server_cmd(exp, "--secret-file", secret, "--listen", listen)
    one_line(r, "mxfs-server", "--listen", *words)


@pytest.mark.parametrize("value", ["0", "-5", "many", "1.5"])
def test_server_max_handles_must_be_positive(export: tuple[str, str], value: str) -> None:
    exp, secret = export
    r = server_cmd(exp, "--secret-file", secret, "--listen", "127.0.0.1:0",
                   "--max-handles", value, timeout=20)
    one_line(r, "mxfs-server", "--max-handles", value)


def test_server_eager_max_env_checked(export: tuple[str, str]) -> None:
    exp, secret = export
    e = env()
    e["MXFS_SERVER_EAGER_MAX"] = "lots"
    r = subprocess.run([PY, "-m", "server", exp, "--secret-file", secret, "--listen",
                        "127.0.0.1:0"], capture_output=True, text=True, env=e, cwd=ROOT,
                       timeout=20)
    one_line(r, "mxfs-server", "MXFS_SERVER_EAGER_MAX", "'lots'")


def _listening_socket(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(1)
    return s


def _busy_port_with_free_port_below() -> tuple[socket.socket, int]:
    """A listening socket on port P where P-1 is free (just now)."""
    for _ in range(50):
        s = _listening_socket()
        port = s.getsockname()[1]
        try:
            _listening_socket(port - 1).close()
            return s, port
        except OSError:
            s.close()
    pytest.skip("no free port below a busy one")


@pytest.mark.parametrize("transport", ["both", "mx", "gm"])
def test_server_address_in_use_names_it(export: tuple[str, str], transport: str) -> None:
    """The busy port is PORT itself: its transport (mx, or gm alone) is named."""
    exp, secret = export
    busy = _listening_socket()
    port = busy.getsockname()[1]
    try:
        r = server_cmd(exp, "--secret-file", secret, "--listen", f"127.0.0.1:{port}",
                       "--transport", transport)
    finally:
        busy.close()
    t = "gm" if transport == "gm" else "mx"
    one_line(r, "mxfs-server", f"127.0.0.1:{port}", f"for {t} clients", "Address already in use")


def test_server_gm_port_in_use_names_it(export: tuple[str, str]) -> None:
    """PORT is free, PORT+1 is not: the line names PORT+1 and gm, and says why gm is there."""
    exp, secret = export
    busy, port = _busy_port_with_free_port_below()
    try:
        r = server_cmd(exp, "--secret-file", secret, "--listen", f"127.0.0.1:{port - 1}")
    finally:
        busy.close()
    one_line(r, "mxfs-server", f"127.0.0.1:{port}", "for gm clients", "Address already in use",
             "PORT+1")


def test_server_still_starts(export: tuple[str, str]) -> None:
    """The checks reject only what is wrong: port 0, --max-handles 1, one transport."""
    exp, secret = export
    srv = ServerProc(Path(exp), Path(secret))
    srv.start()
    srv.stop()
    proc = subprocess.Popen([PY, "-m", "server", exp, "--secret-file", secret, "--listen",
                             "127.0.0.1:0", "--max-handles", "1", "--transport", "gm"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert "(gm)" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(10)


# -- mountinfo parsing (pure) ------------------------------------------------------------------
def test_mountinfo_parsing(tmp_path: Path) -> None:
    e = parse_line(rb"36 25 0:32 / /mnt/a\040b rw,relatime shared:1 master:2 - fuse.mxfs "
                   rb"10.0.0.1:7070 rw,user_id=0")
    assert e is not None
    assert (e.mount_id, e.parent_id, e.device) == (36, 25, "0:32")
    assert (e.mountpoint, e.fstype, e.source) == ("/mnt/a b", "fuse.mxfs", "10.0.0.1:7070")
    assert unescape("/tmp/caf\u00e9\\134x\\011".encode()) == "/tmp/caf\u00e9\\x\t"
    assert parse_line(b"garbage") is None
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert lexical_path(str(link / "m")) == str(tmp_path.resolve() / "m")
    assert lexical_path(str(link)) == str(tmp_path.resolve() / "link")  # last one kept
    assert lexical_path("/") == "/"
