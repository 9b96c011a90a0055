//! Scripted scenarios: the cases of issue 15, each a fixed sequence of operations on the
//! simulated devices, checked by the same model as the swarm. Each fails on the engine before its
//! fix (1281ad9); the swarm reaches the same cases at random (tests/sim/seeds.txt).
//!
//! The backing device starts with old data everywhere (write id 1, durable), so a lost write of
//! zeroes shows. A power cut here loses every write not yet durable.

use crate::disk::{AimedFault, DiskConfig, Latency, SimDisk};
use crate::executor::{SimRuntime, World};
use crate::model::{decode, sector_bytes, Allowed, Model, UNDEF};
use writeboost::engine::{CreateError, CreateOptions, Options, Startup, Volume};
use writeboost::format::RECORD_OFFSETS_BYTES;

type Vol = Volume<SimDisk, SimRuntime>;

struct Rig {
    world: World,
    cache: SimDisk,
    backing: SimDisk,
    model: Model,
    next_id: u64,
    seg_kib: u32,
    nr_sectors: u64,
    creates: u64,
}

fn options() -> Options {
    let mut o = Options {
        writeback_threshold: 0,
        nr_max_batched_writeback: 1,
        read_cache_threshold: 0,
        sequential_cutoff_kib: 0,
        update_sb_record_interval: 0,
        sync_data_interval: 0,
        ..Options::default()
    };
    // Small writes may bypass too (engines without this tunable do so anyway).
    let _ = o.set("sequential_cutoff_min_io_kib", 0, true);
    o
}

impl Rig {
    fn new(seed: u64, seg_kib: u32, nr_segments: u64, backing_mib: u64) -> Rig {
        let world = World::new(seed);
        let disk = |name, size_bytes, min_ns, max_ns| {
            let d = SimDisk::new(
                &world,
                DiskConfig {
                    name,
                    size_bytes,
                    read_error_per_10k: 0,
                    write_error_per_10k: 0,
                    flush_error_per_10k: 0,
                    latency: Latency::Uniform { min_ns, max_ns },
                },
            );
            d.st.borrow_mut().faults_enabled = false;
            d.st.borrow_mut().power_cut_loses_all = true;
            d
        };
        let cache = disk(
            "sim-cache",
            (1 << 20) + nr_segments * seg_kib as u64 * 1024,
            2_000,
            40_000,
        );
        let backing = disk("sim-backing", backing_mib << 20, 20_000, 400_000);
        let nr_sectors = (backing_mib << 20) / 512;
        let mut model = Model::new(nr_sectors);
        {
            let mut st = backing.st.borrow_mut();
            for x in 0..nr_sectors {
                let o = x as usize * 512;
                sector_bytes(1, x, &mut st.durable[o..o + 512]);
                model.collapse(x, 1);
            }
            st.view = st.durable.clone();
        }
        Rig {
            world,
            cache,
            backing,
            model,
            next_id: 2,
            seg_kib,
            nr_sectors,
            creates: 0,
        }
    }

    /// Creates the volume and starts a poller (the daemons' step functions) for it.
    fn create(&mut self, options: Options) -> Result<Vol, CreateError> {
        self.create_with_startup(options).map(|(v, _)| v)
    }

    /// `create`, saying whether the cache was formatted or resumed.
    fn create_with_startup(&mut self, options: Options) -> Result<(Vol, Startup), CreateError> {
        self.creates += 1;
        let mut uuid = [0u8; 16];
        uuid[0] = self.creates as u8;
        let opts = CreateOptions {
            options,
            segment_size_kib: Some(self.seg_kib),
            force_format: false,
            new_format_uuid: uuid,
            nr_ram_buffers: 4,
            accept_damaged_log: false,
        };
        let (c, b, rt) = (
            self.cache.clone(),
            self.backing.clone(),
            SimRuntime(self.world.clone()),
        );
        let (v, startup) = self
            .world
            .block_on(async move { Volume::create(c, b, rt, opts).await })
            .expect("create stalled")?;
        let (p, w) = (v.clone(), self.world.clone());
        self.world.spawn_task(async move {
            loop {
                p.poll_all();
                p.check_invariants();
                let d = w.rng().range(5_000, 300_000);
                w.after(d).await;
            }
        });
        Ok((v, startup))
    }

    fn write(&mut self, vol: &Vol, s: u64, len: u64, fua: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = vec![0u8; len as usize * 512];
        for (i, c) in buf.chunks_mut(512).enumerate() {
            sector_bytes(id, s + i as u64, c);
        }
        let w = self.model.begin_write(s, len, id);
        let v = vol.clone();
        let r = self
            .world
            .block_on(async move { v.write(s, &buf, fua).await })
            .expect("write stalled");
        self.model.end_write(&w, r.is_ok(), fua);
        r.expect("write");
        id
    }

    fn write_zeroes(&mut self, vol: &Vol, s: u64, len: u64, fua: bool) {
        let w = self.model.begin_write(s, len, 0);
        let v = vol.clone();
        let r = self
            .world
            .block_on(async move { v.write_zeroes(s, len, fua).await })
            .expect("write_zeroes stalled");
        self.model.end_write(&w, r.is_ok(), fua);
        r.expect("write_zeroes");
    }

    fn read(&mut self, vol: &Vol, s: u64, len: u64) -> Result<(), String> {
        let t = self.model.begin_read();
        let v = vol.clone();
        let buf = self
            .world
            .block_on(async move {
                let mut b = vec![0u8; len as usize * 512];
                v.read(s, &mut b).await.map(|()| b)
            })
            .expect("read stalled")
            .expect("read");
        self.model.check_read(t, s, &buf)
    }

    fn flush(&mut self, vol: &Vol) {
        let t = self.model.begin_flush();
        let v = vol.clone();
        self.world
            .block_on(async move { v.flush().await })
            .expect("flush stalled")
            .expect("flush");
        self.model.end_flush(t);
    }

    /// Starts a FLUSH without waiting for it: the cell is set to its outcome (true: succeeded).
    fn spawn_flush(&mut self, vol: &Vol) -> std::rc::Rc<std::cell::Cell<Option<bool>>> {
        let done = std::rc::Rc::new(std::cell::Cell::new(None));
        let (v, d) = (vol.clone(), done.clone());
        self.world.spawn_task(async move {
            d.set(Some(v.flush().await.is_ok()));
        });
        done
    }

    /// Lets the daemons run for `ns` of virtual time.
    fn idle(&mut self, ns: u64) {
        let w = self.world.clone();
        self.world
            .block_on(async move { w.after(ns).await })
            .expect("idle");
    }

    /// Lets the world run until `done` is set or `max_ns` of virtual time passed; true if set.
    fn wait_for(&mut self, done: &std::rc::Rc<std::cell::Cell<Option<bool>>>, max_ns: u64) -> bool {
        let (w, d) = (self.world.clone(), done.clone());
        self.world
            .block_on(async move {
                let mut waited = 0;
                while d.get().is_none() && waited < max_ns {
                    w.after(1_000_000).await;
                    waited += 1_000_000;
                }
            })
            .expect("wait stalled");
        done.get().is_some()
    }

    fn power_cut(&mut self) {
        self.world.kill_all();
        self.cache.power_cut();
        self.backing.power_cut();
        self.model.reset_in_flight();
    }

    fn shutdown(&mut self, vol: &Vol) {
        let v = vol.clone();
        self.world
            .block_on(async move { v.shutdown().await })
            .expect("shutdown stalled")
            .expect("shutdown");
        self.model.all_durable();
        self.world.kill_all();
    }

    fn read_all(&mut self, vol: &Vol) -> Vec<u8> {
        let n = self.nr_sectors;
        let v = vol.clone();
        self.world
            .block_on(async move {
                let mut buf = vec![0u8; n as usize * 512];
                for s in (0..n).step_by(256) {
                    let len = 256.min(n - s);
                    v.read(s, &mut buf[s as usize * 512..(s + len) as usize * 512])
                        .await?;
                }
                Ok::<_, writeboost::engine::IoError>(buf)
            })
            .expect("read stalled")
            .expect("read")
    }

    /// Checks every sector, after a power cut (`crashed`) or as one read.
    fn verify(&mut self, vol: &Vol, crashed: bool) -> Result<(), String> {
        let t = self.model.begin_read();
        let data = self.read_all(vol);
        if !crashed {
            return self.model.check_read(t, 0, &data);
        }
        self.model.end_read(t);
        for x in 0..self.nr_sectors {
            let got = decode(&data[x as usize * 512..(x as usize + 1) * 512], x);
            let allowed = self.model.after_crash(x);
            match got {
                Some(_) if matches!(allowed, Allowed::Any) => self.model.collapse(x, UNDEF),
                Some(id) if allowed.permits(id) => self.model.collapse(x, id),
                got => {
                    return Err(format!(
                        "after the power cut sector {x} holds write {got:?}, allowed {allowed:?}"
                    ))
                }
            }
        }
        Ok(())
    }

    /// After a power cut: the create must succeed, every sector must hold what the model allows,
    /// and a drain must leave exactly that on the backing device (panics with `seed` otherwise).
    fn recover_and_check(&mut self, options: Options, seed: u64) -> Vol {
        let vol = self
            .create(options)
            .unwrap_or_else(|e| panic!("seed {seed}: create after the power cut: {e}"));
        self.verify(&vol, true)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        self.drain_and_check_backing(&vol)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        vol
    }

    /// drop_caches, then the backing device's durable image must hold what the volume reads.
    fn drain_and_check_backing(&mut self, vol: &Vol) -> Result<(), String> {
        let v = vol.clone();
        self.world
            .block_on(async move { v.drop_caches().await })
            .expect("drop_caches stalled")
            .expect("drop_caches");
        self.verify(vol, false)?;
        let data = self.read_all(vol);
        let durable = self.backing.st.borrow().durable.clone();
        for x in 0..self.nr_sectors as usize {
            let (a, b) = (
                &data[x * 512..(x + 1) * 512],
                &durable[x * 512..(x + 1) * 512],
            );
            if a != b {
                return Err(format!(
                    "after drop_caches sector {x} reads write {:?} but the backing device holds {:?}",
                    decode(a, x as u64),
                    decode(b, x as u64)
                ));
            }
        }
        Ok(())
    }
}

fn counters(vol: &Vol) -> writeboost::engine::Counters {
    vol.status().counters
}

/// Fills half of the cache with dirty blocks: every other block from 0 (no sequential stream).
fn make_half_dirty(rig: &mut Rig, vol: &Vol) {
    let half = vol.status().nr_cache_blocks / 2 + 2;
    for k in 0..half {
        rig.write(vol, k * 16, 8, false);
    }
    assert!(vol.status().nr_dirty_cache_blocks * 2 >= vol.status().nr_cache_blocks);
}

/// Defect 1 of issue 15: a FUA write-zeroes longer than the 1 MiB chunk whose chunks take
/// different paths (one bypassed to the backing device by the sequential cutoff, one logged) must
/// make both durable before it completes.
fn fua_write_zeroes_across_devices(seed: u64, cached_in_first_chunk: bool) -> Result<(), String> {
    let mut rig = Rig::new(seed, 64, 64, 16);
    let o = Options {
        sequential_cutoff_kib: 4,
        ..options()
    };
    let vol = rig.create(o.clone()).map_err(|e| e.to_string())?;
    make_half_dirty(&mut rig, &vol);
    // Chunks [16384, 18432) and [18432, 18496); one cached block in one of them keeps that chunk
    // in the log, the other goes to the backing device.
    let s = 16384;
    let cached = if cached_in_first_chunk {
        s + 512
    } else {
        s + 2048 + 8
    };
    rig.write(&vol, cached, 8, false);
    let bypassed_before = counters(&vol).bytes_bypassed;
    rig.write_zeroes(&vol, s, 2048 + 64, true);
    assert!(
        counters(&vol).bytes_bypassed > bypassed_before,
        "scenario: no chunk bypassed the cache"
    );
    rig.power_cut();
    let vol = rig.create(o).map_err(|e| e.to_string())?;
    rig.verify(&vol, true)
}

#[test]
fn issue15_fua_write_zeroes_bypassed_then_logged() {
    for seed in 0..3 {
        fua_write_zeroes_across_devices(seed, false).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

#[test]
fn issue15_fua_write_zeroes_logged_then_bypassed() {
    for seed in 0..3 {
        fua_write_zeroes_across_devices(seed, true).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

/// Defect 2 of issue 15: a block staged by read caching in write-around mode, then written
/// (write-around, FUA), must not come back when the cache is resumed in write-back mode.
fn write_around_then_write_back(seed: u64, power_cut: bool) -> Result<(), String> {
    let mut rig = Rig::new(seed, 16, 8, 1);
    let wa = Options {
        write_around_mode: true,
        read_cache_threshold: 1,
        ..options()
    };
    let vol = rig.create(wa).map_err(|e| e.to_string())?;
    rig.read(&vol, 0, 8)?;
    assert_eq!(
        counters(&vol).staged_blocks,
        1,
        "scenario: the read staged nothing"
    );
    rig.flush(&vol);
    rig.write(&vol, 0, 8, true);
    if power_cut {
        rig.power_cut();
    } else {
        rig.shutdown(&vol);
    }
    let vol = rig.create(options()).map_err(|e| e.to_string())?;
    rig.verify(&vol, power_cut)?;
    rig.read(&vol, 0, 8)?;
    rig.drain_and_check_backing(&vol)
}

#[test]
fn issue15_write_around_resumed_in_write_back_mode() {
    for seed in 0..2 {
        for cut in [false, true] {
            write_around_then_write_back(seed, cut)
                .unwrap_or_else(|e| panic!("seed {seed} power cut {cut}: {e}"));
        }
    }
}

/// Defect 3 of issue 15: a read stages (clean) a block whose write bypassed the cache and is not
/// flushed on the backing device yet; an internal cache flush makes the staged copy durable; after
/// a power cut the staged copy must not outlive the write it copied.
fn staged_copy_of_unflushed_bypass(seed: u64) -> Result<(), String> {
    let mut rig = Rig::new(seed, 64, 32, 16);
    let o = Options {
        sequential_cutoff_kib: 4,
        read_cache_threshold: 4,
        ..options()
    };
    let vol = rig.create(o.clone()).map_err(|e| e.to_string())?;
    make_half_dirty(&mut rig, &vol);
    let s = 16384;
    for k in 0..4 {
        rig.write(&vol, s + k * 16, 16, false);
    }
    assert!(
        counters(&vol).bytes_bypassed > 0,
        "scenario: nothing bypassed the cache"
    );
    // The engine before the fix staged this block here (a fixed one may decline to).
    rig.read(&vol, s, 8)?;
    // The sync daemon seals and flushes the cache device (not the backing device).
    vol.set_option("sync_data_interval", 1).unwrap();
    rig.idle(1_500_000_000);
    rig.power_cut();
    let vol = rig.create(o).map_err(|e| e.to_string())?;
    rig.verify(&vol, true)?;
    rig.drain_and_check_backing(&vol)
}

#[test]
fn issue15_staged_copy_of_an_unflushed_bypassed_write() {
    for seed in 0..3 {
        staged_copy_of_unflushed_bypass(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

/// Where replay reads fail (defect 4 of issue 15).
#[derive(Debug, Clone, Copy)]
enum Unreadable {
    RecordCopy(usize),
    /// The header of a slot that never held a segment.
    UnusedSlotHeader,
    /// The header of a slot whose segment was written back.
    WrittenBackSlotHeader,
    /// The header of the newest segment (it holds acknowledged data).
    NewestHeader,
    /// The first data block of the newest segment (read to verify it after a power cut).
    NewestData,
}

/// Builds a log (some segments written back, then dirty ones), ends it with a clean shutdown or
/// a power cut, then creates with a read error on `what` (transient: `count` reads fail). Returns
/// the create's result; the data must be intact if it succeeds, and after a create without
/// faults if it did not.
fn replay_with_read_error(
    seed: u64,
    what: Unreadable,
    power_cut: bool,
    count: u32,
) -> Result<bool, String> {
    let mut rig = Rig::new(seed, 16, 16, 1);
    let vol = rig.create(options()).map_err(|e| e.to_string())?;
    // Segments of 3 data blocks: 4 segments written back, 3 dirty ones (the last with FUA).
    for k in 0..12 {
        rig.write(&vol, k * 8, 8, false);
    }
    rig.flush(&vol);
    let v = vol.clone();
    rig.world
        .block_on(async move { v.drop_caches().await })
        .expect("drop_caches stalled")
        .expect("drop_caches");
    for k in 12..20 {
        rig.write(&vol, k * 8, 8, false);
    }
    rig.write(&vol, 20 * 8, 8, true);
    let st = vol.status();
    let geo = vol.superblock().geometry;
    if power_cut {
        rig.power_cut();
    } else {
        rig.shutdown(&vol);
    }
    let (start, len) = match what {
        Unreadable::RecordCopy(k) => (RECORD_OFFSETS_BYTES[k], 4096),
        Unreadable::UnusedSlotHeader => (geo.slot_offset_bytes(geo.nr_segments - 1), 4096),
        Unreadable::WrittenBackSlotHeader => (geo.slot_offset_bytes(geo.slot_of_id(1)), 4096),
        Unreadable::NewestHeader => (
            geo.slot_offset_bytes(geo.slot_of_id(st.last_flushed_id)),
            4096,
        ),
        Unreadable::NewestData => (
            geo.data_block_offset_bytes(geo.slot_of_id(st.last_flushed_id), 0),
            4096,
        ),
    };
    assert!(st.last_writeback_id >= 1 && st.last_flushed_id > st.last_writeback_id);
    assert!(
        st.last_flushed_id < geo.nr_segments - 1,
        "scenario: the log wrapped"
    );
    rig.cache.st.borrow_mut().fail_reads = vec![AimedFault {
        start,
        end: start + len,
        count,
    }];
    let first = rig.create(options());
    let hit = rig.cache.st.borrow().aimed_read_errors > 0;
    assert!(hit, "scenario: create did not read {what:?}");
    rig.cache.st.borrow_mut().fail_reads.clear();
    let ok = first.is_ok();
    let vol = match first {
        Ok(v) => v,
        Err(_) => rig
            .create(options())
            .map_err(|e| format!("create without faults: {e}"))?,
    };
    rig.verify(&vol, power_cut)?;
    rig.drain_and_check_backing(&vol)?;
    Ok(ok)
}

#[test]
fn issue15_replay_treats_an_unreadable_record_or_header_as_missing() {
    // An unreadable copy of the record, or header of a slot with nothing live in it, hides
    // nothing the other blocks do not say: create must succeed, with every write intact.
    for what in [
        Unreadable::RecordCopy(0),
        Unreadable::RecordCopy(1),
        Unreadable::UnusedSlotHeader,
        Unreadable::WrittenBackSlotHeader,
    ] {
        for cut in [false, true] {
            for count in [1, u32::MAX] {
                let ok = replay_with_read_error(7, what, cut, count)
                    .unwrap_or_else(|e| panic!("{what:?} power cut {cut}: {e}"));
                assert!(ok, "create failed with {what:?} unreadable (power cut {cut}, {count} failed reads)");
            }
        }
    }
}

#[test]
fn issue15_replay_with_the_newest_segment_unreadable_loses_nothing() {
    // The newest segment holds a FUA write that no other block proves durable: create may refuse
    // (and then succeed once the segment reads), or succeed, but never lose the write.
    for (what, cut) in [
        (Unreadable::NewestHeader, false),
        (Unreadable::NewestHeader, true),
        (Unreadable::NewestData, true),
    ] {
        for count in [1, u32::MAX] {
            replay_with_read_error(7, what, cut, count)
                .unwrap_or_else(|e| panic!("{what:?} power cut {cut}, {count} failed reads: {e}"));
        }
    }
}

#[test]
fn replay_retries_a_transient_read_error_of_the_newest_segment() {
    // One failed read of the newest segment's header or data is a transient error: replay
    // reads it again, and create succeeds with every write (with a single attempt it refuses
    // the log as having an unreadable tail: mutation replay_retries_reads).
    for (what, cut) in [
        (Unreadable::NewestHeader, false),
        (Unreadable::NewestHeader, true),
        (Unreadable::NewestData, true),
    ] {
        let ok = replay_with_read_error(7, what, cut, 1)
            .unwrap_or_else(|e| panic!("{what:?} power cut {cut}: {e}"));
        assert!(
            ok,
            "create failed after one transient read error of {what:?} (power cut {cut})"
        );
    }
}

/// Writes 6 blocks (two segments of 3) and shuts down cleanly; returns the volume's last
/// segment id (the record's head) and the geometry.
fn clean_log(rig: &mut Rig) -> (u64, writeboost::format::Geometry) {
    let vol = rig.create(options()).expect("create");
    for k in 0..6 {
        rig.write(&vol, k * 8, 8, false);
    }
    rig.flush(&vol);
    let head = vol.status().last_flushed_id;
    let geo = vol.superblock().geometry;
    rig.shutdown(&vol);
    assert!(
        head >= 2 && head + 2 < geo.nr_segments,
        "scenario: log shape"
    );
    (head, geo)
}

/// Plants, in the slot of `id`, a segment of an older history: a valid header (format UUID,
/// id, CRCs) with one dirty block of write `write_id` for backing block `block`, whose
/// `prev_header_crc` links to nothing on the device. Returns the sectors it would map.
fn plant_stale_segment(
    rig: &mut Rig,
    geo: &writeboost::format::Geometry,
    id: u64,
    block: u64,
    write_id: u64,
) {
    use writeboost::format::segment::data_block_crc;
    use writeboost::format::{Entry, SegmentHeader};
    let mut data = vec![0u8; 4096];
    for (i, c) in data.chunks_mut(512).enumerate() {
        sector_bytes(write_id, block * 8 + i as u64, c);
    }
    let format_uuid = {
        let st = rig.cache.st.borrow();
        let off = geo.slot_offset_bytes(0) as usize;
        SegmentHeader::decode(
            &st.view[off..off + geo.header_bytes()],
            geo.data_blocks_per_segment(),
        )
        .expect("slot 0 holds a segment")
        .format_uuid
    };
    let header = SegmentHeader {
        format_uuid,
        id,
        durable_through_id: 0,
        prev_header_crc: 0x5EED_5EED,
        flags: 0,
        entries: vec![Entry {
            backing_block: block,
            data_crc: data_block_crc(&data),
            valid_bits: 0xff,
            dirty_bits: 0xff,
        }],
        header_crc: 0,
    };
    let mut hb = vec![0u8; geo.header_bytes()];
    header.encode_into(&mut hb);
    let slot = geo.slot_of_id(id);
    let mut st = rig.cache.st.borrow_mut();
    let st = &mut *st;
    for img in [&mut st.durable, &mut st.view] {
        let h = geo.slot_offset_bytes(slot) as usize;
        img[h..h + hb.len()].copy_from_slice(&hb);
        let d = geo.data_block_offset_bytes(slot, 0) as usize;
        img[d..d + 4096].copy_from_slice(&data);
    }
}

#[test]
fn replay_never_maps_a_segment_that_does_not_link_to_the_durable_floor() {
    // A segment right after the log's head whose prev_header_crc links to nothing (a stale
    // segment of an older history) must not be replayed: its data is older than the log.
    let mut rig = Rig::new(11, 16, 16, 1);
    let (head, geo) = clean_log(&mut rig);
    plant_stale_segment(&mut rig, &geo, head + 1, 100, 999);
    let vol = rig
        .create(options())
        .expect("create over the planted segment");
    rig.verify(&vol, false).unwrap_or_else(|e| panic!("{e}"));
    rig.drain_and_check_backing(&vol)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn replay_wipes_headers_of_stale_slots_before_the_log_goes_on() {
    // A valid header beyond the log (here: two ids after the head, no link) is a stale slot: the
    // create must zero it on the device, or a later log whose ids reach it could adopt it.
    let mut rig = Rig::new(12, 16, 16, 1);
    let (head, geo) = clean_log(&mut rig);
    plant_stale_segment(&mut rig, &geo, head + 2, 100, 999);
    let vol = rig
        .create(options())
        .expect("create over the planted segment");
    let off = geo.slot_offset_bytes(geo.slot_of_id(head + 2)) as usize;
    let st = rig.cache.st.borrow();
    let stale = writeboost::format::SegmentHeader::decode(
        &st.durable[off..off + geo.header_bytes()],
        geo.data_blocks_per_segment(),
    );
    assert!(
        stale.is_err(),
        "the stale header of id {} survived the create: {stale:?}",
        head + 2
    );
    drop(st);
    rig.verify(&vol, false).unwrap_or_else(|e| panic!("{e}"));
}

/// Issue 13 ("never return an older copy"): a degraded write of a block whose newest copy is
/// dirty in the log keeps that copy readable until its backing write completes. Reads polled
/// during the write may return the logged copy or the new data, never the backing device's older
/// data (mutation degraded_keeps_copies_until_backing_write drops the copy first).
#[test]
fn degraded_write_keeps_the_logged_copy_readable_until_its_backing_write_completes() {
    use crate::disk::Dead;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    for seed in 0..4 {
        let mut rig = Rig::new(seed, 16, 16, 1);
        let o = Options {
            degraded_error_threshold: 4,
            ..options()
        };
        let vol = rig.create(o).expect("create");
        let s = 40 * 8;
        let w1 = rig.write(&vol, s, 8, false);
        rig.flush(&vol);
        rig.cache.st.borrow_mut().dead = Some(Dead::WritesFail);
        for k in 0..24 {
            rig.write(&vol, 100 * 8 + k * 8, 8, false);
        }
        let v = vol.clone();
        let w = rig.world.clone();
        rig.world
            .block_on(async move {
                while v.status().state != "degraded" {
                    w.after(1_000_000).await;
                }
            })
            .expect("degrading stalled");
        // The degraded write of the block, with readers polling it meanwhile.
        let w2 = rig.next_id;
        rig.next_id += 1;
        let mut buf = vec![0u8; 8 * 512];
        for (i, c) in buf.chunks_mut(512).enumerate() {
            sector_bytes(w2, s + i as u64, c);
        }
        let done = Rc::new(Cell::new(false));
        let seen = Rc::new(RefCell::new(Vec::new()));
        for r in 0..3u64 {
            let (v, w, done, seen) = (vol.clone(), rig.world.clone(), done.clone(), seen.clone());
            rig.world.spawn_task(async move {
                w.after(r * 1_000).await;
                while !done.get() {
                    let mut b = vec![0u8; 512];
                    if v.read(s, &mut b).await.is_ok() {
                        seen.borrow_mut().push(decode(&b, s));
                    }
                    w.after(3_000).await;
                }
            });
        }
        let (v, d) = (vol.clone(), done.clone());
        let r = rig
            .world
            .block_on(async move {
                let r = v.write(s, &buf, false).await;
                d.set(true);
                r
            })
            .expect("degraded write stalled");
        r.expect("a full-block write on the degraded volume succeeds");
        let seen = seen.borrow();
        assert!(
            seen.len() > 3,
            "seed {seed}: readers did not overlap the write"
        );
        for id in seen.iter() {
            assert!(
                *id == Some(w1) || *id == Some(w2),
                "seed {seed}: a read during the degraded write returned {id:?} (logged copy {w1}, new {w2})"
            );
        }
        rig.world.kill_all();
    }
}

/// Issue 16 (mutation slot_reuse_waits_for_record): a slot is reused only once the record says
/// durably that its segment was written back. Every record write fails here (a failed write may
/// still land in part, as on a real device, so the record may say a little), so writeback
/// advances in memory, not in the record: writes must stop when the log is full (they wait,
/// unacknowledged). Reusing a slot anyway, then a FLUSH and a power cut, leaves a log that
/// starts after an id the record never said was written back: create refuses it as a hole.
#[test]
fn a_slot_is_reused_only_after_the_record_says_its_segment_was_written_back() {
    use crate::disk::AimedFault;
    use std::cell::Cell;
    use std::rc::Rc;
    for seed in 0..3 {
        let mut rig = Rig::new(seed, 16, 16, 1);
        let o = Options {
            degraded_error_threshold: 1_000_000,
            ..options()
        };
        let vol = rig.create(o.clone()).expect("create");
        rig.cache.st.borrow_mut().fail_writes = RECORD_OFFSETS_BYTES
            .iter()
            .map(|&off| AimedFault {
                start: off,
                end: off + 4096,
                count: u32::MAX,
            })
            .collect();
        // 16 segments of 3 data blocks: the 49th block needs a reused slot.
        let mut acked = 0;
        for k in 0..64u64 {
            let (s, id) = (k * 8, rig.next_id);
            rig.next_id += 1;
            let mut buf = vec![0u8; 8 * 512];
            for (i, c) in buf.chunks_mut(512).enumerate() {
                sector_bytes(id, s + i as u64, c);
            }
            let w = rig.model.begin_write(s, 8, id);
            let done = Rc::new(Cell::new(None));
            let (v, d) = (vol.clone(), done.clone());
            rig.world.spawn_task(async move {
                d.set(Some(v.write(s, &buf, false).await.is_ok()));
            });
            if !rig.wait_for(&done, 200_000_000) {
                break; // Waits for space (in flight at the power cut).
            }
            rig.model.end_write(&w, done.get() == Some(true), false);
            acked += 1;
        }
        assert!(
            rig.cache.st.borrow().aimed_write_errors > 0 && vol.status().last_writeback_id > 0,
            "scenario: writeback ran and its record writes failed"
        );
        let (st, nr_segments) = (vol.status(), vol.superblock().geometry.nr_segments);
        // A FLUSH makes whatever the log holds durable (it may wait for the blocked write).
        let t = rig.model.begin_flush();
        let done = rig.spawn_flush(&vol);
        if rig.wait_for(&done, 200_000_000) && done.get() == Some(true) {
            rig.model.end_flush(t);
        }
        rig.power_cut();
        rig.cache.st.borrow_mut().fail_writes.clear();
        rig.recover_and_check(o, seed);
        assert!(
            acked <= 48,
            "seed {seed}: {acked} writes of one block completed in a log of {nr_segments} segments of 3 blocks whose record writes all failed (st {:?})",
            st
        );
    }
}

/// Issue 16 (mutation writeback_waits_for_write_through): while a degraded write-through of a
/// block with a dirty cached copy is on its way to the backing device, no writeback batch may
/// start. A batch would skip the block (newer data is in flight) and still mark its segment
/// written back with the block dirty in it: if the write-through then fails, nothing writes the
/// acknowledged copy back (the poller's invariant check sees the dirty block in a written-back
/// segment). The backing device is slowed (2-3 ms) for the write-through, and background
/// writeback is switched on just after it started, so the poller runs inside its window.
#[test]
fn writeback_waits_for_a_degraded_write_through_over_a_cached_block() {
    use crate::disk::{Dead, Latency};
    use std::cell::Cell;
    use std::rc::Rc;
    for seed in 0..4 {
        let mut rig = Rig::new(seed, 16, 16, 1);
        let o = Options {
            degraded_error_threshold: 4,
            ..options()
        };
        let vol = rig.create(o).expect("create");
        // Block 40 first: the oldest dirty segment holds it, the next batch takes that segment.
        let s = 40 * 8;
        rig.write(&vol, s, 8, false);
        for k in 0..8 {
            rig.write(&vol, 60 * 8 + k * 8, 8, false);
        }
        rig.flush(&vol);
        rig.cache.st.borrow_mut().dead = Some(Dead::WritesFail);
        for k in 0..24 {
            rig.write(&vol, 100 * 8 + k * 8, 8, false);
        }
        let v = vol.clone();
        let w = rig.world.clone();
        rig.world
            .block_on(async move {
                while v.status().state != "degraded" {
                    w.after(1_000_000).await;
                }
            })
            .expect("degrading stalled");
        assert_eq!(
            vol.status().last_writeback_id,
            0,
            "scenario: nothing written back yet"
        );
        rig.backing.st.borrow_mut().cfg.latency = Latency::Uniform {
            min_ns: 2_000_000,
            max_ns: 3_000_000,
        };
        let id = rig.next_id;
        rig.next_id += 1;
        let mut buf = vec![0u8; 8 * 512];
        for (i, c) in buf.chunks_mut(512).enumerate() {
            sector_bytes(id, s + i as u64, c);
        }
        let w = rig.model.begin_write(s, 8, id);
        let done = Rc::new(Cell::new(None));
        let (v, d) = (vol.clone(), done.clone());
        rig.world.spawn_task(async move {
            d.set(Some(v.write(s, &buf, false).await.is_ok()));
        });
        rig.idle(1_000);
        vol.set_option("writeback_threshold", 100)
            .expect("set_option");
        assert!(
            rig.wait_for(&done, 100_000_000),
            "seed {seed}: the write stalled"
        );
        rig.model.end_write(&w, done.get() == Some(true), false);
        assert_eq!(
            done.get(),
            Some(true),
            "seed {seed}: the degraded write failed"
        );
        rig.backing.st.borrow_mut().cfg.latency = Latency::Uniform {
            min_ns: 20_000,
            max_ns: 400_000,
        };
        rig.drain_and_check_backing(&vol)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        rig.world.kill_all();
    }
}

/// Issue 16 (mutation log_waits_for_bypass): a log write of a block waits for an in-flight write
/// of it that bypassed the cache. Otherwise the newer copy in the log can be written back while
/// the bypassing write is still on its way: the batch skips the block (a backing write of it is
/// in flight) and marks its segment written back with the block dirty in it (the poller's
/// invariant check), and the older bypassing write may land last. The bypassing write is slowed
/// by 1 s so that the log write, a FLUSH and drop_caches all fit inside it.
#[test]
fn a_log_write_waits_for_an_in_flight_bypass_of_the_same_block() {
    use std::cell::Cell;
    use std::rc::Rc;
    for seed in 0..4 {
        let mut rig = Rig::new(seed, 64, 32, 16);
        let o = Options {
            sequential_cutoff_kib: 4,
            ..options()
        };
        let vol = rig.create(o).expect("create");
        make_half_dirty(&mut rig, &vol);
        // 8 KiB at an uncached place: longer than the 4 KiB cutoff, so it bypasses the log.
        let s = 16384;
        rig.backing.st.borrow_mut().slow_writes = vec![(s * 512, (s + 16) * 512, 1_000_000_000)];
        let id = rig.next_id;
        rig.next_id += 1;
        let mut buf = vec![0u8; 16 * 512];
        for (i, c) in buf.chunks_mut(512).enumerate() {
            sector_bytes(id, s + i as u64, c);
        }
        let w = rig.model.begin_write(s, 16, id);
        let done = Rc::new(Cell::new(None));
        let (v, d) = (vol.clone(), done.clone());
        let bypassed_before = counters(&vol).bytes_bypassed;
        rig.world.spawn_task(async move {
            d.set(Some(v.write(s, &buf, false).await.is_ok()));
        });
        rig.idle(10_000);
        assert!(done.get().is_none(), "scenario: the bypass is in flight");
        // 4 KiB of the same place: not longer than the cutoff, so it goes through the log.
        rig.write(&vol, s, 8, false);
        rig.flush(&vol);
        let v = vol.clone();
        rig.world
            .block_on(async move { v.drop_caches().await })
            .expect("drop_caches stalled")
            .expect("drop_caches");
        assert!(
            rig.wait_for(&done, 100_000_000),
            "seed {seed}: the bypass stalled"
        );
        rig.model.end_write(&w, done.get() == Some(true), false);
        assert!(
            done.get() == Some(true) && counters(&vol).bytes_bypassed > bypassed_before,
            "scenario: the 8 KiB write bypassed the cache"
        );
        rig.backing.st.borrow_mut().slow_writes.clear();
        rig.drain_and_check_backing(&vol)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        rig.world.kill_all();
    }
}

/// Issue 16 (mutation durability_waiters_fail_while_segment_fails): while a segment write keeps
/// failing, every FLUSH waiting for it fails at the next failed attempt, also one that began
/// waiting after the third (the one that failed the first FLUSH). With the degraded state off
/// (`degraded_error_threshold` 0) nothing else releases such a FLUSH: it would hang for as long
/// as the cache fails.
#[test]
fn a_flush_that_waits_on_a_failing_segment_fails_and_never_hangs() {
    for seed in 0..3 {
        let mut rig = Rig::new(seed, 16, 16, 1);
        let o = Options {
            degraded_error_threshold: 0,
            ..options()
        };
        let vol = rig.create(o).expect("create");
        let log_start = vol.superblock().geometry.slot_offset_bytes(0);
        rig.cache.st.borrow_mut().fail_writes = vec![AimedFault {
            start: log_start,
            end: u64::MAX,
            count: u32::MAX,
        }];
        rig.write(&vol, 0, 8, false);
        let first = rig.spawn_flush(&vol);
        assert!(
            rig.wait_for(&first, 1_000_000_000) && first.get() == Some(false),
            "seed {seed}: the first FLUSH over a failing segment write did not fail: {:?}",
            first.get()
        );
        // The segment write has failed at least 3 times; a FLUSH that starts now waits for its
        // next attempt (the backoff is at most 1 s).
        let second = rig.spawn_flush(&vol);
        let released = rig.wait_for(&second, 3_000_000_000);
        let attempts = rig.cache.st.borrow().aimed_write_errors;
        rig.cache.st.borrow_mut().fail_writes.clear();
        assert!(
            released && second.get() == Some(false),
            "seed {seed}: a FLUSH that began waiting after {attempts} failed segment writes was not failed by the next one within 3 s: {:?}",
            second.get()
        );
        // Once the cache works again, the segment is written and a FLUSH succeeds.
        rig.flush(&vol);
        rig.verify(&vol, false)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        rig.drain_and_check_backing(&vol)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

/// Issue 16 (mutation format_invalidates_superblock_first): a format cut short by a power cut
/// leaves either the old cache (resumed with everything) or an all-zero superblock (formatted
/// anew), never the old superblock over wiped records. The log has wrapped, so records that say
/// nothing make the intact log start after an id never written back: create refuses it as a
/// hole (the cache would be unusable without `force_format`). The cut comes while the format's
/// write of the superblock block, or of the first record copy, is slowed by 1 s.
#[test]
fn a_format_cut_short_leaves_the_old_cache_or_a_blank_one_never_a_damaged_log() {
    use std::cell::Cell;
    use std::rc::Rc;
    use writeboost::engine::format_cache;
    for seed in 0..3 {
        for (what, start) in [("superblock", 0), ("first record", RECORD_OFFSETS_BYTES[0])] {
            let mut rig = Rig::new(seed, 16, 16, 1);
            let vol = rig.create(options()).expect("create");
            // 16 segments of 3 data blocks: 96 writes of one block wrap the log.
            for k in 0..96u64 {
                rig.write(&vol, (k * 37 % 256) * 8, 8, false);
            }
            rig.drain_and_check_backing(&vol)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(
                vol.status().last_writeback_id > 16,
                "scenario: the log wrapped"
            );
            rig.shutdown(&vol);
            rig.cache.st.borrow_mut().slow_writes = vec![(start, start + 4096, 1_000_000_000)];
            let done = Rc::new(Cell::new(None));
            let (c, d) = (rig.cache.clone(), done.clone());
            rig.world.spawn_task(async move {
                let r = format_cache(&c, None, 16, [0xee; 16]).await;
                d.set(Some(r.is_ok()));
            });
            rig.idle(100_000_000);
            assert!(done.get().is_none(), "scenario: the format is in flight");
            rig.power_cut();
            rig.cache.st.borrow_mut().slow_writes.clear();
            let (vol, startup) = rig.create_with_startup(options()).unwrap_or_else(|e| {
                panic!("seed {seed}: create after a format cut short at its {what} write: {e}")
            });
            let expect = if start == 0 {
                Startup::Resumed
            } else {
                Startup::Formatted
            };
            assert_eq!(startup, expect, "seed {seed}: cut at the {what} write");
            rig.verify(&vol, true)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            rig.world.kill_all();
        }
    }
}

/// Issue 16 (mutation staging_waits_for_write_queue): read caching never takes log space from
/// writes queued at the gate. This is a priority rule, not a data rule (a staged copy is a
/// correct clean copy, and a queued write replaces or invalidates it): without it, a read miss
/// that completes while the gate's front waits (here for the old copy of a partial block, read
/// back from a slowed cache device) fills the open segment that the queued writes are about to
/// use, and they need more segments, hence more writeback. Four writers make one-sector writes
/// of blocks whose copies are on the cache device (each needs its old copy first) while a reader
/// misses on blocks nobody writes: no block may be staged meanwhile. Once the writers stop, the
/// same reads stage again (the control), and every sector reads back its last acknowledged
/// write.
#[test]
fn read_misses_are_not_staged_while_writes_wait_at_the_gate() {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::rc::Rc;
    for seed in 0..3 {
        let mut rig = Rig::new(seed, 64, 16, 4);
        let o = Options {
            read_cache_threshold: 1,
            ..options()
        };
        let vol = rig.create(o).expect("create");
        let acked: Rc<RefCell<HashMap<u64, u64>>> = Rc::default();
        for block in 0..24u64 {
            let id = rig.write(&vol, block * 8, 8, false);
            for s in block * 8..block * 8 + 8 {
                acked.borrow_mut().insert(s, id);
            }
        }
        rig.flush(&vol);
        rig.idle(20_000_000);
        rig.cache.st.borrow_mut().cfg.latency = Latency::Uniform {
            min_ns: 500_000,
            max_ns: 1_000_000,
        };
        let stop = Rc::new(Cell::new(false));
        let running = Rc::new(Cell::new(0u32));
        let next_id = Rc::new(Cell::new(rig.next_id));
        for wr in 0..4u64 {
            let (v, stop, running, acked, next_id, w) = (
                vol.clone(),
                stop.clone(),
                running.clone(),
                acked.clone(),
                next_id.clone(),
                rig.world.clone(),
            );
            running.set(running.get() + 1);
            rig.world.spawn_task(async move {
                let mut k = 0u64;
                while !stop.get() {
                    // Writer `wr` owns blocks wr, wr + 4, ... below 24; one sector of each.
                    let s = (wr + 4 * (k % 6)) * 8 + 3;
                    k += 1;
                    let id = next_id.get();
                    next_id.set(id + 1);
                    let mut buf = vec![0u8; 512];
                    sector_bytes(id, s, &mut buf);
                    v.write(s, &buf, false).await.expect("write");
                    acked.borrow_mut().insert(s, id);
                    let d = w.rng().range(0, 20_000);
                    w.after(d).await;
                }
                running.set(running.get() - 1);
            });
        }
        let read_misses = |rig: &mut Rig, n: u64, from: u64| {
            let v = vol.clone();
            let w = rig.world.clone();
            rig.world
                .block_on(async move {
                    for i in 0..n {
                        // Blocks 512.. are never written; every other one: no sequential run.
                        let block = 512 + (from + i * 2) % 512;
                        let mut b = vec![0u8; 4096];
                        v.read(block * 8, &mut b).await.expect("read");
                        let d = w.rng().range(10_000, 100_000);
                        w.after(d).await;
                    }
                })
                .expect("reads stalled");
        };
        let (staged0, written0) = (counters(&vol).staged_blocks, counters(&vol).bytes_written);
        read_misses(&mut rig, 200, 0);
        let (staged1, written1) = (counters(&vol).staged_blocks, counters(&vol).bytes_written);
        stop.set(true);
        let (w, r) = (rig.world.clone(), running.clone());
        rig.world
            .block_on(async move {
                while r.get() > 0 {
                    w.after(1_000_000).await;
                }
            })
            .expect("writers stalled");
        assert!(
            written1 - written0 > 40 * 512,
            "scenario: the writers wrote during the reads ({written0} -> {written1} bytes)"
        );
        assert_eq!(
            staged1,
            staged0,
            "seed {seed}: reads staged {} blocks into the log while writes were queued at the gate",
            staged1 - staged0
        );
        rig.idle(20_000_000);
        read_misses(&mut rig, 64, 1);
        assert!(
            counters(&vol).staged_blocks > staged1,
            "seed {seed}: control: with no write queued the same reads stage"
        );
        let data = rig.read_all(&vol);
        for (&s, &id) in acked.borrow().iter() {
            let got = decode(&data[s as usize * 512..(s as usize + 1) * 512], s);
            assert_eq!(got, Some(id), "seed {seed}: sector {s}");
        }
        rig.world.kill_all();
    }
}

/// Issue 16 (mutation staging_checks_token): a read stages a block only if nothing touched the
/// block since the read began (its token is still the block's mark). Here a write-around write
/// of the block starts and completes while a slow read of it is on its way to the backing
/// device, and a FLUSH makes that write durable (so the unflushed-backing rule no longer holds
/// the block back). The read then comes back with the old data (the backing device returns the
/// data as of the read's issue): staging it would map the old data over the newer write, and
/// every later read would return it.
#[test]
fn a_read_never_stages_a_block_written_while_it_was_in_flight() {
    use std::cell::RefCell;
    use std::rc::Rc;
    for seed in 0..4 {
        let mut rig = Rig::new(seed, 16, 16, 1);
        let o = Options {
            write_around_mode: true,
            read_cache_threshold: 1,
            ..options()
        };
        let vol = rig.create(o).expect("create");
        let s = 40 * 8;
        rig.backing.st.borrow_mut().read_at_issue = true;
        let fast = Latency::Uniform {
            min_ns: 20_000,
            max_ns: 40_000,
        };
        rig.backing.st.borrow_mut().cfg.latency = Latency::Uniform {
            min_ns: 2_000_000,
            max_ns: 3_000_000,
        };
        let t = rig.model.begin_read();
        let got: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();
        let (v, g) = (vol.clone(), got.clone());
        rig.world.spawn_task(async move {
            let mut b = vec![0u8; 4096];
            v.read(s, &mut b).await.expect("read");
            *g.borrow_mut() = Some(b);
        });
        rig.idle(10_000);
        rig.backing.st.borrow_mut().cfg.latency = fast;
        rig.write(&vol, s, 8, false);
        rig.flush(&vol);
        assert!(
            got.borrow().is_none(),
            "scenario: the read is still in flight"
        );
        let (w, g) = (rig.world.clone(), got.clone());
        rig.world
            .block_on(async move {
                while g.borrow().is_none() {
                    w.after(100_000).await;
                }
            })
            .expect("read stalled");
        let first = got.borrow_mut().take().expect("read done");
        rig.model
            .check_read(t, s, &first)
            .unwrap_or_else(|e| panic!("seed {seed}: the slow read: {e}"));
        rig.read(&vol, s, 8)
            .unwrap_or_else(|e| panic!("seed {seed}: after the slow read: {e}"));
        rig.world.kill_all();
    }
}

/// Issue 14 (mutations relog_makes_head_durable, relog_keeps_dirty_bits,
/// relog_checks_current_copy): reclaim that re-logs. A log of 16 segments of 7 blocks takes
/// writes over 56 hot blocks (half the log) (so reclaimed segments are partly live), FLUSHes now and then, and
/// every reclaim batch re-logs (the test hook). Then writes that are not waited for and a power
/// cut at a random point, often inside a batch. After the create every flushed write reads back
/// and no sector holds an older write than allowed; drop_caches then leaves exactly that on the
/// backing device. Reclaim must have re-logged and never written back.
#[test]
fn relogged_blocks_survive_power_cuts_and_never_bring_back_an_older_copy() {
    use writeboost::engine::ReclaimChoice;
    let mut relogged_total = 0;
    for seed in 0..12u64 {
        let mut rig = Rig::new(0x5E10_0000 + seed, 32, 16, 1);
        let o = Options {
            nr_max_batched_writeback: 4,
            ..options()
        };
        let vol = rig.create(o.clone()).expect("create");
        vol.set_reclaim_choice(Some(ReclaimChoice::Relog));
        let mut r = crate::executor::Rng::new(seed);
        for k in 0..300u64 {
            let block = r.below(56);
            // Whole blocks, and now and then a partial one (its other sectors stay dirty).
            let (s, len) = if r.chance(20) {
                (block * 8 + r.below(4), r.range(1, 4))
            } else {
                (block * 8, 8)
            };
            rig.write(&vol, s, len, false);
            if k % 20 == 19 {
                rig.flush(&vol);
            }
        }
        let c = counters(&vol);
        assert!(
            c.relog_batches > 0 && c.writeback_batches == 0,
            "seed {seed}: scenario: reclaim re-logged ({c:?})"
        );
        relogged_total += c.relogged_blocks;
        // Writes in flight at the cut.
        for _ in 0..6 {
            let s = r.below(56) * 8;
            let id = rig.next_id;
            rig.next_id += 1;
            let mut buf = vec![0u8; 8 * 512];
            for (i, c) in buf.chunks_mut(512).enumerate() {
                sector_bytes(id, s + i as u64, c);
            }
            let _ = rig.model.begin_write(s, 8, id);
            let v = vol.clone();
            rig.world.spawn_task(async move {
                let _ = v.write(s, &buf, false).await;
            });
        }
        if seed % 2 == 0 {
            rig.idle(r.range(0, 400_000));
        } else {
            // The cut right after a re-logging batch gave up its segments: its copies must be
            // durable by then.
            let before = counters(&vol).relog_batches;
            let mut waited = 0;
            while counters(&vol).relog_batches == before && waited < 50_000_000 {
                rig.idle(10_000);
                waited += 10_000;
            }
            assert!(
                counters(&vol).relog_batches > before,
                "seed {seed}: scenario: a batch ran before the cut"
            );
        }
        rig.power_cut();
        rig.recover_and_check(o, seed);
    }
    assert!(
        relogged_total > 500,
        "re-logged only {relogged_total} blocks"
    );
}
