#!/usr/bin/env python3
"""Several reactors: 4 KiB random write QD32 over malloc bases (cache 256 MiB, backing 128 MiB per
volume), stock bdevperf with the writeboost module preloaded (issue 11's closing numbers).

    python3 bench/multicore.py                 # 3 repeats of every row, 10 s each
    python3 bench/multicore.py --time 5 --repeat 1

Rows (same invocation, same binaries):
  1vol-1core       -m 0x1: one volume, one bdevperf job (the reference)
  2vol-cpumask     -m 0x3: two volumes, wb0 with cpumask 0x1 and wb1 with cpumask 0x2, one job per
                   volume on the same core as its volume thread (job file)
  2vol-default     -m 0x3: the same jobs, volumes without cpumask (both volume threads on the app
                   thread's core 0: the default placement)
  1vol-2core-C     -m 0x3 -C: one volume (thread on core 0), a job on each core

Prints a markdown table (median IOPS over the repeats, ratio to 1vol-1core) and every command.
Builds target/spdk/release/libwriteboost_preload.so first unless --no-build. Run it on a quiet
machine: it needs both cores. Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_DIR = ROOT / "target" / "spdk"
BLOCK = 4096
CACHE_BLOCKS = 256 * 1024 * 1024 // BLOCK
BACKING_BLOCKS = 128 * 1024 * 1024 // BLOCK
TOTAL = re.compile(r"^\s*Total\s+:\s+(?P<iops>[\d.]+)\s+(?P<mibps>[\d.]+)\s+(?P<fail>[\d.]+)")


def config(vols: list[tuple[str, str | None]]) -> dict:
    cfg = []
    for name, mask in vols:
        for base, blocks in (("Cache", CACHE_BLOCKS), ("Backing", BACKING_BLOCKS)):
            cfg.append({"method": "bdev_malloc_create",
                        "params": {"name": f"{name}{base}", "num_blocks": blocks, "block_size": BLOCK}})
        p = {"name": name, "cache_bdev": f"{name}Cache", "backing_bdev": f"{name}Backing"}
        if mask:
            p["cpumask"] = mask
        cfg.append({"method": "bdev_writeboost_create", "params": p})
    cfg.append({"method": "bdev_wait_for_examine"})
    return {"subsystems": [{"subsystem": "bdev", "config": cfg}]}


def job_file(jobs: list[tuple[str, str]]) -> str:
    text = "[global]\nbs=4096\niodepth=32\nrw=randwrite\n"
    for i, (bdev, mask) in enumerate(jobs):
        text += f"[job{i}]\nfilename={bdev}\ncpumask={mask}\n"
    return text


def rows(tmp: Path, t: int) -> list[tuple[str, str, list[str]]]:
    """(key, description, bdevperf arguments after the common ones)."""
    def write(name: str, content: str) -> str:
        p = tmp / name
        p.write_text(content)
        return str(p)

    one = write("one.json", json.dumps(config([("wb0", None)]), indent=1))
    two_masked = write("two-cpumask.json", json.dumps(config([("wb0", "0x1"), ("wb1", "0x2")]), indent=1))
    two_default = write("two-default.json", json.dumps(config([("wb0", None), ("wb1", None)]), indent=1))
    jobs = write("two.jobs", job_file([("wb0", "0x1"), ("wb1", "0x2")]))
    w = ["-q", "32", "-o", "4096", "-w", "randwrite", "-t", str(t)]
    return [
        ("1vol-1core", "one volume, one core (-m 0x1)", ["-m", "0x1", "--json", one, "-T", "wb0", *w]),
        ("2vol-cpumask", "two volumes on -m 0x3, cpumask 0x1 / 0x2, each job on its volume's core",
         ["-m", "0x3", "--json", two_masked, "-j", jobs, "-t", str(t)]),
        ("2vol-default", "two volumes on -m 0x3, default placement (both volume threads on core 0)",
         ["-m", "0x3", "--json", two_default, "-j", jobs, "-t", str(t)]),
        ("1vol-2core-C", "one volume on -m 0x3 -C (a job on each core)",
         ["-m", "0x3", "--json", one, "-T", "wb0", "-C", *w]),
    ]


def run(args, extra: list[str], log: Path) -> tuple[float | None, str]:
    sock = Path(tempfile.gettempdir()) / f"wb-multicore-{os.getpid()}.sock"
    cmd = [str(args.bdevperf), "--no-huge", "-s", "2048", "--disable-cpumask-locks", "-r", str(sock),
           *extra]
    shown = f"env LD_PRELOAD={shlex.quote(str(args.preload))} " + shlex.join(cmd)
    env = dict(os.environ, LD_PRELOAD=str(args.preload))
    for p in (sock, Path(f"{sock}.lock")):
        p.unlink(missing_ok=True)
    try:
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, timeout=args.time + 120).stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + "\n(killed: timeout)"
    log.write_text(out)
    for p in (sock, Path(f"{sock}.lock")):
        p.unlink(missing_ok=True)
    iops = None
    for l in out.splitlines():
        m = TOTAL.match(l.replace("\r", ""))
        if m and float(m["fail"]) == 0.0:
            iops = float(m["iops"])
    return iops, shown


def main() -> None:
    spdk = Path(os.environ.get("SPDK_DIR", "/opt/spdk"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=int, default=10, help="seconds per run (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row, interleaved (default 3)")
    ap.add_argument("--bdevperf", type=Path, default=spdk / "build" / "examples" / "bdevperf")
    ap.add_argument("--preload", type=Path, default=TARGET_DIR / "release" / "libwriteboost_preload.so")
    ap.add_argument("--no-build", action="store_true", help="do not build the preload library first")
    ap.add_argument("--logs", type=Path, help="directory for the bdevperf logs (default: a temp dir)")
    args = ap.parse_args()
    if not args.no_build:
        r = subprocess.run(["cargo", "build", "--release", "-p", "writeboost-preload"], cwd=ROOT,
                           env=dict(os.environ, CARGO_TARGET_DIR=str(TARGET_DIR)))
        if r.returncode != 0:
            sys.exit("cargo build failed")
    tmp = Path(tempfile.mkdtemp(prefix="wb-multicore-"))
    logs = args.logs or tmp
    logs.mkdir(parents=True, exist_ok=True)
    table = rows(tmp, args.time)
    results: dict[str, list[float]] = {k: [] for k, _, _ in table}
    commands: dict[str, str] = {}
    for i in range(args.repeat):
        for key, _, extra in table:
            iops, shown = run(args, extra, logs / f"{key}-{i}.log")
            commands[key] = shown
            print(f"  {key} run {i + 1}: {iops if iops is not None else 'FAILED'}", file=sys.stderr)
            if iops is not None:
                results[key].append(iops)
            time.sleep(1)
    ref = statistics.median(results["1vol-1core"]) if results["1vol-1core"] else None
    print(f"4 KiB randwrite QD32, malloc bases (cache 256 MiB, backing 128 MiB per volume), "
          f"{args.time} s, median of {args.repeat}; {os.uname().nodename}, {os.cpu_count()} CPUs\n")
    print("| row | setup | IOPS (median) | runs | vs 1vol-1core |")
    print("|---|---|---:|---|---:|")
    for key, desc, _ in table:
        v = results[key]
        med = statistics.median(v) if v else None
        runs = ", ".join(f"{x / 1000:.0f} K" for x in v) or "failed"
        ratio = f"{med / ref:.2f}x" if med and ref else ""
        medtxt = f"{med / 1000:,.0f} K" if med else "failed"
        print(f"| {key} | {desc} | {medtxt} | {runs} | {ratio} |")
    print("\nCommands (configs and job file in " + str(tmp) + "):\n")
    for key, _, _ in table:
        print(f"- {key}: `{commands.get(key, '')}`")
    print(f"\nLogs: {logs}")


if __name__ == "__main__":
    main()
