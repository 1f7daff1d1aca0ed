"""`python -m bench.transport` runs end to end (a smoke run, no timing asserted): every
transport answers, the table and plot are written, and the counters of the run hold —
mx moved its payload without a user-space copy, gm copied."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "mxnet"
    p = subprocess.run([sys.executable, "-m", "bench.transport", "--sizes", "8,40K", "--rounds", "1",
                        "--out", str(out), "--quiet"], cwd=REPO, capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    table = (out / "mxnet.md").read_text().splitlines()
    assert "mx cb lat µs" in table[0]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in table[2:]}
    assert set(rows) == {"8 B", "40 KiB"}
    for cells in rows.values():
        assert all(float(c) > 0 for c in cells[:4]), cells  # every latency was measured
    assert (out / "mxnet.png").stat().st_size > 0
    stats = {}
    for line in (out / "mxnet.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "client_stats" in row:
            stats[row["transport"]] = row["client_stats"]
    assert stats["mx"]["payload_bytes_copied"] == 0
    assert stats["mx"]["rendezvous_sends"] > 0  # 40 KiB went by rendezvous
    assert stats["gm"]["payload_bytes_copied"] > 0
