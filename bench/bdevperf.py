#!/usr/bin/env python3
"""Side-by-side bdevperf benchmarks: writeboost vs the raw bdev, SPDK's OCF write-back cache,
a passthru bdev and a slow (bdev_delay) backing.

One command runs every row of every scenario in turn, in the same invocation, with the same
core mask, so that the ratios within a scenario compare like with like:

    python3 bench/bdevperf.py            # full run, about 6 minutes
    python3 bench/bdevperf.py --quick    # smoke run, about 2.5 minutes

Each row is stock SPDK bdevperf (`$SPDK_DIR/build/examples/bdevperf`, default /opt/spdk) started
with the writeboost module preloaded (LD_PRELOAD of target/spdk/release/libwriteboost_preload.so,
built first with cargo unless --no-build) and one JSON config from bench/configs/. Results go to
bench/results/bdevperf.{md,json} and, for the slow-backing scenarios, IOPS-over-time plots
bench/results/bdevperf.<scenario>.png (when matplotlib is installed).

The configs are generated from the SCENARIOS table below: `--write-configs` rewrites them.
Python 3.11 standard library only; matplotlib is optional.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import select
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "bench" / "configs"
RESULTS_DIR = ROOT / "bench" / "results"
TARGET_DIR = ROOT / "target" / "spdk"  # shared with the e2e harness (tests/e2e.rs)
PRELOAD_DEFAULT = TARGET_DIR / "release" / "libwriteboost_preload.so"

BLOCK_SIZE_BYTES = 4096
MEM_SIZE_MIB = 2048  # --no-huge -s 2048: every malloc bdev of a row must fit in this
DELAY_AVG_US = 4000  # slow backing: 4 ms average read and write latency
DELAY_P99_US = 8000  # and 8 ms p99


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str
    title: str
    rw: str  # bdevperf -w
    io_size_bytes: int  # bdevperf -o
    queue_depth: int  # bdevperf -q
    rwmix_read_pct: int | None = None  # bdevperf -M

    def args(self) -> list[str]:
        a = ["-q", str(self.queue_depth), "-o", str(self.io_size_bytes), "-w", self.rw]
        if self.rwmix_read_pct is not None:
            a += ["-M", str(self.rwmix_read_pct)]
        return a


WORKLOADS = {
    w.key: w
    for w in [
        Workload("randwrite-4k", "4 KiB random write QD32", "randwrite", 4096, 32),
        Workload("randread-4k", "4 KiB random read QD32", "randread", 4096, 32),
        Workload("seqwrite-128k", "128 KiB sequential write QD32", "write", 131072, 32),
        Workload("randrw70-4k", "4 KiB random 70/30 read/write QD32", "randrw", 4096, 32, 70),
    ]
}


@dataclasses.dataclass(frozen=True)
class Row:
    key: str  # raw | slow | writeboost | ocf | passthru
    label: str
    bdev: str  # the bdev bdevperf runs on (-T)


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    cache_mib: int
    backing_mib: int
    slow: bool
    rows: tuple[Row, ...]
    workloads: tuple[str, ...]
    # Full run, per row and workload. 20 s: the first lap over the malloc bdevs' never-touched
    # `--no-huge` memory faults in page by page; in a 6 s run that start-up cost made the
    # writeboost rows' p99 (docs/BENCHMARKS.md, "Run length and the tail").
    time_s: int
    quick_time_s: int
    plot: bool = False

    @property
    def reference(self) -> Row:
        return self.rows[0]


RAW = Row("raw", "raw malloc backing", "Backing0")
SLOW = Row("slow", "slow backing alone (delay 4 ms)", "Delay0")
WB = Row("writeboost", "writeboost", "wb0")
OCF = Row("ocf", "OCF wb", "ocf0")
PT = Row("passthru", "passthru over backing", "pt0")

ALL_WORKLOADS = tuple(WORKLOADS)
SCENARIOS = [
    Scenario("fits", "fits: cache 256 MiB, backing 128 MiB", 256, 128, False,
             (RAW, WB, OCF, PT), ALL_WORKLOADS, 20, 2),
    Scenario("overflow", "overflow: cache 64 MiB, backing 512 MiB (working set 8x the cache)",
             64, 512, False, (RAW, WB, OCF, PT), ALL_WORKLOADS, 20, 2),
    Scenario("slow-fits", "slow backing, fits: cache 256 MiB, delay over malloc 128 MiB",
             256, 128, True, (SLOW, OCF, WB), ("randwrite-4k",), 20, 4, plot=True),
    Scenario("slow-overflow", "slow backing, overflow: cache 64 MiB, delay over malloc 512 MiB",
             64, 512, True, (SLOW, OCF, WB), ("randwrite-4k",), 30, 8, plot=True),
]

# Goals from the project issue, judged from the headline workload (4 KiB randwrite QD32):
# (scenario, row, compared with, minimum ratio, text)
GOALS = [
    ("fits", "writeboost", "raw", 0.6, "fits: writeboost >= 0.6x raw"),
    ("fits", "writeboost", "ocf", 2.0, "fits: writeboost >= 2x OCF"),
    ("overflow", "writeboost", "ocf", 1.5, "overflow: writeboost >= 1.5x OCF"),
    ("slow-fits", "writeboost", "slow", 100.0, "slow fits: writeboost >= 100x slow alone"),
    ("slow-fits", "writeboost", "ocf", 1.5, "slow fits: writeboost >= 1.5x OCF"),
    ("slow-overflow", "writeboost", "ocf", 2.0, "slow overflow: writeboost >= 2x OCF"),
]
HEADLINE = "randwrite-4k"


# ---------------------------------------------------------------------------------------------
# Configs


def config_path(s: Scenario, r: Row) -> Path:
    return CONFIG_DIR / f"{s.key}-{r.key}.json"


def make_config(s: Scenario, r: Row) -> dict:
    """The bdev subsystem config of one row. Every row of a scenario allocates the same malloc
    bdevs (cache and backing), so memory use is the same; bdevperf runs only on `r.bdev`."""
    def malloc(name: str, mib: int) -> dict:
        return {"method": "bdev_malloc_create",
                "params": {"name": name, "num_blocks": mib * 1024 * 1024 // BLOCK_SIZE_BYTES,
                           "block_size": BLOCK_SIZE_BYTES}}

    cfg = [malloc("Cache0", s.cache_mib), malloc("Backing0", s.backing_mib)]
    backing = "Backing0"
    if s.slow:
        cfg.append({"method": "bdev_delay_create",
                    "params": {"name": "Delay0", "base_bdev_name": "Backing0",
                               "avg_read_latency": DELAY_AVG_US, "p99_read_latency": DELAY_P99_US,
                               "avg_write_latency": DELAY_AVG_US,
                               "p99_write_latency": DELAY_P99_US}})
        backing = "Delay0"
    if r.key == "writeboost":
        cfg.append({"method": "bdev_writeboost_create",
                    "params": {"name": "wb0", "cache_bdev": "Cache0", "backing_bdev": backing}})
    elif r.key == "ocf":
        cfg.append({"method": "bdev_ocf_create",
                    "params": {"name": "ocf0", "mode": "wb", "cache_bdev_name": "Cache0",
                               "core_bdev_name": backing}})
    elif r.key == "passthru":
        cfg.append({"method": "bdev_passthru_create",
                    "params": {"name": "pt0", "base_bdev_name": backing}})
    cfg.append({"method": "bdev_wait_for_examine"})
    return {"subsystems": [{"subsystem": "bdev", "config": cfg}]}


def write_configs() -> None:
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    for s in SCENARIOS:
        assert s.cache_mib + s.backing_mib <= MEM_SIZE_MIB // 2, f"{s.key}: malloc bdevs too big"
        for r in s.rows:
            p = config_path(s, r)
            p.write_text(json.dumps(make_config(s, r), indent=2) + "\n")
            print(f"wrote {p.relative_to(ROOT)}")


# ---------------------------------------------------------------------------------------------
# Running bdevperf

JOB_LINE = re.compile(
    r"^\s+(?P<name>\S+)\s+:\s+(?P<runtime>[\d.]+)\s+(?P<iops>[\d.]+)\s+(?P<mibps>[\d.]+)\s+"
    r"(?P<fail>[\d.]+)\s+(?P<to>[\d.]+)\s+(?P<avg>[\d.]+)\s+(?P<min>[\d.]+)\s+(?P<max>[\d.]+)\s*$")
PCT_LINE = re.compile(r"^\s*(?P<pct>[\d.]+)%\s*:\s*(?P<us>[\d.]+)us\s*$")
SPDK_SHA = re.compile(r"Starting SPDK (?P<ver>\S+) git sha1 (?P<sha>\S+)")


@dataclasses.dataclass
class RunResult:
    scenario: str
    row: str
    workload: str
    bdev: str
    status: str  # ok | unavailable | failed
    note: str = ""
    iops: float | None = None
    mibps: float | None = None
    fail_per_s: float | None = None
    lat_avg_us: float | None = None
    lat_min_us: float | None = None
    lat_max_us: float | None = None
    lat_p99_us: float | None = None
    lat_p999_us: float | None = None
    runtime_s: float | None = None
    per_second_iops: list[float] = dataclasses.field(default_factory=list)
    exit_s: float | None = None  # from the last result line to process exit
    # writeboost rows: bdev_writeboost_get_stats taken 0.5 s before the end of the run
    wb_stats: dict | None = None
    command: str = ""
    log: str = ""
    repeats: list[float] = dataclasses.field(default_factory=list)


def parse_log(text: str, bdev: str) -> dict:
    lines = [m for m in (JOB_LINE.match(l) for l in text.splitlines()) if m and m["name"] == bdev]
    out: dict = {}
    if not lines:
        return out
    final = lines[-1]
    out.update(iops=float(final["iops"]), mibps=float(final["mibps"]),
               fail_per_s=float(final["fail"]), lat_avg_us=float(final["avg"]),
               lat_min_us=float(final["min"]), lat_max_us=float(final["max"]),
               runtime_s=float(final["runtime"]))
    # -S 1 -P 1: one line per second with that second's IOPS (EMA with M = 1).
    out["per_second_iops"] = [float(m["iops"]) for m in lines[:-1]]
    pct = {}
    in_summary = False
    for l in text.splitlines():
        if "Latency summary" in l:
            in_summary = True
            continue
        if in_summary:
            m = PCT_LINE.match(l)
            if m:
                pct[float(m["pct"])] = float(m["us"])
    out["lat_p99_us"] = pct.get(99.0)
    out["lat_p999_us"] = pct.get(99.9)
    return out


def run_row(args, s: Scenario, r: Row, w: Workload, time_s: int, logdir: Path) -> RunResult:
    sock = logdir / f"bdevperf-{os.getpid()}.sock"
    log = logdir / f"{s.key}-{r.key}-{w.key}.log"
    cmd = [str(args.bdevperf), "--no-huge", "-s", str(MEM_SIZE_MIB), "-m", args.core_mask,
           "--disable-cpumask-locks", "-r", str(sock), "--json", str(config_path(s, r)),
           "-T", r.bdev, *w.args(), "-t", str(time_s), "-S", "1", "-P", "1", "-l"]
    env = dict(os.environ, LD_PRELOAD=str(args.preload))
    shown = f"env LD_PRELOAD={shlex.quote(str(args.preload))} " + shlex.join(cmd)
    res = RunResult(s.key, r.key, w.key, r.bdev, "failed", command=shown, log=str(log))
    for p in (sock, Path(f"{sock}.lock")):
        p.unlink(missing_ok=True)

    deadline = time.monotonic() + time_s + args.startup_timeout_s
    text = []
    done_at = None  # when the latency summary was complete
    io_started_at = None  # "Running I/O for N seconds..."
    killed = False
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, bufsize=0)
        buf = b""
        while True:
            now = time.monotonic()
            if done_at is None and now > deadline:
                res.note = f"no result within {time_s + args.startup_timeout_s} s: killed"
                killed = True
                proc.kill()
                break
            if done_at is not None and now > done_at + args.exit_grace_s:
                killed = True
                proc.kill()
                break
            if (r.key == "writeboost" and io_started_at is not None and res.wb_stats is None
                    and now >= io_started_at + time_s - 0.5):
                res.wb_stats = wb_stats(args, sock)
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                logf.write(chunk.decode(errors="replace"))
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for l in complete:
                    l = l.decode(errors="replace")
                    text.append(l)
                    # The last percentile line ends the results; what follows is shutdown.
                    if io_started_at is None and l.startswith("Running I/O for"):
                        io_started_at = time.monotonic()
                    if done_at is None and l.strip().startswith("99.99999%"):
                        done_at = time.monotonic()
            elif proc.poll() is not None:
                break
        rc = proc.wait()
        if buf:
            text.append(buf.decode(errors="replace"))
    for p in (sock, Path(f"{sock}.lock")):
        p.unlink(missing_ok=True)

    full = "\n".join(text)
    if args.spdk_version is None:
        m = SPDK_SHA.search(full)
        if m:
            args.spdk_version = f"{m['ver']} (git sha1 {m['sha']})"
    parsed = parse_log(full, r.bdev)
    if done_at is not None:
        if killed:
            res.note = (res.note + "; " if res.note else "") + \
                f"still shutting down {args.exit_grace_s:.0f} s after the results: killed"
        else:
            res.exit_s = round(time.monotonic() - done_at, 2)
    if parsed.get("iops") is not None and done_at is not None:
        res.__dict__.update(parsed)
        res.status = "ok"
        if not killed and rc != 0:
            res.note = (res.note + "; " if res.note else "") + f"exit code {rc}"
        if res.fail_per_s:
            res.note = (res.note + "; " if res.note else "") + f"{res.fail_per_s:.0f} failed I/O/s"
    elif r.key == "ocf" and re.search(r"bdev_ocf_create.*(not found|failed)|ocf.*[Uu]navailable",
                                      full):
        res.status = "unavailable"
        res.note = "OCF is not available in this SPDK build"
    else:
        tail = "\n".join(l for l in text[-15:])
        res.note = res.note or f"exit code {rc}, no result"
        print(f"    FAILED ({res.note}); log {log}; last lines:\n{tail}", file=sys.stderr)
    return res


WB_STAT_KEYS = ("bytes_written", "bytes_written_back", "bytes_cache_written", "bytes_cache_read",
                "bytes_backing_read", "writeback_batches", "relog_batches", "relogged_blocks",
                "segments_written",
                "write_waits_for_space", "writes_paced", "nr_dirty_cache_blocks", "nr_cache_blocks", "nr_segments")


def wb_stats(args, sock: Path) -> dict:
    """The writeboost volume's counters, through rpc.py and the project's plugin."""
    cmd = [sys.executable, str(args.spdk_dir / "scripts" / "rpc.py"), "-s", str(sock), "-t", "10",
           "--plugin", "writeboost_rpc", "bdev_writeboost_get_stats", "-b", "wb0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "rpc"))
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=15)
        v = json.loads(out.stdout)
        v = v[0] if isinstance(v, list) else v
        return {k: v.get(k) for k in WB_STAT_KEYS}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, AttributeError) as e:
        return {"error": f"bdev_writeboost_get_stats failed: {e}"}


def wb_note(x: RunResult) -> str:
    s = x.wb_stats
    if not s or "error" in s or not s.get("bytes_written"):
        return ""
    wb = s["bytes_written_back"] / s["bytes_written"]
    relog = (s.get("relogged_blocks") or 0) * 4096 / s["bytes_written"]
    return (f"written back {wb:.0%} of written, re-logged {relog:.0%}, "
            f"cache read {s['bytes_cache_read'] / 2**20:,.0f} MiB, "
            f"{s['write_waits_for_space']} waits for space, {s.get('writes_paced') or 0} paced")


# ---------------------------------------------------------------------------------------------
# Machine description


def sh(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    lscpu = sh(["lscpu"])
    field = lambda k: next((l.split(":", 1)[1].strip() for l in lscpu.splitlines()
                            if l.startswith(k + ":")), "")
    commit = sh(["git", "rev-parse", "HEAD"], ROOT)
    dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"], ROOT)
    mem = ""
    try:
        mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
        mem = f"{int(mem) // 1024} MiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "cpu_model": field("Model name"),
        "cpus": os.cpu_count(),
        "hypervisor": field("Hypervisor vendor"),
        "memory": mem,
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
        "git_commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# Report


def fmt(v, spec=",.0f", none="n/a"):
    return none if v is None else format(v, spec)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def lookup(results, scen, row, wl):
    for x in results:
        if x.scenario == scen and x.row == row and x.workload == wl and x.status == "ok":
            return x
    return None


def markdown(results: list[RunResult], meta: dict) -> str:
    out = []
    out.append("# bdevperf: writeboost vs raw, OCF, passthru and a slow backing\n")
    out.append(f"Generated {meta['date']} by `{meta['command']}`.\n")
    m = meta["machine"]
    out.append(f"- Machine: {m['cpu_model']}, {m['cpus']} CPUs"
               f"{' (' + m['hypervisor'] + ' guest)' if m['hypervisor'] else ''}, {m['memory']}, "
               f"Linux {m['kernel']}; load average at start "
               f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}")
    out.append(f"- SPDK {meta['spdk_version']}; stock bdevperf, `-m {meta['core_mask']}"
               f" --no-huge -s {MEM_SIZE_MIB}`, one job on one core, writeboost preloaded "
               f"(`{meta['preload']}`)")
    out.append(f"- writeboost commit {m['git_commit']}")
    out.append(f"- Bdevs: malloc, {BLOCK_SIZE_BYTES} B blocks; slow backing = `bdev_delay` over "
               f"malloc, {DELAY_AVG_US // 1000} ms average / {DELAY_P99_US // 1000} ms p99 read "
               f"and write latency. OCF: `bdev_ocf_create` mode `wb`, default cache line. "
               f"Writeboost: default tunables.")
    out.append(f"- Each row is a fresh process over fresh bdevs (reads of never-written blocks in "
               f"the randread rows). Durations: {meta['durations']}."
               + (f" Median of {meta['repeat']} runs per row." if meta["repeat"] > 1 else ""))
    out.append("- Ratio: IOPS / IOPS of the scenario's first row (its reference). "
               "`x OCF`: IOPS / IOPS of the OCF row. "
               "Latency in microseconds (mean from bdevperf's result line, p99 and p99.9 from "
               "its `-l` histogram summary). Writeboost notes come from "
               "`bdev_writeboost_get_stats` 0.5 s before the end of the run.\n")

    out.append("## Goals (4 KiB randwrite QD32)\n")
    out.append("| goal | measured | met |")
    out.append("|---|---:|---|")
    for g in judge_goals(results):
        out.append(f"| {g['goal']} | {fmt(g['measured'], '.2f')}{'x' if g['measured'] else ''} "
                   f"| {g['met']} |")
    out.append("")

    for s in SCENARIOS:
        if not any(x.scenario == s.key for x in results):
            continue
        out.append(f"## {s.title}\n")
        out.append("| workload | row | IOPS | MiB/s | mean lat | p99 lat | p99.9 lat | ratio | x OCF "
                   "| note |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for wk in s.workloads:
            ref = lookup(results, s.key, s.reference.key, wk)
            ocf = lookup(results, s.key, "ocf", wk)
            for r in s.rows:
                x = next((x for x in results
                          if x.scenario == s.key and x.row == r.key and x.workload == wk), None)
                if x is None:
                    continue
                if x.status != "ok":
                    out.append(f"| {WORKLOADS[wk].title} | {r.label} | {x.status} | | | | | | | "
                               f"{x.note} |")
                    continue
                rr = ratio(x.iops, ref.iops if ref else None)
                ro = ratio(x.iops, ocf.iops if ocf else None) if r.key == "writeboost" else None
                note = "; ".join(n for n in (x.note, wb_note(x)) if n)
                if x.exit_s is not None and x.exit_s > 2:
                    note = (note + "; " if note else "") + f"exit took {x.exit_s:.1f} s"
                out.append(
                    f"| {WORKLOADS[wk].title} | {r.label} | {fmt(x.iops)} | {fmt(x.mibps, ',.1f')} "
                    f"| {fmt(x.lat_avg_us, ',.1f')} | {fmt(x.lat_p99_us, ',.1f')} "
                    f"| {fmt(x.lat_p999_us, ',.1f')} "
                    f"| {'ref' if r == s.reference else fmt(rr, '.2f')} | {fmt(ro, '.2f', '')} "
                    f"| {note} |")
        out.append("")
        if s.plot:
            out.append(f"IOPS per second: `bdevperf.{s.key}.png`" +
                       (" (not drawn: matplotlib missing)" if not meta["plots"] else "") + "\n")
            out.append("| row | first 3 s | last 3 s | min 1 s | max 1 s |")
            out.append("|---|---:|---:|---:|---:|")
            for r in s.rows:
                x = lookup(results, s.key, r.key, HEADLINE)
                if x is None or not x.per_second_iops:
                    continue
                ps = x.per_second_iops
                out.append(f"| {r.label} | {fmt(statistics.mean(ps[:3]))} | "
                           f"{fmt(statistics.mean(ps[-3:]))} | {fmt(min(ps))} | {fmt(max(ps))} |")
            out.append("")
    out.append("## Commands\n")
    out.append("Each row ran as (configs in `bench/configs/`):\n")
    out.append("```")
    seen = set()
    for x in results:
        key = (x.scenario, x.row)
        if key in seen:
            continue
        seen.add(key)
        out.append(x.command)
    out.append("```")
    return "\n".join(out) + "\n"


def judge_goals(results):
    goals = []
    for scen, row, other, minimum, text in GOALS:
        a = lookup(results, scen, row, HEADLINE)
        b = lookup(results, scen, other, HEADLINE)
        v = ratio(a.iops if a else None, b.iops if b else None)
        met = "n/a" if v is None else ("yes" if v >= minimum else "no")
        goals.append({"goal": text, "measured": v, "minimum": minimum, "met": met})
    return goals


def plot(results: list[RunResult], out_dir: Path) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    written = []
    for s in SCENARIOS:
        if not s.plot:
            continue
        series = [(r, lookup(results, s.key, r.key, HEADLINE)) for r in s.rows]
        series = [(r, x) for r, x in series if x and x.per_second_iops]
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for r, x in series:
            ps = x.per_second_iops
            ax.plot(range(1, len(ps) + 1), ps, marker=".", label=r.label)
        ax.set_yscale("log")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("IOPS in that second (log scale)")
        ax.set_title(f"{s.title}\n{WORKLOADS[HEADLINE].title}, bdevperf -S 1 -P 1", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        p = out_dir / f"bdevperf.{s.key}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(str(p))
    return written


def print_table(results: list[RunResult]) -> None:
    print()
    hdr = f"{'scenario':<14} {'workload':<14} {'row':<11} {'IOPS':>11} {'MiB/s':>9} " \
          f"{'mean us':>9} {'p99 us':>9} {'ratio':>7} {'x OCF':>6}  note"
    print(hdr)
    print("-" * len(hdr))
    for s in SCENARIOS:
        for wk in s.workloads:
            ref = lookup(results, s.key, s.reference.key, wk)
            ocf = lookup(results, s.key, "ocf", wk)
            for r in s.rows:
                x = next((x for x in results
                          if x.scenario == s.key and x.row == r.key and x.workload == wk), None)
                if x is None:
                    continue
                if x.status != "ok":
                    print(f"{s.key:<14} {wk:<14} {r.key:<11} {x.status:>11}  {x.note}")
                    continue
                rr = "ref" if r == s.reference else fmt(ratio(x.iops, ref.iops if ref else None),
                                                        ".2f")
                ro = fmt(ratio(x.iops, ocf.iops if ocf else None), ".2f", "") \
                    if r.key == "writeboost" else ""
                print(f"{s.key:<14} {wk:<14} {r.key:<11} {fmt(x.iops):>11} "
                      f"{fmt(x.mibps, ',.1f'):>9} {fmt(x.lat_avg_us, ',.1f'):>9} "
                      f"{fmt(x.lat_p99_us, ',.1f'):>9} {rr:>7} {ro:>6}  "
                      + "; ".join(n for n in (x.note, wb_note(x)) if n))
    print()
    for g in judge_goals(results):
        m = fmt(g['measured'], '.2f') + ("x" if g["measured"] else "")
        print(f"goal {g['goal']:<45} measured {m:<8} met: {g['met']}")


# ---------------------------------------------------------------------------------------------


def build(args) -> None:
    cmd = ["cargo", "build", "--release", "-p", "writeboost", "-p", "writeboost-preload",
           "--features", "writeboost/spdk", "--lib", "--bin", "writeboost_tgt"]
    print(f"building: CARGO_TARGET_DIR={TARGET_DIR.relative_to(ROOT)} {shlex.join(cmd)}")
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET_DIR))
    if args.spdk_dir:
        env["SPDK_DIR"] = str(args.spdk_dir)
    r = subprocess.run(cmd, cwd=ROOT, env=env)
    if r.returncode != 0:
        sys.exit("cargo build failed (use --no-build with --preload to use an existing library)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short durations (smoke run)")
    ap.add_argument("--scenario", action="append", choices=[s.key for s in SCENARIOS],
                    help="run only this scenario (repeatable)")
    ap.add_argument("--workload", action="append", choices=list(WORKLOADS),
                    help="run only this workload (repeatable)")
    ap.add_argument("--row", action="append",
                    help="run only these rows (e.g. writeboost, ocf; repeatable)")
    ap.add_argument("--time", type=int, help="seconds per row, overriding every scenario's")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row; the median is reported")
    ap.add_argument("--spdk-dir", type=Path, default=Path(os.environ.get("SPDK_DIR", "/opt/spdk")))
    ap.add_argument("--preload", type=Path, default=PRELOAD_DEFAULT)
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    ap.add_argument("--core-mask", default="0x1")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="where bdevperf.{md,json} go")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--startup-timeout-s", type=float, default=60.0)
    ap.add_argument("--exit-grace-s", type=float, default=10.0,
                    help="after the results, wait this long for bdevperf to exit, then kill it")
    ap.add_argument("--from-json", type=Path,
                    help="re-render the Markdown and plots from a bdevperf.json; run nothing")
    ap.add_argument("--write-configs", action="store_true",
                    help="regenerate bench/configs/*.json from the SCENARIOS table and exit")
    args = ap.parse_args()

    if args.write_configs:
        write_configs()
        return 0
    if args.from_json:
        js = json.loads(args.from_json.read_text())
        results = [RunResult(**x) for x in js["results"]]
        report(args, results, js["meta"])
        return 0
    args.bdevperf = args.spdk_dir / "build" / "examples" / "bdevperf"
    if not args.bdevperf.exists():
        print(f"SKIPPED: SPDK bdevperf not found at {args.bdevperf}")
        return 0
    if not args.no_build:
        build(args)
    if not args.preload.exists():
        sys.exit(f"preload library {args.preload} not found")
    args.spdk_version = None

    scenarios = [s for s in SCENARIOS if not args.scenario or s.key in args.scenario]
    plan = []
    for s in scenarios:
        for r in s.rows:
            if not config_path(s, r).exists():
                sys.exit(f"missing {config_path(s, r)}: run with --write-configs")
        t = args.time or (s.quick_time_s if args.quick else s.time_s)
        for wk in s.workloads:
            if args.workload and wk not in args.workload:
                continue
            for r in s.rows:
                if args.row and r.key not in args.row:
                    continue
                plan.append((s, r, WORKLOADS[wk], t))
    est = sum(t + 3 for *_, t in plan) * args.repeat
    print(f"{len(plan)} rows x {args.repeat}, about {est // 60} min {est % 60} s")

    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "core_mask": args.core_mask,
        "preload": str(args.preload.relative_to(ROOT) if args.preload.is_relative_to(ROOT)
                       else args.preload),
        "bdevperf": str(args.bdevperf),
        "repeat": args.repeat,
        "durations": ", ".join(
            f"{s.key} {args.time or (s.quick_time_s if args.quick else s.time_s)} s"
            for s in scenarios),
        "quick": args.quick,
    }
    logdir = Path(tempfile.mkdtemp(prefix="wb-bdevperf-"))
    print(f"logs in {logdir}")
    runs: dict[tuple, list[RunResult]] = {}
    t0 = time.monotonic()
    for rep in range(args.repeat):
        for i, (s, r, w, t) in enumerate(plan):
            print(f"[{i + 1}/{len(plan)}{f' rep {rep + 1}' if args.repeat > 1 else ''}] "
                  f"{s.key} {w.key} {r.key} ({t} s) ...", end="", flush=True)
            x = run_row(args, s, r, w, t, logdir)
            print(f" {x.status} {fmt(x.iops)} IOPS" + (f" ({x.note})" if x.note else ""))
            runs.setdefault((s.key, r.key, w.key), []).append(x)
    results = []
    for key, xs in runs.items():
        ok = [x for x in xs if x.status == "ok"]
        if not ok:
            results.append(xs[0])
            continue
        ok.sort(key=lambda x: x.iops)
        med = ok[len(ok) // 2]
        med.repeats = [x.iops for x in xs if x.iops is not None]
        results.append(med)
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    meta["spdk_version"] = args.spdk_version or sh([str(args.bdevperf), "--version"])

    report(args, results, meta)
    failed = [x for x in results if x.status == "failed"]
    return 1 if failed else 0


def report(args, results: list[RunResult], meta: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    pngs = [] if args.no_plots else plot(results, args.out)
    meta["plots"] = [str(Path(p).name) for p in pngs]
    print_table(results)
    md = markdown(results, meta)
    (args.out / "bdevperf.md").write_text(md)
    js = {"meta": meta, "goals": judge_goals(results),
          "results": [dataclasses.asdict(x) for x in results]}
    (args.out / "bdevperf.json").write_text(json.dumps(js, indent=1) + "\n")
    print(f"\nwrote {args.out / 'bdevperf.md'}, {args.out / 'bdevperf.json'}"
          + "".join(f", {p}" for p in pngs) + f" (run took {meta['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
