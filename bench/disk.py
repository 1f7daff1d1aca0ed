"""Where every peer's data lives: a journaled ext4 on a loop device, made fresh for each run.

Why: this VM's root file system is ext4 *without a journal*. There, each inode allocation scans
past (and skips) every inode of its block group freed in the last 60 s (360 s while its
inode-table block is dirty; `recently_deleted()` in fs/ext4/ialloc.c, used only when there is
no journal), so soon after a mass deletion nearby each create costs up to ~0.8 ms of kernel
CPU. The bench's own unlink and `rm -r` steps did that to whichever peer ran next: every peer
created ~1 100-1 500 files/s, a property of the disk, not of the file systems compared. On a
journaled ext4 the same pattern runs at 43 000-69 000 creates/s here (bench/NOTEBOOK.md,
2026-12-01: the backing store).

How: `backing_store(parent, size, log)` truncates a sparse image file in *parent* (only what is
written takes space), runs `mkfs.ext4` on it with the inode table and journal zeroed now
(`lazy_itable_init=0,lazy_journal_init=0`: no ext4lazyinit writes during measurements; on a file
mke2fs zeroes with fallocate, ~10 ms here for 48 GiB), attaches it with `losetup --direct-io=on`
(so its data is cached once, in the loop file system, not a second time as the image file's
pages; without direct I/O if the kernel refuses) and mounts it with ext4's defaults. It yields
(mount point, one-line description). On exit (also after an exception or KeyboardInterrupt in
the body) it unmounts (lazily if busy), detaches the loop device and deletes the image, unless
`keep` is set, in which case it says how to remove it by hand. If anything in the set-up fails
(no mkfs.ext4, no loop devices, not permitted: a container) it logs why, undoes what it did and
yields a plain directory in *parent* instead, with a description that says so. `image=False`
asks for the plain directory directly. Callers should hold SIGINT/SIGTERM while the context
exits (run.py does), so a second Ctrl-C cannot interrupt the unmount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MKFS = "mkfs.ext4"
LOSETUP = "losetup"
MKFS_OPTS = ["-q", "-F", "-i", "65536", "-E", "lazy_itable_init=0,lazy_journal_init=0"]


class StoreError(RuntimeError):
    """A step of setting up or removing the image failed (the message says which and why)."""


def parse_size(text: str) -> int:
    """'48G', '256M', '512K' (powers of 1024) or a number of bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 48G, 256M)") from None
    if n <= 0:
        raise ValueError(f"not a size: {text!r}")
    return n


def _gib(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):g} MiB"


def _run(argv: list[str]) -> str:
    """Run a tool to completion; StoreError with its stderr if it is missing or fails."""
    try:
        cp = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise StoreError(f"{argv[0]}: not found") from None
    except subprocess.CalledProcessError as e:
        msg = (e.stderr or e.stdout or "").strip().splitlines()
        raise StoreError(f"{' '.join(argv)}: exit {e.returncode}"
                         + (f": {msg[-1]}" if msg else "")) from None
    except subprocess.TimeoutExpired:
        raise StoreError(f"{' '.join(argv)}: no answer after 120 s") from None
    except PermissionError as e:
        raise StoreError(f"{argv[0]}: {e.strerror}") from None
    return cp.stdout


def mounted_at(path: Path) -> str | None:
    """The file system type mounted exactly at *path*, or None."""
    target = str(path)
    fstype = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == target:
                fstype = right.split()[0]  # the last (topmost) mount wins
    return fstype


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [ln.split()[4].encode().decode("unicode_escape") for ln in f]
    return [p for p in points if p.startswith(prefix) or p == str(path)]


def describe_fs(path: Path) -> str:
    """'ext4 on vda, no journal' and the like, for the directory *path* is in."""
    st = os.stat(path)
    majmin = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    fstype, source = "?", "?"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[2] == majmin:
                fstype, source = right.split()[:2]
    text = f"{fstype} on {source}"
    if fstype in ("ext3", "ext4"):
        try:
            blk = os.path.basename(os.path.realpath(f"/sys/dev/block/{majmin}"))
            jbd = os.listdir("/proc/fs/jbd2")
        except OSError:
            return text
        text += ", journaled" if any(j.startswith(f"{blk}-") for j in jbd) else ", no journal"
    return text


@contextmanager
def backing_store(parent: Path, size_bytes: int, log: Callable[[str], None], *,
                  image: bool = True, keep: bool = False) -> Iterator[tuple[Path, str]]:
    """Yield (directory for the run's data, description); see the module docstring."""
    parent = Path(parent).resolve()
    base = Path(tempfile.mkdtemp(prefix="mxfs-bench-store-", dir=parent))
    img, mnt = base / "ext4.img", base / "mnt"
    dev: str | None = None
    if image:
        try:
            dev, how = _make(img, mnt, size_bytes, log)
        except (StoreError, OSError) as e:
            log(f"backing store: no journaled ext4 image ({e}); falling back to a plain "
                f"directory in {parent}")
            _remove(base, img, mnt, dev, log)  # whatever part was made (never a mounted mnt)
            base = Path(tempfile.mkdtemp(prefix="mxfs-bench-store-", dir=parent))
            reason = f"the ext4 image could not be set up: {e}"
        except BaseException:  # interrupted half-way: undo, pass the interrupt on
            _remove(base, img, mnt, dev, log)
            raise
        else:
            what = (f"journaled ext4 on a loop device ({_gib(size_bytes)} sparse image on "
                    f"{parent}, {how})")
            log(f"backing store: {what}: {img} on {dev} mounted at {mnt}")
            try:
                yield mnt, what
            finally:
                if keep:
                    log(f"backing store kept: {img} on {dev}, mounted at {mnt}; remove with: "
                        f"umount {mnt} && losetup -d {dev} && rm -r {base}")
                else:
                    _remove(base, img, mnt, dev, log)
            return
    else:
        reason = "a plain directory asked for"
    what = f"a plain directory in {parent} ({describe_fs(parent)}; {reason}){_caveat(parent)}"
    log(f"backing store: {what}")
    try:
        yield base, what
    finally:
        if keep:
            log(f"backing store kept: {base}")
        else:
            _remove_dir(base, log)


def _caveat(parent: Path) -> str:
    fs = describe_fs(parent)
    if fs.endswith("journaled") or not fs.startswith(("ext4", "?")):
        return ""
    cost = "are ~20-40x slower" if fs.endswith("no journal") else "may be much slower"
    return (f"; creates soon after mass deletions {cost} on an ext4 without a journal "
            "(bench/NOTEBOOK.md, 2026-12-01)")


def _make(img: Path, mnt: Path, size: int, log: Callable[[str], None]) -> tuple[str, str]:
    """Image → ext4 → loop device → mount. Returns (loop device, 'direct I/O' or why not)."""
    free = shutil.disk_usage(img.parent).free
    if free < size:
        log(f"backing store: warning: {_gib(size)} image but only {_gib(free)} free on "
            f"{img.parent}; writes past that fail with I/O errors")
    with open(img, "wb") as f:
        f.truncate(size)
    _run([MKFS, *MKFS_OPTS, str(img)])
    try:
        dev = _run([LOSETUP, "--direct-io=on", "--find", "--show", str(img)]).strip()
    except StoreError as e:
        log(f"backing store: {e}; attaching without direct I/O")
        dev = _run([LOSETUP, "--find", "--show", str(img)]).strip()
    try:
        if not dev.startswith("/dev/"):
            raise StoreError(f"losetup printed {dev!r}, not a device")
        try:
            dio = Path(f"/sys/block/{os.path.basename(dev)}/loop/dio").read_text().strip()
        except OSError:
            dio = "?"
        mnt.mkdir()
        _run(["mount", "-t", "ext4", dev, str(mnt)])
        if mounted_at(mnt) != "ext4":
            raise StoreError(f"mount {dev} {mnt} returned, but no ext4 is mounted there")
    except BaseException:
        if dev.startswith("/dev/"):
            _detach(dev, log)
        raise
    return dev, "direct I/O" if dio == "1" else "buffered I/O: direct I/O refused"


def _detach(dev: str, log: Callable[[str], None]) -> None:
    try:
        _run([LOSETUP, "-d", dev])
    except StoreError as e:
        log(f"backing store: {e}")


def _remove(base: Path, img: Path, mnt: Path, dev: str | None, log: Callable[[str], None]) -> None:
    """Unmount (lazily if busy), detach, delete: each step tried even if one before failed."""
    if mounted_at(mnt):
        try:
            _run(["umount", str(mnt)])
        except StoreError as e:
            log(f"backing store: {e}; unmounting lazily")
            try:
                _run(["umount", "-l", str(mnt)])
            except StoreError as e2:
                log(f"backing store: {e2}")
    if dev is not None:
        _detach(dev, log)  # if still busy after a lazy unmount: freed when the last user goes
    try:
        img.unlink(missing_ok=True)
    except OSError as e:
        log(f"backing store: rm {img}: {e.strerror}")
    _remove_dir(base, log)


def _remove_dir(base: Path, log: Callable[[str], None]) -> None:
    left = _mounts_under(base)
    if left:  # never delete through a mount point (a peer's export, or the image itself)
        log(f"backing store: not removing {base}: still mounted there: {', '.join(left)}")
        return
    try:
        shutil.rmtree(base)
    except OSError as e:
        log(f"backing store: rm -r {base}: {e}")
