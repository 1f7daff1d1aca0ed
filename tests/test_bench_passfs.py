"""The bench's floor peer (bench/passfs.py) is a real file system: the tree workload's tools
run on it and everything lands in its backing directory; it unmounts and its daemon ends."""

import mmap
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not installed
from bench import procs  # noqa: E402
from bench.passfs import PassFs  # noqa: E402
from bench.peers import is_mounted  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                                reason="needs root and /dev/fuse")


def test_tools_run_on_the_floor_and_land_in_its_backing_directory(tmp_path: Path) -> None:
    peer = PassFs(tmp_path)
    peer.setup()
    try:
        peer.mount()
        pid = peer.client_pid
        assert pid is not None and is_mounted(peer.mnt)
        src = tmp_path / "tree"
        (src / "d" / "e").mkdir(parents=True)
        for i in range(20):
            (src / "d" / f"f{i}").write_bytes(os.urandom(100 * i))
        (src / "d" / "e" / "g").write_text("g\n")
        os.symlink("f1", src / "d" / "ln")
        tarball = tmp_path / "t.tar"
        subprocess.run(["tar", "cf", str(tarball), "-C", str(src), "d"], check=True)
        root = peer.root
        subprocess.run(["tar", "xf", str(tarball), "-C", str(root)], check=True)
        subprocess.run(["cp", "-r", str(root / "d"), str(root / "copy")], check=True)
        subprocess.run(["diff", "-r", str(src / "d"), str(root / "copy")], check=True)
        du = subprocess.run(["du", "-s", str(root)], check=True, capture_output=True, text=True)
        assert int(du.stdout.split()[0]) > 0
        found = subprocess.run(["find", str(root)], check=True, capture_output=True, text=True)
        assert len(found.stdout.splitlines()) == 1 + 2 * 24
        assert (peer.backing / "copy" / "d").exists() is False
        assert (peer.backing / "copy" / "f7").read_bytes() == (src / "d" / "f7").read_bytes()
        os.chmod(root / "copy" / "f3", 0o600)
        assert (peer.backing / "copy" / "f3").stat().st_mode & 0o777 == 0o600
        with open(root / "copy" / "f3", "r+b") as f:
            f.truncate(10)
        assert (peer.backing / "copy" / "f3").stat().st_size == 10
        os.rename(root / "copy" / "f3", root / "copy" / "f3b")
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants (fio --direct=1)
        fd = os.open(root / "copy" / "f19", os.O_RDONLY | os.O_DIRECT)
        try:
            assert os.preadv(fd, [buf], 0) == 1900
        finally:
            os.close(fd)
        assert buf[:1900] == (src / "d" / "f19").read_bytes()
        assert os.readlink(root / "copy" / "ln") == "f1"
        with pytest.raises(FileNotFoundError):
            os.stat(root / "nothing")
        subprocess.run(["rm", "-rf", str(root / "d"), str(root / "copy")], check=True)
        assert os.listdir(peer.backing) == []
    finally:
        peer.umount()
        peer.teardown()
        procs.stop_all()
    assert not is_mounted(peer.mnt) and not procs.alive(pid)
    shutil.rmtree(tmp_path, ignore_errors=True)
