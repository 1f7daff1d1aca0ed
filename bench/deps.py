"""System packages the peers need: checked with `dpkg -s`, installed with apt-get if missing."""

from __future__ import annotations

import os
import shutil
import subprocess

PACKAGES = ("fio", "sshfs", "openssh-server", "openssh-client", "glusterfs-server",
            "glusterfs-client", "socat", "fuse3", "procps")
BINARIES = ("fio", "sshfs", "/usr/sbin/sshd", "ssh-keygen", "glusterd", "gluster", "socat",
            "fusermount3", "/usr/lib/openssh/sftp-server", "mount.glusterfs")


def _installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg", "-s", pkg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       text=True)
    return r.returncode == 0 and "Status: install ok installed" in r.stdout


def ensure(log=print) -> None:
    missing = [p for p in PACKAGES if not _installed(p)]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"bench: need root to apt-get install {' '.join(missing)}")
        log(f"installing: {' '.join(missing)} (apt-get update once, then install)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    gone = [b for b in BINARIES if not (os.path.exists(b) if b.startswith("/") else
                                        shutil.which(b))]
    if gone:
        raise SystemExit(f"bench: still missing after install: {' '.join(gone)}")
