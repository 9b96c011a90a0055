//! The offline `writeboost` command, run as a binary over cache images that the engine built on
//! files: a volume writes a seeded pattern (a reference model records every byte), flushes and is
//! dropped without shutdown (a crash). Then status, check, meta, dump and the rescue writeback are
//! run against it, and against damaged copies of it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use writeboost::device::file::FileDevice;
use writeboost::engine::{read_superblock, scan_log, CreateOptions, LogScan, Volume};
use writeboost::format::segment::data_block_crc;
use writeboost::format::{Superblock, BLOCK_SIZE_BYTES};
use writeboost::runtime::{LocalRuntime, Runtime};

const BLOCK: usize = BLOCK_SIZE_BYTES as usize;
const SECTOR: usize = 512;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("wb-cli-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    raw: Vec<u8>,
}

fn wb<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_writeboost"))
        .args(args)
        .output()
        .expect("run writeboost");
    Run {
        code: out.status.code().expect("exit status"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        raw: out.stdout,
    }
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", r.stdout))
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// xorshift64*: the whole workload follows from one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Returns `Pending` once: the other tasks of the runtime run before the caller continues.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// A cache image the engine left behind, and what the backing device must hold after writeback.
struct Image {
    dir: TempDir,
    cache: PathBuf,
    backing: PathBuf,
    /// Expected backing content once every dirty block is written back.
    model: Vec<u8>,
    /// Backing content before any writeback.
    original: Vec<u8>,
    dirty_blocks: u64,
    dirty_bytes: u64,
}

fn fill_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write file");
}

/// Writes `nr_writes` seeded writes (1 to 32 sectors at any sector offset, a FLUSH every 100,
/// some FUA) through a volume over two files, flushes, then drops the volume without shutdown.
fn crashed_image(name: &str, cache_mib: u64, backing_mib: u64, nr_writes: u64, seed: u64) -> Image {
    let dir = TempDir::new(name);
    let (cache, backing) = (dir.path("cache"), dir.path("backing"));
    let backing_bytes = (backing_mib << 20) as usize;
    let original: Vec<u8> = (0..backing_bytes)
        .map(|i| (i / SECTOR) as u8 ^ 0xa5)
        .collect();
    fill_file(&cache, &vec![0u8; (cache_mib << 20) as usize]);
    fill_file(&backing, &original);
    let mut model = original.clone();
    let mut rng = Rng(seed | 1);
    let mut writes = Vec::new();
    let mut sectors = BTreeSet::new();
    let size_sectors = (backing_bytes / SECTOR) as u64;
    for i in 0..nr_writes {
        let len = 1 + rng.below(32);
        let off = rng.below(size_sectors - len);
        let data: Vec<u8> = (0..len as usize * SECTOR)
            .map(|_| rng.next() as u8)
            .collect();
        let a = off as usize * SECTOR;
        model[a..a + data.len()].copy_from_slice(&data);
        sectors.extend(off..off + len);
        writes.push((off, data, i % 37 == 5));
    }
    let dirty_blocks = sectors.iter().map(|s| s / 8).collect::<BTreeSet<_>>().len() as u64;
    let dirty_bytes = sectors.len() as u64 * SECTOR as u64;
    let rt = LocalRuntime::new();
    let c = FileDevice::open(&cache, true).expect("open cache");
    let b = FileDevice::open(&backing, true).expect("open backing");
    let r = rt.clone();
    rt.block_on(async move {
        let mut opts = CreateOptions {
            new_format_uuid: [0x11; 16],
            ..CreateOptions::default()
        };
        // No background writeback: the data stays dirty on the cache.
        opts.options.writeback_threshold = 0;
        let (vol, _) = Volume::create(c, b, r, opts).await.expect("create");
        for (i, (off, data, fua)) in writes.into_iter().enumerate() {
            vol.write(off, &data, fua).await.expect("write");
            // Let the segment writes run, so no write waits for a RAM buffer (which would
            // start writeback).
            YieldNow(false).await;
            if i % 100 == 99 {
                vol.flush().await.expect("flush");
            }
        }
        vol.flush().await.expect("flush");
        // Dropped without shutdown: a crash after the last FLUSH completed.
    });
    drop(rt);
    Image {
        dir,
        cache,
        backing,
        model,
        original,
        dirty_blocks,
        dirty_bytes,
    }
}

/// The default image: 32 MiB cache, 16 MiB backing, about 1500 dirty blocks (no writeback ran).
fn default_image(name: &str) -> Image {
    crashed_image(name, 32, 16, 600, 0x5eed)
}

fn scan(cache: &Path) -> (Superblock, LogScan) {
    let dev = FileDevice::open(cache, false).expect("open cache");
    futures::executor::block_on(async {
        let sb = read_superblock(&dev).await.unwrap().expect("superblock");
        let scan = scan_log(&dev, &sb).await.expect("scan");
        (sb, scan)
    })
}

fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read file")
}

/// First sector where two images differ, for a readable failure.
fn assert_same(found: &[u8], want: &[u8], what: &str) {
    assert_eq!(found.len(), want.len(), "{what}: length");
    if let Some(i) = found.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (sector {})",
            i / SECTOR
        );
    }
}

#[test]
fn status_reports_what_replay_finds_on_a_crashed_cache() {
    let img = default_image("status");
    // Nothing was written back while the volume ran: the premise of the counts below.
    assert_same(
        &read_file(&img.backing),
        &img.original,
        "backing before writeback",
    );
    let r = wb(&["status", p(&img.cache), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&r);
    assert_eq!(v["dirty_blocks"], img.dirty_blocks);
    assert_eq!(v["dirty_bytes"], img.dirty_bytes);
    assert_eq!(v["record"], serde_json::Value::Null);
    assert_eq!(v["clean_shutdown"], false);
    assert_eq!(v["first_id"], 1);
    let (_, scan) = scan(&img.cache);
    assert_eq!(v["head_id"], scan.head_id);
    assert!(scan.head_id >= 10, "head {}", scan.head_id);
    assert_eq!(v["scan_bytes_read"], scan.bytes_read);
    let h = wb(&["status", p(&img.cache)]);
    assert_eq!(h.code, 0);
    assert!(
        h.stdout
            .contains(&format!("dirty_blocks       {}\n", img.dirty_blocks)),
        "{}",
        h.stdout
    );
    assert!(h
        .stdout
        .contains(&format!("head_id            {}\n", scan.head_id)));
}

#[test]
fn check_all_passes_on_a_crashed_cache() {
    let img = default_image("check-ok");
    let r = wb(&["check", p(&img.cache), "--all"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("result: clean (0 warnings)"),
        "{}",
        r.stdout
    );
    let v = json(&wb(&["check", p(&img.cache), "--all", "--json"]));
    let (sb, scan) = scan(&img.cache);
    let blocks: usize = scan
        .segments
        .iter()
        .map(|s| {
            s.header
                .entries
                .iter()
                .filter(|e| e.valid_bits != 0)
                .count()
        })
        .sum();
    assert_eq!(v["data_blocks_checked"], blocks as u64);
    assert_eq!(v["segments_checked"], scan.segments.len() as u64);
    assert_eq!(v["slots_checked"], sb.geometry.nr_segments);
    assert_eq!(v["errors"].as_array().unwrap().len(), 0);
}

#[test]
fn check_names_a_corrupt_data_block() {
    let img = default_image("check-data");
    let (sb, scan) = scan(&img.cache);
    // An old segment: the log proves it durable, so replay never reads its data; only check does.
    let seg = &scan.segments[0];
    assert!(seg.header.id <= scan.durable_floor_id);
    let j = seg
        .header
        .entries
        .iter()
        .rposition(|e| e.valid_bits != 0)
        .unwrap();
    let e = seg.header.entries[j];
    let off = sb.geometry.data_block_offset_bytes(seg.slot, j as u32);
    flip_byte(&img.cache, off + 100);
    let mut block = read_file(&img.cache)[off as usize..off as usize + BLOCK].to_vec();
    let found = data_block_crc(&block);
    let r = wb(&["check", p(&img.cache), "--all"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let want = format!(
        "segment {} (slot {}) data block {j} (backing block {}, cache byte {off}): CRC expected {:#010x}, found {found:#010x}; part of the live log",
        seg.header.id, seg.slot, e.backing_block, e.data_crc
    );
    assert!(r.stdout.contains(&want), "want {want}\n{}", r.stdout);
    assert!(
        r.stdout.contains("result: CORRUPT (1 error"),
        "{}",
        r.stdout
    );
    let v = json(&wb(&["check", p(&img.cache), "--all", "--json"]));
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["kind"], "data_crc");
    assert_eq!(errors[0]["segment_id"], seg.header.id);
    assert_eq!(errors[0]["block"], j as u64);
    assert_eq!(errors[0]["expected_crc"], e.data_crc);
    assert_eq!(errors[0]["found_crc"], found);
    assert_eq!(errors[0]["role"], "live_log");
    // One segment only finds it too; the metadata-only check does not read data blocks.
    let one = wb(&[
        "check",
        p(&img.cache),
        "--segment",
        &seg.header.id.to_string(),
    ]);
    assert_eq!(one.code, 1, "{}", one.stdout);
    assert!(one.stdout.contains(&want));
    assert_eq!(wb(&["check", p(&img.cache)]).code, 0);
    // dump shows the mismatch and the damaged bytes.
    let d = wb(&[
        "dump",
        p(&img.cache),
        "--segment",
        &seg.header.id.to_string(),
        "--block",
        &j.to_string(),
    ]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert!(
        d.stdout
            .contains(&format!("computed {found:#010x}: MISMATCH")),
        "{}",
        d.stdout
    );
    block[100] ^= 0x5a;
    assert_eq!(
        data_block_crc(&block),
        e.data_crc,
        "the flip was the only change"
    );
}

#[test]
fn check_names_a_corrupt_header_entry() {
    let img = default_image("check-header");
    let (sb, scan) = scan(&img.cache);
    let seg = &scan.segments[scan.segments.len() / 2];
    let entry_off = sb.geometry.slot_offset_bytes(seg.slot) + 64 + 16 * 3;
    flip_byte(&img.cache, entry_off);
    let r = wb(&["check", p(&img.cache)]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let want = format!(
        "slot {} (cache byte {}): invalid segment header claiming segment {}: checksum mismatch: stored {:#010x}",
        seg.slot,
        sb.geometry.slot_offset_bytes(seg.slot),
        seg.header.id,
        seg.header.header_crc
    );
    assert!(r.stdout.contains(&want), "want {want}\n{}", r.stdout);
    // The segments after it no longer join the log a replay finds.
    let v = json(&wb(&["check", p(&img.cache), "--json"]));
    let kinds: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"segment_header"), "{kinds:?}");
    let sid = seg.header.id.to_string();
    assert_eq!(wb(&["check", p(&img.cache), "--segment", &sid]).code, 1);
    assert_eq!(wb(&["meta", p(&img.cache), "--segment", &sid]).code, 3);
    let m = wb(&["meta", p(&img.cache), "--slot", &seg.slot.to_string()]);
    assert_eq!(m.code, 0);
    assert!(m.stdout.contains(&format!(
        "invalid header claiming segment {}",
        seg.header.id
    )));
}

#[test]
fn check_names_a_corrupt_superblock() {
    let img = default_image("check-sb");
    flip_byte(&img.cache, 40);
    let r = wb(&["check", p(&img.cache), "--all"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("corrupt superblock: checksum mismatch: stored"),
        "{}",
        r.stderr
    );
    // The rescue refuses it too, without writing anything.
    let before = read_file(&img.cache);
    let w = wb(&[
        "writeback",
        "--cache",
        p(&img.cache),
        "--backing",
        p(&img.backing),
    ]);
    assert_eq!(w.code, 1, "{}", w.stderr);
    assert_same(
        &read_file(&img.cache),
        &before,
        "cache after refused writeback",
    );
}

#[test]
fn check_reports_durable_segments_that_replay_would_drop() {
    // A crashed cache with dirty data: segments up to the durable floor were made durable by a
    // FLUSH and are not written back. Damaging the floor segment's header breaks every chain
    // that reaches it.
    let img = default_image("check-durable");
    let (sb, scan) = scan(&img.cache);
    let floor = scan.durable_floor_id;
    assert!(
        floor > scan.last_writeback_id,
        "the image has durable dirty segments"
    );
    let seg = scan
        .segments
        .iter()
        .find(|s| s.header.id == floor)
        .expect("floor segment in the log");
    flip_byte(&img.cache, sb.geometry.slot_offset_bytes(seg.slot) + 64);
    let v = json(&wb(&["check", p(&img.cache), "--json"]));
    let durable: Vec<&serde_json::Value> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "durable_not_replayed" || f["kind"] == "log_hole")
        .collect();
    assert!(!durable.is_empty(), "{v}");
    // And a resume refuses the damaged log instead of dropping durable data.
    let w = wb(&[
        "writeback",
        "--cache",
        p(&img.cache),
        "--backing",
        p(&img.backing),
    ]);
    assert_ne!(w.code, 0, "{}", w.stderr);
    assert!(w.stderr.contains("damaged"), "{}", w.stderr);
}

#[test]
fn writeback_rescues_a_crashed_cache_byte_for_byte_and_is_idempotent() {
    let img = default_image("writeback");
    let r = wb(&[
        "writeback",
        "--cache",
        p(&img.cache),
        "--backing",
        p(&img.backing),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("MiB/s"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains(&format!("{} dirty blocks", img.dirty_blocks)),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("0 dirty blocks left"), "{}", r.stdout);
    assert_same(
        &read_file(&img.backing),
        &img.model,
        "backing after writeback",
    );
    let v = json(&wb(&["status", p(&img.cache), "--json"]));
    assert_eq!(v["dirty_blocks"], 0);
    assert_eq!(v["clean_shutdown"], true);
    // Again: nothing left to write, nothing changes.
    let again = json(&wb(&[
        "writeback",
        "--cache",
        p(&img.cache),
        "--backing",
        p(&img.backing),
        "--json",
    ]));
    assert_eq!(again["dirty_blocks_before"], 0);
    assert_eq!(again["bytes_written_back"], 0);
    assert_same(
        &read_file(&img.backing),
        &img.model,
        "backing after second writeback",
    );
    assert_eq!(wb(&["check", p(&img.cache), "--all"]).code, 0);
}

#[test]
fn interrupted_writeback_converges_on_rerun() {
    let img = default_image("interrupted");
    // A writeback that stopped part-way: two small batches done and recorded by the engine,
    // then blocks of the next batch half-written to the backing device before the stop.
    let (_, scan0) = scan(&img.cache);
    let rt = LocalRuntime::new();
    let c = FileDevice::open(&img.cache, true).unwrap();
    let b = FileDevice::open(&img.backing, true).unwrap();
    let r = rt.clone();
    rt.block_on(async move {
        let mut opts = CreateOptions::default();
        opts.options.nr_max_batched_writeback = 2;
        let (vol, _) = Volume::create(c, b, r.clone(), opts).await.expect("resume");
        for _ in 0..2 {
            let before = vol.status().last_writeback_id;
            vol.set_option("writeback_threshold", 100).unwrap();
            assert!(vol.poll_writeback(), "a batch starts");
            // No batch after this one.
            vol.set_option("writeback_threshold", 0).unwrap();
            while vol.status().last_writeback_id == before {
                r.sleep(1_000_000).await;
            }
        }
        // Stopped: dropped without shutdown.
    });
    drop(rt);
    let (_, scan1) = scan(&img.cache);
    assert_eq!(
        scan1.last_writeback_id, 4,
        "two recorded batches of two segments"
    );
    let mut garbage = 0;
    for s in scan0.segments.iter().filter(|s| s.header.id > 4).take(2) {
        for e in s.header.entries.iter().filter(|e| e.dirty_bits != 0) {
            use std::os::unix::fs::FileExt;
            // A dirty sector: one the rerun must write again.
            let sector = e.dirty_bits.trailing_zeros() as u64;
            let off = e.backing_block * BLOCK as u64 + sector * SECTOR as u64;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&img.backing)
                .unwrap();
            f.write_all_at(&[0xee; SECTOR], off).unwrap();
            garbage += 1;
        }
    }
    assert!(garbage > 0);
    let partial = read_file(&img.backing);
    assert!(partial != img.model && partial != img.original);
    let status = json(&wb(&["status", p(&img.cache), "--json"]));
    assert!(status["dirty_blocks"].as_u64().unwrap() < img.dirty_blocks);
    let r = wb(&[
        "writeback",
        "--cache",
        p(&img.cache),
        "--backing",
        p(&img.backing),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&read_file(&img.backing), &img.model, "backing after rerun");
}

#[test]
fn killed_writeback_converges_on_rerun() {
    let img = crashed_image("killed", 64, 64, 2500, 0xdead);
    let mut child = Command::new(env!("CARGO_BIN_EXE_writeboost"))
        .args([
            "writeback",
            "--cache",
            p(&img.cache),
            "--backing",
            p(&img.backing),
        ])
        .arg("--batch-segments=1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the first batch is recorded (or let it finish, if it is that fast).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut killed = false;
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        let (_, scan) = scan(&img.cache);
        if scan.record.is_some_and(|r| r.last_writeback_id > 0) {
            child.kill().unwrap();
            killed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.wait().unwrap();
    if killed {
        let s = json(&wb(&["status", p(&img.cache), "--json"]));
        println!(
            "killed with {} of {} dirty blocks left",
            s["dirty_blocks"], img.dirty_blocks
        );
    }
    let r = wb(&[
        "writeback",
        "--cache",
        p(&img.cache),
        "--backing",
        p(&img.backing),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(
        &read_file(&img.backing),
        &img.model,
        "backing after kill and rerun",
    );
    assert_eq!(
        json(&wb(&["status", p(&img.cache), "--json"]))["dirty_blocks"],
        0
    );
}

#[test]
fn dump_shows_the_newest_copy_of_a_block() {
    let img = default_image("dump");
    let (sb, scan) = scan(&img.cache);
    let head = scan.segments.last().unwrap();
    let (j, e) = head
        .header
        .entries
        .iter()
        .enumerate()
        .find(|(_, e)| e.valid_bits == 0xff)
        .expect("a fully valid block in the head segment");
    let (id, jj) = (head.header.id.to_string(), j.to_string());
    let raw = wb(&[
        "dump",
        p(&img.cache),
        "--segment",
        &id,
        "--block",
        &jj,
        "--raw",
    ]);
    assert_eq!(raw.code, 0, "{}", raw.stderr);
    let at = e.backing_block as usize * BLOCK;
    assert_eq!(
        raw.raw,
        img.model[at..at + BLOCK].to_vec(),
        "cached block = newest data written"
    );
    let hex = wb(&["dump", p(&img.cache), "--segment", &id, "--block", &jj]);
    assert!(hex.stdout.starts_with(&format!(
        "# segment {id} (slot {}) block {j}: backing block {} (byte {at}), valid 0xff",
        head.slot, e.backing_block
    )));
    let first = format!("{at:08x}  {:02x} {:02x}", img.model[at], img.model[at + 1]);
    assert!(hex.stdout.contains(&first), "want {first}\n{}", hex.stdout);
    assert!(hex.stdout.contains(": ok;"));
    let v = json(&wb(&[
        "dump",
        p(&img.cache),
        "--segment",
        &id,
        "--block",
        &jj,
        "--json",
    ]));
    let data_hex: String = img.model[at..at + BLOCK]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v["data_hex"], data_hex);
    assert_eq!(
        v["device_offset_bytes"],
        sb.geometry.data_block_offset_bytes(head.slot, j as u32)
    );
    // Out of range: usage error; a segment id the device does not hold: not found.
    let n = head.header.entries.len().to_string();
    assert_eq!(
        wb(&["dump", p(&img.cache), "--segment", &id, "--block", &n]).code,
        2
    );
    let beyond = (scan.head_id + 1).to_string();
    let nf = wb(&["dump", p(&img.cache), "--segment", &beyond, "--block", "0"]);
    assert_eq!(nf.code, 3);
    assert!(
        nf.stderr
            .contains(&format!("segment {beyond} is not on the device")),
        "{}",
        nf.stderr
    );
    let cnf = wb(&["check", p(&img.cache), "--segment", &beyond]);
    assert_eq!(cnf.code, 3, "{}{}", cnf.stdout, cnf.stderr);
    assert!(
        cnf.stderr.contains("holds no segment (all-zero header)"),
        "{}",
        cnf.stderr
    );
}

#[test]
fn meta_shows_superblock_records_and_segment_entries() {
    let img = default_image("meta");
    let (sb, scan) = scan(&img.cache);
    let v = json(&wb(&["meta", p(&img.cache), "--json"]));
    assert_eq!(v["superblock"]["nr_segments"], sb.geometry.nr_segments);
    assert_eq!(
        v["superblock"]["format_uuid"],
        "11111111-1111-1111-1111-111111111111"
    );
    assert_eq!(v["superblock"]["backing_size_bytes"], 16u64 << 20);
    assert_eq!(v["records"][0]["state"], "zero");
    assert_eq!(v["records"][1]["state"], "zero");
    let seg = &scan.segments[1];
    let s = json(&wb(&[
        "meta",
        p(&img.cache),
        "--segment",
        &seg.header.id.to_string(),
        "--json",
    ]));
    assert_eq!(s["state"], "valid");
    assert_eq!(s["slot"], seg.slot);
    assert_eq!(s["header"]["id"], seg.header.id);
    assert_eq!(
        s["header"]["prev_header_crc"],
        scan.segments[0].header.header_crc
    );
    let entries = s["header"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), seg.header.entries.len());
    for (got, e) in entries.iter().zip(&seg.header.entries) {
        assert_eq!(got["backing_block"], e.backing_block);
        assert_eq!(got["data_crc"], e.data_crc);
        assert_eq!(got["valid_bits"], e.valid_bits);
        assert_eq!(got["dirty_bits"], e.dirty_bits);
    }
    let h = wb(&[
        "meta",
        p(&img.cache),
        "--segment",
        &seg.header.id.to_string(),
    ]);
    assert!(h.stdout.starts_with(&format!(
        "segment {} in slot {} (byte {}): header CRC {:#010x} valid\n",
        seg.header.id,
        seg.slot,
        sb.geometry.slot_offset_bytes(seg.slot),
        seg.header.header_crc
    )));
    let human = wb(&["meta", p(&img.cache)]);
    assert!(human
        .stdout
        .contains("record copy 0 (byte 4096): zero (never written)"));
}

#[test]
fn errors_are_one_line_with_distinct_exit_statuses() {
    let dir = TempDir::new("errors");
    // Missing file.
    let r = wb(&["status", p(&dir.path("nope"))]);
    assert_eq!(r.code, 3);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("No such file"), "{}", r.stderr);
    // All zero: not a writeboost cache; writeback must not format it.
    let (cache, backing) = (dir.path("cache"), dir.path("backing"));
    fill_file(&cache, &vec![0u8; 8 << 20]);
    fill_file(&backing, &vec![0u8; 8 << 20]);
    for args in [
        vec!["status", p(&cache)],
        vec!["check", p(&cache)],
        vec!["writeback", "--cache", p(&cache), "--backing", p(&backing)],
    ] {
        let r = wb(&args);
        assert_eq!(r.code, 4, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("not a writeboost cache: all bytes are zero"),
            "{}",
            r.stderr
        );
    }
    assert!(
        read_file(&cache).iter().all(|&b| b == 0),
        "writeback formatted a zero cache"
    );
    // Other data.
    let mut junk = vec![0u8; 8 << 20];
    junk[..5].copy_from_slice(b"hello");
    fill_file(&cache, &junk);
    assert_eq!(wb(&["meta", p(&cache)]).code, 4);
    // Format refuses the junk without --force.
    let f = wb(&["format", p(&cache), "--backing", p(&backing)]);
    assert_eq!(f.code, 7, "{}", f.stderr);
    assert!(
        f.stderr.contains("not a writeboost superblock"),
        "{}",
        f.stderr
    );
    // Bad arguments.
    assert_eq!(
        wb(&["format", p(&cache)]).code,
        2,
        "backing identity is required"
    );
    let seg = wb(&[
        "format",
        p(&cache),
        "--backing-size-bytes",
        "1048576",
        "--segment-size-kib",
        "100",
        "--force",
    ]);
    assert_eq!(seg.code, 2, "{}", seg.stderr);
    assert_eq!(wb(&["check", p(&cache), "--all", "--segment", "1"]).code, 2);
    assert_eq!(wb::<&str>(&[]).code, 2);
    // Formatted for 8 MiB: a 4 MiB backing file is the wrong device.
    let f = wb(&["format", p(&cache), "--backing", p(&backing), "--force"]);
    assert_eq!(f.code, 0, "{}", f.stderr);
    let small = dir.path("small");
    fill_file(&small, &vec![0u8; 4 << 20]);
    let w = wb(&["writeback", "--cache", p(&cache), "--backing", p(&small)]);
    assert_eq!(w.code, 5, "{}", w.stderr);
    assert!(
        w.stderr
            .contains("formatted for a different backing device"),
        "{}",
        w.stderr
    );
    // A newer major version.
    let dev = FileDevice::open(&cache, false).unwrap();
    let mut sb = futures::executor::block_on(read_superblock(&dev))
        .unwrap()
        .unwrap();
    drop(dev);
    sb.version_major = 2;
    let mut img = read_file(&cache);
    img[..BLOCK].copy_from_slice(&sb.encode());
    fill_file(&cache, &img);
    let v = wb(&["status", p(&cache)]);
    assert_eq!(v.code, 6, "{}", v.stderr);
    assert!(
        v.stderr
            .contains("format version 2.0 is newer than this build"),
        "{}",
        v.stderr
    );
}

#[test]
fn format_refuses_dirty_data_unless_forced() {
    let img = default_image("format");
    let r = wb(&["format", p(&img.cache), "--backing", p(&img.backing)]);
    assert_eq!(r.code, 7);
    assert!(
        r.stderr.contains(&format!(
            "the cache holds {} dirty blocks ({} bytes) not yet written back",
            img.dirty_blocks, img.dirty_bytes
        )),
        "{}",
        r.stderr
    );
    let f = wb(&[
        "format",
        p(&img.cache),
        "--backing-size-bytes",
        &(16u64 << 20).to_string(),
        "--segment-size-kib",
        "64",
        "--force",
        "--json",
    ]);
    assert_eq!(f.code, 0, "{}", f.stderr);
    let v = json(&f);
    assert_eq!(v["segment_size_bytes"], 64 * 1024);
    assert_ne!(v["format_uuid"], "11111111-1111-1111-1111-111111111111");
    let s = json(&wb(&["status", p(&img.cache), "--json"]));
    assert_eq!(s["dirty_blocks"], 0);
    assert_eq!(s["head_id"], 0);
    // The old segments remain, as another format's: check counts them and passes.
    let c = json(&wb(&["check", p(&img.cache), "--all", "--json"]));
    assert_eq!(c["errors"].as_array().unwrap().len(), 0, "{c}");
    // A clean format may be formatted again without --force.
    assert_eq!(
        wb(&["format", p(&img.cache), "--backing", p(&img.backing)]).code,
        0
    );
    let _ = &img.dir;
}

/// Not a timed test: prints the rescue throughput on a file pair. Run with
/// `cargo test --release --test cli -- --ignored --nocapture writeback_throughput`.
#[test]
#[ignore]
fn writeback_throughput() {
    let dir = TempDir::new("throughput");
    let (cache, backing) = (dir.path("cache"), dir.path("backing"));
    let cache_mib = 256u64;
    let backing_bytes = 1u64 << 30;
    fill_file(&cache, &vec![0u8; (cache_mib << 20) as usize]);
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(backing_bytes)
        .unwrap();
    // 160 MiB of 4 KiB writes at random block offsets: the hardest case for coalescing.
    let nr_blocks = (160u64 << 20) / BLOCK as u64;
    let rt = LocalRuntime::new();
    let c = FileDevice::open(&cache, true).unwrap();
    let b = FileDevice::open(&backing, true).unwrap();
    let r = rt.clone();
    rt.block_on(async move {
        let mut opts = CreateOptions::default();
        opts.options.writeback_threshold = 0;
        let (vol, _) = Volume::create(c, b, r, opts).await.unwrap();
        let mut rng = Rng(7);
        let data = vec![0x3cu8; BLOCK];
        for _ in 0..nr_blocks {
            let block = rng.below(backing_bytes / BLOCK as u64);
            vol.write(block * 8, &data, false).await.unwrap();
            YieldNow(false).await;
        }
        vol.flush().await.unwrap();
    });
    drop(rt);
    let st = json(&wb(&["status", p(&cache), "--json"]));
    let r = wb(&[
        "writeback",
        "--cache",
        p(&cache),
        "--backing",
        p(&backing),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&r);
    println!(
        "writeback_throughput: {} dirty blocks ({:.1} MiB) written back in {:.2} s: {:.1} MiB/s (replay {:.2} s)",
        st["dirty_blocks"],
        v["bytes_written_back"].as_f64().unwrap() / (1 << 20) as f64,
        v["writeback_seconds"].as_f64().unwrap(),
        v["mib_per_s"].as_f64().unwrap(),
        v["replay_seconds"].as_f64().unwrap()
    );
}
