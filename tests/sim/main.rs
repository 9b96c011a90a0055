//! Deterministic simulation of the engine. Every run prints its seed; a failing seed prints the
//! property, the swarm options and the command that reproduces it.
//!
//! - `WB_SEED=n`: run exactly seed n. `WB_SEEDS=k`: run k seeds (default below). `WB_SEED_BASE`.
//! - `WB_SEED_LIST="a b c"`: run these seeds.
//! - `WB_SIM_THREADS`: threads that run seeds (default: the machine's parallelism, at most 4).
//! - `tests/sim/seeds.txt`: every seed that ever failed, with the reason; all always run.

#![allow(clippy::result_large_err)]

#[allow(dead_code)] // The HDD latency model is used by bench/engine.rs.
mod disk;
mod executor;
mod model;
mod scenarios;
mod workload;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const DEFAULT_SEEDS: u64 = 3000;

fn env_u64(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|v| v.parse().ok())
}

fn run_one(seed: u64) -> Result<workload::Outcome, (workload::Swarm, workload::Failure)> {
    std::panic::catch_unwind(|| workload::run(seed)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err((
            workload::Swarm::describe_seed(seed),
            workload::Failure {
                property: "engine panicked".into(),
                detail: msg,
            },
        ))
    })
}

/// Runs the seeds on a few threads (each seed is its own single-threaded world); returns what
/// the passing ones reached, and the failing seeds.
fn run_seeds_quietly(seeds: Vec<u64>) -> (workload::Coverage, Vec<u64>) {
    let verbose = std::env::var("WB_VERBOSE").is_ok();
    let threads = env_u64("WB_SIM_THREADS")
        .map(|t| t as usize)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4)
        })
        .clamp(1, seeds.len().max(1));
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let coverage = Mutex::new(workload::Coverage::default());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { break };
                if verbose {
                    eprintln!("wb-sim seed={seed}");
                }
                match run_one(seed) {
                    Ok(o) => coverage.lock().unwrap().add(&o.coverage),
                    Err((swarm, f)) => {
                        eprintln!("wb-sim FAILED seed={seed} property=\"{}\" detail={}\n  swarm={swarm:?}\n  rerun: WB_SEED={seed} cargo test --release --test sim -- --exact sim_seeds --nocapture", f.property, f.detail);
                        failures.lock().unwrap().push(seed);
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_unstable();
    eprintln!(
        "wb-sim ran {} seeds, {} failed",
        seeds.len(),
        failures.len()
    );
    (coverage.into_inner().unwrap(), failures)
}

/// Runs the seeds; fails the test if any failed.
fn run_seeds(seeds: Vec<u64>) {
    let (_, failures) = run_seeds_quietly(seeds);
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}

#[test]
fn sim_seeds() {
    if let Some(seed) = env_u64("WB_SEED") {
        eprintln!("wb-sim seed={seed}");
        run_seeds(vec![seed]);
        return;
    }
    if let Ok(list) = std::env::var("WB_SEED_LIST") {
        let seeds: Vec<u64> = list
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse().ok())
            .collect();
        run_seeds(seeds);
        return;
    }
    let base = env_u64("WB_SEED_BASE").unwrap_or(0x5EED_0000);
    let count = env_u64("WB_SEEDS").unwrap_or(DEFAULT_SEEDS);
    eprintln!("wb-sim seeds={base}..{} (WB_SEEDS={count})", base + count);
    let (cov, failures) = run_seeds_quietly((base..base + count).collect());
    eprintln!("wb-sim coverage of the passing seeds: {cov:#?}");
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    // The swarm must keep reaching what it was built to reach (a change that makes these paths
    // unreachable would silently stop testing them). Checked on runs of the default size.
    if count >= DEFAULT_SEEDS {
        let pct = |n: u64| n * 100 / cov.seeds.max(1);
        let floors: [(&str, u64, u64); 14] = [
            (
                "seeds with overlapping writes",
                pct(cov.seeds_overlapping),
                40,
            ),
            (
                "seeds with a half-dirty cache",
                pct(cov.seeds_half_dirty),
                10,
            ),
            ("seeds with bypassed writes", pct(cov.seeds_bypassed), 5),
            (
                "seeds that staged and bypassed",
                pct(cov.seeds_staged_and_bypassed),
                3,
            ),
            (
                "multi-chunk write-zeroes with FUA",
                cov.multi_chunk_zeroes_fua,
                100,
            ),
            (
                "seeds with multi-chunk zeroes and bypasses",
                cov.seeds_multi_chunk_zeroes_bypassed,
                30,
            ),
            (
                "resumes write-around -> write-back",
                cov.resumes_write_around_to_back,
                50,
            ),
            (
                "resumes write-back -> write-around",
                cov.resumes_write_back_to_around,
                50,
            ),
            (
                "creates failed under faults",
                cov.creates_failed_with_faults,
                20,
            ),
            ("creates cut by a power cut", cov.creates_cut_by_power, 20),
            (
                "shutdowns failed or cut",
                cov.shutdowns_failed + cov.shutdowns_cut_by_power,
                20,
            ),
            (
                "discards on the backing device",
                cov.discards_on_backing,
                1000,
            ),
            ("seeds that re-logged", pct(cov.seeds_relogged), 10),
            ("seeds that paced writes", pct(cov.seeds_paced), 20),
        ];
        let short: Vec<String> = floors
            .iter()
            .filter(|(_, got, floor)| got < floor)
            .map(|(what, got, floor)| format!("{what}: {got} < {floor}"))
            .collect();
        assert!(short.is_empty(), "the swarm no longer reaches: {short:?}");
    }
}

#[test]
fn sim_regression_seeds() {
    let list = include_str!("seeds.txt");
    let seeds: Vec<u64> = list
        .lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    run_seeds(seeds);
}

#[test]
fn sim_catches_the_canary() {
    // With FLUSH acknowledged but the cache device never flushed, power cuts must lose
    // acknowledged data, and the simulation must notice within a few seeds.
    let caught = (0..200u64)
        .filter(|&seed| {
            std::panic::catch_unwind(|| workload::run_with(0xCA7A_0000 + seed, true))
                .map(|r| r.is_err())
                .unwrap_or(true)
        })
        .count();
    eprintln!("wb-sim canary caught by {caught} of 200 seeds");
    assert!(
        caught >= 5,
        "the simulation did not catch a missing FLUSH barrier ({caught} of 200 seeds)"
    );
}

#[test]
fn sim_is_deterministic() {
    // The same seed twice is the same execution: the same swarm, outcome, and trace of every
    // poll, timer, device I/O (offset, length, data checksum) and completion, in order.
    for seed in [1u64, 2, 3, 0x5EED_0007, 0x5EED_0011, 0x5EED_0042] {
        let once = || match workload::run_traced(seed, false) {
            (Ok(o), trace) => format!("ok {:?} trace {trace:x?}", o.swarm),
            (Err((s, f)), trace) => format!("failed {s:?} {f:?} trace {trace:x?}"),
        };
        let (a, b) = (once(), once());
        assert_eq!(a, b, "seed {seed} is not deterministic");
    }
}
