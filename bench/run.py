"""`python -m bench` (make bench): every peer, identical workloads, interleaved rounds, a report.

    python -m bench [--quick] [--rounds N] [--peers a,b] [--out bench/results] [--keep]
                    [--workdir /var/tmp] [--backing image|dir] [--image-size 48G]

Theory of operation: install what is missing; make the backing store that holds every peer's data
(a fresh journaled ext4 on a loop device, bench/disk.py: this VM's root ext4 has no journal, which
makes creates after deletions ~20-40x slower); run the mxnet transport benchmark; start every
peer's servers and mount it (a peer that cannot start ends the run with an error, it is never left
out); write the read workloads' files; then for each round run each workload on every peer in turn
(peer order shuffled each round, seeded by the run id); before every measurement `sync` (so no
peer's fsync pays for another's dirty data), and before every cold read also `drop_caches` and a
remount of the measured client (so no peer reads under the page cache others filled). Each
measurement is appended to results.jsonl as soon as it is taken. At the end (also on error or
Ctrl-C) every mount is unmounted and every process the harness started is stopped by PID, then the
backing store is unmounted and deleted; then the report (median and min–max over rounds), the
plots and the PASS/MISS lines for the targets are written and printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import deps, disk, procs, report, workloads
from .peers import Mxfs, Peer, make_peers
from .procs import BenchError
from .tree import make_tarball
from .workloads import Config, human

REPO = Path(__file__).resolve().parent.parent
T0 = time.monotonic()


def say(msg: str) -> None:
    el = int(time.monotonic() - T0)
    print(f"[{el // 60:02d}:{el % 60:02d}] {msg}", flush=True)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def cold(peers: list[Peer]) -> None:
    """Unmount these clients, sync and drop the page cache machine-wide, mount again."""
    for p in peers:
        p.umount()
    drop_caches()
    for p in peers:
        p.mount()


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def busy_processes(exclude: set[int]) -> list[str]:
    """Other processes using CPU now (a note for the report about concurrent load)."""
    r = subprocess.run(["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True,
                       text=True)
    out = []
    for line in r.stdout.splitlines()[1:]:
        parts = line.split(None, 3)
        if len(parts) < 4 or int(parts[0]) in exclude:
            continue
        if float(parts[1]) >= 5.0:
            out.append(f"{parts[1]}% {parts[3][:100]}")
    return out[:8]


class Recorder:
    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.rows: list[dict] = []
        self.run_id = run_id
        self.f = open(path, "w")

    def add(self, peer: str, rnd: int, rows: list[dict]) -> None:
        for r in rows:
            r = {"run": self.run_id, "round": rnd, "peer": peer, **r,
                 "time": dt.datetime.now().isoformat(timespec="seconds")}
            self.rows.append(r)
            self.f.write(json.dumps(r) + "\n")
        self.f.flush()


def fmt_rows(rows: list[dict]) -> str:
    parts = []
    for r in rows:
        name = r["param"] if r["metric"] == "throughput" and r["workload"] in ("filesize", "scaling") \
            else r["metric"]
        if r["workload"] == "scaling":
            name = f"{name}r"
        parts.append(f"{name} {r['value']:.4g}{'' if r['unit'] in ('s',) else ' '}{r['unit']}")
    return ", ".join(parts)


def run_mxnet(cfg: Config, out: Path) -> str:
    say(f"mxnet transport benchmark: python -m bench.transport {' '.join(cfg.mxnet_args)} "
        f"--out {out}")
    p = procs.spawn([sys.executable, "-m", "bench.transport", *cfg.mxnet_args, "--out", str(out)],
                    "bench.transport", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    assert p.stdout is not None
    lines = []
    for raw in p.stdout:
        line = raw.decode(errors="replace").rstrip()
        lines.append(line)
        print(f"    {line}", flush=True)
    rc = p.wait()
    procs.forget(p)
    if rc != 0:
        raise BenchError(f"python -m bench.transport failed (exit {rc}):\n" + "\n".join(lines[-20:]))
    md = out / "mxnet.md"
    return md.read_text() if md.exists() else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a ~5-minute smoke run")
    ap.add_argument("--rounds", type=int, help="rounds (default 3)")
    ap.add_argument("--peers", help="comma-separated subset (for development only: the report "
                    "says so)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--workdir", default="/var/tmp",
                    help="where the backing store is made (the image file, or the plain "
                    "directory with --backing dir)")
    ap.add_argument("--backing", choices=("image", "dir"), default="image",
                    help="image (default): every peer's data on a journaled ext4 made on a "
                    "sparse image file in --workdir, attached with losetup (falls back to dir "
                    "if that cannot be set up); dir: a plain directory in --workdir (on an "
                    "ext4 without a journal creates are distorted: bench/NOTEBOOK.md)")
    ap.add_argument("--image-size", type=disk.parse_size, default="48G",
                    help="size of the sparse image (default 48G; only what is written uses "
                    "space: a full run writes ~26 GB)")
    ap.add_argument("--keep", action="store_true", help="keep the data afterwards (with "
                    "--backing image: the image stays mounted; the log says how to remove it)")
    ap.add_argument("--skip-mxnet", action="store_true", help="do not run python -m bench.transport")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: must run as root (mounts, drop_caches, sshd, glusterd)", file=sys.stderr)
        return 1
    cfg = Config.quick() if args.quick else Config()
    if args.rounds:
        cfg.rounds = args.rounds
    if cfg.rounds < 3:
        say(f"warning: {cfg.rounds} round(s): medians and spread need at least 3")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # Ctrl-C / SIGTERM / SIGHUP: turn into KeyboardInterrupt so the finally below tears down
    def on_signal(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    deps.ensure(log=say)
    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    mode = "quick" if args.quick else "full"
    say(f"mxfs benchmark run {run_id} ({mode}, {cfg.rounds} rounds); results in {out}")
    load_start = loadavg()
    busy_start = busy_processes({os.getpid()})

    store = contextlib.ExitStack()  # closed last in the finally below: after every peer is down
    work: Path | None = None
    backing = ""
    peers: list[Peer] = []
    rec = Recorder(out / "results.jsonl", run_id)
    failure: str | None = None
    mxnet_md = ""
    stats: dict[str, str] = {}
    env: dict[str, str] = {}
    started = time.monotonic()
    try:
        root, backing = store.enter_context(disk.backing_store(
            Path(args.workdir), args.image_size, say, image=args.backing == "image",
            keep=args.keep))
        work = Path(tempfile.mkdtemp(prefix="mxfs-bench-", dir=root))
        if not args.skip_mxnet:
            mxnet_md = run_mxnet(cfg, out / "mxnet")
        tarball = work / "tree.tar"
        nfiles, nbytes, digest = make_tarball(tarball, cfg.tree_files)
        say(f"tree tarball: {nfiles} files, {nbytes / 1e6:.1f} MB payload, sha256 {digest[:16]}")
        peers = make_peers(work, args.peers.split(",") if args.peers else None)
        for p in peers:
            say(f"starting {p.name}: {p.kind}")
            p.setup()
            p.mount()
            env[p.name] = f"{p.kind}; {p.version()}".rstrip("; ")
        files = workloads.layout(cfg)
        say(f"writing {len(files)} data files "
            f"({sum(s for _, s in files) / 1e9:.2f} GB) per peer")
        for p in peers:
            t = time.monotonic()
            workloads.workdir(p).mkdir(exist_ok=True)
            n = workloads.populate(p, cfg)
            say(f"  {p.name}: {n / 1e6:.0f} MB in {time.monotonic() - t:.1f} s"
                f"{'' if p.backing else ' (through the mount)'}")

        steps = [
            ("seqwrite", False, workloads.seqwrite),
            ("seqread", True, workloads.seqread),
            ("reread", True, workloads.reread),
            ("filesize", True, workloads.filesizes),
            ("scaling", True, workloads.scaling),
            ("randread", False, workloads.randread),
            ("meta", False, workloads.metadata),
            ("tree", False, lambda p, c, r: workloads.tree(p, c, r, tarball)),
        ]
        prev_order: list[Peer] = []
        for rnd in range(1, cfg.rounds + 1):
            # a fresh order every round (seeded by the run id, logged below): with a plain rotation
            # one peer always ran right after `local`, whose 1 GiB write the VM's disk was
            # still absorbing, and lost 3x on seqwrite in every round
            order = list(peers)
            random.Random(f"{run_id}-{rnd}").shuffle(order)
            if order == prev_order:
                order.reverse()
            prev_order = order
            say(f"=== round {rnd}/{cfg.rounds} (peer order: {', '.join(p.name for p in order)})"
                f"  load {loadavg()}")
            for wname, needs_cold, fn in steps:
                for p in order:
                    # every measurement starts from the same machine state: what earlier peers
                    # left dirty is on disk (or a seqwrite's fsync would flush it for them),
                    # and a cold read finds an empty page cache whatever ran before it
                    if needs_cold:
                        cold([p])
                    else:
                        os.sync()
                    t = time.monotonic()
                    rows = fn(p, cfg, rnd)
                    rec.add(p.name, rnd, rows)
                    say(f"  r{rnd} {wname:<9} {p.name:<13} {fmt_rows(rows)}"
                        f"  [{time.monotonic() - t:.1f} s]")
        for p in peers:
            if isinstance(p, Mxfs):
                stats[p.name] = p.stats()
    except KeyboardInterrupt as e:
        failure = f"interrupted ({e or 'SIGINT'})"
    except BenchError as e:
        failure = str(e)
    except Exception as e:  # noqa: BLE001 - report, tear down, exit non-zero
        import traceback
        traceback.print_exc()
        failure = f"{type(e).__name__}: {e}"
    finally:
        say("tearing down: unmounting and stopping every process started")
        with _no_interrupts():
            for p in reversed(peers):
                try:
                    p.umount()
                except Exception as e:  # noqa: BLE001
                    say(f"  {p.name}: unmount failed: {e}")
            for p in reversed(peers):
                try:
                    p.teardown()
                except Exception as e:  # noqa: BLE001
                    say(f"  {p.name}: teardown failed: {e}")
            procs.stop_all(log=say)
            left = procs.running()
            if left:
                say(f"  WARNING: still running: {left}")
            if work is not None and args.keep:
                say(f"  kept {work}")
            # then the data: unmount, detach and delete the image (or remove the plain
            # directory), unless --keep; never before the peers are down (the brick, the
            # exports and the mount points are in it)
            store.close()
    elapsed = time.monotonic() - started
    if failure:
        print(f"\nbench: FAILED: {failure}", file=sys.stderr)
        print(f"bench: partial measurements in {rec.path}", file=sys.stderr)
        return 1

    peer_names = [p.name for p in peers]
    agg = report.aggregate(rec.rows)
    tgt = report.targets(agg)
    header = {
        "run": run_id, "mode": mode, "rounds": cfg.rounds, "elapsed_s": round(elapsed),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "load_start": load_start, "load_end": loadavg(), "busy_start": busy_start,
        "busy_end": busy_processes({os.getpid()}), "backing": backing, "peers": env,
        "config": {
            "seq_size": human(cfg.seq_size), "rand_size": human(cfg.rand_size),
            "rand_runtime_s": cfg.rand_runtime,
            "sizes": [f"{human(s)}x{n}" for s, n in cfg.sizes], "readers": cfg.readers,
            "scale_size": human(cfg.scale_size), "meta_files": cfg.meta_files,
            "tree_files": cfg.tree_files},
        "subset": bool(args.peers),
    }
    subtitle = (f"mxfs bench {run_id} ({mode}, {cfg.rounds} rounds, {platform.node()}, "
                f"{os.cpu_count()} CPUs, load {load_start} → {header['load_end']})")
    pngs = report.plots(agg, peer_names, out, subtitle)
    md = render(header, agg, peer_names, tgt, mxnet_md, stats, pngs, out)
    (out / "report.md").write_text(md)
    (out / "summary.json").write_text(json.dumps({**header, "targets": [
        {"target": t.text, "ok": t.ok, "detail": t.detail} for t in tgt]}, indent=1) + "\n")
    print()
    print(report.tables(agg, peer_names).strip())
    print("\nTargets (mxfs transport=mx, medians of this run):")
    for t in tgt:
        print("  " + t.line())
    print(f"\nwritten: {out}/report.md, results.jsonl, summary.json, "
          f"{', '.join(p.name for p in pngs)}, mxnet/")
    say(f"done in {elapsed / 60:.1f} min")
    return 0


class _no_interrupts:
    """Hold SIGINT/SIGTERM while tearing down (a second Ctrl-C must not leave processes)."""

    def __enter__(self):
        self.old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def render(header, agg, peers, tgt, mxnet_md, stats, pngs, out: Path) -> str:
    h = header
    L = [f"# mxfs benchmark — run {h['run']} ({h['mode']})", ""]
    if h["mode"] != "full" or h["subset"]:
        L += ["> **Not a full run** (" + ("quick sizes" if h["mode"] != "full" else "")
              + (", subset of peers" if h["subset"] else "") + "): smoke numbers only.", ""]
    L += [f"Machine: `{h['host']}`, Linux {h['kernel']}, {h['cpus']} CPUs. "
          f"{h['rounds']} rounds, peers interleaved (order shuffled each round); "
          f"cells are **median (min–max)** over rounds. Wall time {h['elapsed_s'] // 60} min.",
          ""]
    if h.get("backing"):
        L += [f"Every peer's data lives on: {h['backing']}.", ""]
    L += [
          f"Load average at start {h['load_start']}, at end {h['load_end']}. "
          "Everything runs on one 2-vCPU machine: client, server and tools share the CPUs, and "
          "any other work on the machine (test suites, builds) shows up in these numbers. "
          "Cold reads come from the VM's virtual disk (through the loop device when the data "
          "is on an image), whose speed depends on the host's cache "
          "(the same peer can read at 200 or 900 MB/s in different rounds): look at the spread "
          "and at results.jsonl before trusting a cold-read median.", ""]
    if h["busy_start"] or h["busy_end"]:
        L += ["Other processes using ≥ 5 % CPU when the run started / ended:", ""]
        L += [f"- start: `{b}`" for b in h["busy_start"]] + [f"- end: `{b}`" for b in h["busy_end"]]
        L += [""]
    L += ["## Peers", "", "| peer | what |", "|---|---|"]
    L += [f"| {p} | {h['peers'].get(p, '')} |" for p in peers]
    c = h["config"]
    L += ["", "## Workloads", "",
          f"- **seqwrite**: fio `--rw=write --bs=1M --size={c['seq_size']} --end_fsync=1` "
          "(fresh file each round; fio's runtime includes the final fsync).",
          "- **seqread**: fio `--rw=read --bs=1M` of that file after `sync; echo 3 > "
          "drop_caches` and a remount of every client.",
          f"- **randread**: file of {c['rand_size']} read once sequentially (server-side page "
          f"cache warm), then fio `--rw=randread --bs=4k --iodepth=1 --direct=1 --runtime="
          f"{c['rand_runtime_s']}s`; p50/p99 are fio's completion-latency percentiles. O_DIRECT "
          "makes every read a request to the file system; for `local` it goes to the block "
          "device (so `local` is not a ceiling on this row).",
          f"- **meta**: {c['meta_files']} empty files created, stat'ed, unlinked by one Python "
          "process (`python -m bench.meta`), fresh directory each round. Create rates depend "
          "on the disk under the peers: an ext4 without a journal (this VM's root) skips "
          "inodes freed in the last minute or more, so creates after any mass deletion (the "
          "bench's own unlink and `rm -rf` steps) cost ~0.5 ms each in the kernel"
          + ("; hence the journaled ext4 image above." if h.get("backing", "").startswith(
              "journaled") else " (see where the data lives, above)."),
          f"- **tree**: a deterministic {c['tree_files']}-file tarball (sizes 64 B–64 KiB) is "
          "untarred onto the peer, then `du -s`, `find`, `cp -r`, `rm -rf` of both trees; "
          "seconds per step.",
          f"- **filesize**: cold caches (drop + remount), fio reads {', '.join(c['sizes'])} "
          "(size x files), one file after another (`--openfiles=1 "
          "--file_service_type=sequential`, bs = min(size, 1M)); includes open/close.",
          f"- **scaling**: cold caches, fio `--numjobs=N --group_reporting`, each reader its own "
          f"{c['scale_size']} file (different files for each N), N = "
          f"{', '.join(map(str, c['readers']))}; aggregate MB/s.",
          "- MB/s = 10^6 bytes/s.", "",
          "## Results", report.tables(agg, peers), "",
          "## mxfs(mx) relative to each peer (median ratio, > 1 = mxfs(mx) better)", "",
          report.ratio_table(agg, others=tuple(p for p in peers if p != "mxfs-mx")), "",
          "## Targets", "", "```"]
    L += [t.line() for t in tgt]
    L += ["```", "", "## Plots", ""]
    L += [f"![{p.stem}]({p.name})" for p in pngs]
    if (out / "mxnet" / "mxnet.png").exists():
        L += ["![mxnet](mxnet/mxnet.png)"]
    if mxnet_md:
        L += ["", "## Transport: `python -m bench.transport`", "", mxnet_md.strip()]
    if stats:
        L += ["", "## mxfs counters at the end of the run (`mxfs stats`)", ""]
        for name, raw in stats.items():
            try:
                from mxfs.cli import format_stats
                txt = format_stats(json.loads(raw))
            except Exception:  # noqa: BLE001
                txt = raw or "(unavailable)"
            L += [f"{name}:", "```", txt, "```"]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
