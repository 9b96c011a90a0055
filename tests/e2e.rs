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

#[path = "e2e/faults.rs"]
mod faults;

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
        (
            "bdevio_conformance_over_aio_files",
            bdevio_conformance_over_aio_files,
        ),
        (
            "multi_reactor_bdevperf_verify_delete_hot_remove",
            multi_reactor_bdevperf_verify_delete_hot_remove,
        ),
        (
            "multi_reactor_nvmf_tcp_several_queues_delete_hot_remove",
            multi_reactor_nvmf_tcp_several_queues_delete_hot_remove,
        ),
        (
            "faults_backing_write_errors_under_bypass_hidden_and_counted",
            faults::faults_backing_write_errors_under_bypass_hidden_and_counted,
        ),
        (
            "faults_cache_write_errors_transient_hidden_and_counted",
            faults::faults_cache_write_errors_transient_hidden_and_counted,
        ),
        (
            "faults_persistent_cache_errors_degrade_and_io_flows_to_backing",
            faults::faults_persistent_cache_errors_degrade_and_io_flows_to_backing,
        ),
        (
            "faults_cache_hot_remove_under_load_completes_every_io",
            faults::faults_cache_hot_remove_under_load_completes_every_io,
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
                "--json", &cfg, "-T", "wb0", "-q", qd, "-o", bs, "-w", "verify", "-U", "-t", "3",
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
            // Unique data per write: a stale copy cannot read back as correct.
            "-U",
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
    let v = env.call_ok(
        sock,
        "bdev_writeboost_get_stats",
        serde_json::json!({ "name": name }),
    );
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
    env.call(sock, "bdev_get_bdevs", serde_json::json!({ "name": name }))
        .is_ok()
}

fn wait_bdev(env: &Env, sock: &Path, name: &str) {
    wait_for(&format!("bdev {name}"), Duration::from_secs(30), || {
        bdev_exists(env, sock, name).then_some(())
    });
}

fn export_nvmf(env: &Env, sock: &Path, bdev: &str, port: u16) {
    use serde_json::json;
    env.call_ok(sock, "nvmf_create_transport", json!({"trtype": "tcp"}));
    env.call_ok(
        sock,
        "nvmf_create_subsystem",
        json!({"nqn": NQN, "allow_any_host": true, "serial_number": "WBE2E0000000001"}),
    );
    add_ns(env, sock, bdev);
    env.call_ok(
        sock,
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "tcp", "adrfam": "ipv4",
            "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    );
}

fn add_ns(env: &Env, sock: &Path, bdev: &str) {
    env.call_ok(
        sock,
        "nvmf_subsystem_add_ns",
        serde_json::json!({"nqn": NQN, "namespace": {"bdev_name": bdev}}),
    );
}

/// The pollers of one SPDK thread, by name.
fn thread_pollers(env: &Env, sock: &Path, thread: &str) -> Vec<String> {
    let v = env.call_ok(sock, "thread_get_pollers", Value::Null);
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
            "--json", &init_cfg, "-q", "16", "-o", "4096", "-w", "verify", "-U", "-t", "3",
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
    let raw = |method: &str, params: Value| raw_rpc(env, &sock, method, params);
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
    // A JSON boolean is no number of seconds or percent: only flags (0..=1) take one.
    for (key, range) in [
        ("writeback_threshold", "0..=100"),
        ("update_sb_record_interval", "0..=3600"),
        ("nr_max_batched_writeback", "1..=256"),
    ] {
        let mut p = serde_json::json!({"name": "wbx", "cache_bdev": "C0", "backing_bdev": "B0"});
        p[key] = Value::Bool(true);
        let e = raw("bdev_writeboost_create", p).expect_err("boolean tunable accepted");
        assert!(
            e.contains(key) && e.contains(range) && e.contains("got true"),
            "{e}"
        );
    }
    // cpumask: an SPDK cpumask string with a core of this application (core 0 only).
    call_err(
        create(&["-c", "C0", "-d", "B0", "--cpumask", "0x2"]),
        &[
            "cpumask",
            "'0x2'",
            "selects no core",
            "the application's core mask is 0x1",
        ],
    );
    call_err(
        create(&["-c", "C0", "-d", "B0", "--cpumask", "zz"]),
        &["cpumask", "'zz' is not a valid cpumask", "0x1"],
    );
    let e = raw(
        "bdev_writeboost_create",
        serde_json::json!({"name": "wbx", "cache_bdev": "C0", "backing_bdev": "B0", "cpumask": 1}),
    )
    .expect_err("numeric cpumask accepted");
    assert!(e.contains("'cpumask' must be a string"), "{e}");
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
    format_refuses_without_force(env, &sock, &junk);
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
        serde_json::json!({"name": "wb1", "cpumask": "0x1"}),
    )
    .expect_err("cpumask changed on a live volume");
    assert!(
        e.contains("cpumask") && e.contains("only be set at create"),
        "{e}"
    );
    let e = raw(
        "bdev_writeboost_set_options",
        serde_json::json!({"name": "wb1", "read_cache_threshold": false}),
    )
    .expect_err("boolean tunable accepted");
    assert!(
        e.contains("read_cache_threshold") && e.contains("0..=127") && e.contains("got false"),
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

/// A JSON-RPC call with arbitrary params (what rpc.py's flags cannot express: unknown keys,
/// wrong types).
fn raw_rpc(env: &Env, sock: &Path, method: &str, params: Value) -> Result<Value, String> {
    env.call(sock, method, params)
}

/// Every bdevperf job of `bdev` in the final table: (core mask, IOPS, failures/s).
fn bdevperf_jobs(log: &str, bdev: &str) -> Vec<(String, f64, f64)> {
    let mut out = Vec::new();
    let mut mask = None;
    let head = format!("Job: {bdev} (Core Mask ");
    for l in log.lines() {
        let l = l.trim_start_matches('\r').trim();
        if let Some(rest) = l.strip_prefix(&head) {
            mask = rest.split([',', ')']).next().map(str::to_string);
            continue;
        }
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        if name.trim() != bdev {
            continue;
        }
        let v: Vec<f64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() >= 4 {
            if let Some(m) = mask.take() {
                out.push((m, v[1], v[3]));
            }
        }
    }
    out
}

/// The lcore whose reactor runs SPDK thread `name` (`framework_get_reactors`).
fn thread_lcore(env: &Env, sock: &Path, name: &str) -> Option<u64> {
    let v = env.call_ok(sock, "framework_get_reactors", Value::Null);
    v["reactors"].as_array()?.iter().find_map(|r| {
        r["lw_threads"]
            .as_array()?
            .iter()
            .any(|t| t["name"] == name)
            .then(|| r["lcore"].as_u64())
            .flatten()
    })
}

/// bdevio, SPDK's bdev conformance suite (23 CUnit tests), against a volume over two aio files,
/// module preloaded, 3 lcores on 2 CPUs. bdevio blocks its unit-test reactor while the I/O
/// reactor works: a volume thread placed on the blocked reactor would hang the first test.
fn bdevio_conformance_over_aio_files(env: &Env) {
    let bdevio = env.spdk.join("test/bdev/bdevio/bdevio");
    let tests_py = env.spdk.join("test/bdev/bdevio/tests.py");
    if !bdevio.is_file() || !tests_py.is_file() {
        println!(
            "SKIPPED: bdevio not found at {} (SPDK built without its tests)",
            s(&bdevio)
        );
        return;
    }
    let cache = env.scratch.path("cache.img");
    let backing = env.scratch.path("backing.img");
    for (p, mib) in [(&cache, 64u64), (&backing, 128)] {
        std::fs::File::create(p)
            .and_then(|f| f.set_len(mib << 20))
            .expect("scratch file");
    }
    let cfg = serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_writeboost_create", "params": {
            "name": "wb0", "cache_bdev": "AioCache", "backing_bdev": "AioBacking"}},
        {"method": "bdev_aio_create", "params": {
            "name": "AioCache", "filename": s(&cache), "block_size": 512}},
        {"method": "bdev_aio_create", "params": {
            "name": "AioBacking", "filename": s(&backing), "block_size": 512,
            "uuid": "3c1d2e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5"}},
        {"method": "bdev_wait_for_examine"}
    ]}]});
    let cfg_path = env.scratch.path("bdevio.json");
    std::fs::write(&cfg_path, cfg.to_string()).expect("config");
    let o = AppOpts {
        cores: &["--lcores", "(0-2)@(0-1)"],
        preload: true,
        timeout_secs: Some(300),
    };
    let t = match env.try_start_app("bdevio", &bdevio, &o, &["-w", "--json", &s(&cfg_path)]) {
        Ok(t) => t,
        Err(e) if e.contains("lcore map and core mask can't be set simultaneously") => {
            println!(
                "SKIPPED: {} hard-codes its reactor mask (remove `opts.reactor_mask = \"0x7\";` from test/bdev/bdevio/bdevio.c and rebuild it to run it with --lcores on this machine)",
                s(&bdevio)
            );
            return;
        }
        Err(e) => panic!("bdevio did not start: {e}"),
    };
    let sock = t.sock.clone();
    wait_bdev(env, &sock, "wb0");
    // The volume thread runs on the core of the thread that created it (the app thread's),
    // not on bdevio's unit-test or I/O reactor.
    let app_lcore = thread_lcore(env, &sock, "app_thread").expect("app_thread");
    assert_eq!(
        thread_lcore(env, &sock, "writeboost_wb0"),
        Some(app_lcore),
        "volume thread placement: {}",
        env.call_ok(&sock, "framework_get_reactors", Value::Null)
    );
    let st = stats(env, &sock, "wb0");
    assert_eq!(st["cpumask"], format!("0x{:x}", 1u64 << app_lcore), "{st}");
    assert_eq!(st["options"]["cpumask"], Value::Null, "{st}");
    let out = Command::new("timeout")
        .args(["-k", "5", "120", "python3"])
        .arg(&tests_py)
        .args(["-s", &s(&sock), "-t", "90", "perform_tests"])
        .env("PYTHONPATH", env.spdk.join("python"))
        .output()
        .expect("run tests.py");
    let rpc_out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, log) = env.stop_app(t);
    assert!(
        out.status.success(),
        "bdevio perform_tests failed: {rpc_out}\n{log}"
    );
    // CUnit's run summary: "tests  23  23  23  0  0" (total, ran, passed, failed, inactive).
    let counts: Vec<u64> = log
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("tests")?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 5).then_some(v)
        })
        .unwrap_or_else(|| panic!("no CUnit run summary in the bdevio log:\n{log}"));
    assert_eq!(counts, vec![23, 23, 23, 0, 0], "bdevio results:\n{log}");
    assert!(log.contains("bdevio tests on: wb0"), "{log}");
    assert!(log.contains("volume wb0: stopped cleanly"), "{log}");
    assert!(!log.contains("internal error"), "{log}");
}

/// A bdevperf config over malloc bases: `(name, cache MiB, backing MiB, cpumask)` per volume,
/// each create listed before its bases (as save_config writes it).
fn malloc_volumes_json(vols: &[(&str, u64, u64, Option<&str>)]) -> String {
    let mut config = Vec::new();
    for (name, cache_mib, backing_mib, mask) in vols {
        let mut p = serde_json::json!({"name": name, "cache_bdev": format!("{name}Cache"),
            "backing_bdev": format!("{name}Backing")});
        if let Some(m) = mask {
            p["cpumask"] = Value::String(m.to_string());
        }
        config.push(serde_json::json!({"method": "bdev_writeboost_create", "params": p}));
        for (base, mib) in [("Cache", cache_mib), ("Backing", backing_mib)] {
            config.push(
                serde_json::json!({"method": "bdev_malloc_create", "params": {
                "name": format!("{name}{base}"), "num_blocks": mib * 2048, "block_size": 512}}),
            );
        }
    }
    config.push(serde_json::json!({"method": "bdev_wait_for_examine"}));
    serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": config}]}).to_string()
}

fn malloc_create(env: &Env, sock: &Path, name: &str, mib: u64) {
    env.call_ok(
        sock,
        "bdev_malloc_create",
        serde_json::json!({"name": name, "num_blocks": mib * 2048, "block_size": 512}),
    );
}

/// Starts `bdevperf.py perform_tests` against a bdevperf started with `-z` (in the background).
fn perform_tests(env: &Env, sock: &Path, log: &Path) -> Proc {
    let mut c = Command::new("python3");
    c.arg(env.spdk.join("examples/bdev/bdevperf/bdevperf.py"))
        .args(["-s", &s(sock), "-t", "120", "perform_tests"])
        .env("PYTHONPATH", env.spdk.join("python"));
    spawn("bdevperf.py", c, log)
}

/// Waits until `vol` has written more than `bytes` (I/O is running).
fn wait_written(env: &Env, sock: &Path, vol: &str, bytes: u64) {
    wait_for(&format!("I/O on {vol}"), Duration::from_secs(30), || {
        (u(&stats(env, sock, vol), "bytes_written") > bytes).then_some(())
    });
}

/// Several reactors, in one process (bdevperf with the preloaded module, `-m 0x3`): `-C` verify
/// with every core submitting to the volume; volume threads placed by default (the app thread's
/// core) and by `cpumask`; then, while I/O runs from both cores, one volume deleted and the
/// other's cache bdev hot-removed: every outstanding I/O completes (bdevperf reports no failure),
/// and the application keeps answering RPC.
fn multi_reactor_bdevperf_verify_delete_hot_remove(env: &Env) {
    let bdevperf = env.spdk.join("build/examples/bdevperf");
    let cfg = s(&env.root.join("configs/bdevperf.json"));
    let (ok, log) = env.run_app_on(
        "bdevperf",
        &bdevperf,
        "0x3",
        &[
            "--json", &cfg, "-T", "wb0", "-C", "-q", "32", "-o", "4096", "-w", "verify", "-U",
            "-t", "3",
        ],
        true,
        Duration::from_secs(120),
    );
    assert!(ok, "bdevperf -m 0x3 -C failed:\n{log}");
    let jobs = bdevperf_jobs(&log, "wb0");
    let mut masks: Vec<&str> = jobs.iter().map(|j| j.0.as_str()).collect();
    masks.sort_unstable();
    assert_eq!(masks, ["0x1", "0x2"], "one job per core expected:\n{log}");
    for (m, iops, fails) in &jobs {
        assert!(
            *iops > 0.0 && *fails == 0.0,
            "job on {m}: {iops} IOPS, {fails} failures/s:\n{log}"
        );
    }
    assert!(log.contains("volume wb0: stopped cleanly"), "{log}");

    // Two volumes: wb0 placed by default, wb1 by cpumask; bdevperf waits for perform_tests.
    let cfg2 = env.scratch.path("two_volumes.json");
    std::fs::write(
        &cfg2,
        malloc_volumes_json(&[("wb0", 64, 128, None), ("wb1", 64, 128, Some("0x2"))]),
    )
    .expect("config");
    let o = AppOpts {
        cores: &["-m", "0x3"],
        preload: true,
        timeout_secs: None,
    };
    let t = env
        .try_start_app(
            "bdevperf-z",
            &bdevperf,
            &o,
            &[
                "-z",
                "--json",
                &s(&cfg2),
                "-C",
                "-q",
                "32",
                "-o",
                "4096",
                "-w",
                "verify",
                // Unique data per write: a stale copy cannot read back as correct.
                "-U",
                "-t",
                "30",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let sock = t.sock.clone();
    wait_bdev(env, &sock, "wb0");
    wait_bdev(env, &sock, "wb1");
    let app_lcore = thread_lcore(env, &sock, "app_thread").expect("app_thread");
    assert_eq!(app_lcore, 0, "the app thread runs on the main core");
    assert_eq!(thread_lcore(env, &sock, "writeboost_wb0"), Some(0));
    assert_eq!(thread_lcore(env, &sock, "writeboost_wb1"), Some(1));
    let (s0, s1) = (stats(env, &sock, "wb0"), stats(env, &sock, "wb1"));
    assert_eq!(
        (&s0["cpumask"], &s0["options"]["cpumask"]),
        (&Value::from("0x1"), &Value::Null),
        "{s0}"
    );
    assert_eq!(
        (&s1["cpumask"], &s1["options"]["cpumask"]),
        (&Value::from("0x2"), &Value::from("0x2")),
        "{s1}"
    );
    let b = env.call_ok(&sock, "bdev_get_bdevs", serde_json::json!({"name": "wb1"}));
    assert_eq!(
        b[0]["driver_specific"]["writeboost"]["cpumask"], "0x2",
        "{b}"
    );
    // save_config keeps the requested mask (and only that one).
    // (rpc.py's save_config is framework_get_config of every subsystem.)
    let saved = env.call_ok(
        &sock,
        "framework_get_config",
        serde_json::json!({"name": "bdev"}),
    );
    let creates: Vec<Value> = saved
        .as_array()
        .expect("bdev config")
        .iter()
        .filter(|c| c["method"] == "bdev_writeboost_create")
        .map(|c| c["params"].clone())
        .collect();
    let find = |n: &str| {
        creates
            .iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("no create of {n} in {saved}"))
    };
    assert_eq!(find("wb0").get("cpumask"), None, "{saved}");
    assert_eq!(find("wb1")["cpumask"], "0x2", "{saved}");
    // A mask without a core of this application is refused, naming the parameter and the mask.
    for b in ["XCache", "XBacking"] {
        malloc_create(env, &sock, b, 32);
    }
    env.rpc_err(
        &sock,
        &[
            "bdev_writeboost_create",
            "-b",
            "wbx",
            "-c",
            "XCache",
            "-d",
            "XBacking",
            "--cpumask",
            "0x4",
        ],
        &["cpumask", "0x4", "selects no core", "core mask is 0x3"],
    );
    assert!(!bdev_exists(env, &sock, "wbx"));

    // I/O from both cores on both volumes; then delete wb0 and hot-remove wb1's cache.
    let pt_log = env.scratch.path("perform_tests.log");
    let mut pt = perform_tests(env, &sock, &pt_log);
    wait_written(env, &sock, "wb0", 8 << 20);
    wait_written(env, &sock, "wb1", 8 << 20);
    assert_eq!(
        env.rpc_ok(&sock, &["bdev_writeboost_delete", "wb0"]),
        Value::Bool(true)
    );
    env.call_ok(
        &sock,
        "bdev_malloc_delete",
        serde_json::json!({"name": "wb1Cache"}),
    );
    wait_for("wb1 to go away", Duration::from_secs(30), || {
        (!bdev_exists(env, &sock, "wb1")).then_some(())
    });
    let (exited, ok) = pt.wait(Duration::from_secs(60));
    let pt_text = pt.log_text();
    assert!(
        exited && ok,
        "perform_tests after delete and hot-remove (every outstanding I/O must complete, none fail): {pt_text}\n{}",
        t.proc.log_tail(40)
    );
    // Still answering: wb0 is gone, wb1 waits for its cache.
    assert_eq!(
        env.call_ok(&sock, "bdev_writeboost_get_stats", Value::Null),
        Value::Array(vec![])
    );
    env.call_err(
        &sock,
        "bdev_writeboost_get_stats",
        serde_json::json!({"name": "wb1"}),
        &["waiting for its base bdevs"],
    );
    let (_, log) = env.stop_app(t);
    assert!(log.contains("volume wb0: stopped cleanly"), "{log}");
    assert!(log.contains("base bdev wb1Cache is being removed"), "{log}");
    assert!(!log.contains("internal error"), "{log}");
}

/// bdevperf job file: `jobs` jobs on one core (`mask`), each its own thread, hence its own
/// NVMe-oF queue pair, each verifying its own range of `Nvme0n1`.
fn nvme_jobs_file(env: &Env, jobs: u64, mask: &str, range_blocks: u64) -> String {
    let mut text =
        format!("[global]\nfilename=Nvme0n1\nbs=4096\niodepth=16\nrw=verify\ncpumask={mask}\n");
    for j in 0..jobs {
        text.push_str(&format!(
            "[job{j}]\noffset={}\nlength={range_blocks}\n",
            j * range_blocks
        ));
    }
    let p = env.scratch.path(&format!("jobs{jobs}.conf"));
    std::fs::write(&p, text).expect("job file");
    s(&p)
}

/// The NVMe-oF TCP export on two reactors (`-m 0x3`): a host with two queue pairs (two bdevperf
/// jobs, each its own range) verifies data, and both target poll groups complete I/O; then a
/// delete and a hot-remove of the backing bdev while the host's I/O runs on both cores: the
/// target completes every outstanding I/O, keeps answering RPC, and the volume comes back
/// (resumed) and verifies again.
fn multi_reactor_nvmf_tcp_several_queues_delete_hot_remove(env: &Env) {
    let backing = env.scratch.path("backing.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(128 << 20))
        .expect("backing file");
    let backing_uuid = "1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7a8b";
    let port = free_port();
    let init_cfg = env.scratch.path("initiator.json");
    std::fs::write(&init_cfg, initiator_json(port, NQN)).expect("initiator json");
    let init_cfg = s(&init_cfg);
    let bdevperf = env.spdk.join("build/examples/bdevperf");

    let t = env.start_target_on("nvmf-mc", "0x3", &[]);
    let sock = t.sock.clone();
    malloc_create(env, &sock, "Cache0", 64);
    let aio_backing = || {
        env.call_ok(
            &sock,
            "bdev_aio_create",
            serde_json::json!({"name": "AioBacking", "filename": s(&backing), "block_size": 512,
                "uuid": backing_uuid}),
        )
    };
    aio_backing();
    let create = || {
        env.call_ok(
            &sock,
            "bdev_writeboost_create",
            serde_json::json!({"name": "wb0", "cache_bdev": "Cache0", "backing_bdev": "AioBacking"}),
        )
    };
    create();
    assert_eq!(thread_lcore(env, &sock, "writeboost_wb0"), Some(0));
    export_nvmf(env, &sock, "wb0", port);
    // 32 MiB per job (65536 blocks of 512 bytes).
    let jobs = nvme_jobs_file(env, 2, "0x2", 65536);
    let run_verify = |what: &str| {
        let (ok, log) = env.run_app(
            "bdevperf",
            &bdevperf,
            &["--json", &init_cfg, "-j", &jobs, "-t", "3"],
            false,
            Duration::from_secs(120),
        );
        assert!(ok, "host verify ({what}) failed:\n{log}");
        let found = bdevperf_jobs(&log, "Nvme0n1");
        assert_eq!(found.len(), 2, "two host jobs ({what}):\n{log}");
        for (m, iops, fails) in found {
            assert!(
                iops > 0.0 && fails == 0.0,
                "host job on {m} ({what}): {iops} IOPS, {fails} failures/s:\n{log}"
            );
        }
    };
    run_verify("two queue pairs");
    let nv = env.call_ok(&sock, "nvmf_get_stats", Value::Null);
    let groups = nv["poll_groups"].as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 2, "two poll groups: {nv}");
    for g in &groups {
        assert!(
            g["completed_nvme_io"].as_u64().unwrap_or(0) > 0,
            "every poll group (core) submitted I/O to the volume: {nv}"
        );
    }
    let pollers: Vec<String> = groups
        .iter()
        .filter_map(|g| g["name"].as_str().map(String::from))
        .flat_map(|g| thread_pollers(env, &sock, &g))
        .collect();
    assert_eq!(
        pollers.iter().filter(|p| *p == "wb_complete_wb0").count(),
        2,
        "a completion poller on each poll group: {pollers:?}"
    );

    // Delete while the host's I/O runs on both target cores.
    let host = |tag: &str| {
        env.spawn_app(
            tag,
            &bdevperf,
            "0x2",
            &["--json", &init_cfg, "-j", &jobs, "-t", "30"],
            false,
        )
    };
    let mut h = host("bdevperf-delete");
    let base = u(&stats(env, &sock, "wb0"), "bytes_written");
    wait_written(env, &sock, "wb0", base + (8 << 20));
    assert_eq!(
        env.rpc_ok(&sock, &["bdev_writeboost_delete", "wb0"]),
        Value::Bool(true)
    );
    assert!(!bdev_exists(env, &sock, "wb0"));
    let (exited, _) = h.wait(Duration::from_secs(60));
    assert!(exited, "host did not finish after the delete");
    assert_eq!(
        env.call_ok(&sock, "bdev_writeboost_get_stats", Value::Null),
        Value::Array(vec![])
    );
    assert!(
        t.proc.log_text().contains("volume wb0: stopped cleanly"),
        "{}",
        t.proc.log_tail(30)
    );

    // Back (resumed from the cache), then hot-remove of the backing bdev under I/O.
    create();
    add_ns(env, &sock, "wb0");
    assert!(
        t.proc.log_text().contains("volume wb0: resumed"),
        "{}",
        t.proc.log_tail(30)
    );
    let mut h = host("bdevperf-hot-remove");
    let base = u(&stats(env, &sock, "wb0"), "bytes_written");
    wait_written(env, &sock, "wb0", base + (8 << 20));
    env.call_ok(
        &sock,
        "bdev_aio_delete",
        serde_json::json!({"name": "AioBacking"}),
    );
    wait_for("wb0 to go away", Duration::from_secs(30), || {
        (!bdev_exists(env, &sock, "wb0")).then_some(())
    });
    let (exited, _) = h.wait(Duration::from_secs(60));
    assert!(exited, "host did not finish after the hot-remove");
    env.call_err(
        &sock,
        "bdev_writeboost_get_stats",
        serde_json::json!({"name": "wb0"}),
        &["waiting for its base bdevs"],
    );
    aio_backing();
    wait_bdev(env, &sock, "wb0");
    add_ns(env, &sock, "wb0");
    run_verify("after delete and hot-remove");
    let log = env.stop_target(t);
    assert!(
        log.contains("base bdev AioBacking is being removed"),
        "{log}"
    );
    assert!(!log.contains("internal error"), "{log}");
}

/// `bdev_writeboost_format` without `force` refuses what the offline `writeboost format`
/// refuses, writing nothing: foreign data (the junk bdev `J0`), then a writeboost superblock it
/// cannot decode (a bad checksum, a newer version); with `force` each is formatted.
fn format_refuses_without_force(env: &Env, sock: &Path, junk: &Path) {
    let before = sha(junk);
    env.rpc_err(
        sock,
        &["bdev_writeboost_format", "-c", "J0"],
        &["not a writeboost superblock", "bad magic", "pass force"],
    );
    assert!(sha(junk) == before, "a refused format wrote to the bdev");
    let format_forced = || {
        assert_eq!(
            env.rpc_ok(sock, &["bdev_writeboost_format", "-c", "J0", "--force"]),
            Value::Bool(true)
        );
        let sb = file_bytes(junk, 4096);
        writeboost::format::Superblock::decode(&sb).expect("a valid superblock after format");
        sb
    };
    let good = format_forced();
    let bad_checksum = {
        let mut b = good.clone();
        b[16] ^= 0x5a; // a format_uuid byte, covered by the CRC
        b
    };
    let newer_version = {
        let mut b = good.clone();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    };
    for (what, block, needle) in [
        ("bad checksum", bad_checksum, "checksum mismatch"),
        ("newer version", newer_version, "newer than this build"),
    ] {
        // Rewrite block 0 of the file while no bdev has it open.
        env.rpc_ok(sock, &["bdev_aio_delete", "J0"]);
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(junk)
                .expect("open junk file");
            f.seek(SeekFrom::Start(0)).expect("seek");
            f.write_all(&block).expect("write superblock");
            f.sync_all().expect("sync");
        }
        env.rpc_ok(sock, &["bdev_aio_create", &s(junk), "J0", "512"]);
        let before = sha(junk);
        env.rpc_err(
            sock,
            &["bdev_writeboost_format", "-c", "J0"],
            &[
                "holds a writeboost superblock this build cannot read",
                needle,
                "may hold dirty data",
                "pass force",
            ],
        );
        assert!(
            sha(junk) == before,
            "a refused format ({what}) wrote to the bdev"
        );
        format_forced();
    }
}
