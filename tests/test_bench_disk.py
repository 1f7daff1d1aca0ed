"""The bench's backing store (bench/disk.py): a journaled ext4 on a loop device, always removed."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not installed
from bench import disk, run  # noqa: E402

SIZE = 256 << 20

needs_loop = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("losetup")
    or not os.path.exists("/dev/loop-control"),
    reason="needs root, mkfs.ext4, losetup and /dev/loop-control (a loop-mounted ext4 image)")


def mount_of(path: Path) -> tuple[str, str] | None:
    """(fstype, source) of what /proc/self/mountinfo shows mounted exactly at path."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[4] == str(path):
                found = tuple(right.split()[:2])
    return found


def attached(image: Path) -> list[str]:
    """Loop devices backed by image, even once it is deleted (`losetup -j` no longer sees those)."""
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                         capture_output=True, text=True, check=True).stdout
    return [ln.split()[0] for ln in out.splitlines()
            if ln.split()[1:] and ln.split(None, 1)[1].startswith(str(image))]


def assert_gone(mnt: Path, image: Path) -> None:
    assert mount_of(mnt) is None
    assert attached(image) == []
    assert not image.exists()
    assert not mnt.parent.exists()  # the store's directory too


@needs_loop
def test_image_is_a_mounted_journaled_ext4_and_is_removed_on_exit(tmp_path: Path) -> None:
    logs: list[str] = []
    with disk.backing_store(tmp_path, SIZE, logs.append) as (mnt, what):
        image = mnt.parent / "ext4.img"
        fstype, dev = mount_of(mnt)
        assert fstype == "ext4" and dev.startswith("/dev/loop")
        assert attached(image) == [dev]
        assert subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                              check=True).stdout.startswith(dev + ":")
        assert any(j.startswith(os.path.basename(dev) + "-") for j in os.listdir("/proc/fs/jbd2"))
        assert what.startswith("journaled ext4 on a loop device (256 MiB sparse image on ")
        (mnt / "f").write_bytes(b"x" * 5000)
        assert (mnt / "f").stat().st_size == 5000
    assert_gone(mnt, image)
    assert list(tmp_path.iterdir()) == []


@needs_loop
def test_removed_when_the_body_raises_or_is_interrupted(tmp_path: Path) -> None:
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with disk.backing_store(tmp_path, SIZE, lambda _: None) as (mnt, _):
                image = mnt.parent / "ext4.img"
                raise exc
        assert_gone(mnt, image)


@needs_loop
def test_busy_mount_is_unmounted_lazily_and_still_removed(tmp_path: Path) -> None:
    logs: list[str] = []
    with disk.backing_store(tmp_path, SIZE, logs.append) as (mnt, _):
        image = mnt.parent / "ext4.img"
        holder = open(mnt / "held", "w")  # keeps the file system busy
    try:
        assert mount_of(mnt) is None and not image.exists() and not mnt.parent.exists()
        assert any("unmounting lazily" in m for m in logs), logs
    finally:
        holder.close()
    # the loop device was marked autoclear by `losetup -d`: it goes with the last user
    deadline = time.monotonic() + 5
    while attached(image) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_gone(mnt, image)


@needs_loop
def test_keep_leaves_it_mounted_and_says_how_to_remove_it(tmp_path: Path) -> None:
    logs: list[str] = []
    with disk.backing_store(tmp_path, SIZE, logs.append, keep=True) as (mnt, _):
        image = mnt.parent / "ext4.img"
    dev = mount_of(mnt)[1]
    try:
        assert attached(image) == [dev]
        assert any(f"umount {mnt} && losetup -d {dev}" in m for m in logs), logs
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        subprocess.run(["losetup", "-d", dev], check=True)
        shutil.rmtree(mnt.parent)


def test_falls_back_to_a_plain_directory_and_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(disk, "MKFS", "mkfs.no-such-tool")
    logs: list[str] = []
    with disk.backing_store(tmp_path, SIZE, logs.append) as (d, what):
        assert d.is_dir() and d.parent == tmp_path and mount_of(d) is None
        assert list(d.iterdir()) == []  # no image left behind
        (d / "f").write_text("x")
    assert what.startswith(f"a plain directory in {tmp_path} (")
    assert "mkfs.no-such-tool: not found" in what
    assert any("falling back to a plain directory" in m for m in logs), logs
    assert not d.exists()


def test_plain_directory_when_asked(tmp_path: Path) -> None:
    with disk.backing_store(tmp_path, SIZE, lambda _: None, image=False) as (d, what):
        assert d.is_dir() and mount_of(d) is None
    assert "a plain directory asked for" in what and not d.exists()


def test_parse_size() -> None:
    assert disk.parse_size("48G") == 48 << 30
    assert disk.parse_size("256MiB") == 256 << 20
    assert disk.parse_size("4096") == 4096
    with pytest.raises(ValueError):
        disk.parse_size("lots")


@needs_loop
def test_bench_run_removes_the_store_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    """run.main: an interrupt after the store is made still unmounts and deletes it."""
    seen: dict[str, Path] = {}

    def interrupted(path: Path, n: int):
        seen["work"] = path.parent
        raise KeyboardInterrupt("test")

    monkeypatch.setattr(run.deps, "ensure", lambda log: None)
    monkeypatch.setattr(run, "make_tarball", interrupted)
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        rc = run.main(["--skip-mxnet", "--workdir", str(tmp_path), "--image-size", "256M",
                       "--out", str(tmp_path / "out")])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    assert rc == 1
    work = seen["work"]
    assert work.parent.name == "mnt" and mount_of(work.parent) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_report_says_where_the_data_lives() -> None:
    header = {"run": "r", "mode": "full", "subset": False, "host": "h", "kernel": "k", "cpus": 2,
              "rounds": 3, "elapsed_s": 60, "load_start": "0", "load_end": "0",
              "busy_start": [], "busy_end": [], "peers": {},
              "backing": "journaled ext4 on a loop device (48 GiB sparse image on /var/tmp)",
              "config": {"seq_size": "1G", "rand_size": "256M", "rand_runtime_s": 10,
                         "sizes": ["4K x512"], "readers": [1], "scale_size": "64M",
                         "meta_files": 2000, "tree_files": 1000}}
    md = run.render(header, {}, [], [], "", {}, [], Path("/nonexistent"))
    lines = md.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("Machine:"))
    assert lines[i + 2] == ("Every peer's data lives on: journaled ext4 on a loop device "
                            "(48 GiB sparse image on /var/tmp).")
