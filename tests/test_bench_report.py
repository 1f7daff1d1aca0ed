"""The bench report's target lines (bench/report.py): each per-request target says what the
stack's floor (pyfuse3-floor) reaches, and calls a target beyond it when the floor misses too."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not installed
from bench import report  # noqa: E402


def _rows(values: dict[str, float], metric: str = "stat") -> list[dict]:
    return [{"workload": "meta", "metric": metric, "param": "2000", "value": v,
             "unit": "ops/s", "higher_is_better": True, "peer": p}
            for p, v in values.items()]


def _line(agg, start: str) -> report.Target:
    return next(t for t in report.targets(agg) if t.text.startswith(start))


def test_a_target_the_floor_misses_too_is_called_beyond_the_stack() -> None:
    agg = report.aggregate(_rows({"mxfs-mx": 13000, "sshfs": 36000, "sshfs-direct": 37000,
                                  "pyfuse3-floor": 13500}))
    t = _line(agg, "mxfs(mx) stat after")
    assert t.ok is False
    assert "the stack's floor (pyfuse3-floor): 0.38× sshfs, 0.36× sshfs-direct" in t.detail
    assert "beyond any pyfuse3 + trio file system" in t.detail


def test_a_target_within_the_floor_is_only_missed() -> None:
    agg = report.aggregate(_rows({"mxfs-mx": 950, "sshfs-direct": 2750,
                                  "pyfuse3-floor": 2830}, metric="create"))
    t = _line(agg, "mxfs(mx) create and unlink")
    assert t.ok is False and "pyfuse3-floor): 1.03× sshfs-direct" in t.detail
    assert "beyond" not in t.detail


def test_without_the_floor_the_line_is_as_before() -> None:
    agg = report.aggregate(_rows({"mxfs-mx": 3000, "sshfs-direct": 2750}, metric="create"))
    t = _line(agg, "mxfs(mx) create and unlink")
    assert t.ok is True and t.detail == "1.09× sshfs-direct (need ≥ 1×)"
