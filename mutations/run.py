#!/usr/bin/env python3
"""Mutation suite runner: applies each safety mutation of mutations/mutations.toml to a copy of
the working tree, runs the default suite there and reports caught / survived.

    python3 mutations/run.py                      # baseline, then every mutation, 3000 seeds
    python3 mutations/run.py --only NAME [NAME..] # some of them
    python3 mutations/run.py --seeds 1000         # WB_SEEDS for the sim's sim_seeds test
    python3 mutations/run.py --quick              # CI: the `quick = true` mutations, 200 seeds
    python3 mutations/run.py --check              # every anchor matches exactly once, no build
    python3 mutations/run.py --list
    python3 mutations/run.py --apply NAME         # leave the mutated copy for debugging

The copy is the working tree as `git ls-files -co --exclude-standard` lists it (tracked and
untracked-but-not-ignored files, uncommitted edits included; never target/), written to
target/mutants/tree-<job>. Every mutant builds with CARGO_TARGET_DIR=target/mutants/target, so
dependencies compile once. Each suite binary (tests/sim, tests/engine_basic) runs on its own with
WB_SEEDS set; the sim prints one `wb-sim FAILED seed=...` line per failing seed and runs every
seed, so the failing seeds are counted exactly.

Exit status: 0 when every mutation was caught, 1 when one survived, 2 on a setup error (an
anchor that does not match exactly once, a mutant that does not build, a failing baseline).
Plain Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MUTANTS = REPO / "target" / "mutants"
TARGET_DIR = MUTANTS / "target"
RESULTS = HERE / "results"

# Mutant builds override the release profile (no LTO, incremental, no debug info): a rebuild after
# a one-line change then takes seconds, not minutes. Code generation changes, behaviour does not:
# the simulation is deterministic in the seed (sim_is_deterministic), not in the compiler.
# `--exact-profile` builds with the project's release profile unchanged.
FAST_PROFILE = {
    "CARGO_PROFILE_RELEASE_LTO": "off",
    "CARGO_PROFILE_RELEASE_INCREMENTAL": "true",
    "CARGO_PROFILE_RELEASE_DEBUG": "0",
    "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16",
}

# The default suite: test binaries (cargo --test names).
SUITE = ["sim", "engine_basic"]
DEFAULT_SEEDS = 3000
QUICK_SEEDS = 200


class SetupError(Exception):
    pass


@dataclass
class Edit:
    file: str
    anchor: str
    replacement: str


@dataclass
class Mutation:
    name: str
    description: str
    edits: list[Edit]
    quick: bool = False


def load_mutations(path: Path) -> list[Mutation]:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out: list[Mutation] = []
    seen: set[str] = set()
    for i, m in enumerate(data.get("mutation", [])):
        name = m.get("name")
        if not name or not re.fullmatch(r"[a-z0-9_]+", name):
            raise SetupError(f"mutation #{i + 1}: missing or malformed name {name!r}")
        if name in seen:
            raise SetupError(f"mutation {name}: duplicate name")
        seen.add(name)
        if not m.get("description"):
            raise SetupError(f"mutation {name}: no description")
        edits = []
        if "edit" in m:
            if "file" in m:
                raise SetupError(f"mutation {name}: both file and [[mutation.edit]]")
            raw = m["edit"]
        else:
            raw = [m]
        for e in raw:
            for k in ("file", "anchor", "replacement"):
                if k not in e:
                    raise SetupError(f"mutation {name}: edit without {k}")
            if e["anchor"] == e["replacement"]:
                raise SetupError(f"mutation {name}: replacement equals anchor")
            edits.append(Edit(e["file"], e["anchor"], e["replacement"]))
        out.append(Mutation(name, m["description"], edits, bool(m.get("quick", False))))
    return out


def apply_edits(root: Path, m: Mutation) -> dict[str, str]:
    """Applies the mutation's edits under root; returns the original texts (path -> text).
    Raises SetupError naming the mutation when an anchor does not match exactly once."""
    originals: dict[str, str] = {}
    new: dict[str, str] = {}
    for e in m.edits:
        p = root / e.file
        if not p.is_file():
            raise SetupError(f"mutation {m.name}: file {e.file} does not exist")
        text = new.get(e.file) or p.read_text()
        originals.setdefault(e.file, p.read_text())
        n = text.count(e.anchor)
        if n != 1:
            first = e.anchor.splitlines()[0] if e.anchor else ""
            raise SetupError(
                f"mutation {m.name}: anchor in {e.file} matches {n} times (must be exactly once): {first!r}"
            )
        new[e.file] = text.replace(e.anchor, e.replacement, 1)
    for f, t in new.items():
        write_fresh(root / f, t)
    return originals


def write_fresh(path: Path, text: str) -> None:
    # A fresh mtime (newer than any build output) so cargo rebuilds; never restore old mtimes.
    path.write_text(text)
    now = time.time()
    os.utime(path, (now, now))


def tree_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = []
    for f in out.split("\0"):
        if not f or f.startswith("target/") or f.startswith("mutations/results/"):
            continue
        if (REPO / f).is_file():  # deleted-but-tracked files are skipped
            files.append(f)
    return files


def snapshot(tree: Path, rev: str | None = None) -> None:
    """The working tree (uncommitted edits included), or commit `rev` with `--rev`."""
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-m", "-C", str(tree)], input=archive, check=True)
        return
    for f in tree_files():
        dst = tree / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / f, dst)  # copyfile: fresh mtimes


def git_info() -> dict:
    def git(*a):
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip()

    return {
        "head": git("rev-parse", "HEAD"),
        "dirty_files": [l[3:] for l in git("status", "--porcelain").splitlines() if l],
    }


def run_logged(cmd, cwd, env, timeout, log_path: Path) -> tuple[int | None, str, float]:
    """Runs cmd in its own process group; returns (rc or None on timeout, output, seconds)."""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        p = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = None
    return rc, log_path.read_text(errors="replace"), time.monotonic() - t0


def build(tree: Path, log_path: Path, timeout: float, exact_profile: bool, suite: list[str]
          ) -> tuple[dict[str, str], float, str]:
    """Builds the suite's test binaries; returns ({test name: executable}, seconds, log)."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET_DIR), CARGO_TERM_COLOR="never")
    if not exact_profile:
        env.update(FAST_PROFILE)
    cmd = ["cargo", "test", "--release", "--no-run", "--message-format=json-render-diagnostics"]
    for t in suite:
        cmd += ["--test", t]
    rc, out, secs = run_logged(cmd, tree, env, timeout, log_path)
    exes: dict[str, str] = {}
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            tgt = msg.get("target", {})
            if tgt.get("name") in suite and "test" in tgt.get("kind", []):
                exes[tgt["name"]] = msg["executable"]
    if rc != 0 or set(exes) != set(suite):
        tail = "\n".join(l for l in out.splitlines() if not l.startswith("{"))[-3000:]
        raise SetupError(f"build failed (rc={rc}, see {log_path}):\n{tail}")
    return exes, secs, out


TEST_LINE = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", re.M)
SECTION = re.compile(r"^---- (\S+) stdout ----$", re.M)
SIM_FAILED = re.compile(r'wb-sim FAILED seed=(\d+) property="([^"]*)"')
SIM_RAN = re.compile(r"wb-sim ran (\d+) seeds, (\d+) failed")


def parse_test_output(out: str) -> dict:
    tests = {name: status for name, status in TEST_LINE.findall(out)}
    sections: dict[str, str] = {}
    heads = list(SECTION.finditer(out))
    for i, h in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(out)
        sections[h.group(1)] = out[h.end() : end]
    return {"tests": tests, "sections": sections}


@dataclass
class Outcome:
    name: str
    description: str
    status: str = ""  # caught | survived | timeout | baseline-ok | baseline-FAILED
    caught_by: list[str] = field(default_factory=list)
    seeds: int = 0
    failing_seeds: int | None = None  # of `seeds` default seeds (sim_seeds); None: not counted
    first_seed: int | None = None
    first_property: str | None = None
    regression_failing: int | None = None
    build_s: float = 0.0
    test_s: float = 0.0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def run_suite(tree: Path, exes: dict[str, str], seeds: int, quick: bool, timeout: float,
              logdir: Path, label: str, o: Outcome) -> None:
    env = dict(
        os.environ,
        WB_SEEDS=str(seeds),
        CARGO_MANIFEST_DIR=str(tree),
        RUST_BACKTRACE="0",
    )
    env.pop("WB_SEED", None)  # one seed would override the range
    o.seeds = seeds
    timed_out = False
    for b in exes:
        cmd = [exes[b]]
        if quick:
            cmd += ["--exact", "sim_seeds"]
        rc, out, secs = run_logged(cmd, tree, env, timeout, logdir / f"{label}.{b}.log")
        o.test_s += secs
        if rc is None:
            timed_out = True
            o.caught_by.append(f"{b}: timeout after {timeout:.0f}s")
            # The sim prints FAILED lines only in the harness's failure report: none to count.
            continue
        p = parse_test_output(out)
        failed = [n for n, s in p["tests"].items() if s == "FAILED"]
        o.caught_by += [f"{b}::{n}" for n in failed]
        if rc != 0 and not failed:
            o.caught_by.append(f"{b}: exit status {rc}")
        if b == "sim":
            sec = p["sections"].get("sim_seeds")
            if p["tests"].get("sim_seeds") == "ok":
                o.failing_seeds = 0
            elif sec is not None:
                fails = SIM_FAILED.findall(sec)
                ran = SIM_RAN.search(sec)
                o.failing_seeds = int(ran.group(2)) if ran else len(fails)
                if ran and int(ran.group(1)) != seeds:
                    o.notes.append(f"sim_seeds ran {ran.group(1)} seeds, not {seeds}")
                if fails:
                    o.first_seed = int(fails[0][0])
                    o.first_property = fails[0][1]
                if not ran:
                    o.notes.append("sim_seeds did not finish its seeds (panic outside a seed?)")
            reg = p["sections"].get("sim_regression_seeds")
            if p["tests"].get("sim_regression_seeds") == "ok":
                o.regression_failing = 0
            elif reg is not None:
                ran = SIM_RAN.search(reg)
                o.regression_failing = int(ran.group(2)) if ran else len(SIM_FAILED.findall(reg))
    o.status = "timeout" if timed_out and not any("::" in c for c in o.caught_by) else (
        "caught" if o.caught_by else "survived"
    )


def fmt_seeds(o: Outcome) -> str:
    if o.failing_seeds is None:
        return "n/a"
    return f"{o.failing_seeds} / {o.seeds}"


def markdown(outcomes: list[Outcome]) -> str:
    rows = [
        "| mutation | caught? | failing seeds (sim_seeds) | first seed | caught by | time (build + test) |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        by = ", ".join(c.replace("::", " ") for c in o.caught_by) or "-"
        first = str(o.first_seed) if o.first_seed is not None else "-"
        if o.regression_failing:
            by += f" (regression seeds: {o.regression_failing})"
        rows.append(
            f"| {o.name} | {o.status} | {fmt_seeds(o)} | {first} | {by} | "
            f"{o.build_s:.0f}s + {o.test_s:.0f}s |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    ap.add_argument("--seeds", type=int, help=f"WB_SEEDS (default {DEFAULT_SEEDS}; --quick: {QUICK_SEEDS})")
    ap.add_argument("--quick", action="store_true",
                    help="CI: the quick mutations, sim_seeds only, few seeds, no baseline; fails unless all are caught")
    ap.add_argument("--jobs", type=int, default=1, help="mutants at a time (default 1)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument("--timeout", type=float, help="seconds per test binary (default: 3x baseline, at least 900)")
    ap.add_argument("--exact-profile", action="store_true",
                    help="build with the project's release profile (LTO: minutes per mutant) instead of the fast one")
    ap.add_argument("--check", action="store_true", help="check every anchor against the working tree; no build")
    ap.add_argument("--list", action="store_true", help="list the mutations")
    ap.add_argument("--apply", metavar="NAME", help="prepare target/mutants/tree-debug with this mutation and stop")
    ap.add_argument("--rev", metavar="COMMIT",
                    help="mutate this commit (git archive) instead of the working tree")
    ap.add_argument("--mutations", type=Path, default=HERE / "mutations.toml")
    ap.add_argument("--out", type=Path, help="JSON results file (default mutations/results/<time>.json)")
    args = ap.parse_args()

    try:
        muts = load_mutations(args.mutations)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for m in muts:
            print(f"{m.name:40} {'quick ' if m.quick else ''}{m.description}")
        return 0
    if args.only:
        unknown = set(args.only) - {m.name for m in muts}
        if unknown:
            print(f"error: unknown mutation(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        muts = [m for m in muts if m.name in args.only]
    elif args.quick:
        muts = [m for m in muts if m.quick]

    check_root = REPO
    if args.rev:
        check_root = MUTANTS / "tree-check"
        snapshot(check_root, args.rev)
    # Every anchor must match exactly once before anything builds.
    errors = []
    for m in muts:
        try:
            check_anchors(check_root, m)
        except SetupError as e:
            errors.append(str(e))
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{len(muts)} mutations: every anchor matches exactly once")
        return 0

    if args.apply:
        (m,) = [x for x in load_mutations(args.mutations) if x.name == args.apply] or [None]
        if m is None:
            print(f"error: unknown mutation {args.apply}", file=sys.stderr)
            return 2
        tree = MUTANTS / "tree-debug"
        snapshot(tree, args.rev)
        apply_edits(tree, m)
        print(f"{tree} carries mutation {m.name}; run for example:")
        prof = "" if args.exact_profile else " ".join(f"{k}={v}" for k, v in FAST_PROFILE.items()) + " "
        print(f"  cd {tree} && {prof}CARGO_TARGET_DIR={TARGET_DIR} WB_SEED=<seed> "
              "cargo test --release --test sim -- --exact sim_seeds --nocapture")
        return 0

    if args.jobs != 1:
        # Kept simple: one mutant at a time (the sim's seeds run on one thread; the build uses all).
        print("note: --jobs other than 1 is not implemented; running one mutant at a time", file=sys.stderr)

    seeds = args.seeds or (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = MUTANTS / "logs" / stamp
    logdir.mkdir(parents=True, exist_ok=True)
    tree = MUTANTS / "tree-0"
    started = time.monotonic()
    info = git_info()
    if args.rev:
        info = {"rev": args.rev, "commit": subprocess.run(
            ["git", "rev-parse", args.rev], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()}
        print(f"tree: {tree} (commit {info['commit'][:12]})")
    else:
        print(f"tree: {tree} (working tree: HEAD {info['head'][:12]} + "
              f"{len(info['dirty_files'])} uncommitted files)")
    snapshot(tree, args.rev)
    # The working tree may have changed since the check above.
    for m in muts:
        try:
            check_anchors(tree, m)
        except SetupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    suite = ["sim"] if args.quick else SUITE
    print(f"seeds: WB_SEEDS={seeds}; logs: {logdir}", flush=True)

    outcomes: list[Outcome] = []
    baseline = None
    timeout = args.timeout or (600.0 if args.quick else 3600.0)
    status = 0
    if not (args.no_baseline or args.quick):
        baseline = Outcome("(baseline: no mutation)", "the unmutated tree")
        t0 = time.monotonic()
        try:
            exes, baseline.build_s, _ = build(tree, logdir / "baseline.build.log", 3600, args.exact_profile, suite)
        except SetupError as e:
            print(f"error: baseline {e}", file=sys.stderr)
            return 2
        run_suite(tree, exes, seeds, args.quick, timeout, logdir, "baseline", baseline)
        baseline.wall_s = time.monotonic() - t0
        ok = baseline.status == "survived"
        baseline.status = "passes" if ok else "FAILS"
        print(f"baseline: {baseline.status} (build {baseline.build_s:.0f}s, tests {baseline.test_s:.0f}s)", flush=True)
        if not ok:
            print(f"error: the unmutated tree fails: {baseline.caught_by}; see {logdir}", file=sys.stderr)
            write_results(args, seeds, info, baseline, [], started)
            return 2
        if not args.timeout:
            timeout = max(3 * baseline.test_s, 900.0)

    for m in muts:
        o = Outcome(m.name, m.description)
        t0 = time.monotonic()
        originals = apply_edits(tree, m)
        try:
            try:
                exes, o.build_s, _ = build(tree, logdir / f"{m.name}.build.log", 3600, args.exact_profile, suite)
            except SetupError as e:
                print(f"error: mutation {m.name}: {e}", file=sys.stderr)
                o.status = "build-failed"
                o.notes.append(str(e)[:2000])
                status = 2
            else:
                run_suite(tree, exes, seeds, args.quick, timeout, logdir, m.name, o)
        finally:
            for f, t in originals.items():
                write_fresh(tree / f, t)
        o.wall_s = time.monotonic() - t0
        outcomes.append(o)
        extra = f", {fmt_seeds(o)} seeds, first {o.first_seed}" if o.failing_seeds else ""
        print(f"{m.name}: {o.status}{extra} ({', '.join(o.caught_by) or 'no test failed'}) "
              f"[{o.build_s:.0f}s + {o.test_s:.0f}s]", flush=True)
        if o.status == "survived" and status == 0:
            status = 1
        if args.quick and o.status == "caught" and not o.failing_seeds:
            # The quick mutations fail many seeds: none counted means the sim's output format
            # changed under the parser (`wb-sim FAILED seed=`, `wb-sim ran N seeds, K failed`).
            print(f"error: mutation {m.name}: caught, but no failing seed could be counted "
                  f"in the sim's output (format changed?); see {logdir}", file=sys.stderr)
            status = 2

    print()
    print(markdown(([baseline] if baseline else []) + outcomes))
    survived = [o.name for o in outcomes if o.status == "survived"]
    print(f"\n{len(outcomes) - len(survived)} of {len(outcomes)} caught"
          + (f"; survived: {', '.join(survived)}" if survived else "")
          + f"; total {(time.monotonic() - started) / 60:.1f} min")
    path = write_results(args, seeds, info, baseline, outcomes, started)
    print(f"results: {path}")
    return status


def check_anchors(root: Path, m: Mutation) -> None:
    texts: dict[str, str] = {}
    for e in m.edits:
        p = root / e.file
        if not p.is_file():
            raise SetupError(f"mutation {m.name}: file {e.file} does not exist")
        t = texts.get(e.file, p.read_text())
        n = t.count(e.anchor)
        if n != 1:
            first = e.anchor.splitlines()[0] if e.anchor else ""
            raise SetupError(
                f"mutation {m.name}: anchor in {e.file} matches {n} times (must be exactly once): {first!r}"
            )
        texts[e.file] = t.replace(e.anchor, e.replacement, 1)


def write_results(args, seeds, info, baseline, outcomes, started) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    kind = "quick" if args.quick else ("only" if args.only else "full")
    path = args.out or RESULTS / f"{stamp}-{kind}-{seeds}.json"
    doc = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python3", "mutations/run.py", *sys.argv[1:]]),
        "wb_seeds": seeds,
        "git": info,
        "total_min": round((time.monotonic() - started) / 60, 1),
        "baseline": baseline.__dict__ if baseline else None,
        "mutations": [o.__dict__ for o in outcomes],
        # The exact substitutions measured (anchors move with the engine).
        "mutations_toml": args.mutations.read_text(),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
