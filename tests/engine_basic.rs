//! Engine behaviours over in-memory devices (dm-writeboost section 8 where it applies).

use std::rc::Rc;
use writeboost::device::mem::MemDevice;
use writeboost::device::{BlockDevice, IoBuf, IoBufMut, IoResult};
use writeboost::engine::stats::stat_index;
use writeboost::engine::{CreateError, CreateOptions, Startup, Volume};
use writeboost::runtime::LocalRuntime;

/// The volume runs over shared handles: the test keeps one to inspect the device.
type Shared = Rc<MemDevice>;

fn devs(cache_mib: u64, backing_mib: u64) -> (Rc<MemDevice>, Rc<MemDevice>) {
    (
        Rc::new(MemDevice::new("cache", cache_mib << 20)),
        Rc::new(MemDevice::new("backing", backing_mib << 20)),
    )
}

type Vol = Volume<Shared, LocalRuntime>;

fn create(
    rt: &LocalRuntime,
    c: &Rc<MemDevice>,
    b: &Rc<MemDevice>,
    opts: CreateOptions,
) -> (Vol, Startup) {
    let (c, b, r) = (c.clone(), b.clone(), rt.clone());
    rt.block_on(async move { Volume::create(c, b, r, opts).await.expect("create") })
}

#[test]
fn stat_purity_one_write_then_read_moves_two_counters() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(8, 32);
    let (vol, startup) = create(&rt, &c, &b, CreateOptions::default());
    assert_eq!(startup, Startup::Formatted);
    vol.clear_stats();
    let v = vol.clone();
    let data = vec![0xabu8; 4096];
    let got = rt.block_on(async move {
        v.write(0, &data, false).await.unwrap();
        let mut out = vec![0u8; 4096];
        v.read(0, &mut out).await.unwrap();
        out
    });
    assert!(got.iter().all(|&x| x == 0xab));
    let st = vol.status().counters.stat;
    for (i, n) in st.iter().enumerate() {
        let expect = if i == stat_index(true, false, false, true)
            || i == stat_index(false, true, true, true)
        {
            1
        } else {
            0
        };
        assert_eq!(*n, expect, "counter {i}");
    }
}

#[test]
fn data_survives_clean_restart_and_drop_caches_drains_to_backing() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(8, 32);
    let (vol, _) = create(&rt, &c, &b, CreateOptions::default());
    let v = vol.clone();
    rt.block_on(async move {
        for i in 0..3000u64 {
            let data = vec![(i % 251) as u8; 4096];
            v.write((i * 7919 % 8000) * 8, &data, false).await.unwrap();
        }
        v.shutdown().await.unwrap();
    });
    drop(vol);
    let (vol, startup) = create(&rt, &c, &b, CreateOptions::default());
    assert_eq!(startup, Startup::Resumed);
    vol.check_invariants();
    let v = vol.clone();
    rt.block_on(async move {
        let mut out = vec![0u8; 4096];
        for i in 2000..3000u64 {
            v.read((i * 7919 % 8000) * 8, &mut out).await.unwrap();
            assert!(out.iter().all(|&x| x == (i % 251) as u8), "block {i}");
        }
        v.drop_caches().await.unwrap();
    });
    assert_eq!(vol.status().nr_dirty_cache_blocks, 0);
    let snap = b.snapshot();
    for i in 2000..3000u64 {
        let off = ((i * 7919 % 8000) * 4096) as usize;
        assert!(
            snap[off..off + 4096].iter().all(|&x| x == (i % 251) as u8),
            "backing block {i}"
        );
    }
    vol.check_invariants();
}

async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

fn run<T: 'static>(rt: &LocalRuntime, f: impl std::future::Future<Output = T> + 'static) -> T {
    rt.block_on(f)
}

const K: usize = 5; // stat_index(false, true, false, true): read, hit, not on buffer, fullsize
const K_PARTIAL: usize = 4;

/// dm-writeboost's read-caching pattern: read `read_kib`, skip `skip_kib`, over `total_mib`.
fn pattern_reads(rt: &LocalRuntime, vol: &Vol, read_kib: u64, skip_kib: u64, total_mib: u64) {
    let v = vol.clone();
    run(rt, async move {
        let mut buf = vec![0u8; (read_kib * 1024) as usize];
        let mut off_kib = 0;
        while off_kib + read_kib <= total_mib * 1024 {
            v.read(off_kib * 2, &mut buf).await.unwrap();
            off_kib += read_kib + skip_kib;
            // In-memory devices complete at once: let the segment writes run, as they would
            // between the completions of a real device.
            yield_now().await;
        }
    });
}

/// "drop_transient": seal the RAM buffer so staged blocks are no longer on the buffer.
fn drop_transient(rt: &LocalRuntime, vol: &Vol) {
    let v = vol.clone();
    run(rt, async move { v.flush().await.unwrap() });
}

fn with_threshold(t: u64) -> CreateOptions {
    let mut o = CreateOptions::default();
    o.options.read_cache_threshold = t;
    o
}

#[test]
fn read_caching_disabled_never_hits() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(32, 1024);
    let (vol, _) = create(&rt, &c, &b, with_threshold(0));
    pattern_reads(&rt, &vol, 4, 4, 16);
    drop_transient(&rt, &vol);
    vol.clear_stats();
    pattern_reads(&rt, &vol, 4, 4, 16);
    assert_eq!(vol.status().counters.stat[K], 0);
}

#[test]
fn read_caching_enabled_hits_on_second_pass() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(32, 1024);
    let (vol, _) = create(&rt, &c, &b, with_threshold(1));
    vol.clear_stats();
    pattern_reads(&rt, &vol, 4, 4, 16);
    assert_eq!(vol.status().counters.stat[K], 0);
    assert_eq!(vol.status().counters.staged_blocks, 2048);
    drop_transient(&rt, &vol);
    vol.clear_stats();
    pattern_reads(&rt, &vol, 4, 4, 16);
    assert_eq!(vol.status().counters.stat[K], 2048);
}

#[test]
fn read_caching_threshold_127_skips_long_runs() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(32, 1024);
    let (vol, _) = create(&rt, &c, &b, with_threshold(127));
    pattern_reads(&rt, &vol, 1024, 1024, 24);
    drop_transient(&rt, &vol);
    vol.clear_stats();
    pattern_reads(&rt, &vol, 1024, 1024, 24);
    assert!(vol.status().counters.stat[K] < 128);
    assert_eq!(vol.status().counters.staged_blocks, 0);
}

#[test]
fn read_caching_threshold_1_skips_runs_of_two() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(32, 1024);
    let (vol, _) = create(&rt, &c, &b, with_threshold(1));
    pattern_reads(&rt, &vol, 8, 8, 24);
    drop_transient(&rt, &vol);
    vol.clear_stats();
    pattern_reads(&rt, &vol, 8, 8, 24);
    assert!(vol.status().counters.stat[K] < 2);
}

#[test]
fn read_caching_never_stages_partial_reads() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(32, 1024);
    let (vol, _) = create(&rt, &c, &b, with_threshold(127));
    pattern_reads(&rt, &vol, 3, 5, 16);
    drop_transient(&rt, &vol);
    vol.clear_stats();
    pattern_reads(&rt, &vol, 3, 5, 16);
    let st = vol.status().counters.stat;
    assert_eq!((st[K], st[K_PARTIAL]), (0, 0));
}

#[test]
fn drop_caches_on_clean_volume_leaves_stats_unchanged() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(32, 256);
    let (vol, _) = create(&rt, &c, &b, CreateOptions::default());
    vol.clear_stats();
    let v = vol.clone();
    run(&rt, async move { v.drop_caches().await.unwrap() });
    assert_eq!(vol.status().counters.stat, [0; 16]);
}

#[test]
fn rw_1_sector_50_mib_and_200_mib_through_a_100_mib_cache() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(100, 500);
    let (vol, _) = create(&rt, &c, &b, CreateOptions::default());
    for len_bytes in [512usize, 50 << 20, 200 << 20] {
        let v = vol.clone();
        let ok = run(&rt, async move {
            let data = vec![0x01u8; len_bytes];
            // Large I/O is submitted in 1 MiB requests, as O_DIRECT would.
            for (i, chunk) in data.chunks(1 << 20).enumerate() {
                v.write((i << 11) as u64, chunk, false).await.unwrap();
            }
            let mut out = vec![0u8; len_bytes];
            for (i, chunk) in out.chunks_mut(1 << 20).enumerate() {
                v.read((i << 11) as u64, chunk).await.unwrap();
            }
            out == data
        });
        assert!(ok, "{len_bytes} bytes read back differently");
    }
    assert!(
        vol.status().counters.writeback_batches > 0,
        "200 MiB through 100 MiB must write back"
    );
    vol.check_invariants();
}

#[test]
fn empty_flush_writes_no_segment() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(16, 64);
    let (vol, _) = create(&rt, &c, &b, CreateOptions::default());
    let v = vol.clone();
    run(&rt, async move {
        v.write(0, &[7u8; 4096], false).await.unwrap();
        v.flush().await.unwrap();
    });
    let segs = vol.status().counters.segments_written;
    assert_eq!(segs, 1);
    let written = c.bytes_written.get();
    let v = vol.clone();
    run(&rt, async move {
        v.flush().await.unwrap();
        v.flush().await.unwrap();
    });
    assert_eq!(vol.status().counters.segments_written, segs);
    assert_eq!(
        c.bytes_written.get(),
        written,
        "an empty FLUSH wrote to the cache"
    );
}

#[test]
fn discard_invalidates_and_write_zeroes_reads_zero() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(16, 64);
    let (vol, _) = create(&rt, &c, &b, CreateOptions::default());
    let v = vol.clone();
    let (after_discard, after_zeroes) = run(&rt, async move {
        v.write(0, &vec![9u8; 16384], false).await.unwrap();
        v.discard(0, 16).await.unwrap();
        let mut a = vec![0u8; 8192];
        v.read(0, &mut a).await.unwrap();
        v.write_zeroes(16, 16, false).await.unwrap();
        let mut z = vec![1u8; 8192];
        v.read(16, &mut z).await.unwrap();
        (a, z)
    });
    // Discarded blocks are no longer cached: the (never written) backing device answers.
    assert!(after_discard.iter().all(|&x| x == 0));
    assert!(after_zeroes.iter().all(|&x| x == 0));
    assert_eq!(vol.status().nr_dirty_cache_blocks, 2);
}

#[test]
fn partial_writes_merge_with_older_copies() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(16, 64);
    let (vol, _) = create(&rt, &c, &b, CreateOptions::default());
    let v = vol.clone();
    let out = run(&rt, async move {
        v.write(0, &[1u8; 4096], false).await.unwrap();
        v.flush().await.unwrap(); // the first copy is now on the cache device
        v.write(3, &[2u8; 1024], false).await.unwrap(); // sectors 3 and 4 of block 0
        let mut out = vec![0u8; 4096];
        v.read(0, &mut out).await.unwrap();
        out
    });
    for (s, chunk) in out.chunks(512).enumerate() {
        let want = if s == 3 || s == 4 { 2 } else { 1 };
        assert!(chunk.iter().all(|&x| x == want), "sector {s}");
    }
}

#[test]
fn write_around_writes_reach_the_backing_device_at_once() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(16, 64);
    let mut o = CreateOptions::default();
    o.options.write_around_mode = true;
    let (vol, _) = create(&rt, &c, &b, o);
    let v = vol.clone();
    run(&rt, async move {
        v.write(8, &[5u8; 4096], false).await.unwrap()
    });
    assert!(b.snapshot()[4096..8192].iter().all(|&x| x == 5));
    assert_eq!(vol.status().nr_dirty_cache_blocks, 0);
}

#[test]
fn create_refuses_garbage_wrong_backing_and_changed_geometry_without_writing() {
    use writeboost::engine::CreateError;
    let rt = LocalRuntime::new();
    let (c, b) = devs(16, 64);
    // Garbage in block 0.
    let garbage = Rc::new(MemDevice::new("cache", 16 << 20));
    {
        let g = garbage.clone();
        run(&rt, async move {
            g.write(0, vec![0xeeu8; 4096]).await.1.unwrap()
        });
    }
    let before = garbage.snapshot();
    let (g, bb, r) = (garbage.clone(), b.clone(), rt.clone());
    let e = run(&rt, async move {
        Volume::create(g, bb, r, CreateOptions::default())
            .await
            .err()
    });
    assert!(
        matches!(e, Some(CreateError::NotWriteboost { .. })),
        "{e:?}"
    );
    assert!(
        garbage.snapshot() == before,
        "a refused create wrote to the cache"
    );
    // A valid cache paired with another backing device.
    let (vol, _) = create(&rt, &c, &b, CreateOptions::default());
    drop(vol);
    let other = Rc::new(MemDevice::new("other", 128 << 20));
    let before = c.snapshot();
    let (cc, oo, r) = (c.clone(), other, rt.clone());
    let e = run(&rt, async move {
        Volume::create(cc, oo, r, CreateOptions::default())
            .await
            .err()
    });
    assert!(matches!(e, Some(CreateError::WrongBacking { .. })), "{e:?}");
    // A changed segment size.
    let o = CreateOptions {
        segment_size_kib: Some(256),
        ..CreateOptions::default()
    };
    let (cc, bb, r) = (c.clone(), b.clone(), rt.clone());
    let e = run(&rt, async move { Volume::create(cc, bb, r, o).await.err() });
    assert!(
        matches!(e, Some(CreateError::GeometryChanged { .. })),
        "{e:?}"
    );
    assert!(
        c.snapshot() == before,
        "a refused create wrote to the cache"
    );
}

#[test]
fn replay_of_a_full_cache_reads_under_two_percent_of_it() {
    // Replay reads every slot's header block (1/128 of the device with 512 KiB segments) and the
    // data of the few newest segments no header proves durable (at most the RAM buffers' worth).
    let rt = LocalRuntime::new();
    let (c, b) = devs(1024, 8192);
    let mut o = CreateOptions::default();
    o.options.writeback_threshold = 0;
    let (vol, _) = create(&rt, &c, &b, o.clone());
    let n = vol.status().nr_cache_blocks * 7 / 10;
    let v = vol.clone();
    run(&rt, async move {
        for i in 0..n {
            v.write((i * 7 % (1 << 20)) * 8, &[3u8; 4096], false)
                .await
                .unwrap();
        }
        v.flush().await.unwrap();
    });
    let dirty = vol.status().nr_dirty_cache_blocks;
    drop(vol); // no shutdown: a crash
    let before = c.bytes_read.get();
    let (vol, _) = create(&rt, &c, &b, o);
    let read = c.bytes_read.get() - before;
    assert_eq!(vol.status().nr_dirty_cache_blocks, dirty);
    let share = read as f64 / (1024u64 << 20) as f64;
    assert!(
        share < 0.02,
        "replay read {read} bytes ({:.2} %)",
        share * 100.0
    );
}

#[test]
fn set_option_errors_name_the_key_and_range() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(16, 64);
    let (vol, _) = create(&rt, &c, &b, CreateOptions::default());
    let e = vol
        .set_option("nr_max_batched_writeback", 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nr_max_batched_writeback") && e.contains("1..=256"),
        "{e}"
    );
    assert!(vol.set_option("write_around_mode", 1).is_err());
    vol.set_option("writeback_threshold", 40).unwrap();
    assert_eq!(vol.options().writeback_threshold, 40);
}

#[test]
fn large_segments_with_several_header_blocks_replay() {
    // 4 MiB segments: 4 header blocks, 1020 data blocks each.
    let rt = LocalRuntime::new();
    let (c, b) = devs(64, 256);
    let o = CreateOptions {
        segment_size_kib: Some(4096),
        ..CreateOptions::default()
    };
    let (vol, _) = create(&rt, &c, &b, o.clone());
    assert_eq!(vol.superblock().geometry.header_blocks, 4);
    let v = vol.clone();
    run(&rt, async move {
        for i in 0..3000u64 {
            v.write(i * 8, &[(i % 200) as u8 + 1; 4096], false)
                .await
                .unwrap();
            yield_now().await;
        }
        v.flush().await.unwrap();
    });
    drop(vol); // crash
    let (vol, _) = create(&rt, &c, &b, o);
    vol.check_invariants();
    let v = vol.clone();
    let ok = run(&rt, async move {
        let mut out = vec![0u8; 4096];
        for i in 0..3000u64 {
            v.read(i * 8, &mut out).await.unwrap();
            if out.iter().any(|&x| x != (i % 200) as u8 + 1) {
                return Some(i);
            }
        }
        v.drop_caches().await.unwrap();
        None
    });
    assert_eq!(ok, None, "block read back wrong after replay");
    assert_eq!(vol.status().nr_dirty_cache_blocks, 0);
}

#[test]
fn unbound_format_binds_to_the_first_backing_device_with_its_geometry() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(16, 64);
    {
        let cc = c.clone();
        run(&rt, async move {
            writeboost::engine::format_cache(&cc, None, 64, [9; 16])
                .await
                .unwrap();
        });
    }
    let (vol, startup) = create(&rt, &c, &b, CreateOptions::default());
    assert_eq!(startup, Startup::Formatted);
    let sb = vol.superblock();
    assert_eq!(
        sb.geometry.segment_size_bytes,
        64 * 1024,
        "geometry of the format kept"
    );
    assert_eq!(sb.format_uuid, [9; 16]);
    assert_eq!(
        sb.backing_size_bytes,
        64 << 20,
        "bound to the backing device"
    );
    assert_eq!(sb.flags, 0);
    drop(vol);
    // Now bound: another backing device is refused.
    let other = Rc::new(MemDevice::new("other", 128 << 20));
    let (cc, oo, r) = (c.clone(), other, rt.clone());
    let e = run(&rt, async move {
        Volume::create(cc, oo, r, CreateOptions::default())
            .await
            .err()
    });
    assert!(
        matches!(
            e,
            Some(writeboost::engine::CreateError::WrongBacking { .. })
        ),
        "{e:?}"
    );
}

#[test]
fn sequential_cutoff_sends_long_uncached_streams_to_the_backing_device_once_half_dirty() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(64, 256);
    let mut o = CreateOptions::default();
    o.options.sequential_cutoff_kib = 64;
    o.options.sequential_cutoff_min_io_kib = 0;
    let (vol, _) = create(&rt, &c, &b, o);
    let nr_cache_blocks = vol.status().nr_cache_blocks;
    // Less than half dirty: a long stream is cached like any write.
    let v = vol.clone();
    run(&rt, async move {
        for i in 0..64u64 {
            v.write(i * 8, &[1u8; 4096], false).await.unwrap();
        }
    });
    assert_eq!(vol.status().counters.bytes_bypassed, 0);
    // Dirty more than half of the cache with writes that form no stream (stride of 2 blocks).
    let v = vol.clone();
    let n = nr_cache_blocks * 6 / 10;
    run(&rt, async move {
        for i in 0..n {
            v.write(8 * (2048 + 2 * i), &[2u8; 4096], false)
                .await
                .unwrap();
        }
    });
    assert!(vol.status().nr_dirty_cache_blocks * 2 >= nr_cache_blocks);
    assert_eq!(vol.status().counters.bytes_bypassed, 0);
    // A 256 KiB stream over uncached blocks: what comes after the first 64 KiB bypasses.
    let base_block = 40_000u64;
    let v = vol.clone();
    run(&rt, async move {
        for i in 0..64u64 {
            v.write((base_block + i) * 8, &[3u8; 4096], false)
                .await
                .unwrap();
        }
    });
    assert_eq!(vol.status().counters.bytes_bypassed, 48 * 4096);
    let snap = b.snapshot();
    let block = |k: u64| &snap[(k * 4096) as usize..((k + 1) * 4096) as usize];
    assert!(
        block(base_block + 15).iter().all(|&x| x == 0),
        "cached part"
    );
    assert!((16..64).all(|i| block(base_block + i).iter().all(|&x| x == 3)));
    let v = vol.clone();
    let all = run(&rt, async move {
        let mut out = vec![0u8; 64 * 4096];
        v.read(base_block * 8, &mut out).await.unwrap();
        out
    });
    assert!(all.iter().all(|&x| x == 3), "the stream reads back whole");
    // A stream over cached blocks goes to the log (an older cached copy must not win later).
    let v = vol.clone();
    run(&rt, async move {
        for i in 0..64u64 {
            v.write(i * 8, &[4u8; 4096], false).await.unwrap();
        }
    });
    assert_eq!(vol.status().counters.bytes_bypassed, 48 * 4096);
    // Discarded blocks whose copy is still in the live log are not bypassed either: replay
    // could map that copy again.
    let v = vol.clone();
    run(&rt, async move {
        v.discard(0, 64 * 8).await.unwrap();
        for i in 0..64u64 {
            v.write(i * 8, &[5u8; 4096], false).await.unwrap();
        }
    });
    assert_eq!(vol.status().counters.bytes_bypassed, 48 * 4096);
}

/// Issue 15, defect 2: a write-around volume drops a staged copy only in RAM when it writes the
/// block; a later create in write-back mode must not map that stale copy again.
#[test]
fn write_back_resume_of_a_write_around_cache_never_maps_stale_staged_copies() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(16, 64);
    let mut o = CreateOptions::default();
    o.options.write_around_mode = true;
    o.options.read_cache_threshold = 8;
    let (vol, _) = create(&rt, &c, &b, o);
    let v = vol.clone();
    run(&rt, async move {
        v.write(0, &[1u8; 4096], false).await.unwrap();
        v.flush().await.unwrap();
        let mut out = vec![0u8; 4096];
        v.read(0, &mut out).await.unwrap();
        assert!(out.iter().all(|&x| x == 1));
        yield_now().await;
        // The staged copy becomes durable on the cache.
        v.flush().await.unwrap();
        v.write(0, &[2u8; 4096], true).await.unwrap();
        v.shutdown().await.unwrap();
    });
    assert!(
        vol.status().counters.staged_blocks >= 1,
        "the read did not stage"
    );
    drop(vol);
    let (vol, startup) = create(&rt, &c, &b, CreateOptions::default());
    let v = vol.clone();
    let got = run(&rt, async move {
        let mut out = vec![0u8; 4096];
        v.read(0, &mut out).await.unwrap();
        out
    });
    assert!(got.iter().all(|&x| x == 2), "stale staged copy read back");
    assert_eq!(
        startup,
        Startup::Formatted,
        "read-cache-only cache not re-formatted"
    );
}

/// A device whose reads of one byte range fail.
struct FailReads {
    dev: Rc<MemDevice>,
    bad: std::ops::Range<u64>,
}
impl BlockDevice for FailReads {
    fn info(&self) -> writeboost::device::DeviceInfo {
        self.dev.info()
    }
    async fn read<B: IoBufMut>(&self, o: u64, b: B) -> IoResult<B> {
        let len = b.bytes().len() as u64;
        if o < self.bad.end && o + len > self.bad.start {
            let e = writeboost::device::DeviceError::Io {
                op: writeboost::device::DeviceOp::Read,
                offset_bytes: o,
                len_bytes: len,
            };
            return (b, Err(e));
        }
        self.dev.read(o, b).await
    }
    async fn write<B: IoBuf>(&self, o: u64, b: B) -> IoResult<B> {
        self.dev.write(o, b).await
    }
    async fn flush(&self) -> Result<(), writeboost::device::DeviceError> {
        self.dev.flush().await
    }
    async fn discard(&self, o: u64, l: u64) -> Result<(), writeboost::device::DeviceError> {
        self.dev.discard(o, l).await
    }
}

/// Issue 15, defect 4: an unreadable header of a slot outside the live log (and an unreadable
/// record copy) is missing, not fatal: create resumes and every block reads back.
#[test]
fn replay_treats_unreadable_headers_and_record_copies_as_missing() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(8, 32);
    let o = CreateOptions {
        segment_size_kib: Some(64),
        ..CreateOptions::default()
    };
    let (vol, _) = create(&rt, &c, &b, o.clone());
    let geo = vol.superblock().geometry;
    let v = vol.clone();
    run(&rt, async move {
        for blk in 0..20u64 {
            v.write(blk * 8, &[blk as u8 + 1; 4096], false)
                .await
                .unwrap();
        }
        v.shutdown().await.unwrap();
    });
    drop(vol);
    // The last slot was never written (its header is zero); make its header and the first
    // record copy unreadable.
    let last = geo.slot_offset_bytes(geo.nr_segments - 1);
    for bad in [
        last..last + 4096,
        writeboost::format::RECORD_OFFSETS_BYTES[0]
            ..writeboost::format::RECORD_OFFSETS_BYTES[0] + 4096,
    ] {
        let cache = FailReads {
            dev: c.clone(),
            bad,
        };
        let (vol, startup) = rt
            .block_on(Volume::create(
                cache,
                FailReads {
                    dev: b.clone(),
                    bad: 0..0,
                },
                rt.clone(),
                o.clone(),
            ))
            .expect("create with one unreadable metadata block");
        assert_eq!(startup, Startup::Resumed);
        assert_eq!(vol.status().nr_dirty_cache_blocks, 20);
        let v = vol.clone();
        run(&rt, async move {
            for blk in 0..20u64 {
                let mut out = vec![0u8; 4096];
                v.read(blk * 8, &mut out).await.unwrap();
                assert!(out.iter().all(|&x| x == blk as u8 + 1), "block {blk}");
            }
        });
    }
}

/// A device whose writes fail while `fail` is set.
struct FailWrites {
    dev: Rc<MemDevice>,
    fail: Rc<std::cell::Cell<bool>>,
}
impl BlockDevice for FailWrites {
    fn info(&self) -> writeboost::device::DeviceInfo {
        self.dev.info()
    }
    async fn read<B: IoBufMut>(&self, o: u64, b: B) -> IoResult<B> {
        self.dev.read(o, b).await
    }
    async fn write<B: IoBuf>(&self, o: u64, b: B) -> IoResult<B> {
        if self.fail.get() {
            let e = writeboost::device::DeviceError::Io {
                op: writeboost::device::DeviceOp::Write,
                offset_bytes: o,
                len_bytes: b.bytes().len() as u64,
            };
            return (b, Err(e));
        }
        self.dev.write(o, b).await
    }
    async fn flush(&self) -> Result<(), writeboost::device::DeviceError> {
        if self.fail.get() {
            return Err(writeboost::device::DeviceError::Io {
                op: writeboost::device::DeviceOp::Flush,
                offset_bytes: 0,
                len_bytes: 0,
            });
        }
        self.dev.flush().await
    }
    async fn discard(&self, o: u64, l: u64) -> Result<(), writeboost::device::DeviceError> {
        self.dev.discard(o, l).await
    }
}

/// Issue 13, item 1: a write the sequential cutoff sent to the backing device that fails there
/// is written through the log; the host sees success and the data reads back.
#[test]
fn bypassed_writes_that_fail_on_the_backing_device_go_through_the_log() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(16, 64);
    let fail = Rc::new(std::cell::Cell::new(false));
    let mut o = CreateOptions::default();
    o.options.sequential_cutoff_kib = 16;
    o.options.sequential_cutoff_min_io_kib = 0;
    let (cd, bd) = (
        FailWrites {
            dev: c.clone(),
            fail: Rc::new(std::cell::Cell::new(false)),
        },
        FailWrites {
            dev: b.clone(),
            fail: fail.clone(),
        },
    );
    let r = rt.clone();
    let vol = rt
        .block_on(async move { Volume::create(cd, bd, r, o).await })
        .expect("create")
        .0;
    let nr_cache_blocks = vol.status().nr_cache_blocks;
    let v = vol.clone();
    let f = fail.clone();
    let results = run(&rt, async move {
        // More than half dirty, no stream.
        for i in 0..nr_cache_blocks * 6 / 10 {
            v.write(8 * 2 * i, &[1u8; 4096], false).await.unwrap();
        }
        f.set(true);
        let base = 8 * 2 * nr_cache_blocks;
        let mut results = Vec::new();
        for i in 0..16u64 {
            results.push(v.write(base + i * 8, &[7u8; 4096], i % 4 == 3).await);
        }
        let mut out = vec![0u8; 16 * 4096];
        v.read(base, &mut out).await.unwrap();
        (results, out)
    });
    let (results, out) = results;
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "write {i} failed: {r:?}");
    }
    assert!(out.iter().all(|&x| x == 7), "data lost");
    let st = vol.status().counters;
    assert!(st.backing_write_errors >= 1, "the cutoff never bypassed");
    // Writeback may fail on the backing device too; it counts as a backing write error.
    assert!(st.bypass_retried_in_log >= 1 && st.bypass_retried_in_log <= st.backing_write_errors);
    assert_eq!(st.bytes_bypassed, 0);
}

fn sleep_ms(rt: &LocalRuntime, ms: u64) -> impl std::future::Future<Output = ()> {
    use writeboost::runtime::Runtime;
    rt.sleep(ms * 1_000_000)
}

/// A volume over `c` and `b` whose cache writes and flushes fail while the returned flag is set,
/// with `degraded_error_threshold` 4.
fn create_with_failing_cache(
    rt: &LocalRuntime,
    c: &Rc<MemDevice>,
    b: &Rc<MemDevice>,
) -> (Volume<FailWrites, LocalRuntime>, Rc<std::cell::Cell<bool>>) {
    let cache_fail = Rc::new(std::cell::Cell::new(false));
    let mut o = CreateOptions::default();
    o.options.degraded_error_threshold = 4;
    let (cd, bd) = (
        FailWrites {
            dev: c.clone(),
            fail: cache_fail.clone(),
        },
        FailWrites {
            dev: b.clone(),
            fail: Rc::new(std::cell::Cell::new(false)),
        },
    );
    let r = rt.clone();
    let vol = rt
        .block_on(async move { Volume::create(cd, bd, r, o).await })
        .expect("create")
        .0;
    (vol, cache_fail)
}

/// Sleeps until the volume is degraded (at most 5 s).
async fn wait_degraded(v: &Volume<FailWrites, LocalRuntime>, rt: &LocalRuntime) {
    let mut waited = 0;
    while v.status().state != "degraded" {
        assert!(
            waited < 5000,
            "not degraded after 5 s: {:?}",
            v.status().counters
        );
        sleep_ms(rt, 10).await;
        waited += 10;
    }
}

/// Issue 13, item 2: a cache whose writes and flushes keep failing puts the volume in degraded
/// state; writes then go to the backing device (a partial write over dirty cached sectors is
/// widened with the newest data), FLUSH rescues what is only in RAM, reads never return an older
/// copy, and drop_caches drains what the cache still reads.
#[test]
fn a_failing_cache_degrades_the_volume_and_nothing_acknowledged_is_lost() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(16, 64);
    let (vol, cache_fail) = create_with_failing_cache(&rt, &c, &b);
    let v = vol.clone();
    let f = cache_fail.clone();
    let rt2 = rt.clone();
    run(&rt, async move {
        for blk in 0..10u64 {
            v.write(blk * 8, &[1u8; 4096], false).await.unwrap();
        }
        v.flush().await.unwrap();
        for blk in 0..5u64 {
            v.write(blk * 8, &[2u8; 4096], false).await.unwrap();
        }
        f.set(true);
        // Enough to seal segments whose writes fail.
        for blk in 10..400u64 {
            v.write(blk * 8, &[3u8; 4096], false).await.unwrap();
        }
        wait_degraded(&v, &rt2).await;
        // Degraded: a one-sector write over a dirty cached block keeps its other sectors.
        v.write(0, &[4u8; 512], false).await.unwrap();
        v.write(500 * 8, &[5u8; 4096], true).await.unwrap();
        v.flush().await.expect("degraded FLUSH rescues RAM data");
    });
    let st = vol.status();
    assert_eq!(st.state, "degraded");
    assert!(st.degraded_reason.is_some());
    assert!(st.counters.rescued_blocks >= 390, "{:?}", st.counters);
    // The backing device alone holds every write that was not durable on the cache.
    let snap = b.snapshot();
    let sector = |s: u64| &snap[(s * 512) as usize..((s + 1) * 512) as usize];
    assert!(sector(0).iter().all(|&x| x == 4));
    assert!(
        (1..8).all(|s| sector(s).iter().all(|&x| x == 2)),
        "widened write lost sectors"
    );
    assert!((8..40).all(|s| sector(s).iter().all(|&x| x == 2)));
    assert!((80..400 * 8).all(|s| sector(s).iter().all(|&x| x == 3)));
    assert!((500 * 8..501 * 8).all(|s| sector(s).iter().all(|&x| x == 5)));
    // Reads give the newest data (blocks 5..10 still from the cache, which reads).
    let v = vol.clone();
    run(&rt, async move {
        let mut out = vec![0u8; 10 * 4096];
        v.read(0, &mut out).await.unwrap();
        assert!(out[..512].iter().all(|&x| x == 4));
        assert!(out[512..5 * 4096].iter().all(|&x| x == 2));
        assert!(out[5 * 4096..].iter().all(|&x| x == 1));
        v.drop_caches()
            .await
            .expect("drop_caches drains a degraded volume");
    });
    assert_eq!(vol.status().nr_dirty_cache_blocks, 0);
    let snap = b.snapshot();
    assert!(snap[5 * 4096..10 * 4096].iter().all(|&x| x == 1));
}

/// Small writes of a long stream stay in the log (each would cost the backing device a seek;
/// writeback merges them); writes of at least `sequential_cutoff_min_io_kib` bypass.
#[test]
fn the_sequential_cutoff_bypasses_only_large_writes_by_default() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(64, 256);
    let mut o = CreateOptions::default();
    o.options.sequential_cutoff_kib = 64;
    assert_eq!(o.options.sequential_cutoff_min_io_kib, 64);
    let (vol, _) = create(&rt, &c, &b, o);
    let n = vol.status().nr_cache_blocks * 6 / 10;
    let v = vol.clone();
    run(&rt, async move {
        for i in 0..n {
            v.write(8 * 2 * i, &[2u8; 4096], false).await.unwrap();
        }
        let base = 8 * 2 * n;
        for i in 0..64u64 {
            v.write(base + i * 8, &[3u8; 4096], false).await.unwrap();
        }
    });
    assert_eq!(
        vol.status().counters.bytes_bypassed,
        0,
        "4 KiB writes bypassed"
    );
    let v = vol.clone();
    run(&rt, async move {
        let base = 8 * 2 * n + 8 * 1024;
        for i in 0..8u64 {
            v.write(base + i * 128, &[4u8; 65536], false).await.unwrap();
        }
    });
    // The first 64 KiB of the stream are cached, the rest bypasses.
    assert_eq!(vol.status().counters.bytes_bypassed, 7 * 65536);
}

/// A degraded episode in which the cache still writes its record: block 0 (durable in the log,
/// dirty) is written through to the backing device. Returns the volume (the cache works again).
fn degraded_write_through_over_a_logged_copy(
    rt: &LocalRuntime,
    c: &Rc<MemDevice>,
    b: &Rc<MemDevice>,
) -> Volume<FailWrites, LocalRuntime> {
    let (vol, cache_fail) = create_with_failing_cache(rt, c, b);
    let (v, f, rt2) = (vol.clone(), cache_fail.clone(), rt.clone());
    run(rt, async move {
        for blk in 0..8u64 {
            v.write(blk * 8, &[1u8; 4096], false).await.unwrap();
        }
        v.flush().await.unwrap();
        f.set(true);
        for blk in 8..400u64 {
            v.write(blk * 8, &[3u8; 4096], false).await.unwrap();
        }
        wait_degraded(&v, &rt2).await;
        v.flush().await.expect("degraded FLUSH rescues RAM data");
        // The episode passes (the volume stays degraded); block 0 is written through.
        f.set(false);
        v.write(0, &[9u8; 4096], true).await.unwrap();
    });
    let st = vol.status();
    assert_eq!(st.state, "degraded");
    assert!(st.stale_copies_in_log && st.superseded_copies_in_log);
    vol
}

/// Issue 13 (no older copy ever returned): after a degraded write-through superseded a copy in
/// the log, a power cut must not let the next create replay that copy. The record says so
/// durably before the backing write, and create refuses (force_format starts over from the
/// backing device, which holds the newest data). Fails without the record flag or the check
/// (the create replays block 0 = 1s over the 9s).
#[test]
fn a_power_cut_after_a_degraded_write_through_never_replays_the_superseded_copy() {
    let (c, b) = devs(16, 64);
    {
        let rt = LocalRuntime::new();
        let vol = degraded_write_through_over_a_logged_copy(&rt, &c, &b);
        drop(vol); // power cut: no shutdown
    }
    let rt = LocalRuntime::new();
    let (cs, bs, r) = (c.clone(), b.clone(), rt.clone());
    let got = rt.block_on(async move { Volume::create(cs, bs, r, CreateOptions::default()).await });
    match got {
        Err(CreateError::SupersededCopiesInLog) => {}
        Err(e) => panic!("create failed otherwise: {e}"),
        Ok((v, _)) => {
            let out = rt.block_on(async move {
                let mut out = vec![0u8; 4096];
                v.read(0, &mut out).await.unwrap();
                out
            });
            panic!("create replayed the log; block 0 reads {}", out[0]);
        }
    }
    let o = CreateOptions {
        force_format: true,
        ..CreateOptions::default()
    };
    let (vol, _) = create(&rt, &c, &b, o);
    let v = vol.clone();
    let out = run(&rt, async move {
        let mut out = vec![0u8; 8 * 4096];
        v.read(0, &mut out).await.unwrap();
        out
    });
    assert!(out[..4096].iter().all(|&x| x == 9));
    // Blocks 1..8 were dirty only in the log: force_format gives them up (as the error says).
}

/// The same episode ended by a clean shutdown: the shutdown drains the log and records it all
/// written back, so the next create starts clean and block 0 reads the write-through's data.
/// Fails without the drain (the create replays block 0 = 1s).
#[test]
fn a_clean_shutdown_after_a_degraded_write_through_drains_the_superseded_copies() {
    let (c, b) = devs(16, 64);
    {
        let rt = LocalRuntime::new();
        let vol = degraded_write_through_over_a_logged_copy(&rt, &c, &b);
        let v = vol.clone();
        run(&rt, async move { v.shutdown().await }).expect("drained shutdown");
    }
    let rt = LocalRuntime::new();
    let (vol, startup) = create(&rt, &c, &b, CreateOptions::default());
    assert_eq!(startup, Startup::Resumed);
    assert_eq!(vol.status().nr_dirty_cache_blocks, 0);
    let v = vol.clone();
    let out = run(&rt, async move {
        let mut out = vec![0u8; 8 * 4096];
        v.read(0, &mut out).await.unwrap();
        out
    });
    assert!(
        out[..4096].iter().all(|&x| x == 9),
        "block 0 reads {}",
        out[0]
    );
    assert!(out[4096..].iter().all(|&x| x == 1));
}
