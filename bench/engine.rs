//! Engine benchmarks that need no SPDK: `cargo bench --bench engine`.
//!
//! Prints a Markdown table and writes `bench/results/engine.{md,json}`:
//! - 4 KiB random writes per second on one core (in-memory devices), with the cache fitting the
//!   working set and in steady state (writeback included);
//! - 4 KiB random reads per second (hits on the cache device, and misses);
//! - DRAM bytes of metadata per cache block;
//! - replay of a full cache: time and bytes read from the cache device, as a share of its size;
//! - writeback throughput sorted vs unsorted on a simulated HDD (seek cost), in virtual time.

#[path = "../tests/sim/disk.rs"]
#[allow(dead_code)]
mod disk;
#[path = "../tests/sim/executor.rs"]
#[allow(dead_code)]
mod executor;

use std::rc::Rc;
use std::time::Instant;
use writeboost::device::mem::MemDevice;
use writeboost::device::BlockDevice;
use writeboost::engine::{CreateOptions, Volume};
use writeboost::runtime::LocalRuntime;

/// The volume runs over shared handles: the test keeps one to inspect the device.
type Mem = Rc<MemDevice>;

struct Row {
    name: &'static str,
    value: f64,
    unit: &'static str,
    note: String,
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn opts() -> CreateOptions {
    let mut o = CreateOptions::default();
    // Background writeback off: only what space needs (the benchmark measures the engine).
    o.options.writeback_threshold = 0;
    o
}

fn mem_volume(
    rt: &LocalRuntime,
    cache_mib: u64,
    backing_mib: u64,
) -> (Volume<Mem, LocalRuntime>, Rc<MemDevice>) {
    let c = Rc::new(MemDevice::new("cache", cache_mib << 20));
    let b = Rc::new(MemDevice::new("backing", backing_mib << 20));
    c.prefault();
    b.prefault();
    let (cc, bb, r) = (c.clone(), b, rt.clone());
    let (v, _) = rt
        .block_on(async move { Volume::create(cc, bb, r, opts()).await })
        .expect("create");
    (v, c)
}

/// 4 KiB random writes over `span_blocks`; returns writes per second.
fn random_writes(
    rt: &LocalRuntime,
    vol: &Volume<Mem, LocalRuntime>,
    span_blocks: u64,
    n: u64,
) -> f64 {
    let v = vol.clone();
    let t = Instant::now();
    rt.block_on(async move {
        let data = vec![0x5au8; 4096];
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..n {
            let b = xorshift(&mut x) % span_blocks;
            v.write(b * 8, &data, false).await.expect("write");
        }
    });
    n as f64 / t.elapsed().as_secs_f64()
}

fn random_reads(
    rt: &LocalRuntime,
    vol: &Volume<Mem, LocalRuntime>,
    span_blocks: u64,
    n: u64,
) -> f64 {
    let v = vol.clone();
    let t = Instant::now();
    rt.block_on(async move {
        let mut out = vec![0u8; 4096];
        let mut x = 0x9876_5432_1fed_cba1u64;
        for _ in 0..n {
            let b = xorshift(&mut x) % span_blocks;
            v.read(b * 8, &mut out).await.expect("read");
        }
    });
    n as f64 / t.elapsed().as_secs_f64()
}

fn writeback_on_hdd(unsorted: bool) -> (f64, u64) {
    use disk::{DiskConfig, Latency, SimDisk};
    use executor::{SimRuntime, World};
    let world = World::new(7);
    let cache = SimDisk::new(
        &world,
        DiskConfig {
            name: "nvme",
            size_bytes: (1 << 20) + (64 << 20),
            read_error_per_10k: 0,
            write_error_per_10k: 0,
            flush_error_per_10k: 0,
            latency: Latency::Uniform {
                min_ns: 10_000,
                max_ns: 20_000,
            },
        },
    );
    let backing = SimDisk::new(
        &world,
        DiskConfig {
            name: "hdd",
            size_bytes: 4 << 30,
            read_error_per_10k: 0,
            write_error_per_10k: 0,
            flush_error_per_10k: 0,
            // 0.5 ms settle, 8 ms full stroke, 150 MB/s.
            latency: Latency::Hdd {
                settle_ns: 500_000,
                full_stroke_ns: 8_000_000,
                bytes_per_us: 150,
            },
        },
    );
    let rt = SimRuntime(world.clone());
    let (c, b) = (cache.clone(), backing.clone());
    let mut o = opts();
    o.options.nr_max_batched_writeback = 32;
    let (vol, _) = world
        .block_on(async move { Volume::create(c, b, rt, o).await })
        .expect("no stall")
        .expect("create");
    vol.set_writeback_unsorted(unsorted);
    // Fill most of the cache with random 4 KiB writes over the whole HDD (no writeback yet).
    let v = vol.clone();
    let n = vol.status().nr_cache_blocks * 3 / 4;
    world
        .block_on(async move {
            let data = vec![1u8; 4096];
            let mut x = 42u64;
            for _ in 0..n {
                let blk = xorshift(&mut x) % ((4u64 << 30) / 4096);
                v.write(blk * 8, &data, false).await.unwrap();
            }
            v.flush().await.unwrap();
        })
        .expect("fill");
    let t0 = world.now_ns();
    let v = vol.clone();
    world
        .block_on(async move { v.drop_caches().await.unwrap() })
        .expect("drain");
    let secs = (world.now_ns() - t0) as f64 / 1e9;
    let bytes = vol.status().counters.bytes_written_back;
    (bytes as f64 / secs / (1 << 20) as f64, bytes)
}

fn main() {
    let mut rows = Vec::new();
    let rt = LocalRuntime::new();

    // Pure write path: the log never wraps (2 GiB cache, 1.5 GiB written).
    let (vol, _) = mem_volume(&rt, 2048, 4096);
    let w_log = random_writes(&rt, &vol, 1 << 20, 300_000);
    if std::env::var("WB_BENCH_ONLY_LOG").is_ok() {
        println!("log writes/s {w_log:.0}");
        return;
    }
    rows.push(Row {
        name: "4 KiB random writes into the log, no wrap (2 GiB cache)",
        value: w_log,
        unit: "writes/s",
        note: "one core, in-memory devices: RAM buffer copy, index, seal + CRC, segment write"
            .into(),
    });
    drop(vol);

    // Write path: working set fits the cache (256 MiB cache, 128 MiB span).
    let (vol, _) = mem_volume(&rt, 256, 1024);
    random_writes(&rt, &vol, 32768, 200_000); // warm up
    let w_fit = random_writes(&rt, &vol, 32768, 2_000_000);
    if std::env::var("WB_BENCH_ONLY_WRITES").is_ok() {
        println!("log writes/s {w_log:.0}, fits writes/s {w_fit:.0}");
        return;
    }
    rows.push(Row {
        name: "4 KiB random writes, working set fits (128 MiB span, 256 MiB cache)",
        value: w_fit,
        unit: "writes/s",
        note: "one core, in-memory devices".into(),
    });
    let dram = vol.status().dram_bytes_per_cache_block;
    rows.push(Row {
        name: "DRAM metadata per cache block",
        value: dram,
        unit: "bytes",
        note: format!("{} cache blocks", vol.status().nr_cache_blocks),
    });
    let r_hit = random_reads(&rt, &vol, 32768, 1_000_000);
    rows.push(Row {
        name: "4 KiB random reads, hits on the cache device",
        value: r_hit,
        unit: "reads/s",
        note: String::new(),
    });
    drop(vol);

    // Steady state: working set 8x the cache, writeback on the write path's critical path.
    let (vol, _) = mem_volume(&rt, 64, 1024);
    random_writes(&rt, &vol, 131072, 100_000);
    let w_over = random_writes(&rt, &vol, 131072, 1_000_000);
    let st = vol.status();
    rows.push(Row {
        name: "4 KiB random writes, steady state (512 MiB span, 64 MiB cache)",
        value: w_over,
        unit: "writes/s",
        note: format!(
            "writeback batches {}, waits for space {}",
            st.counters.writeback_batches, st.counters.write_waits_for_space
        ),
    });
    let r_miss = random_reads(&rt, &vol, 262144, 500_000);
    rows.push(Row {
        name: "4 KiB random reads, mostly misses (1 GiB span, 64 MiB cache)",
        value: r_miss,
        unit: "reads/s",
        note: String::new(),
    });
    drop(vol);

    // Replay of a full cache (1 GiB): crash without shutdown, then create again.
    let c = Rc::new(MemDevice::new("cache", (1 << 30) + (1 << 20)));
    let b = Rc::new(MemDevice::new("backing", 8 << 30));
    {
        let (cc, bb, r) = (c.clone(), b.clone(), rt.clone());
        let (vol, _) = rt
            .block_on(async move { Volume::create(cc, bb, r, opts()).await })
            .unwrap();
        let n = vol.status().nr_cache_blocks;
        let v = vol.clone();
        rt.block_on(async move {
            let data = vec![3u8; 4096];
            let mut x = 77u64;
            for _ in 0..n {
                v.write((xorshift(&mut x) % (2 << 20)) * 8, &data, false)
                    .await
                    .unwrap();
            }
            v.flush().await.unwrap();
        });
    }
    let before = c.bytes_read.get();
    let t = Instant::now();
    let (cc, bb, r) = (c.clone(), b.clone(), rt.clone());
    let (vol, _) = rt
        .block_on(async move { Volume::create(cc, bb, r, opts()).await })
        .unwrap();
    let replay_s = t.elapsed().as_secs_f64();
    let read = c.bytes_read.get() - before;
    let share = read as f64 / c.info().size_bytes as f64 * 100.0;
    rows.push(Row {
        name: "replay of a full 1 GiB cache: bytes read from the cache device",
        value: share,
        unit: "% of device",
        note: format!(
            "{:.1} MiB read, {:.0} ms, {} dirty blocks restored",
            read as f64 / (1 << 20) as f64,
            replay_s * 1e3,
            vol.status().nr_dirty_cache_blocks
        ),
    });
    drop(vol);

    // Writeback on a simulated HDD.
    let (sorted, bytes) = writeback_on_hdd(false);
    let (unsorted, _) = writeback_on_hdd(true);
    rows.push(Row {
        name: "writeback to simulated HDD, sorted by LBA",
        value: sorted,
        unit: "MiB/s (virtual time)",
        note: format!(
            "{:.0} MiB of random 4 KiB blocks over 4 GiB",
            bytes as f64 / (1 << 20) as f64
        ),
    });
    rows.push(Row {
        name: "writeback to simulated HDD, log order (unsorted)",
        value: unsorted,
        unit: "MiB/s (virtual time)",
        note: format!("sorted / unsorted = {:.1}x", sorted / unsorted),
    });

    let mut md = String::from("| benchmark | value | unit | note |\n|---|---:|---|---|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.2} | {} | {} |\n",
            r.name, r.value, r.unit, r.note
        ));
    }
    print!("{md}");
    let json = serde_json::json!(rows
        .iter()
        .map(|r| serde_json::json!({"name": r.name, "value": r.value, "unit": r.unit, "note": r.note}))
        .collect::<Vec<_>>());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&dir).unwrap();
    let header = format!(
        "Engine benchmarks (`cargo bench --bench engine`), commit {}, machine: {}\n\n",
        std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    std::fs::write(dir.join("engine.md"), header + &md).unwrap();
    std::fs::write(
        dir.join("engine.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}
