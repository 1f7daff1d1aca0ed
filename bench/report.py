"""Aggregation (median and min–max over rounds), the markdown report, plots and the targets."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

WORKLOAD_TITLES = {
    "seqwrite": "Sequential write, 1 MiB blocks, fsync at end",
    "seqread": "Sequential read, 1 MiB blocks, cold caches",
    "reread": "Re-read of an unchanged file (read once, then measured), 1 MiB blocks",
    "cpu": "CPU spent by the client and server processes (children included): seconds per GiB moved (sequential write and read), µs per operation (4 KiB random read; create, stat, unlink)",
    "randread": "Random read 4 KiB, queue depth 1, O_DIRECT (file warm on the server side)",
    "meta": "Metadata: create, stat, unlink of N empty files (one process)",
    "tree": "Tree: untar + du + find + cp -r + rm -rf of a 1000-file tree (the total); ls -lR of it beside, not in the total",
    "scaling": "Aggregate read throughput with N reader processes (own cold file each)",
    "filesize": "Read throughput by file size (cold; files read one after another)",
}
ORDER = ["seqwrite", "seqread", "reread", "cpu", "randread", "meta", "tree", "filesize",
         "scaling"]


@dataclass
class Stat:
    median: float
    lo: float
    hi: float
    n: int
    unit: str
    higher: bool

    def fmt(self) -> str:
        def f(x: float) -> str:
            if x >= 1000:
                return f"{x:,.0f}"
            if x >= 100:
                return f"{x:.0f}"
            if x >= 10:
                return f"{x:.1f}"
            return f"{x:.2f}"
        return f"{f(self.median)} ({f(self.lo)}–{f(self.hi)})" if self.n > 1 else f(self.median)


Key = tuple[str, str, str]  # workload, metric, param


def aggregate(rows: list[dict]) -> dict[Key, dict[str, Stat]]:
    vals: dict[Key, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    meta: dict[Key, tuple[str, bool]] = {}
    for r in rows:
        k = (r["workload"], r["metric"], r["param"])
        vals[k][r["peer"]].append(r["value"])
        meta[k] = (r["unit"], r["higher_is_better"])
    out: dict[Key, dict[str, Stat]] = {}
    for k, per in vals.items():
        unit, higher = meta[k]
        out[k] = {p: Stat(statistics.median(v), min(v), max(v), len(v), unit, higher)
                  for p, v in per.items()}
    return out


def _keys_of(agg, workload: str) -> list[Key]:
    ks = [k for k in agg if k[0] == workload]

    def sort_key(k: Key):
        p = k[2]
        num = _size_value(p)
        return (num if num is not None else 0, k[1])
    if workload in ("filesize", "scaling"):
        return sorted(ks, key=sort_key)
    order = {"throughput": 0, "iops": 0, "p50": 1, "p99": 2, "create": 0, "stat": 1, "unlink": 2,
             "total": 9, "untar": 0, "du": 1, "find": 2, "cp -r": 3, "rm -r": 4}
    return sorted(ks, key=lambda k: order.get(k[1], 5))


def _size_value(p: str) -> int | None:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        return int(p[:-1]) * mult[p[-1]] if p and p[-1] in mult else int(p)
    except ValueError:
        return None


def _label(k: Key, s: Stat) -> str:
    w, metric, param = k
    if w == "filesize":
        return f"{param} files, {s.unit}"
    if w == "scaling":
        return f"{param} reader{'s' if param != '1' else ''}, {s.unit}"
    if w in ("seqwrite", "seqread"):
        return f"{metric} ({param}), {s.unit}"
    return f"{metric}, {s.unit}{' (lower is better)' if not s.higher else ''}"


def tables(agg, peers: list[str]) -> str:
    lines = []
    for w in ORDER:
        ks = _keys_of(agg, w)
        if not ks:
            continue
        lines.append(f"\n### {WORKLOAD_TITLES.get(w, w)}\n")
        lines.append("| metric | " + " | ".join(peers) + " |")
        lines.append("|---|" + "---:|" * len(peers))
        for k in ks:
            row = agg[k]
            any_stat = next(iter(row.values()))
            cells = [row[p].fmt() if p in row else "—" for p in peers]
            lines.append(f"| {_label(k, any_stat)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- targets ------------------------------------------------------------------------------------
@dataclass
class Target:
    text: str
    ok: bool | None  # None: could not be evaluated (a peer missing)
    detail: str

    def line(self) -> str:
        tag = "PASS" if self.ok else ("MISS" if self.ok is False else "N/A ")
        return f"{tag}  {self.text}: {self.detail}"


def _ratio(agg, k: Key, a: str, b: str) -> float | None:
    """How many times better peer a is than peer b on k (>1: a better), from medians."""
    row = agg.get(k, {})
    if a not in row or b not in row:
        return None
    sa, sb = row[a], row[b]
    if sa.median <= 0 or sb.median <= 0:
        return None
    return sa.median / sb.median if sa.higher else sb.median / sa.median


SEQREAD = ("seqread", "throughput")
RAND_IOPS = ("randread", "iops", "")
META_TOTAL = ("meta", "total")
FLOOR = "pyfuse3-floor"  # bench/passfs.py: what pyfuse3 + trio reach with no network at all


def _find(agg, workload: str, metric: str) -> Key | None:
    for k in agg:
        if k[0] == workload and k[1] == metric:
            return k
    return None


def targets(agg, mx="mxfs-mx", gm="mxfs-gm", sshfs=("sshfs", "sshfs-direct"),
            gluster="glusterfs") -> list[Target]:
    out: list[Target] = []

    # 1. beats sshfs (both flavours) on every workload measurement
    every = [k for w in ORDER for k in _keys_of(agg, w)]
    worst: list[tuple[float, Key, str]] = []
    missing = False
    for k in every:
        for s in sshfs:
            r = _ratio(agg, k, mx, s)
            if r is None:
                missing = True
                continue
            worst.append((r, k, s))
    misses = [(r, k, s) for r, k, s in worst if r <= 1.0]
    if worst:
        lo = min(worst)
        detail = (f"{len(worst) - len(misses)}/{len(worst)} comparisons won; worst "
                  f"{lo[0]:.2f}× vs {lo[2]} on {' '.join(x for x in lo[1] if x)}")
        if misses:
            detail += "; lost on: " + ", ".join(
                f"{' '.join(x for x in k if x)} vs {s} ({r:.2f}×)" for r, k, s in sorted(misses)[:12])
            if len(misses) > 12:
                detail += f", … ({len(misses)} in all)"
        out.append(Target("mxfs(mx) beats sshfs on every workload", not misses and not missing,
                          detail))
    else:
        out.append(Target("mxfs(mx) beats sshfs on every workload", None, "no data"))

    def ratio_target(text: str, k: Key | None, others: tuple[str, ...], need: float) -> None:
        if k is None:
            out.append(Target(text, None, "no data"))
            return
        rs = [(o, _ratio(agg, k, mx, o)) for o in others]
        if any(r is None for _, r in rs):
            out.append(Target(text, None, "peer missing"))
            return
        ok = all(r >= need for _, r in rs)
        detail = ", ".join(f"{r:.2f}× {o}" for o, r in rs) + f" (need ≥ {need:g}×)"
        # the same ratio for a pyfuse3 + trio file system with no network (bench/passfs.py)
        fs = [(o, _ratio(agg, k, FLOOR, o)) for o in others if o != FLOOR]
        if fs and all(r is not None for _, r in fs):
            detail += "; the stack's floor (" + FLOOR + "): " + ", ".join(
                f"{r:.2f}× {o}" for o, r in fs)
            if not all(r >= need for _, r in fs):  # type: ignore[operator]
                detail += ", beyond any pyfuse3 + trio file system on this machine"
        out.append(Target(text, ok, detail))

    ratio_target("mxfs(mx) ≥ 2× sshfs on sequential read", _find(agg, *SEQREAD), sshfs, 2.0)
    ratio_target("mxfs(mx) ≥ 2× sshfs on 4 KiB random read (IOPS)", _find(agg, "randread", "iops"),
                 sshfs, 2.0)
    ratio_target("mxfs(mx) ≥ 1.5× mxfs(gm) on sequential read", _find(agg, *SEQREAD), (gm,), 1.5)
    ratio_target("mxfs(mx) ≥ GlusterFS on sequential read", _find(agg, *SEQREAD), (gluster,), 1.0)
    ratio_target("mxfs(mx) ≥ GlusterFS on metadata (create+stat+unlink time)",
                 _find(agg, *META_TOTAL), (gluster,), 1.0)

    # issue 15: fewer round trips than any peer, coherently
    ratio_target("mxfs(mx) re-read of an unchanged file ≥ 0.8× local",
                 _find(agg, "reread", "throughput"), ("local",), 0.8)
    ratio_target("mxfs(mx) stat after the kernel's caches are dropped ≥ 0.5× sshfs",
                 _find(agg, "meta", "stat"), sshfs, 0.5)
    ratio_target("mxfs(mx) create and unlink at least as fast as sshfs directport",
                 _find(agg, "meta", "create"), ("sshfs-direct",), 1.0)
    ratio_target("mxfs(mx) unlink at least as fast as sshfs directport",
                 _find(agg, "meta", "unlink"), ("sshfs-direct",), 1.0)
    ratio_target("mxfs(mx) untar+du+find+cp+rm at least as fast as sshfs directport",
                 _find(agg, "tree", "total"), ("sshfs-direct",), 1.0)

    per_gib = [k for k in _keys_of(agg, "cpu") if k[1].endswith((", write", ", read"))]
    pairs = [(k, _ratio(agg, k, mx, gm)) for k in per_gib]
    if pairs and all(r is not None for _, r in pairs):
        out.append(Target("mxfs(mx) uses less CPU per GiB than mxfs(gm), client and server",
                          all(r > 1.0 for _, r in pairs),  # type: ignore[operator]
                          ", ".join(f"{k[1]} {r:.2f}×" for k, r in pairs)))
    else:
        out.append(Target("mxfs(mx) uses less CPU per GiB than mxfs(gm), client and server",
                          None, "no data"))

    k = _find(agg, "randread", "p50")
    if k and mx in agg[k]:
        s = agg[k][mx]
        detail = f"median p50 {s.median:.0f} µs (rounds {s.lo:.0f}–{s.hi:.0f})"
        if FLOOR in agg[k]:
            detail += f"; the stack's floor ({FLOOR}): {agg[k][FLOOR].median:.0f} µs"
        out.append(Target("mxfs(mx) random-read p50 ≤ 150 µs", s.median <= 150, detail))
    else:
        out.append(Target("mxfs(mx) random-read p50 ≤ 150 µs", None, "no data"))

    ks = [k for k in _keys_of(agg, "scaling") if mx in agg[k]]
    if ks:
        seq = [(k[2], agg[k][mx].median) for k in ks]
        falls = [(a, b) for (a, va), (b, vb) in zip(seq, seq[1:], strict=False) if vb < va]
        detail = " → ".join(f"{n}: {v:.0f}" for n, v in seq) + " MB/s (medians)"
        if falls:
            detail += "; falls " + ", ".join(f"{a}→{b}" for a, b in falls)
        out.append(Target("mxfs(mx) aggregate read throughput does not fall from 1 to 8 readers",
                          not falls, detail))
    else:
        out.append(Target("mxfs(mx) aggregate read throughput does not fall from 1 to 8 readers",
                          None, "no data"))
    return out


def ratio_table(agg, mx="mxfs-mx", others=("mxfs-gm", "sshfs", "sshfs-direct", "glusterfs",
                                            "local")) -> str:
    lines = ["| workload / metric | " + " | ".join(f"vs {o}" for o in others) + " |",
             "|---|" + "---:|" * len(others)]
    for w in ORDER:
        for k in _keys_of(agg, w):
            cells = []
            for o in others:
                r = _ratio(agg, k, mx, o)
                cells.append("—" if r is None else f"{r:.2f}×")
            name = " ".join(x for x in k if x)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots ------------------------------------------------------------------------------------------
COLORS = {"mxfs-mx": "#1f77b4", "mxfs-mx-checksum": "#9467bd", "mxfs-gm": "#aec7e8",
          "sshfs": "#d62728",
          "sshfs-direct": "#ff9896", "glusterfs": "#2ca02c", "pyfuse3-floor": "#bcbd22",
          "local": "#7f7f7f"}


def plots(agg, peers: list[str], out: Path, subtitle: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def bars(ax, keys: list[Key], title: str, logy: bool = False) -> None:
        n = len(peers)
        width = 0.8 / n
        for i, p in enumerate(peers):
            xs, ys, lo, hi = [], [], [], []
            for j, k in enumerate(keys):
                s = agg[k].get(p)
                if s is None:
                    continue
                xs.append(j + (i - (n - 1) / 2) * width)
                ys.append(s.median)
                lo.append(s.median - s.lo)
                hi.append(s.hi - s.median)
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=p, color=COLORS.get(p))
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([k[1] if k[1] not in ("throughput",) else (k[2] or k[1])
                            for k in keys])
        unit = next(iter(agg[keys[0]].values())).unit
        higher = next(iter(agg[keys[0]].values())).higher
        ax.set_ylabel(unit + ("" if higher else " (lower is better)"))
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if logy:
            ax.set_yscale("log")

    def save(fig, name: str) -> None:
        fig.suptitle(subtitle, fontsize=8, y=0.01, va="bottom")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    for w in ("seqwrite", "seqread"):
        ks = _keys_of(agg, w)
        if ks:
            fig, ax = plt.subplots(figsize=(7, 4))
            bars(ax, ks, WORKLOAD_TITLES[w] + " — median, whiskers min–max")
            ax.legend(fontsize=8)
            save(fig, f"{w}.png")

    ks = _keys_of(agg, "randread")
    if ks:
        fig, axes = plt.subplots(1, len(ks), figsize=(4 * len(ks), 4))
        for ax, k in zip(axes if len(ks) > 1 else [axes], ks, strict=False):
            bars(ax, [k], f"random 4 KiB read: {k[1]}")
        axes[0].legend(fontsize=7)
        save(fig, "randread.png")

    for w, groups in (("meta", [["create", "stat", "unlink"], ["total"]]),
                      ("tree", [["untar", "du", "find", "ls -lR", "cp -r", "rm -r"], ["total"]])):
        ks = _keys_of(agg, w)
        if not ks:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
        for ax, g in zip(axes, groups, strict=False):
            sel = [k for k in ks if k[1] in g]
            if sel:
                bars(ax, sel, WORKLOAD_TITLES[w] if g[0] != "total" else "total",
                     logy=g[0] != "total")
        axes[0].legend(fontsize=7)
        save(fig, f"{w}.png")

    for w, xlabel, logx in (("filesize", "file size", True), ("scaling", "reader processes", False)):
        ks = _keys_of(agg, w)
        if not ks:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for p in peers:
            pts = [(_size_value(k[2]), agg[k][p]) for k in ks if p in agg[k]]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ax.errorbar(xs, [s.median for _, s in pts],
                        yerr=[[s.median - s.lo for _, s in pts], [s.hi - s.median for _, s in pts]],
                        marker="o", capsize=2, label=p, color=COLORS.get(p))
        if logx:
            ax.set_xscale("log", base=2)
            ax.set_xticks([_size_value(k[2]) for k in ks])
            ax.set_xticklabels([k[2] for k in ks])
        else:
            ax.set_xticks([int(k[2]) for k in ks])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("MB/s" + (" (log scale)" if logx else ""))
        if logx:
            ax.set_yscale("log")
        ax.set_title(WORKLOAD_TITLES[w], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, f"{w}.png")
    return written
