"""The file systems under test. Each peer owns its servers, its mount and its directories.

    setup()     start servers (once per run); raise BenchError if anything does not come up
    mount()     mount the client at .mnt (no-op for local); adopt the client daemon's PID
    umount()    unmount and make sure the client process is gone
    teardown()  stop servers (volume, daemons) — by PID, via procs
    root        where workloads run (the mount point, or the plain directory for `local`)
    backing     a directory on this machine that holds the same files (for fast set-up writes),
                or None when files must go through the mount (GlusterFS bricks)
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import procs
from .procs import BenchError

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent  # the repo: `python -m server` must resolve here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited (code {proc.returncode}) before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{what} is not listening on 127.0.0.1:{port} after {timeout:.0f} s")


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == target:
                return True
    return False


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procs.alive(pid):
            return True
        time.sleep(0.05)
    return False


class Peer:
    name = "?"
    kind = "?"
    network = True

    def __init__(self, work: Path) -> None:
        self.dir = work / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mnt = self.dir / "mnt"
        self.mnt.mkdir(exist_ok=True)
        self.client_pid: int | None = None
        self.mounted = False

    @property
    def root(self) -> Path:
        return self.mnt

    @property
    def backing(self) -> Path | None:
        return None

    def setup(self) -> None: ...
    def teardown(self) -> None: ...

    def server_pids(self) -> list[int]:
        """The processes doing this peer's server side (for CPU per GiB); [] if none."""
        return []

    def cpu_pids(self) -> tuple[list[int], list[int]]:
        """(client side, server side) processes, children included (sshfs's ssh)."""
        return (procs.tree(self.client_pid) if self.client_pid else []), self.server_pids()

    def mount(self) -> None:
        if is_mounted(self.mnt):
            raise BenchError(f"{self.name}: {self.mnt} is already mounted")
        self._mount()
        self.mounted = True
        try:
            os.stat(self.mnt)
        except OSError as e:
            raise BenchError(f"{self.name}: mounted, but stat {self.mnt}: {e.strerror}") from None
        if not is_mounted(self.mnt):
            raise BenchError(f"{self.name}: mount returned but {self.mnt} is not mounted")

    def _mount(self) -> None: ...

    def _spawn_daemon(self, argv: list[str]) -> None:
        """Mount by starting ``argv``, a FUSE daemon that stays in the foreground."""
        p = procs.spawn(argv, self.name, cwd=ROOT)
        deadline = time.monotonic() + 20
        while not is_mounted(self.mnt):
            if p.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not mount (exit {p.poll()})")
            time.sleep(0.05)
        self.client_pid = p.pid

    def umount(self) -> None:
        if not self.mounted and not is_mounted(self.mnt):
            return
        r = subprocess.run(self._umount_cmd(), capture_output=True, text=True)
        if r.returncode != 0 and is_mounted(self.mnt):
            # a busy mount (interrupted workload): detach lazily, the client process goes below
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)
        self.mounted = False
        if self.client_pid is not None:
            if not wait_gone(self.client_pid, 10):
                procs.stop_pid(self.client_pid)
            else:
                procs.stop_pid(self.client_pid)  # reap / forget
            self.client_pid = None
        if is_mounted(self.mnt):
            raise BenchError(f"{self.name}: {self.mnt} still mounted after unmount "
                             f"({r.stderr.strip()})")

    def _umount_cmd(self) -> list[str]:
        return ["fusermount3", "-u", str(self.mnt)]

    def remount(self) -> None:
        self.umount()
        self.mount()

    def version(self) -> str:
        return ""


# -- local: the ceiling ---------------------------------------------------------------------
class Local(Peer):
    name = "local"
    kind = "local ext4 directory (ceiling)"
    network = False

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.data = self.dir / "data"
        self.data.mkdir(exist_ok=True)

    @property
    def root(self) -> Path:
        return self.data

    @property
    def backing(self) -> Path:
        return self.data

    def mount(self) -> None:
        self.mounted = True

    def umount(self) -> None:
        self.mounted = False


# -- mxfs --------------------------------------------------------------------------------------
class Mxfs(Peer):
    def __init__(self, work: Path, transport: str, checksum: bool = False) -> None:
        self.transport = transport
        self.checksum = checksum
        self.name = f"mxfs-{transport}" + ("-checksum" if checksum else "")
        self.kind = (f"mxfs, -o transport={transport}{',checksum' if checksum else ''} "
                     f"(own server process, --transport {transport})")
        super().__init__(work)
        self.export = self.dir / "export"
        self.export.mkdir(exist_ok=True)
        self.secret = self.dir / "secret"
        self.secret.write_text(os.urandom(16).hex() + "\n")
        os.chmod(self.secret, 0o600)
        self.server: subprocess.Popen | None = None
        self.port = 0
        self.log = self.dir / "server.log"

    @property
    def backing(self) -> Path:
        return self.export

    def setup(self) -> None:
        p = procs.spawn([PY, "-m", "server", str(self.export), "--listen", "127.0.0.1:0",
                         "--transport", self.transport, "--secret-file", str(self.secret),
                         "-o", "no_root_squash"],  # the bench runs as root on its own export
                        f"{self.name} server", stdout=subprocess.PIPE,
                        stderr=open(self.log, "wb"), cwd=ROOT)
        self.server = p
        assert p.stdout is not None
        line = b""
        deadline = time.monotonic() + 20
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.2)
            if r:
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
            elif p.poll() is not None:
                break
        text = line.decode(errors="replace").strip()
        if "listening on" not in text:
            raise BenchError(f"{self.name}: server did not start ({text or 'no output'}); "
                             f"{self.log}:\n{tail(self.log)}")
        addr = text.rsplit("listening on", 1)[1].split()[0]
        self.port = int(addr.rsplit(":", 1)[1])
        p.stdout.close()

    def _argv(self) -> list[str]:
        return [PY, "-m", "mxfs.cli", "mount", f"127.0.0.1:{self.port}", str(self.mnt), "-o",
                f"transport={self.transport},secret_file={self.secret}"
                + (",checksum" if self.checksum else "")]

    def _mount(self) -> None:
        argv = self._argv()
        if self.server is None or self.server.poll() is not None:
            raise BenchError(f"{self.name}: server is not running; {self.log}:\n{tail(self.log)}")
        procs.run(argv, f"{self.name} mount", timeout=60, cwd=ROOT)
        pids = procs.find_pids(lambda a: a == argv)
        if len(pids) != 1:
            raise BenchError(f"{self.name}: expected one mount process, found {pids}")
        self.client_pid = pids[0]
        procs.adopt(self.client_pid, f"{self.name} mount process")

    def _umount_cmd(self) -> list[str]:
        return [PY, "-m", "mxfs.cli", "umount", str(self.mnt)]

    def teardown(self) -> None:
        if self.server is not None:
            procs.stop_pid(self.server.pid)

    def server_pids(self) -> list[int]:
        return [self.server.pid] if self.server is not None else []

    def stats(self) -> str:
        r = subprocess.run([PY, "-m", "mxfs.cli", "stats", "--json", str(self.mnt)],
                           capture_output=True, text=True, cwd=ROOT)
        return r.stdout if r.returncode == 0 else ""

    def version(self) -> str:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "mxfs", "server",
                                "mxnet"], capture_output=True, text=True).stdout.strip()
        return f"git {r.stdout.strip()}{' + uncommitted changes' if dirty else ''}"


# -- sshfs ---------------------------------------------------------------------------------------
SSH_CIPHER = "aes128-gcm@openssh.com"


def _sshfs_version() -> str:
    r = subprocess.run(["sshfs", "--version"], capture_output=True, text=True)
    return " ".join((r.stdout + r.stderr).split()[:3])


class SshfsBase(Peer):
    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.export = self.dir / "export"
        self.export.mkdir(exist_ok=True)
        self.log = self.dir / "sshfs.log"

    @property
    def backing(self) -> Path:
        return self.export

    def _sshfs_argv(self) -> list[str]:
        raise NotImplementedError

    def _mount(self) -> None:
        p = procs.spawn(self._sshfs_argv(), f"{self.name} sshfs", log=self.log)
        deadline = time.monotonic() + 20
        while not is_mounted(self.mnt):
            if p.poll() is not None:
                raise BenchError(f"{self.name}: sshfs exited ({p.returncode}); "
                                 f"{self.log}:\n{tail(self.log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: sshfs did not mount within 20 s")
            time.sleep(0.05)
        self.client_pid = p.pid

    def version(self) -> str:
        return _sshfs_version()


class SshfsSsh(SshfsBase):
    name = "sshfs"
    kind = f"sshfs over a private sshd on 127.0.0.1 (Ciphers {SSH_CIPHER}, Compression no)"

    def setup(self) -> None:
        d = self.dir
        for key in ("host_key", "client_key"):
            for f in (d / key, d / f"{key}.pub"):
                f.unlink(missing_ok=True)
            procs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mxfs-bench",
                       "-f", str(d / key)], "ssh-keygen")
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        self.port = free_port()
        cfg = d / "sshd_config"
        cfg.write_text(f"""# private sshd for the mxfs benchmark (loopback only)
Port {self.port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile none
AuthorizedKeysFile {d / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
Ciphers {SSH_CIPHER}
Compression no
Subsystem sftp /usr/lib/openssh/sftp-server
""")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        procs.run(["/usr/sbin/sshd", "-t", "-f", str(cfg)], "sshd -t")
        self.sshd = procs.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)], "sshd",
                                log=d / "sshd.log")
        wait_port(self.port, self.sshd, "sshd")

    def _sshfs_argv(self) -> list[str]:
        opts = ",".join([
            f"port={self.port}", f"IdentityFile={self.dir / 'client_key'}", "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes",
            f"Ciphers={SSH_CIPHER}", "Compression=no", "LogLevel=ERROR"])
        return ["sshfs", "-f", f"root@127.0.0.1:{self.export}", str(self.mnt), "-o", opts]

    def server_pids(self) -> list[int]:  # sshd, its session processes, their sftp-servers
        return procs.tree(self.sshd.pid) if getattr(self, "sshd", None) is not None else []

    def teardown(self) -> None:
        if getattr(self, "sshd", None) is not None:
            procs.stop_pid(self.sshd.pid)


class SshfsDirect(SshfsBase):
    name = "sshfs-direct"
    kind = "sshfs -o directport to sftp-server over plain TCP (socat, TCP_NODELAY, no ssh)"

    def setup(self) -> None:
        self.port = free_port()
        self.socat = procs.spawn(
            ["socat", f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,nodelay",
             "EXEC:/usr/lib/openssh/sftp-server"], "socat sftp-server",
            log=self.dir / "socat.log")
        wait_port(self.port, self.socat, "socat")

    def _sshfs_argv(self) -> list[str]:
        return ["sshfs", "-f", f"127.0.0.1:{self.export}", str(self.mnt),
                "-o", f"directport={self.port}"]

    def teardown(self) -> None:
        if getattr(self, "socat", None) is not None:
            procs.stop_pid(self.socat.pid)

    def server_pids(self) -> list[int]:  # socat, its connection children, their sftp-servers
        return procs.tree(self.socat.pid) if getattr(self, "socat", None) is not None else []


# -- GlusterFS -------------------------------------------------------------------------------------
class Gluster(Peer):
    name = "glusterfs"
    volume = "mxfsbench"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.brick = self.dir / "brick"
        self.host = socket.gethostname()
        self.kind = f"GlusterFS, one brick ({self.host}:{self.brick}, force), FUSE mount"
        self.glusterd: subprocess.Popen | None = None
        self.brick_pid: int | None = None
        self.created = False

    def _gluster(self, *args: str, check: bool = True, timeout: float = 120):
        return procs.run(["gluster", "--mode=script", *args], "gluster", check=check,
                         timeout=timeout)

    def setup(self) -> None:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(self.host, None)}
        if not addrs or not all(a.startswith("127.") or a == "::1" for a in addrs):
            raise BenchError(f"glusterfs: host name {self.host!r} resolves to {sorted(addrs)}, "
                             "not loopback; the benchmark keeps all traffic on loopback")
        others = procs.find_pids(lambda a: os.path.basename(a[0]) == "glusterd")
        if others:
            raise BenchError(f"glusterfs: a glusterd is already running (pid {others}); "
                             "stop it first (the benchmark starts and stops its own)")
        stale = procs.find_pids(lambda a: os.path.basename(a[0]) in ("glusterfsd", "glusterfs")
                                and any(self.volume in x for x in a))
        if stale:
            raise BenchError(f"glusterfs: stale processes of volume {self.volume}: {stale}")
        self.brick.mkdir(exist_ok=True)
        self.glusterd = procs.spawn(["glusterd", "-N", f"--log-file={self.dir / 'glusterd.log'}"],
                                    "glusterd", log=self.dir / "glusterd.out")
        deadline = time.monotonic() + 30
        while True:
            if self.glusterd.poll() is not None:
                raise BenchError(f"glusterd exited ({self.glusterd.returncode}):\n"
                                 f"{tail(self.dir / 'glusterd.log')}")
            r = self._gluster("volume", "list", check=False, timeout=20)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"glusterd does not answer: {r.stderr.strip()}")
            time.sleep(0.3)
        if self.volume in r.stdout.split():  # left over by an earlier, killed run
            self._gluster("volume", "stop", self.volume, "force", check=False)
            self._gluster("volume", "delete", self.volume)
        self._gluster("volume", "create", self.volume, f"{self.host}:{self.brick}", "force")
        self.created = True
        self._gluster("volume", "start", self.volume)
        brick = str(self.brick)
        deadline = time.monotonic() + 20
        while True:
            pids = procs.find_pids(lambda a: "--brick-name" in a and brick in a)
            if pids:
                self.brick_pid = pids[0]
                procs.adopt(self.brick_pid, "glusterfsd brick")
                break
            if time.monotonic() > deadline:
                raise BenchError("glusterfs: no brick process after volume start")
            time.sleep(0.2)
        wait_port(self._brick_port(), None, "glusterfsd brick")

    def _brick_port(self) -> int:
        argv = procs.cmdline(self.brick_pid or 0)
        for i, a in enumerate(argv):
            if a == "--brick-port":
                return int(argv[i + 1])
        raise BenchError(f"glusterfs: no --brick-port in {argv}")

    def _mount(self) -> None:
        procs.run(["mount", "-t", "glusterfs", f"{self.host}:/{self.volume}", str(self.mnt)],
                  "mount.glusterfs", timeout=60)
        target = str(self.mnt)
        pids = procs.find_pids(lambda a: os.path.basename(a[0]) == "glusterfs" and a[-1] == target)
        if len(pids) != 1:
            raise BenchError(f"glusterfs: expected one client process, found {pids}")
        self.client_pid = pids[0]
        procs.adopt(self.client_pid, "glusterfs client")

    def _umount_cmd(self) -> list[str]:
        return ["umount", str(self.mnt)]

    def teardown(self) -> None:
        if self.created:
            self._gluster("volume", "stop", self.volume, "force", check=False)
            self._gluster("volume", "delete", self.volume, check=False)
            self.created = False
        if self.brick_pid is not None:
            procs.stop_pid(self.brick_pid)
        if self.glusterd is not None:
            procs.stop_pid(self.glusterd.pid)

    def server_pids(self) -> list[int]:
        return [self.brick_pid] if self.brick_pid is not None else []

    def version(self) -> str:
        r = subprocess.run(["glusterfs", "--version"], capture_output=True, text=True)
        return r.stdout.splitlines()[0] if r.stdout else ""


def make_peers(work: Path, only: list[str] | None = None) -> list[Peer]:
    from .passfs import PassFs  # (it builds on Peer)

    peers: list[Peer] = [Mxfs(work, "mx"), Mxfs(work, "mx", checksum=True), Mxfs(work, "gm"),
                         SshfsSsh(work), SshfsDirect(work), Gluster(work), PassFs(work),
                         Local(work)]
    if only:
        unknown = set(only) - {p.name for p in peers}
        if unknown:
            raise SystemExit(f"bench: unknown peer(s) {sorted(unknown)}")
        peers = [p for p in peers if p.name in only]
    return peers
