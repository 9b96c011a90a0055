//! Deterministic simulation of the engine. Every run prints its seed; a failing seed prints the
//! property, the swarm options and the command that reproduces it.
//!
//! - `WB_SEED=n`: run exactly seed n. `WB_SEEDS=k`: run k seeds (default below). `WB_SEED_BASE`.
//! - `tests/sim/seeds.txt`: every seed that ever failed, with the reason; all always run.

#![allow(clippy::result_large_err)]

#[allow(dead_code)] // The HDD latency model is used by bench/engine.rs.
mod disk;
mod executor;
mod model;
mod workload;

const DEFAULT_SEEDS: u64 = 3000;

fn env_u64(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|v| v.parse().ok())
}

fn run_seeds(seeds: impl Iterator<Item = u64>) {
    let mut failures = Vec::new();
    let mut n = 0;
    let verbose = std::env::var("WB_VERBOSE").is_ok();
    for seed in seeds {
        n += 1;
        if verbose {
            eprintln!("wb-sim seed={seed}");
        }
        let outcome = std::panic::catch_unwind(|| workload::run(seed)).unwrap_or_else(|p| {
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
        });
        if let Err((swarm, f)) = outcome {
            eprintln!("wb-sim FAILED seed={seed} property=\"{}\" detail={}\n  swarm={swarm:?}\n  rerun: WB_SEED={seed} cargo test --release --test sim -- --exact sim_seeds --nocapture", f.property, f.detail);
            failures.push(seed);
        }
    }
    eprintln!("wb-sim ran {n} seeds, {} failed", failures.len());
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}

#[test]
fn sim_seeds() {
    if let Some(seed) = env_u64("WB_SEED") {
        eprintln!("wb-sim seed={seed}");
        return run_seeds(std::iter::once(seed));
    }
    let base = env_u64("WB_SEED_BASE").unwrap_or(0x5EED_0000);
    let count = env_u64("WB_SEEDS").unwrap_or(DEFAULT_SEEDS);
    eprintln!("wb-sim seeds={base}..{} (WB_SEEDS={count})", base + count);
    run_seeds(base..base + count);
}

#[test]
fn sim_regression_seeds() {
    let list = include_str!("seeds.txt");
    let seeds: Vec<u64> = list
        .lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    run_seeds(seeds.into_iter());
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
    // The same seed twice gives the same swarm and the same outcome.
    for seed in [1u64, 2, 3] {
        let a = workload::run(seed)
            .map(|s| format!("{s:?}"))
            .map_err(|(s, f)| format!("{s:?}{f:?}"));
        let b = workload::run(seed)
            .map(|s| format!("{s:?}"))
            .map_err(|(s, f)| format!("{s:?}{f:?}"));
        assert_eq!(a, b, "seed {seed} is not deterministic");
    }
}
