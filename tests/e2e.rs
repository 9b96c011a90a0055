//! End-to-end tests of the SPDK bdev module against a real SPDK (`$SPDK_DIR`, default /opt/spdk).
//!
//! `cargo test --test e2e` builds `writeboost_tgt` and the preload library (cargo feature
//! `spdk`, target dir `target/spdk`) and runs the scenarios below one after another. Without
//! SPDK it prints exactly one line, `SKIPPED: SPDK not found at <dir>`, and passes.
//!
//! Every SPDK application runs with `--no-huge`, a unique RPC socket under /tmp and unique ports on
//! 127.0.0.1; the target on core 0, initiators (bdevperf, spdk_dd) on core 1. Processes are killed
//! and scratch files removed even when a scenario fails (`WB_E2E_KEEP=1` keeps the files).
//!
//! Filter: `cargo test --test e2e -- <substring>`. `WB_E2E_PROFILE=release` builds in release.

#[path = "e2e/harness.rs"]
mod harness;

use harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use writeboost::engine::config::TUNABLES;

const NQN: &str = "nqn.2016-06.io.spdk:wbe2e";

type Scenario = (&'static str, fn(&Env));

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let scenarios: &[Scenario] = &[
        (
            "bdevperf_verify_with_preloaded_module",
            bdevperf_verify_with_preloaded_module,
        ),
        (
            "nvmf_tcp_io_stats_crash_restart_hot_remove_drain",
            nvmf_tcp_io_stats_crash_restart_hot_remove_drain,
        ),
        (
            "bad_input_gets_clear_errors_and_changes_nothing",
            bad_input_gets_clear_errors_and_changes_nothing,
        ),
    ];
    let selected: Vec<&Scenario> = scenarios
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .collect();
    let plugin_selected = filters.is_empty()
        || filters
            .iter()
            .any(|f| "rpc_plugin_matches_tunables".contains(f.as_str()));
    if plugin_selected {
        rpc_plugin_matches_tunables(&root);
    }
    if selected.is_empty() {
        return;
    }
    let spdk = PathBuf::from(std::env::var("SPDK_DIR").unwrap_or_else(|_| "/opt/spdk".into()));
    let needed = [
        "include/spdk/bdev_module.h",
        "build/lib/libspdk_bdev.a",
        "build/examples/bdevperf",
        "build/bin/spdk_dd",
        "scripts/rpc.py",
    ];
    if needed.iter().any(|p| !spdk.join(p).exists()) {
        println!("SKIPPED: SPDK not found at {}", spdk.display());
        return;
    }
    let (tgt, preload) = build(&root);
    let mut failed = Vec::new();
    for (name, f) in selected {
        let env = Env {
            spdk: spdk.clone(),
            root: root.clone(),
            tgt: tgt.clone(),
            preload: preload.clone(),
            scratch: Scratch::new(name),
        };
        let t0 = Instant::now();
        println!("e2e {name} ...");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&env)));
        match r {
            Ok(()) => println!("e2e {name} ... ok ({:.1}s)", t0.elapsed().as_secs_f64()),
            Err(_) => {
                println!("e2e {name} ... FAILED ({:.1}s)", t0.elapsed().as_secs_f64());
                failed.push(*name);
            }
        }
    }
    if !failed.is_empty() {
        println!("e2e: {} failed: {}", failed.len(), failed.join(", "));
        std::process::exit(1);
    }
}

/// Builds writeboost_tgt and the preload library with cargo feature `spdk`.
fn build(root: &Path) -> (PathBuf, PathBuf) {
    let profile = std::env::var("WB_E2E_PROFILE").unwrap_or_else(|_| "dev".into());
    let target_dir = root.join("target/spdk");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let t0 = Instant::now();
    let out = Command::new(cargo)
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--profile",
            &profile,
            "-p",
            "writeboost",
            "-p",
            "writeboost-preload",
        ])
        .args([
            "--features",
            "writeboost/spdk",
            "--lib",
            "--bin",
            "writeboost_tgt",
        ])
        .output()
        .expect("run cargo build");
    if !out.status.success() {
        panic!(
            "building writeboost_tgt and the preload library failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = target_dir.join(if profile == "dev" { "debug" } else { &profile });
    println!(
        "e2e: built {} in {:.0}s",
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
    (
        dir.join("writeboost_tgt"),
        dir.join("libwriteboost_preload.so"),
    )
}

/// The plugin's table of tunables equals the engine's (name, range, default, dynamic).
fn rpc_plugin_matches_tunables(root: &Path) {
    let script = "import json, writeboost_rpc; print(json.dumps(writeboost_rpc.TUNABLES))";
    let out = match Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", root.join("rpc"))
        .output()
    {
        Ok(o) => o,
        Err(_) => return, // no python3: nothing can use the plugin either
    };
    assert!(
        out.status.success(),
        "importing rpc/writeboost_rpc.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugin: Vec<(String, u64, u64, u64, bool)> =
        serde_json::from_slice(&out.stdout).expect("plugin TUNABLES as JSON");
    let engine: Vec<(String, u64, u64, u64, bool)> = TUNABLES
        .iter()
        .map(|t| (t.name.to_string(), t.min, t.max, t.default, t.dynamic))
        .collect();
    assert_eq!(
        plugin, engine,
        "rpc/writeboost_rpc.py TUNABLES differs from engine::config::TUNABLES"
    );
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn bdevperf_job_line(log: &str, bdev: &str) -> Option<(f64, f64)> {
    // "	 wb0                 :       5.01   59605.84     232.84       0.00 ..."
    log.lines().rev().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != bdev {
            return None;
        }
        let v: Vec<f64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() >= 4).then(|| (v[1], v[3]))
    })
}

fn assert_bdevperf_ok(ok: bool, log: &str, bdev: &str) {
    let (iops, fails) = bdevperf_job_line(log, bdev)
        .unwrap_or_else(|| panic!("no bdevperf result for {bdev}:\n{log}"));
    assert!(ok, "bdevperf failed:\n{log}");
    assert!(
        iops > 0.0 && fails == 0.0,
        "bdevperf: {iops} IOPS, {fails} failures/s:\n{log}"
    );
}

/// Stock bdevperf with the preloaded module: verify over configs/bdevperf.json (malloc bases),
/// 4 KiB and 64 KiB; then with a tiny spdk_bdev_io pool, so base I/O hits -ENOMEM and waits in
/// spdk_bdev_queue_io_wait.
fn bdevperf_verify_with_preloaded_module(env: &Env) {
    let bdevperf = env.spdk.join("build/examples/bdevperf");
    let cfg_path = env.root.join("configs/bdevperf.json");
    let cfg = s(&cfg_path);
    for (bs, qd) in [("4096", "32"), ("65536", "8")] {
        let (ok, log) = env.run_app(
            "bdevperf",
            &bdevperf,
            &[
                "--json", &cfg, "-T", "wb0", "-q", qd, "-o", bs, "-w", "verify", "-t", "3",
            ],
            true,
            Duration::from_secs(90),
        );
        assert_bdevperf_ok(ok, &log, "wb0");
        assert!(
            log.contains("volume wb0: formatted a new cache"),
            "module not active in bdevperf:\n{log}"
        );
    }
    let mut c: Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).expect("config")).expect("json");
    c["subsystems"][0]["config"]
        .as_array_mut()
        .expect("config array")
        .insert(
            0,
            serde_json::json!({"method": "bdev_set_options",
                           "params": {"bdev_io_pool_size": 256, "bdev_io_cache_size": 16}}),
        );
    let small = env.scratch.path("small_pool.json");
    std::fs::write(&small, c.to_string()).expect("write config");
    let (ok, log) = env.run_app(
        "bdevperf",
        &bdevperf,
        &[
            "--json",
            &s(&small),
            "-T",
            "wb0",
            "-q",
            "256",
            "-o",
            "65536",
            "-w",
            "verify",
            "-t",
            "3",
        ],
        true,
        Duration::from_secs(90),
    );
    assert_bdevperf_ok(ok, &log, "wb0");
    assert!(
        log.contains("out of spdk_bdev_io; waiting with spdk_bdev_queue_io_wait"),
        "the -ENOMEM path was not exercised:\n{log}"
    );
    assert!(
        log.contains("volume wb0: stopped cleanly"),
        "no clean shutdown:\n{log}"
    );
}

fn stats(env: &Env, sock: &Path, name: &str) -> Value {
    let v = env.rpc_ok(sock, &["bdev_writeboost_get_stats", "-b", name]);
    v.as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| panic!("no stats for {name}: {v}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats field {key} missing: {v}"))
}

fn bdev_exists(env: &Env, sock: &Path, name: &str) -> bool {
    env.rpc(sock, &["bdev_get_bdevs", "-b", name]).is_ok()
}

fn wait_bdev(env: &Env, sock: &Path, name: &str) {
    wait_for(&format!("bdev {name}"), Duration::from_secs(30), || {
        bdev_exists(env, sock, name).then_some(())
    });
}

fn export_nvmf(env: &Env, sock: &Path, bdev: &str, port: u16) {
    env.rpc_ok(sock, &["nvmf_create_transport", "-t", "tcp"]);
    env.rpc_ok(
        sock,
        &["nvmf_create_subsystem", NQN, "-a", "-s", "WBE2E0000000001"],
    );
    env.rpc_ok(sock, &["nvmf_subsystem_add_ns", NQN, bdev]);
    env.rpc_ok(
        sock,
        &[
            "nvmf_subsystem_add_listener",
            NQN,
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &port.to_string(),
            "-f",
            "ipv4",
        ],
    );
}

/// The pollers of one SPDK thread, by name.
fn thread_pollers(env: &Env, sock: &Path, thread: &str) -> Vec<String> {
    let v = env.rpc_ok(sock, &["thread_get_pollers"]);
    let threads = v["threads"].as_array().cloned().unwrap_or_default();
    let t = threads
        .iter()
        .find(|t| t["name"] == thread)
        .unwrap_or_else(|| panic!("no SPDK thread {thread} in {v}"));
    ["active_pollers", "timed_pollers", "paused_pollers"]
        .iter()
        .flat_map(|k| t[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect()
}

/// spdk_top (interactive) in a pseudo-terminal: the Threads tab, then the Pollers tab (key 2)
/// must show every name. Skipped when util-linux `script` is missing.
fn spdk_top_shows(env: &Env, sock: &Path, names: &[&str]) {
    if Command::new("script").arg("--version").output().is_err() {
        println!("e2e: no `script` command, spdk_top check skipped");
        return;
    }
    let screen = env.scratch.path("spdk_top.out");
    let top = env.spdk.join("build/bin/spdk_top");
    let cmd = format!(
        "(sleep 3; printf 2; sleep 3; printf q) | TERM=xterm script -qc 'stty cols 200 rows 60; {} -r {}' {} >/dev/null 2>&1",
        s(&top),
        s(sock),
        s(&screen)
    );
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd);
    let mut p = spawn("spdk_top", c, &env.scratch.path("spdk_top.log"));
    p.wait(Duration::from_secs(20));
    let text = String::from_utf8_lossy(&std::fs::read(&screen).unwrap_or_default()).to_string();
    for n in names {
        assert!(text.contains(n), "spdk_top does not show {n}");
    }
}

/// A volume over aio files exported over NVMe-oF TCP: bdevperf verify through SPDK's initiator,
/// stats, the pollers, a pattern written and FLUSHed, kill -9, restart from the saved config
/// (deferred create + examine), hot-remove and re-add of the backing bdev, drop_caches, delete:
/// the backing file alone then holds the pattern.
fn nvmf_tcp_io_stats_crash_restart_hot_remove_drain(env: &Env) {
    let cache = env.scratch.path("cache.img");
    let backing = env.scratch.path("backing.img");
    std::fs::File::create(&cache)
        .and_then(|f| f.set_len(64 << 20))
        .expect("cache file");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(256 << 20))
        .expect("backing file");
    let backing_uuid = "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d";
    let port = free_port();
    let init_cfg = env.scratch.path("initiator.json");
    std::fs::write(&init_cfg, initiator_json(port, NQN)).expect("initiator json");
    let init_cfg = s(&init_cfg);
    let bdevperf = env.spdk.join("build/examples/bdevperf");
    let dd = env.spdk.join("build/bin/spdk_dd");

    let t = env.start_target("nvmf", &[]);
    let sock = t.sock.clone();
    // Created before its bases exist: deferred, then completed by examine.
    let r = env.rpc_ok(
        &sock,
        &[
            "bdev_writeboost_create",
            "-b",
            "wb0",
            "-c",
            "AioCache",
            "-d",
            "AioBacking",
            "--writeback-threshold",
            "0",
        ],
    );
    assert_eq!(r, Value::String("wb0".into()));
    assert!(!bdev_exists(env, &sock, "wb0"));
    env.rpc_ok(&sock, &["bdev_aio_create", &s(&cache), "AioCache", "512"]);
    env.rpc_ok(
        &sock,
        &[
            "bdev_aio_create",
            &s(&backing),
            "AioBacking",
            "512",
            "-u",
            backing_uuid,
        ],
    );
    wait_bdev(env, &sock, "wb0");
    let b = env.rpc_ok(&sock, &["bdev_get_bdevs", "-b", "wb0"]);
    assert_eq!(
        b[0]["driver_specific"]["writeboost"]["cache_bdev"], "AioCache",
        "{b}"
    );
    for base in ["AioCache", "AioBacking"] {
        let v = env.rpc_ok(&sock, &["bdev_get_bdevs", "-b", base]);
        assert_eq!(v[0]["claimed"], true, "{base} not claimed: {v}");
    }
    let pollers = thread_pollers(env, &sock, "writeboost_wb0");
    for p in [
        "wb_exec",
        "wb_flush",
        "wb_writeback",
        "wb_sb_record",
        "wb_sync",
    ] {
        assert!(
            pollers.iter().any(|x| x == p),
            "poller {p} missing on writeboost_wb0: {pollers:?}"
        );
    }

    spdk_top_shows(
        env,
        &sock,
        &[
            "writeboost_wb0",
            "wb_exec",
            "wb_flush",
            "wb_writeback",
            "wb_sb_record",
            "wb_sync",
        ],
    );
    export_nvmf(env, &sock, "wb0", port);
    env.rpc_ok(&sock, &["bdev_writeboost_clear_stats", "wb0"]);
    let (ok, log) = env.run_app(
        "bdevperf",
        &bdevperf,
        &[
            "--json", &init_cfg, "-q", "16", "-o", "4096", "-w", "verify", "-t", "3",
        ],
        false,
        Duration::from_secs(90),
    );
    assert_bdevperf_ok(ok, &log, "Nvme0n1");
    let st = stats(env, &sock, "wb0");
    assert!(
        u(&st, "bytes_written") > 0 && u(&st, "bytes_read") > 0,
        "{st}"
    );
    assert!(
        u(&st, "nr_dirty_cache_blocks") > 0,
        "writeback_threshold 0 keeps data dirty: {st}"
    );
    let stat = &st["stat"];
    assert!(
        stat["write_miss_on_buffer_fullsize"].as_u64().unwrap_or(0)
            + stat["write_miss_not_on_buffer_fullsize"]
                .as_u64()
                .unwrap_or(0)
            > 0,
        "{st}"
    );
    let hits: u64 = [
        "read_hit_on_buffer_fullsize",
        "read_hit_not_on_buffer_fullsize",
    ]
    .iter()
    .map(|k| stat[*k].as_u64().unwrap_or(0))
    .sum();
    assert!(
        hits > 0,
        "verify reads back what it wrote: hits expected: {st}"
    );
    // Through the PyPI client too, when installed.
    if Command::new("spdk-rpc").arg("--help").output().is_ok() {
        let out = Command::new("spdk-rpc")
            .args([
                "-s",
                &s(&sock),
                "--plugin",
                "writeboost_rpc",
                "bdev_writeboost_get_stats",
                "-b",
                "wb0",
            ])
            .env("PYTHONPATH", env.root.join("rpc"))
            .output()
            .expect("spdk-rpc");
        assert!(
            out.status.success(),
            "spdk-rpc with the plugin: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A known pattern, written then FLUSHed through NVMe-oF.
    let pattern_len = 4 << 20;
    let pat = pattern(pattern_len, 0x5eed);
    let pat_file = env.scratch.path("pattern.bin");
    std::fs::write(&pat_file, &pat).expect("pattern");
    let flushes_before = u(&stats(env, &sock, "wb0"), "flushes");
    let (ok, log) = env.run_app(
        "spdk_dd",
        &dd,
        &[
            "--json",
            &init_cfg,
            "--if",
            &s(&pat_file),
            "--ob",
            "Nvme0n1",
            "--bs",
            "65536",
        ],
        false,
        Duration::from_secs(90),
    );
    assert!(ok, "spdk_dd write failed:\n{log}");
    let (ok, log) = env.run_app(
        "bdevperf",
        &bdevperf,
        &[
            "--json", &init_cfg, "-q", "1", "-o", "4096", "-w", "flush", "-t", "1",
        ],
        false,
        Duration::from_secs(60),
    );
    assert_bdevperf_ok(ok, &log, "Nvme0n1");
    let st = stats(env, &sock, "wb0");
    assert!(
        u(&st, "flushes") > flushes_before,
        "FLUSH did not reach the volume: {st}"
    );
    assert_eq!(
        u(&st, "last_flushed_id"),
        u(&st, "current_id") - 1,
        "flushed log: {st}"
    );
    let uuid_before = env.rpc_ok(&sock, &["bdev_get_bdevs", "-b", "wb0"])[0]["uuid"].clone();
    let saved = env.rpc_ok(&sock, &["save_config"]);
    let saved_text = serde_json::to_string(&saved).expect("config");
    assert!(
        saved_text.contains("bdev_writeboost_create") && !saved_text.contains("force_format"),
        "{saved_text}"
    );
    let saved_cfg = env.scratch.path("saved.json");
    std::fs::write(&saved_cfg, &saved_text).expect("saved config");

    // Crash, then restart from the saved config.
    let mut t = t;
    t.proc.kill9();
    drop(t);
    let t = env.start_target("nvmf-restart", &["--json", &s(&saved_cfg)]);
    let sock = t.sock.clone();
    wait_bdev(env, &sock, "wb0");
    let uuid_after = env.rpc_ok(&sock, &["bdev_get_bdevs", "-b", "wb0"])[0]["uuid"].clone();
    assert_eq!(
        uuid_before, uuid_after,
        "the bdev UUID must survive a restart"
    );
    assert!(
        t.proc.log_text().contains("volume wb0: resumed"),
        "{}",
        t.proc.log_tail(20)
    );
    let read_back = |what: &str| {
        let out = env.scratch.path("readback.bin");
        let _ = std::fs::remove_file(&out);
        let (ok, log) = env.run_app(
            "spdk_dd",
            &dd,
            &[
                "--json",
                &init_cfg,
                "--ib",
                "Nvme0n1",
                "--of",
                &s(&out),
                "--bs",
                "65536",
                "--count",
                &(pattern_len / 65536).to_string(),
            ],
            false,
            Duration::from_secs(90),
        );
        assert!(ok, "spdk_dd read ({what}) failed:\n{log}");
        assert!(
            file_bytes(&out, pattern_len) == pat,
            "pattern differs {what}"
        );
    };
    read_back("after kill -9 and restart");

    // Hot-remove of the backing bdev: the volume goes away cleanly, comes back with its dirty
    // data when the bdev reappears (same file, same UUID).
    let st = stats(env, &sock, "wb0");
    let dirty = u(&st, "nr_dirty_cache_blocks");
    assert!(dirty > 0);
    // The engine's buffers must be DMA-able for bdevs that DMA from them (local PCIe NVMe).
    assert_eq!(
        st["io_buffers_dma"],
        serde_json::json!(true),
        "engine I/O buffers are not DMA-able: {st}"
    );
    env.rpc_ok(&sock, &["bdev_aio_delete", "AioBacking"]);
    wait_for("wb0 to go away", Duration::from_secs(30), || {
        (!bdev_exists(env, &sock, "wb0")).then_some(())
    });
    env.rpc_err(
        &sock,
        &["bdev_writeboost_get_stats", "-b", "wb0"],
        &["waiting for its base bdevs"],
    );
    env.rpc_ok(
        &sock,
        &[
            "bdev_aio_create",
            &s(&backing),
            "AioBacking",
            "512",
            "-u",
            backing_uuid,
        ],
    );
    wait_bdev(env, &sock, "wb0");
    env.rpc_ok(&sock, &["nvmf_subsystem_add_ns", NQN, "wb0"]);
    assert_eq!(u(&stats(env, &sock, "wb0"), "nr_dirty_cache_blocks"), dirty);
    read_back("after hot-remove and re-add of the backing bdev");

    // Drain, delete: the backing file alone holds the pattern.
    assert_eq!(
        env.rpc_ok(&sock, &["bdev_writeboost_drop_caches", "wb0"]),
        Value::Bool(true)
    );
    let st = stats(env, &sock, "wb0");
    assert_eq!(u(&st, "nr_dirty_cache_blocks"), 0, "{st}");
    assert!(u(&st, "bytes_written_back") > 0, "{st}");
    assert_eq!(
        env.rpc_ok(&sock, &["bdev_writeboost_delete", "wb0"]),
        Value::Bool(true)
    );
    assert!(!bdev_exists(env, &sock, "wb0"));
    assert_eq!(
        env.rpc_ok(&sock, &["bdev_writeboost_get_stats"]),
        Value::Array(vec![])
    );
    for base in ["AioCache", "AioBacking"] {
        let v = env.rpc_ok(&sock, &["bdev_get_bdevs", "-b", base]);
        assert_eq!(
            v[0]["claimed"], false,
            "{base} still claimed after delete: {v}"
        );
    }
    let log = env.stop_target(t);
    assert!(!log.contains("internal error"), "{log}");
    assert!(
        file_bytes(&backing, pattern_len) == pat,
        "backing file does not hold the pattern after drop_caches"
    );
}

fn sha(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Unknown and out-of-range parameters, missing volumes and bdevs, a cache holding someone
/// else's data, a cache paired with another backing device: each a clear error, nothing changed.
fn bad_input_gets_clear_errors_and_changes_nothing(env: &Env) {
    let cache = env.scratch.path("cache.img");
    let backing = env.scratch.path("backing.img");
    let other = env.scratch.path("other.img");
    let junk = env.scratch.path("junk.img");
    for (p, mib) in [(&cache, 32u64), (&backing, 64), (&other, 96)] {
        std::fs::File::create(p)
            .and_then(|f| f.set_len(mib << 20))
            .expect("scratch file");
    }
    std::fs::write(&junk, pattern(32 << 20, 7)).expect("junk file");
    let t = env.start_target("bad", &[]);
    let sock = t.sock.clone();
    for (name, file) in [
        ("C0", &cache),
        ("B0", &backing),
        ("B1", &other),
        ("J0", &junk),
    ] {
        env.rpc_ok(&sock, &["bdev_aio_create", &s(file), name, "512"]);
    }
    let create = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["bdev_writeboost_create", "-b", "wbx"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let call_err = |args: Vec<String>, needles: &[&str]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        env.rpc_err(&sock, &a, needles);
    };
    // Out-of-range and unknown parameters (the plugin passes tunables through; unknown keys go
    // through rpc.py's generic client).
    call_err(
        create(&["-c", "C0", "-d", "B0", "--writeback-threshold", "101"]),
        &["writeback_threshold", "0..=100"],
    );
    call_err(
        create(&["-c", "C0", "-d", "B0", "--nr-max-batched-writeback", "0"]),
        &["nr_max_batched_writeback", "1..=256"],
    );
    call_err(
        create(&["-c", "C0", "-d", "B0", "--segment-size-kib", "3"]),
        &["segment_size_kib", "16..=4096"],
    );
    let raw = |method: &str, params: Value| -> Result<Value, String> {
        let script = format!(
            "import sys, json\nsys.path.insert(0, '{}')\nfrom spdk.rpc.client import JSONRPCClient, JSONRPCException\n\
             c = JSONRPCClient('{}')\ntry:\n    print(json.dumps(c.call('{method}', json.loads(sys.argv[1]))))\n\
             except JSONRPCException as e:\n    print('ERROR', e.message); sys.exit(1)\n",
            s(&env.spdk.join("python")),
            s(&sock)
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(params.to_string())
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
        } else {
            Err(text)
        }
    };
    let e = raw(
        "bdev_writeboost_create",
        serde_json::json!({"name": "wbx", "cache_bdev": "C0", "backing_bdev": "B0", "bogus": 1}),
    )
    .expect_err("unknown key accepted");
    assert!(
        e.contains("unknown parameter 'bogus'") && e.contains("writeback_threshold"),
        "{e}"
    );
    let e = raw("bdev_writeboost_create", serde_json::json!({"name": "wbx", "cache_bdev": "C0", "backing_bdev": "B0", "read_cache_threshold": "x"}))
        .expect_err("string tunable accepted");
    assert!(
        e.contains("read_cache_threshold") && e.contains("0..=127"),
        "{e}"
    );
    let e = raw(
        "bdev_writeboost_create",
        serde_json::json!({"cache_bdev": "C0", "backing_bdev": "B0"}),
    )
    .expect_err("no name accepted");
    assert!(e.contains("missing required parameter 'name'"), "{e}");
    // Missing volumes and bdevs.
    env.rpc_err(
        &sock,
        &["bdev_writeboost_get_stats", "-b", "nope"],
        &["no writeboost volume named 'nope'"],
    );
    env.rpc_err(
        &sock,
        &["bdev_writeboost_delete", "nope"],
        &["no writeboost volume named 'nope'"],
    );
    env.rpc_err(
        &sock,
        &["bdev_writeboost_drop_caches", "nope"],
        &["no writeboost volume named 'nope'"],
    );
    env.rpc_err(
        &sock,
        &[
            "bdev_writeboost_set_options",
            "-b",
            "nope",
            "--writeback-threshold",
            "5",
        ],
        &["no writeboost volume named 'nope'"],
    );
    env.rpc_err(
        &sock,
        &["bdev_writeboost_format", "-c", "NoSuchBdev"],
        &["bdev 'NoSuchBdev' does not exist"],
    );
    // Someone else's data on the cache: refused, not a byte written, nothing claimed.
    let junk_before = sha(&junk);
    call_err(
        create(&["-c", "J0", "-d", "B0"]),
        &["does not hold a writeboost format", "force_format"],
    );
    assert!(
        sha(&junk) == junk_before,
        "a refused create wrote to the cache"
    );
    assert_eq!(
        env.rpc_ok(&sock, &["bdev_writeboost_get_stats"]),
        Value::Array(vec![])
    );
    // A good volume, then its cache paired with another backing device.
    env.rpc_ok(
        &sock,
        &[
            "bdev_writeboost_create",
            "-b",
            "wb1",
            "-c",
            "C0",
            "-d",
            "B0",
        ],
    );
    wait_bdev(env, &sock, "wb1");
    env.rpc_err(
        &sock,
        &[
            "bdev_writeboost_set_options",
            "-b",
            "wb1",
            "--writeback-threshold",
            "200",
        ],
        &["writeback_threshold", "0..=100"],
    );
    let e = raw(
        "bdev_writeboost_set_options",
        serde_json::json!({"name": "wb1", "write_around_mode": true}),
    )
    .expect_err("static option changed");
    assert!(
        e.contains("write_around_mode") && e.contains("only be set at create"),
        "{e}"
    );
    let e = raw(
        "bdev_writeboost_set_options",
        serde_json::json!({"name": "wb1", "bogus": 1}),
    )
    .expect_err("unknown option");
    assert!(e.contains("unknown parameter 'bogus'"), "{e}");
    let before = stats(env, &sock, "wb1");
    let default = TUNABLES
        .iter()
        .find(|t| t.name == "writeback_threshold")
        .expect("tunable")
        .default;
    assert_eq!(before["options"]["writeback_threshold"], default);
    env.rpc_ok(
        &sock,
        &[
            "bdev_writeboost_set_options",
            "-b",
            "wb1",
            "--writeback-threshold",
            "30",
        ],
    );
    assert_eq!(
        stats(env, &sock, "wb1")["options"]["writeback_threshold"],
        30
    );
    env.rpc_err(
        &sock,
        &[
            "bdev_writeboost_create",
            "-b",
            "wb1",
            "-c",
            "C0",
            "-d",
            "B1",
        ],
        &["already exists"],
    );
    env.rpc_err(
        &sock,
        &["bdev_writeboost_format", "-c", "C0"],
        &["belongs to writeboost volume 'wb1'"],
    );
    env.rpc_ok(&sock, &["bdev_writeboost_delete", "wb1"]);
    let cache_before = sha(&cache);
    call_err(
        create(&["-c", "C0", "-d", "B1"]),
        &["formatted for a different backing device"],
    );
    assert!(
        sha(&cache) == cache_before,
        "a refused create wrote to the cache"
    );
    assert!(!bdev_exists(env, &sock, "wbx"));
    // The cache still resumes with its own backing device; format makes it reusable.
    env.rpc_ok(
        &sock,
        &[
            "bdev_writeboost_create",
            "-b",
            "wb1",
            "-c",
            "C0",
            "-d",
            "B0",
        ],
    );
    wait_bdev(env, &sock, "wb1");
    env.rpc_ok(&sock, &["bdev_writeboost_delete", "wb1"]);
    assert_eq!(
        env.rpc_ok(
            &sock,
            &[
                "bdev_writeboost_format",
                "-c",
                "C0",
                "--segment-size-kib",
                "256"
            ]
        ),
        Value::Bool(true)
    );
    env.rpc_ok(
        &sock,
        &[
            "bdev_writeboost_create",
            "-b",
            "wb2",
            "-c",
            "C0",
            "-d",
            "B1",
        ],
    );
    wait_bdev(env, &sock, "wb2");
    // The format's segment size holds: the create bound it to B1.
    assert_eq!(stats(env, &sock, "wb2")["segment_size_kib"], 256);
    assert_eq!(
        env.rpc_ok(&sock, &["bdev_writeboost_delete", "wb2", "--writeback"]),
        Value::Bool(true)
    );
    // Hot-remove of the cache bdev: the volume goes away, the target stays up.
    env.rpc_ok(
        &sock,
        &[
            "bdev_writeboost_create",
            "-b",
            "wb2",
            "-c",
            "C0",
            "-d",
            "B1",
        ],
    );
    wait_bdev(env, &sock, "wb2");
    env.rpc_ok(&sock, &["bdev_aio_delete", "C0"]);
    wait_for("wb2 to go away", Duration::from_secs(30), || {
        (!bdev_exists(env, &sock, "wb2")).then_some(())
    });
    env.rpc_err(
        &sock,
        &["bdev_writeboost_get_stats", "-b", "wb2"],
        &["waiting for its base bdevs"],
    );
    let log = env.stop_target(t);
    assert!(log.contains("volume wb2: formatted a new cache"), "{log}");
    assert!(log.contains("base bdev C0 is being removed"), "{log}");
    assert!(!log.contains("internal error"), "{log}");
}
