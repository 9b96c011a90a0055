//! Fault injection end to end (issue 13): bdevperf `-w verify` over a volume whose cache and
//! backing bases are SPDK `bdev_error` bdevs (`EE_Cache0`, `EE_Backing0`) over malloc bdevs, the
//! module preloaded into bdevperf (`-z`, several `perform_tests` runs in one process, `-m 0x3`).
//! Every scenario asserts with numbers what DESIGN.md "Failure semantics" promises:
//! - transient backing write errors, also while 64 KiB sequential writes bypass to the backing
//!   device, fail no host I/O and are counted (`backing_write_errors`, `bypass_retried_in_log`);
//!   a `write_around_mode` volume (the user chose the backing device) reports the same error to
//!   the host, which shows the checks below see a failed I/O;
//! - transient cache write errors fail no host I/O, are counted, and leave the volume running;
//! - persistent cache write errors make the volume `degraded` within `degraded_error_window_s`,
//!   and verify keeps passing with every host write going to the backing device;
//! - a hot-remove of the bdev under the cache while verify runs completes every host I/O and
//!   leaves the application answering RPC;
//! - after the errors stop, `bdev_writeboost_drop_caches` drains every dirty block.
//!
//! Host-visible errors are counted twice, independently: bdevperf's own `io_failed` (and its
//! RPC error when a verify job fails) and the SPDK bdev layer's failed completions of `wb0`
//! (`bdev_get_iostat`). The engine's error counters are compared with the failed completions of
//! the `EE_` bdevs, which count exactly the errors they injected.

use super::*;
use serde_json::json;

const CACHE: &str = "EE_Cache0";
const BACKING: &str = "EE_Backing0";

/// A bdevperf config: `Cache0` (malloc, or an aio file when `CacheFile` is given) and malloc
/// `Backing0`, an error bdev over each, and `wb0` over the two error bdevs with the extra create
/// parameters `opts`.
fn faults_config(env: &Env, tag: &str, cache: CacheBase, backing_mib: u64, opts: Value) -> String {
    let mut create = json!({"name": "wb0", "cache_bdev": CACHE, "backing_bdev": BACKING});
    for (k, v) in opts.as_object().cloned().unwrap_or_default() {
        create[k] = v;
    }
    let mut config = vec![match &cache {
        CacheBase::Malloc(mib) => json!({"method": "bdev_malloc_create",
            "params": {"name": "Cache0", "num_blocks": mib * 2048, "block_size": 512}}),
        CacheBase::File(f) => json!({"method": "bdev_aio_create",
            "params": {"name": "Cache0", "filename": s(f), "block_size": 512}}),
    }];
    config.push(json!({"method": "bdev_error_create", "params": {"base_name": "Cache0"}}));
    config.push(json!({"method": "bdev_malloc_create",
        "params": {"name": "Backing0", "num_blocks": backing_mib * 2048, "block_size": 512}}));
    config.push(json!({"method": "bdev_error_create", "params": {"base_name": "Backing0"}}));
    config.push(json!({"method": "bdev_writeboost_create", "params": create}));
    config.push(json!({"method": "bdev_wait_for_examine"}));
    let p = env.scratch.path(&format!("{tag}.json"));
    std::fs::write(
        &p,
        json!({"subsystems": [{"subsystem": "bdev", "config": config}]}).to_string(),
    )
    .expect("config");
    s(&p)
}

/// The bdev under `EE_Cache0`.
enum CacheBase {
    /// A malloc bdev of this many MiB.
    Malloc(u64),
    /// An aio bdev over this file.
    File(PathBuf),
}

/// One sequential 64 KiB verify job on core 1 (one write stream, so the sequential cutoff sees
/// it and bypasses the cache once half of it is dirty) over the first 128 MiB of `wb0`, so that
/// a run writes each block several times.
///
/// bdevperf's verify data depends only on a write's offset and its number within the run:
/// every run writes the same data in its first pass over the range. A stale read is seen only
/// once a job wraps around its range, so every verify here covers its range more than once.
fn seq64k_job_file(env: &Env) -> String {
    let p = env.scratch.path("seq64k.conf");
    std::fs::write(
        &p,
        "[global]\nfilename=wb0\nbs=65536\niodepth=8\nrw=verify\n[seq64k]\ncpumask=0x2\noffset=0\nlength=262144\n",
    )
    .expect("job file");
    s(&p)
}

/// bdevperf `-z` on `-m 0x3` with the module preloaded; `jobs` are bdevperf's job arguments.
/// Always `-U`: without it every write bdevperf makes carries the same bytes (a function of the
/// block's index inside the I/O only), and verify cannot tell a stale copy from the newest one.
fn start_bdevperf(env: &Env, tag: &str, cfg: &str, jobs: &[&str]) -> Target {
    let bdevperf = env.spdk.join("build/examples/bdevperf");
    let o = AppOpts {
        cores: &["-m", "0x3"],
        preload: true,
        timeout_secs: Some(900),
    };
    let mut args = vec!["-z", "-U", "--json", cfg];
    args.extend_from_slice(jobs);
    let t = env
        .try_start_app(tag, &bdevperf, &o, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    wait_bdev(env, &t.sock, "wb0");
    t
}

/// One bdevperf job's result.
#[derive(Debug)]
struct Job {
    workload: String,
    core_mask: String,
    io_size: u64,
    iops: f64,
    io_failed: u64,
    status: String,
}

/// The result of one `perform_tests` run: its jobs, or bdevperf's error (a job failed an I/O or
/// a verify compare).
type RunResult = Result<Vec<Job>, String>;

fn perform(env: &Env, sock: &Path, secs: u64) -> RunResult {
    let v = env.call(sock, "perform_tests", json!({"time_in_sec": secs}))?;
    Ok(v["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|j| Job {
            workload: j["workload"].as_str().unwrap_or_default().to_string(),
            core_mask: j["core_mask"].as_str().unwrap_or_default().to_string(),
            io_size: j["io_size"].as_u64().unwrap_or(0),
            iops: j["iops"].as_f64().unwrap_or(0.0),
            io_failed: j["io_failed"].as_u64().unwrap_or(u64::MAX),
            status: j["status"].as_str().unwrap_or_default().to_string(),
        })
        .collect())
}

/// Runs `perform_tests` for `secs` while `during` is called every `period` (with the time since
/// the run started) until the run ends.
fn perform_while(
    env: &Env,
    sock: &Path,
    secs: u64,
    period: Duration,
    mut during: impl FnMut(Duration),
) -> RunResult {
    std::thread::scope(|sc| {
        let h = sc.spawn(|| perform(env, sock, secs));
        let t0 = Instant::now();
        while !h.is_finished() {
            during(t0.elapsed());
            std::thread::sleep(period);
        }
        h.join().expect("perform_tests thread")
    })
}

/// The SPDK bdev layer's I/O statistics of `bdev`.
fn iostat(env: &Env, sock: &Path, bdev: &str) -> Value {
    let v = env.call_ok(sock, "bdev_get_iostat", json!({ "names": [bdev] }));
    v["bdevs"][0].clone()
}

/// Failed completions of `bdev` (every I/O type and status) since it was registered.
fn failed_ios(env: &Env, sock: &Path, bdev: &str) -> u64 {
    let st = iostat(env, sock, bdev);
    st["io_error"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// Injects `num` failures of `io_type` on the error bdev `bdev`.
fn inject(env: &Env, sock: &Path, bdev: &str, io_type: &str, num: u32) -> RpcResult {
    env.call(
        sock,
        "bdev_error_inject_error",
        json!({"name": bdev, "io_type": io_type, "error_type": "failure", "num": num}),
    )
}

fn clear(env: &Env, sock: &Path, bdev: &str) {
    env.call_ok(
        sock,
        "bdev_error_inject_error",
        json!({"name": bdev, "io_type": "clear", "error_type": "failure"}),
    );
}

/// Host-visible errors of a run: bdevperf's failed I/Os (every I/O of the run when bdevperf
/// itself reported the run failed) plus the growth of `wb0`'s failed completions.
fn host_errors(r: &RunResult, wb0_failed_before: u64, wb0_failed_after: u64) -> u64 {
    let bdevperf = match r {
        Ok(jobs) => jobs
            .iter()
            .map(|j| j.io_failed + u64::from(j.status != "finished"))
            .sum(),
        Err(_) => 1,
    };
    bdevperf + (wb0_failed_after - wb0_failed_before)
}

/// The IOPS of the verify jobs of a run (not of a flush job next to them).
fn total_iops(r: &RunResult) -> f64 {
    r.as_ref()
        .map(|jobs| {
            jobs.iter()
                .filter(|j| j.workload == "verify")
                .map(|j| j.iops)
                .sum()
        })
        .unwrap_or(0.0)
}

/// A verify run that must fail no host I/O: panics with the run, the volume's stats and the
/// application log otherwise. Returns the total IOPS.
fn assert_run_clean(env: &Env, t: &Target, what: &str, r: &RunResult, failed_before: u64) -> f64 {
    // bdevperf stops the application once a job failed: then only its reply counts.
    let failed_after = env
        .call(&t.sock, "bdev_get_iostat", json!({"names": ["wb0"]}))
        .map(|_| failed_ios(env, &t.sock, "wb0"))
        .unwrap_or(failed_before);
    let n = host_errors(r, failed_before, failed_after);
    println!(
        "e2e faults: {what}: {:.0} IOPS, host-visible errors {n} (bdevperf {r:?}, wb0 failed completions {})",
        total_iops(r),
        failed_after - failed_before
    );
    assert!(
        n == 0
            && r.as_ref()
                .is_ok_and(|j| !j.is_empty() && j.iter().all(|j| j.iops > 0.0)),
        "{what}: host-visible errors {n}: {r:?}\nstats: {:?}\n{}",
        env.call(&t.sock, "bdev_writeboost_get_stats", json!({"name": "wb0"})),
        t.proc.log_tail(40)
    );
    total_iops(r)
}

/// A 5 s run of the target's jobs with `num` write failures injected into `bdev` every `every`;
/// asserts the host saw none (`what` names the run). Returns the run's IOPS, the injections
/// sent, the writes that failed on `bdev`, and wb0's stats after the injections were cleared.
fn run_injecting_write_errors(
    env: &Env,
    t: &Target,
    bdev: &str,
    num: u32,
    every: Duration,
    what: &str,
) -> (f64, u32, u64, Value) {
    let sock = &t.sock;
    let f0 = failed_ios(env, sock, "wb0");
    let mut injections = 0u32;
    let r = perform_while(env, sock, 5, every, |_| {
        let _ = inject(env, sock, bdev, "write", num);
        injections += 1;
    });
    let during = assert_run_clean(env, t, what, &r, f0);
    clear(env, sock, bdev);
    let st = stats(env, sock, "wb0");
    (during, injections, failed_ios(env, sock, bdev), st)
}

/// Drains the volume (`drop_caches`) and checks that nothing dirty is left.
fn assert_drains(env: &Env, sock: &Path, what: &str) {
    let dirty = u(&stats(env, sock, "wb0"), "nr_dirty_cache_blocks");
    let t0 = Instant::now();
    let r = env.call(sock, "bdev_writeboost_drop_caches", json!({"name": "wb0"}));
    let st = stats(env, sock, "wb0");
    println!(
        "e2e faults: {what}: drop_caches {r:?} in {:.2}s, dirty blocks {dirty} -> {}",
        t0.elapsed().as_secs_f64(),
        u(&st, "nr_dirty_cache_blocks")
    );
    assert_eq!(r, Ok(Value::Bool(true)), "{what}: drop_caches: {st}");
    assert_eq!(u(&st, "nr_dirty_cache_blocks"), 0, "{what}: {st}");
}

/// Transient backing write errors while a 64 KiB sequential verify bypasses the cache: no host
/// I/O fails, every injected error is counted, bypassed writes that failed were retried through
/// the log; IOPS before, during and after; drop_caches drains once the errors stop. Then the
/// control: the same injection on a `write_around_mode` volume reaches the host.
pub fn faults_backing_write_errors_under_bypass_hidden_and_counted(env: &Env) {
    let cfg = faults_config(env, "bypass", CacheBase::Malloc(32), 256, json!({}));
    let jobs = seq64k_job_file(env);
    let t = start_bdevperf(env, "faults-bypass", &cfg, &["-j", &jobs, "-t", "5"]);
    let sock = t.sock.clone();

    let f0 = failed_ios(env, &sock, "wb0");
    let r = perform(env, &sock, 5);
    let before = assert_run_clean(env, &t, "64 KiB verify, no errors", &r, f0);
    let j = &r.as_ref().expect("run")[0];
    assert_eq!((j.io_size, j.core_mask.as_str()), (65536, "0x2"), "{j:?}");
    let st = stats(env, &sock, "wb0");
    assert!(
        u(&st, "bytes_bypassed") > 0,
        "the 64 KiB sequential verify must bypass the cache (sequential cutoff) for this scenario to mean anything: {st}"
    );
    assert_eq!(u(&st, "backing_write_errors"), 0, "{st}");

    // During: 3 backing write failures every 200 ms, for the whole run.
    let bypassed0 = u(&st, "bytes_bypassed");
    let (during, injections, injected, st) = run_injecting_write_errors(
        env,
        &t,
        BACKING,
        3,
        Duration::from_millis(200),
        "64 KiB verify, transient backing write errors",
    );
    println!(
        "e2e faults: backing: {injections} injections of 3, {injected} backing writes failed; engine counted backing_write_errors {}, bypass_retried_in_log {}, bytes_bypassed during the run {}, state {}",
        u(&st, "backing_write_errors"),
        u(&st, "bypass_retried_in_log"),
        u(&st, "bytes_bypassed") - bypassed0,
        st["state"]
    );
    assert!(injected > 0, "no injected backing error was hit: {st}");
    assert_eq!(
        u(&st, "backing_write_errors"),
        injected,
        "every failed backing write is counted once: {st}"
    );
    assert!(
        u(&st, "bytes_bypassed") > bypassed0,
        "writes bypassed during the errors: {st}"
    );
    assert!(
        u(&st, "bypass_retried_in_log") > 0,
        "failed bypass writes are retried through the log: {st}"
    );
    assert!(
        u(&st, "bypass_retried_in_log") <= injected,
        "a retry per failed bypass write at most: {st}"
    );
    assert_eq!(
        (st["state"].as_str(), u(&st, "degraded_transitions")),
        (Some("running"), 0),
        "backing errors do not degrade the volume: {st}"
    );

    let f0 = failed_ios(env, &sock, "wb0");
    let r = perform(env, &sock, 5);
    let after = assert_run_clean(env, &t, "64 KiB verify, errors cleared", &r, f0);
    println!(
        "e2e faults: 64 KiB sequential verify IOPS before / during / after transient backing write errors: {before:.0} / {during:.0} / {after:.0} (during/before {:.2}, after/before {:.2})",
        during / before,
        after / before
    );
    assert_drains(env, &sock, "after transient backing errors");
    assert_eq!(failed_ios(env, &sock, "wb0"), 0, "wb0 failed completions");
    let (_, log) = env.stop_app(t);
    assert!(log.contains("volume wb0: stopped cleanly"), "{log}");
    assert!(!log.contains("internal error"), "{log}");

    // Control: write_around_mode sends every write to the backing device by the user's choice,
    // and a backing write error is the host's. The same checks must see it.
    let cfg = faults_config(
        env,
        "around",
        CacheBase::Malloc(32),
        256,
        json!({"write_around_mode": true}),
    );
    let t = start_bdevperf(env, "faults-around", &cfg, &["-j", &jobs, "-t", "5"]);
    let sock = t.sock.clone();
    let f0 = failed_ios(env, &sock, "wb0");
    let r = perform_while(env, &sock, 5, Duration::from_millis(200), |_| {
        // bdevperf stops the application once a job failed: the bdev may be gone.
        let _ = inject(env, &sock, BACKING, "write", 3);
    });
    let n = host_errors(&r, f0, f0);
    let mut t = t;
    let (exited, _) = t.proc.wait(Duration::from_secs(60));
    let log = t.proc.log_text();
    let fails = bdevperf_jobs(&log, "wb0");
    println!(
        "e2e faults: control (write_around_mode): host-visible errors {n} (bdevperf {r:?}, final table {fails:?})"
    );
    assert!(
        n > 0 && r.is_err(),
        "write_around_mode: the backing write error must reach the host: {r:?}\n{log}"
    );
    assert!(
        exited && fails.len() == 1 && fails[0].2 > 0.0,
        "write_around_mode: bdevperf reports the failed I/O and stops: {fails:?}\n{log}"
    );
    assert!(
        log.contains("write failed: backing device") && log.contains("on job bdev=wb0 fails"),
        "{log}"
    );
    assert!(!log.contains("internal error"), "{log}");
}

/// The 4 KiB verify of the cache scenarios: `-C`, a job per core, each its own half of `wb0`:
/// with a 48 MiB backing bdev (`BACKING_4K_MIB`) 24 MiB, several passes in a run (see
/// [`seq64k_job_file`]), more than the 32 MiB cache holds.
const BACKING_4K_MIB: u64 = 48;
const VERIFY_4K: &[&str] = &[
    "-T", "wb0", "-C", "-q", "32", "-o", "4096", "-w", "verify", "-t", "5",
];

/// A 4 KiB verify job per core, each over its half of the 48 MiB volume, and a FLUSH job
/// (queue depth 1) on core 1 next to them.
fn verify_4k_with_flush_job_file(env: &Env) -> String {
    let half = BACKING_4K_MIB * 2048 / 2;
    let p = env.scratch.path("verify4k_flush.conf");
    std::fs::write(
        &p,
        format!(
            "[global]\nfilename=wb0\nbs=4096\niodepth=32\nrw=verify\n\
             [v0]\ncpumask=0x1\noffset=0\nlength={half}\n\
             [v1]\ncpumask=0x2\noffset={half}\nlength={half}\n\
             [flush]\ncpumask=0x2\nrw=flush\niodepth=1\noffset=0\nlength={}\n",
            2 * half
        ),
    )
    .expect("job file");
    s(&p)
}

/// A 4 KiB verify job on core 0 over the first half of the 48 MiB volume, and a 4 KiB random
/// read job on core 1 over the same half: most of its reads find their block on the cache device
/// (the verify job's own reads mostly hit the RAM buffer its write just went to).
fn verify_and_randread_4k_job_file(env: &Env) -> String {
    let half = BACKING_4K_MIB * 2048 / 2;
    let p = env.scratch.path("verify_randread4k.conf");
    std::fs::write(
        &p,
        format!(
            "[global]\nfilename=wb0\nbs=4096\niodepth=32\noffset=0\nlength={half}\n\
             [v0]\ncpumask=0x1\nrw=verify\n\
             [r0]\ncpumask=0x2\nrw=randread\n"
        ),
    )
    .expect("job file");
    s(&p)
}

/// Transient cache write errors (fewer than `degraded_error_threshold` in its window) during a
/// 4 KiB verify from both cores with FLUSHes next to it: no host I/O fails (a FLUSH waiting on a
/// segment write that failed once waits for its retry), every injected error is counted, the
/// volume stays running; IOPS before, during and after; drop_caches drains once the errors
/// stop. Then transient cache read errors, which do reach the host.
pub fn faults_cache_write_errors_transient_hidden_and_counted(env: &Env) {
    let cfg = faults_config(
        env,
        "cache",
        CacheBase::Malloc(32),
        BACKING_4K_MIB,
        json!({}),
    );
    let jobs = verify_4k_with_flush_job_file(env);
    let t = start_bdevperf(env, "faults-cache", &cfg, &["-j", &jobs, "-t", "5"]);
    let sock = t.sock.clone();
    let opts = stats(env, &sock, "wb0")["options"].clone();
    assert_eq!(
        (
            &opts["degraded_error_threshold"],
            &opts["degraded_error_window_s"]
        ),
        (&json!(16), &json!(10)),
        "defaults: {opts}"
    );

    let f0 = failed_ios(env, &sock, "wb0");
    let r = perform(env, &sock, 5);
    let before = assert_run_clean(
        env,
        &t,
        "4 KiB verify on 2 cores + FLUSH, no errors",
        &r,
        f0,
    );
    let masks: Vec<(&str, &str)> = r
        .as_ref()
        .map(|j| {
            j.iter()
                .map(|j| (j.workload.as_str(), j.core_mask.as_str()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        masks,
        [("verify", "0x1"), ("verify", "0x2"), ("flush", "0x2")],
        "{r:?}"
    );
    let st = stats(env, &sock, "wb0");
    assert!(u(&st, "segments_written") > 0, "{st}");
    assert_eq!(u(&st, "cache_write_errors"), 0, "{st}");

    // During: one cache write failure every 600 ms, at most 9 in the 5 s run, below the
    // default threshold (16 in 10 s).
    let segments0 = u(&st, "segments_written");
    let flushes0 = u(&st, "flushes");
    let (during, injections, injected, st) = run_injecting_write_errors(
        env,
        &t,
        CACHE,
        1,
        Duration::from_millis(600),
        "4 KiB verify on 2 cores + FLUSH, transient cache write errors",
    );
    println!(
        "e2e faults: cache: {injections} injections of 1, {injected} cache writes failed; engine counted cache_write_errors {}, cache_flush_errors {}, segments written during the run {}, state {}",
        u(&st, "cache_write_errors"),
        u(&st, "cache_flush_errors"),
        u(&st, "segments_written") - segments0,
        st["state"]
    );
    assert!(injected > 0, "no injected cache error was hit: {st}");
    assert_eq!(
        u(&st, "cache_write_errors"),
        injected,
        "every failed cache write is counted once: {st}"
    );
    assert!(u(&st, "segments_written") > segments0, "{st}");
    assert!(
        u(&st, "flushes") > flushes0,
        "the FLUSH job's flushes reached the volume (and none failed): {st}"
    );
    assert_eq!(
        (st["state"].as_str(), u(&st, "degraded_transitions")),
        (Some("running"), 0),
        "errors below degraded_error_threshold leave the volume running: {st}"
    );

    let f0 = failed_ios(env, &sock, "wb0");
    let r = perform(env, &sock, 5);
    let after = assert_run_clean(
        env,
        &t,
        "4 KiB verify on 2 cores + FLUSH, errors cleared",
        &r,
        f0,
    );
    println!(
        "e2e faults: 4 KiB verify (2 cores, FLUSH job next to it) IOPS before / during / after transient cache write errors: {before:.0} / {during:.0} / {after:.0} (during/before {:.2}, after/before {:.2})",
        during / before,
        after / before
    );
    assert_drains(env, &sock, "after transient cache errors");
    let st = stats(env, &sock, "wb0");
    assert_eq!(st["state"], "running", "{st}");
    let (_, log) = env.stop_app(t);
    assert!(log.contains("volume wb0: stopped cleanly"), "{log}");
    assert!(!log.contains("volume degraded"), "{log}");
    assert!(!log.contains("internal error"), "{log}");

    // Cache read errors are the documented exception: a read whose copy on the cache cannot be
    // read fails (it never falls back to an older copy on the backing device). bdevperf -f
    // keeps going after a failed I/O; the threshold is raised so the volume stays running.
    // Writeback reads the cache too, and an injected error fails whichever read comes next: with
    // a 64 MiB cache the verify rewrites wrapped the log, writeback ran, and in one run of five
    // every injected error landed on writeback's reads (CI failed on it). So no writeback may
    // run while errors are injected: the cache (a 2 GiB sparse file, 4096 segments) is drained
    // first, and the 1 s rounds (about 200 MB of writes each) stay far below the low-water mark
    // (7/8 of the log used) that makes writeback urgent; writeback_threshold is 0 (lazy, no
    // background writeback). The run asserts that no writeback batch ran. The host reads that
    // reach the cache device are mostly the random read job's (core 1): the verify job's reads
    // mostly find their block in the RAM buffer its write just went to (verify alone, with a
    // simulation running beside it: no injected error was hit in two runs of three).
    let cache_file = env.scratch.path("cache-read.img");
    std::fs::File::create(&cache_file)
        .and_then(|f| f.set_len(2 << 30))
        .expect("cache file");
    let cfg = faults_config(
        env,
        "cache-read",
        CacheBase::File(cache_file.clone()),
        BACKING_4K_MIB,
        json!({"degraded_error_threshold": 100000, "writeback_threshold": 0}),
    );
    let jobs = verify_and_randread_4k_job_file(env);
    let t = start_bdevperf(
        env,
        "faults-cache-read",
        &cfg,
        &["-j", &jobs, "-t", "5", "-f"],
    );
    let sock = t.sock.clone();
    let f0 = failed_ios(env, &sock, "wb0");
    let r = perform(env, &sock, 2);
    assert_run_clean(
        env,
        &t,
        "4 KiB verify + random read before cache read errors",
        &r,
        f0,
    );
    assert_drains(env, &sock, "before cache read errors");
    let batches0 = u(&stats(env, &sock, "wb0"), "writeback_batches");
    let f0 = failed_ios(env, &sock, "wb0");
    let (mut r, mut host_failed, mut bdevperf_failed, mut rounds) = (Ok(Vec::new()), 0, 0, 0);
    while rounds < 3 {
        rounds += 1;
        r = perform_while(env, &sock, 1, Duration::from_millis(200), |_| {
            let _ = inject(env, &sock, CACHE, "read", 3);
        });
        clear(env, &sock, CACHE);
        host_failed = failed_ios(env, &sock, "wb0") - f0;
        bdevperf_failed += r
            .as_ref()
            .map(|j| j.iter().map(|j| j.io_failed).sum::<u64>())
            .unwrap_or(0);
        if r.is_err() {
            break;
        }
    }
    let batches = u(&stats(env, &sock, "wb0"), "writeback_batches") - batches0;
    assert_eq!(
        batches,
        0,
        "test setup: no writeback batch may read the cache while read errors are injected (they would take errors meant for host reads): {}",
        stats(env, &sock, "wb0")
    );
    println!("e2e faults: cache read error rounds: {rounds}");
    let injected = failed_ios(env, &sock, CACHE);
    let st = stats(env, &sock, "wb0");
    let log = t.proc.log_text();
    println!(
        "e2e faults: transient cache read errors (expected to reach the host): {injected} cache reads failed, cache_read_errors {}, host reads failed {host_failed} (bdevperf io_failed {bdevperf_failed}), verify mismatches {}",
        u(&st, "cache_read_errors"),
        log.matches("Buffer mismatch").count()
    );
    assert!(r.is_ok(), "bdevperf -f: {r:?}");
    let counted = u(&st, "cache_read_errors");
    assert!(
        counted >= host_failed && counted <= injected,
        "cache read errors counted {counted}: at least the {host_failed} host reads that failed, at most the {injected} injected: {st}"
    );
    assert!(
        host_failed > 0 && host_failed <= injected && bdevperf_failed == host_failed,
        "a failed cache read fails the host read that needed it (and only that one): {host_failed} host, {bdevperf_failed} bdevperf, {injected} injected: {st}"
    );
    assert!(
        !log.contains("Buffer mismatch"),
        "a read returned other data than the newest:\n{log}"
    );
    assert_eq!(st["state"], "running", "{st}");
    // Last, so that the checks above ran: every failed cache read is counted once (DESIGN.md:
    // "Every error path is counted").
    assert_eq!(
        counted,
        injected,
        "every failed cache read is counted once (a writeback batch counts one failed header read however many failed: src/engine/writeback.rs, the header loop of writeback_batch_inner): {st}"
    );
    let (_, log) = env.stop_app(t);
    assert!(!log.contains("internal error"), "{log}");
}

/// Persistent cache write errors (every cache write fails from some point on) during a 4 KiB
/// verify from both cores with a FLUSH job next to it, with `degraded_error_threshold` 8 and
/// `degraded_error_window_s` 2: the volume is `degraded` within the window (measured from the
/// injection to get_stats showing it), no verify I/O fails (a FLUSH may, at the transition, as
/// documented), and afterwards every host write reaches the backing device while nothing more
/// is written to the cache, and every FLUSH succeeds; drop_caches drains what the cache still
/// reads.
pub fn faults_persistent_cache_errors_degrade_and_io_flows_to_backing(env: &Env) {
    const THRESHOLD: u64 = 8;
    const WINDOW_S: u64 = 2;
    let cfg = faults_config(
        env,
        "degraded",
        CacheBase::Malloc(32),
        BACKING_4K_MIB,
        json!({"degraded_error_threshold": THRESHOLD, "degraded_error_window_s": WINDOW_S}),
    );
    // -f: a FLUSH may fail at the transition (below); bdevperf must go on and count.
    let jobs = verify_4k_with_flush_job_file(env);
    let t = start_bdevperf(
        env,
        "faults-degraded",
        &cfg,
        &["-j", &jobs, "-t", "5", "-f"],
    );
    let sock = t.sock.clone();

    let f0 = failed_ios(env, &sock, "wb0");
    let r = perform(env, &sock, 3);
    let before = assert_run_clean(
        env,
        &t,
        "4 KiB verify on 2 cores + FLUSH, healthy cache",
        &r,
        f0,
    );
    // Not asserted: dirty blocks left now. With a 32 MiB cache a writeback batch (up to 32
    // segments) may take the whole log once the run stops (dirty 0 seen once); the
    // injection below comes late in its run, whose writes leave dirty blocks to drain.
    let st = stats(env, &sock, "wb0");
    assert_eq!(st["state"], "running", "{st}");

    // 1.8 s into a 2 s run, every cache write starts failing (u32::MAX injected failures): late,
    // so that the run's write-through writes leave dirty blocks for the drain below (usually).
    // The poll for `degraded` goes on after the run, up to the window.
    let f0 = failed_ios(env, &sock, "wb0");
    let mut injected_at: Option<(Instant, Instant)> = None;
    let mut degraded_after: Option<(Duration, Duration, Value)> = None;
    // Injects at 1.8 s, then polls; true once `degraded` was seen.
    let mut poll = |elapsed: Duration| {
        match (&injected_at, &degraded_after) {
            (None, _) if elapsed >= Duration::from_millis(1800) => {
                let sent = Instant::now();
                let _ = inject(env, &sock, CACHE, "write", u32::MAX);
                injected_at = Some((sent, Instant::now()));
            }
            (Some((sent, replied)), None) => {
                let st = stats(env, &sock, "wb0");
                if st["state"] == "degraded" {
                    degraded_after = Some((sent.elapsed(), replied.elapsed(), st));
                }
            }
            _ => {}
        }
        degraded_after.is_some()
    };
    let r = perform_while(env, &sock, 2, Duration::from_millis(10), |e| {
        poll(e);
    });
    let run_end = Instant::now();
    while !poll(Duration::from_secs(2)) && run_end.elapsed() < Duration::from_secs(WINDOW_S + 1) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // No verify I/O may fail. A FLUSH that waits on a segment write failing for the third time
    // completes with an error (DESIGN.md: "after a bounded number of failures they complete with
    // an error, never with success"): that can happen in the milliseconds before the volume is
    // degraded, and only to the FLUSH job.
    let failed = |w: &str| -> u64 {
        r.as_ref()
            .map(|j| {
                j.iter()
                    .filter(|j| j.workload == w)
                    .map(|j| j.io_failed)
                    .sum()
            })
            .unwrap_or(u64::MAX)
    };
    let (verify_failed, flush_failed) = (failed("verify"), failed("flush"));
    let wb0_failed = failed_ios(env, &sock, "wb0") - f0;
    let during = total_iops(&r);
    println!(
        "e2e faults: 4 KiB verify on 2 cores + FLUSH, persistent cache write errors from 1.8 s on: {during:.0} IOPS, failed verify I/Os {verify_failed}, failed FLUSHes {flush_failed} (documented at the transition), wb0 failed completions {wb0_failed} ({r:?})"
    );
    assert!(
        r.is_ok() && verify_failed == 0 && wb0_failed == flush_failed,
        "persistent cache errors: a verify I/O failed: {r:?}\n{}",
        t.proc.log_tail(40)
    );
    let (from_sent, from_replied, st) = degraded_after.unwrap_or_else(|| {
        panic!(
            "not degraded within the run (injected: {}): {}",
            injected_at.is_some(),
            stats(env, &sock, "wb0")
        )
    });
    println!(
        "e2e faults: time to degraded: {:.1} ms from sending the injection ({:.1} ms from its reply), threshold {THRESHOLD} in {WINDOW_S} s; cache_write_errors {} at that point; reason: {}",
        from_sent.as_secs_f64() * 1e3,
        from_replied.as_secs_f64() * 1e3,
        u(&st, "cache_write_errors"),
        st["degraded_reason"]
    );
    assert!(
        from_replied <= Duration::from_secs(WINDOW_S),
        "degraded only {from_replied:?} after the errors began (window {WINDOW_S} s): {st}"
    );
    // The error count in the window did it (not the slower rule for one segment write that
    // keeps failing, which needs min(window, 1 s)).
    let reason = st["degraded_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "cache device errors within {WINDOW_S} s (degraded_error_threshold {THRESHOLD})"
        )),
        "degraded for another reason: {st}"
    );
    assert_eq!(u(&st, "degraded_transitions"), 1, "{st}");
    assert!(
        u(&st, "cache_write_errors") >= THRESHOLD,
        "degraded with fewer errors than the threshold: {st}"
    );

    // The dirty blocks written before the errors began are on the cache, which still reads.
    // (How many are left depends on how much the run wrote through after the transition: the
    // count is printed by the drain, and may be 0.)
    assert_drains(env, &sock, "degraded, cache still readable");

    // Still failing: verify again. Every host write goes to the backing device, none to the
    // cache (the bdev layer's counts of successful writes).
    let flushes0 = u(&stats(env, &sock, "wb0"), "flushes");
    let io0 = (
        iostat(env, &sock, "wb0"),
        iostat(env, &sock, BACKING),
        iostat(env, &sock, CACHE),
    );
    let f0 = failed_ios(env, &sock, "wb0");
    let r = perform(env, &sock, 3);
    let degraded = assert_run_clean(
        env,
        &t,
        "4 KiB verify on 2 cores + FLUSH, degraded (every FLUSH must succeed)",
        &r,
        f0,
    );
    let io1 = (
        iostat(env, &sock, "wb0"),
        iostat(env, &sock, BACKING),
        iostat(env, &sock, CACHE),
    );
    let d = |a: &Value, b: &Value, k: &str| {
        b[k].as_u64().expect("iostat field") - a[k].as_u64().expect("iostat field")
    };
    let host_written = d(&io0.0, &io1.0, "bytes_written");
    let backing_written = d(&io0.1, &io1.1, "bytes_written");
    let cache_writes_ok = d(&io0.2, &io1.2, "num_write_ops");
    let st = stats(env, &sock, "wb0");
    assert!(
        u(&st, "flushes") > flushes0,
        "FLUSHes reached the degraded volume (and none failed): {st}"
    );
    println!(
        "e2e faults: degraded run: host wrote {host_written} bytes, backing device {backing_written} bytes, successful cache writes {cache_writes_ok}; state {}",
        st["state"]
    );
    assert!(host_written > 0, "no host writes while degraded");
    assert!(
        backing_written >= host_written,
        "degraded: every host write goes to the backing device ({backing_written} < {host_written}): {st}"
    );
    assert_eq!(
        cache_writes_ok, 0,
        "degraded: nothing is written to the failing cache that succeeds: {st}"
    );
    assert_eq!(st["state"], "degraded", "{st}");
    println!(
        "e2e faults: 4 KiB verify (2 cores, FLUSH job next to it) IOPS healthy / while degrading / degraded: {before:.0} / {during:.0} / {degraded:.0} (degraded/healthy {:.2})",
        degraded / before
    );

    clear(env, &sock, CACHE);
    let (_, log) = env.stop_app(t);
    assert_eq!(
        log.matches("volume degraded").count(),
        1,
        "the transition is logged once:\n{log}"
    );
    assert!(!log.contains("internal error"), "{log}");
}

/// Runs `perform_tests` for `secs` and, once `wb0` has written `bytes` more, removes the bdev
/// under the cache with `remove` (an RPC); returns the run's result, how long the run took to
/// end after the removal, and the volume's stats just before it.
fn hot_remove_under_load(
    env: &Env,
    t: &mut Target,
    secs: u64,
    bytes: u64,
    remove: (&str, Value),
) -> (RunResult, Duration, Value) {
    let sock = t.sock.clone();
    let base = u(&stats(env, &sock, "wb0"), "bytes_written");
    std::thread::scope(|sc| {
        let h = sc.spawn(|| perform(env, &sock, secs));
        wait_for("I/O on wb0", Duration::from_secs(30), || {
            (u(&stats(env, &sock, "wb0"), "bytes_written") > base + bytes).then_some(())
        });
        let st = stats(env, &sock, "wb0");
        let t0 = Instant::now();
        env.call_ok(&sock, remove.0, remove.1.clone());
        wait_for("wb0 to go away", Duration::from_secs(30), || {
            (!bdev_exists(env, &sock, "wb0")).then_some(())
        });
        wait_for(
            "every host I/O to complete (perform_tests to return)",
            Duration::from_secs(60),
            || h.is_finished().then_some(()),
        );
        let took = t0.elapsed();
        (h.join().expect("perform_tests thread"), took, st)
    })
}

/// The application is alive and answers RPC; `wb0` waits for its bases; the backing bdev is
/// released.
fn assert_alive_and_waiting(env: &Env, t: &mut Target, what: &str) {
    let alive = t
        .proc
        .child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
    assert!(
        alive,
        "{what}: the application exited:\n{}",
        t.proc.log_tail(40)
    );
    env.call_ok(&t.sock, "framework_get_reactors", Value::Null);
    env.call_err(
        &t.sock,
        "bdev_writeboost_get_stats",
        json!({"name": "wb0"}),
        &["waiting for its base bdevs"],
    );
    let b = env.call_ok(&t.sock, "bdev_get_bdevs", json!({"name": BACKING}));
    assert_eq!(
        b[0]["claimed"], false,
        "{what}: {BACKING} still claimed: {b}"
    );
}

/// Hot-remove of the bdev under the cache while a 4 KiB verify runs from both cores: the volume
/// goes away, every outstanding host I/O completes (perform_tests returns, none failed), the
/// application keeps running and answering RPC; the same cache file added again resumes the
/// volume, which verifies and drains. Then a dying cache: persistent write errors (degraded),
/// and the cache removed under load while degraded: the same.
pub fn faults_cache_hot_remove_under_load_completes_every_io(env: &Env) {
    let cache_file = env.scratch.path("cache.img");
    std::fs::File::create(&cache_file)
        .and_then(|f| f.set_len(64 << 20))
        .expect("cache file");
    let cfg = faults_config(
        env,
        "hot-remove",
        CacheBase::File(cache_file.clone()),
        BACKING_4K_MIB,
        json!({"degraded_error_threshold": 8, "degraded_error_window_s": 2}),
    );
    let mut t = start_bdevperf(env, "faults-hot-remove", &cfg, VERIFY_4K);
    let sock = t.sock.clone();
    let add_cache = || {
        env.call_ok(
            &sock,
            "bdev_aio_create",
            json!({"name": "Cache0", "filename": s(&cache_file), "block_size": 512}),
        );
        env.call_ok(&sock, "bdev_error_create", json!({"base_name": "Cache0"}));
        wait_bdev(env, &sock, "wb0");
    };

    // The aio bdev under EE_Cache0 goes away under load.
    let (r, took, st) = hot_remove_under_load(
        env,
        &mut t,
        30,
        16 << 20,
        ("bdev_aio_delete", json!({"name": "Cache0"})),
    );
    let n = host_errors(&r, 0, 0);
    println!(
        "e2e faults: cache hot-remove under load: perform_tests returned {:.2}s after the removal, host-visible errors {n} ({r:?}); {} dirty blocks before",
        took.as_secs_f64(),
        u(&st, "nr_dirty_cache_blocks")
    );
    assert!(
        n == 0,
        "cache hot-remove: every outstanding host I/O completes without error: {r:?}\n{}",
        t.proc.log_tail(40)
    );
    assert_alive_and_waiting(env, &mut t, "after the cache hot-remove");

    // Back: the same file resumes the volume, with its dirty data.
    add_cache();
    assert!(
        t.proc.log_text().contains("volume wb0: resumed"),
        "{}",
        t.proc.log_tail(20)
    );
    let f0 = failed_ios(env, &sock, "wb0");
    let r = perform(env, &sock, 3);
    assert_run_clean(env, &t, "4 KiB -C verify after the cache came back", &r, f0);
    assert_drains(env, &sock, "after the cache came back");

    // A dying cache: every write fails (degraded), then it is removed under load.
    inject(env, &sock, CACHE, "write", u32::MAX).expect("inject");
    let f0 = failed_ios(env, &sock, "wb0");
    let r = perform(env, &sock, 3);
    assert_run_clean(env, &t, "4 KiB -C verify, cache failing", &r, f0);
    assert_eq!(stats(env, &sock, "wb0")["state"], "degraded");
    let (r, took, _) = hot_remove_under_load(
        env,
        &mut t,
        30,
        16 << 20,
        ("bdev_error_delete", json!({"name": CACHE})),
    );
    let n = host_errors(&r, 0, 0);
    println!(
        "e2e faults: degraded cache hot-remove under load: perform_tests returned {:.2}s after the removal, host-visible errors {n} ({r:?})",
        took.as_secs_f64()
    );
    assert!(
        n == 0,
        "degraded cache hot-remove: every outstanding host I/O completes without error: {r:?}\n{}",
        t.proc.log_tail(40)
    );
    assert_alive_and_waiting(env, &mut t, "after the degraded cache's hot-remove");
    let (ok, log) = env.stop_app(t);
    assert!(ok, "bdevperf did not exit cleanly:\n{log}");
    assert!(
        log.contains("base bdev EE_Cache0 is being removed"),
        "{log}"
    );
    assert!(!log.contains("internal error"), "{log}");
}
