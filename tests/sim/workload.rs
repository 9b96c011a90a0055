//! One seeded run: a swarm of options from the seed, concurrent clients issuing reads, writes
//! (full, partial, FUA, sequential streams), flushes, discards, write-zeroes (multi-chunk too),
//! option changes and drop_caches against the model, overlapping each other freely. Epochs end
//! with a power cut at a random instant, a clean shutdown (faults may hit it, a power cut may
//! interrupt it) or a crash after quiescing; the volume is recreated, possibly in the other mode
//! and with other options, with faults and power cuts during create; recovery is checked sector
//! by sector; finally faults stop, writeback must drain, and the backing device's durable image
//! alone must hold the data.

use crate::disk::{Dead, DiskConfig, Latency, SimDisk};
use crate::executor::{RunEnd, SimRuntime, World};
use crate::model::{decode, sector_bytes, Allowed, Model, UNDEF};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use writeboost::engine::{ConfigError, CreateError, CreateOptions, Options, ReclaimChoice, Volume};

pub type Vol = Volume<SimDisk, SimRuntime>;

#[derive(Debug, Clone)]
pub struct Swarm {
    pub segment_size_kib: u32,
    pub nr_segments: u64,
    pub nr_ram_buffers: usize,
    pub backing_sectors: u64,
    pub clients: u64,
    pub ops_per_epoch: u64,
    pub epochs: u64,
    pub cache_faults_per_10k: u64,
    pub backing_faults_per_10k: u64,
    /// Mode of the first create.
    pub write_around: bool,
    /// Every restart may switch write_around_mode (with dirty data a switch to write-around is
    /// refused: the run then drains in write-back mode first, as an operator would).
    pub mode_changes: bool,
    pub fua_pct: u64,
    pub discard_pct: u64,
    /// `sequential_cutoff_kib` of the volumes (0: off).
    pub seq_cutoff_kib: u64,
    /// Share of writes that continue where the previous write ended (sequential streams).
    pub seq_pct: u64,
    /// Writeback held back (threshold 0, small batches): the cache fills up past half dirty, so
    /// the sequential cutoff engages. Writes favour the first quarter of the volume, so streams
    /// elsewhere find blocks that are not cached.
    pub dirty: bool,
    /// Read caching on at every create (`read_cache_threshold` > 0).
    pub read_cache: bool,
    /// Share of write-zeroes longer than the engine's 1 MiB chunk.
    pub big_zeroes_pct: u64,
    /// Share of I/O aimed at a small hot window (overlapping writes, discards and reads).
    pub hot_pct: u64,
    /// Share of writes that are a burst of concurrent sequential writes (a deep-queue stream),
    /// then a read of part of it, then a FUA write elsewhere (a bypassed write, a staged copy
    /// of it, a cache flush that does not flush the backing device).
    pub stream_pct: u64,
    /// Share of ops that are FLUSH (a FLUSH also flushes the backing device: few of them leave
    /// bypassed writes volatile for long).
    pub flush_pct: u64,
    pub hot_start: u64,
    /// Faults during create (replay), shutdown, and power cuts that interrupt them.
    pub lifecycle_faults: bool,
    /// After the epochs, the cache device fails for good while clients run: the volume must
    /// degrade, keep serving from the backing device, never return older data, and (while the
    /// cache still reads) lose nothing acknowledged.
    pub cache_failure: Option<Dead>,
    /// Plant the canary bug (FLUSH without a cache flush) in every volume.
    pub canary: bool,
    /// Device reads return the data as of their issue, not their completion (a read that
    /// overlaps a write may return either on a real device). Chosen from a hash of the seed, not
    /// from its random stream, so every seed keeps the rest of its run.
    pub reads_at_issue: bool,
    /// How reclaim batches that run for space treat live dirty blocks: re-log whenever allowed,
    /// always write back, or choose by measured cost (`None`). From the seed's hash, like
    /// `reads_at_issue`.
    pub reclaim: Option<ReclaimChoice>,
}

const HOT_SECTORS: u64 = 48;

impl Swarm {
    pub fn describe_seed(seed: u64) -> Swarm {
        Swarm::from_seed(&World::new(seed))
    }

    pub fn from_seed(world: &World) -> Swarm {
        let mut r = world.rng();
        // Cache and backing faults independently: transient backing errors under a healthy
        // cache must fail no host write (the oracle checks it), so that pair must be common.
        let cache_faulty = r.chance(25);
        let backing_faulty = r.chance(35);
        let dirty = r.chance(25);
        let backing_sectors = if r.chance(25) {
            r.range(1024, 4096) * 8
        } else {
            r.range(64, 4096) * 8
        };
        let hot_pct = if r.chance(50) { r.range(5, 40) } else { 0 };
        let stream_pct = if dirty {
            r.range(10, 50)
        } else if r.chance(30) {
            r.range(0, 20)
        } else {
            0
        };
        let flush_pct = if r.chance(40) {
            r.range(0, 1)
        } else {
            r.range(2, 8)
        };
        Swarm {
            segment_size_kib: [16, 32, 64][r.below(3) as usize],
            nr_segments: r.range(3, 40),
            nr_ram_buffers: r.range(2, 8) as usize,
            backing_sectors,
            clients: if r.chance(15) {
                r.range(17, 32)
            } else {
                r.range(1, 16)
            },
            ops_per_epoch: r.range(30, 250),
            epochs: r.range(1, 4),
            cache_faults_per_10k: if cache_faulty { r.range(1, 80) } else { 0 },
            backing_faults_per_10k: if backing_faulty { r.range(1, 80) } else { 0 },
            write_around: r.chance(10),
            mode_changes: r.chance(20),
            fua_pct: r.range(0, 20),
            discard_pct: r.range(0, 6),
            seq_cutoff_kib: if dirty || r.chance(50) {
                r.range(1, 32)
            } else {
                0
            },
            seq_pct: if dirty {
                r.range(40, 90)
            } else {
                r.range(0, 70)
            },
            dirty,
            read_cache: r.chance(40),
            big_zeroes_pct: if r.chance(25) { r.range(10, 60) } else { 0 },
            hot_pct,
            stream_pct,
            flush_pct,
            hot_start: r.below(backing_sectors - HOT_SECTORS),
            lifecycle_faults: r.chance(25),
            cache_failure: if r.chance(12) {
                Some(if r.chance(50) {
                    Dead::WritesFail
                } else {
                    Dead::Gone
                })
            } else {
                None
            },
            canary: false,
            // One swarm in three.
            reads_at_issue: world.seed_hash() % 3 == 0,
            // Half re-log whenever they may, a quarter by measured cost, a quarter never.
            reclaim: match (world.seed_hash() >> 8) % 4 {
                0 => Some(ReclaimChoice::WriteBack),
                1 => None,
                _ => Some(ReclaimChoice::Relog),
            },
        }
    }
}

/// Options of one create.
#[derive(Debug, Clone)]
struct VolCfg {
    write_around: bool,
    read_cache_threshold: u64,
    writeback_threshold: u64,
    nr_max_batched_writeback: u64,
    /// `sequential_cutoff_min_io_kib` (set by name: engines before it ignore it).
    seq_cutoff_min_io_kib: u64,
}

impl VolCfg {
    fn draw(world: &World, swarm: &Swarm, write_around: bool) -> VolCfg {
        let mut r = world.rng();
        VolCfg {
            write_around,
            read_cache_threshold: if swarm.read_cache {
                r.range(1, 16)
            } else {
                r.range(0, 8)
            },
            writeback_threshold: if swarm.dirty { 0 } else { r.range(0, 100) },
            nr_max_batched_writeback: if swarm.dirty {
                r.range(1, 3)
            } else {
                r.range(1, 32)
            },
            seq_cutoff_min_io_kib: if swarm.dirty || r.chance(50) {
                r.range(0, 8)
            } else {
                [0, 16, 32, 64][r.below(4) as usize]
            },
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    pub property: String,
    pub detail: String,
}

fn fail<T>(property: &str, detail: String) -> Result<T, Failure> {
    Err(Failure {
        property: property.into(),
        detail,
    })
}

/// What a run reached (summed over seeds, the runner prints it and checks the swarm still
/// reaches the paths it was built to reach).
#[derive(Debug, Default, Clone)]
pub struct Coverage {
    pub seeds: u64,
    pub overlapping_writes: u64,
    pub seeds_overlapping: u64,
    pub seeds_half_dirty: u64,
    pub seeds_bypassed: u64,
    pub bypassed_bytes: u64,
    pub seeds_staged: u64,
    pub seeds_staged_and_bypassed: u64,
    pub multi_chunk_zeroes: u64,
    pub multi_chunk_zeroes_fua: u64,
    pub seeds_multi_chunk_zeroes_bypassed: u64,
    pub discards_on_backing: u64,
    pub resumes_write_around_to_back: u64,
    pub resumes_write_back_to_around: u64,
    pub refused_dirty_write_around: u64,
    /// Creates refused after a power cut because the log held superseded copies.
    pub creates_refused_superseded: u64,
    pub creates_with_faults: u64,
    pub creates_failed_with_faults: u64,
    pub creates_cut_by_power: u64,
    pub create_read_errors: u64,
    pub shutdowns_with_faults: u64,
    pub shutdowns_failed: u64,
    pub shutdowns_cut_by_power: u64,
    pub power_cuts: u64,
    pub seeds_cache_failure: u64,
    pub seeds_degraded: u64,
    /// The longest time from the cache's failure to the volume degraded, in ns.
    pub ns_to_degraded_max: u64,
    pub reads_failed_cache_gone: u64,
    /// Bypassed writes the engine retried in the log after the backing device failed them.
    pub bypass_retried_in_log: u64,
    /// Live dirty blocks reclaim moved to the head of the log, and the seeds that did it.
    pub relogged_blocks: u64,
    pub seeds_relogged: u64,
    /// Writes paced while a batch for space ran, and the seeds that paced some.
    pub writes_paced: u64,
    pub seeds_paced: u64,
}

impl Coverage {
    pub fn add(&mut self, o: &Coverage) {
        macro_rules! sum {
            ($($f:ident),*) => { $(self.$f += o.$f;)* };
        }
        sum!(
            seeds,
            overlapping_writes,
            seeds_overlapping,
            seeds_half_dirty,
            seeds_bypassed,
            bypassed_bytes,
            seeds_staged,
            seeds_staged_and_bypassed,
            multi_chunk_zeroes,
            multi_chunk_zeroes_fua,
            seeds_multi_chunk_zeroes_bypassed,
            discards_on_backing,
            resumes_write_around_to_back,
            resumes_write_back_to_around,
            refused_dirty_write_around,
            creates_refused_superseded,
            creates_with_faults,
            creates_failed_with_faults,
            creates_cut_by_power,
            create_read_errors,
            shutdowns_with_faults,
            shutdowns_failed,
            shutdowns_cut_by_power,
            power_cuts,
            seeds_cache_failure,
            seeds_degraded,
            reads_failed_cache_gone,
            bypass_retried_in_log,
            relogged_blocks,
            seeds_relogged,
            writes_paced,
            seeds_paced
        );
        self.ns_to_degraded_max = self.ns_to_degraded_max.max(o.ns_to_degraded_max);
    }
}

/// A finished run: its swarm and what it reached.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub swarm: Swarm,
    pub coverage: Coverage,
}

struct Ctx {
    world: World,
    swarm: Swarm,
    model: RefCell<Model>,
    next_id: Cell<u64>,
    failure: RefCell<Option<Failure>>,
    ops_left: Cell<u64>,
    clients_running: Cell<u64>,
    /// Where the last write ended: the next sequential write starts here.
    seq_next: Cell<u64>,
    cov: RefCell<Coverage>,
    half_dirty: Cell<bool>,
    /// Durability acknowledgements (FUA writes, FLUSHes) so far, and the count at which the
    /// power fails (an epoch that ends "just after an ack").
    durable_acks: Cell<u64>,
    cut_at_ack: Cell<u64>,
    cut_now: Cell<bool>,
    staged: Cell<u64>,
    bypassed: Cell<u64>,
    multi_chunk_zeroes: Cell<u64>,
    /// Writes must not fail now: a write-back volume over a cache without faults (the backing
    /// device's errors are transient, and the engine retries its own bypasses in the log).
    healthy_write_back: Cell<bool>,
    /// Client operations in flight: tag -> the `pick` that chose it (shown when a run hangs).
    ops_in_flight: RefCell<std::collections::BTreeMap<u64, u64>>,
    next_op_tag: Cell<u64>,
    /// Virtual time at which the poller first saw the volume degraded.
    degraded_at: Cell<Option<u64>>,
    /// The volume last dropped had recorded superseded copies in its log (a create may refuse).
    superseded: Cell<bool>,
}

impl Ctx {
    /// A FUA write or FLUSH was acknowledged; `big`: a multi-chunk write-zeroes (the power fails
    /// right after it half of the time in such epochs).
    fn durable_ack(&self, big: bool) {
        let n = self.durable_acks.get() + 1;
        self.durable_acks.set(n);
        let at = self.cut_at_ack.get();
        if at != u64::MAX && (n >= at || big && self.world.rng().chance(50)) {
            self.cut_now.set(true);
        }
    }

    /// Checks the result of a host write (or write-zeroes) against `healthy_write_back`.
    fn check_write<T, E: std::fmt::Display>(&self, what: &str, r: &Result<T, E>) {
        if let Err(e) = r {
            if self.healthy_write_back.get() {
                self.record_failure(
                    "a host write failed on a healthy write-back cache",
                    format!("{what}: {e}"),
                );
            }
        }
    }

    fn record_failure(&self, property: &str, detail: String) {
        let mut f = self.failure.borrow_mut();
        if f.is_none() {
            *f = Some(Failure {
                property: property.into(),
                detail,
            });
        }
    }

    fn n(&self) -> u64 {
        self.swarm.backing_sectors
    }

    /// A start for `len` sectors: in the hot window, in the first quarter (dirty swarms), or
    /// anywhere; a multiple of `align` sectors.
    fn place(&self, len: u64, align: u64) -> u64 {
        let n = self.n();
        let mut r = self.world.rng();
        let (lo, hi) = if r.chance(self.swarm.hot_pct) {
            (self.swarm.hot_start, self.swarm.hot_start + HOT_SECTORS)
        } else if self.swarm.dirty && r.chance(60) {
            (0, n / 4)
        } else {
            (0, n)
        };
        let (lo, hi) = if hi - lo >= len { (lo, hi) } else { (0, n) };
        (lo + r.below(hi - lo - len + 1)) / align * align
    }

    fn write_ticket_begin(&self, s: u64, len: u64, id: u64) -> crate::model::WriteTicket {
        self.model.borrow_mut().begin_write(s, len, id)
    }
}

fn trace_op(ctx: &Ctx, what: &str, s: u64, len: u64) {
    thread_local! {
        static SECTOR: Option<u64> = std::env::var("WB_TRACE_SECTOR").ok().and_then(|v| v.parse().ok());
    }
    if let Some(x) = SECTOR.with(|s| *s) {
        if x >= s && x < s.saturating_add(len) {
            eprintln!("t={} {what} [{s}, +{len})", ctx.world.now_ns());
        }
    }
}

/// A lifecycle event, printed when tracing a sector.
fn note(world: &World, what: &str) {
    if std::env::var("WB_TRACE_SECTOR").is_ok() {
        eprintln!("t={} -- {what}", world.now_ns());
    }
}

fn fill(buf: &mut [u8], start_sector: u64, id: u64) {
    for (i, chunk) in buf.chunks_mut(512).enumerate() {
        sector_bytes(id, start_sector + i as u64, chunk);
    }
}

async fn do_write(ctx: &Ctx, vol: &Vol) {
    let n = ctx.n();
    let (len, aligned, seq) = {
        let mut r = ctx.world.rng();
        if r.chance(50) {
            (
                r.range(1, 16).min(n / 8) * 8,
                true,
                r.chance(ctx.swarm.seq_pct),
            )
        } else {
            (r.range(1, 64).min(n), false, r.chance(ctx.swarm.seq_pct))
        }
    };
    let s = if seq {
        let next = ctx.seq_next.get();
        if next + len <= n {
            next
        } else {
            0
        }
    } else {
        ctx.place(len, if aligned { 8 } else { 1 })
    };
    ctx.seq_next.set(s + len);
    let fua = ctx.world.rng().chance(ctx.swarm.fua_pct);
    let id = ctx.next_id.get();
    ctx.next_id.set(id + 1);
    let mut buf = vec![0u8; len as usize * 512];
    fill(&mut buf, s, id);
    let w = ctx.write_ticket_begin(s, len, id);
    trace_op(ctx, &format!("write id={id} fua={fua} begin"), s, len);
    let r = vol.write(s, &buf, fua).await;
    trace_op(ctx, &format!("write id={id} end {r:?}"), s, len);
    ctx.check_write("write", &r);
    ctx.model.borrow_mut().end_write(&w, r.is_ok(), fua);
    if fua && r.is_ok() {
        ctx.durable_ack(false);
    }
}

/// A deep-queue sequential stream: concurrent writes continuing the stream, then (often) a read
/// of a few blocks of it and a small FUA write elsewhere.
async fn do_stream(ctx: &Ctx, vol: &Vol) {
    let n = ctx.n();
    let (k, each, read_back, fua_after) = {
        let mut r = ctx.world.rng();
        (r.range(2, 8), r.range(1, 8) * 8, r.chance(70), r.chance(50))
    };
    let total = (k * each).min(n / 8 * 8);
    let next = ctx.seq_next.get();
    let start = if next + total <= n {
        next
    } else {
        ctx.place(total, 8)
    };
    ctx.seq_next.set(start + total);
    let mut writes = Vec::new();
    let mut s = start;
    while s < start + total {
        let len = each.min(start + total - s);
        let id = ctx.next_id.get();
        ctx.next_id.set(id + 1);
        let mut buf = vec![0u8; len as usize * 512];
        fill(&mut buf, s, id);
        let w = ctx.write_ticket_begin(s, len, id);
        trace_op(ctx, &format!("stream write id={id} begin"), s, len);
        writes.push(async move {
            let r = vol.write(s, &buf, false).await;
            trace_op(ctx, &format!("stream write id={id} end {r:?}"), s, len);
            ctx.check_write("stream write", &r);
            ctx.model.borrow_mut().end_write(&w, r.is_ok(), false);
        });
        s += len;
    }
    futures::future::join_all(writes).await;
    if read_back && total >= 8 {
        let (first, blocks) = {
            let mut r = ctx.world.rng();
            let blocks = r.range(1, 2).min(total / 8);
            let first = start.div_ceil(8) * 8;
            let span = (start + total).saturating_sub(first + blocks * 8) / 8;
            (first + r.below(span + 1) * 8, blocks)
        };
        if first + blocks * 8 <= n {
            read_checked(ctx, vol, first, blocks * 8).await;
        }
    }
    if fua_after {
        let s = ctx.place(8, 8);
        let id = ctx.next_id.get();
        ctx.next_id.set(id + 1);
        let mut buf = vec![0u8; 8 * 512];
        fill(&mut buf, s, id);
        let w = ctx.write_ticket_begin(s, 8, id);
        trace_op(ctx, &format!("write id={id} fua=true begin"), s, 8);
        let r = vol.write(s, &buf, true).await;
        trace_op(ctx, &format!("write id={id} end {r:?}"), s, 8);
        ctx.check_write("FUA write after a stream", &r);
        ctx.model.borrow_mut().end_write(&w, r.is_ok(), true);
        if r.is_ok() {
            ctx.durable_ack(false);
        }
    }
}

async fn do_read(ctx: &Ctx, vol: &Vol) {
    let n = ctx.n();
    let (len, recent) = {
        let mut r = ctx.world.rng();
        (r.range(1, 128).min(n), r.chance(25))
    };
    let s = if recent {
        // Just behind the sequential stream: what may have bypassed the cache.
        let back = len + ctx.world.rng().below(512);
        ctx.seq_next.get().saturating_sub(back).min(n - len)
    } else {
        ctx.place(len, 1)
    };
    read_checked(ctx, vol, s, len).await;
}

async fn read_checked(ctx: &Ctx, vol: &Vol, s: u64, len: u64) {
    let mut buf = vec![0u8; len as usize * 512];
    let started = ctx.model.borrow_mut().begin_read();
    trace_op(ctx, "read begin", s, len);
    let r = vol.read(s, &mut buf).await;
    trace_op(
        ctx,
        &format!("read end {:?}", r.as_ref().map(|_| ())),
        s,
        len,
    );
    if r.is_ok() {
        let checked = ctx.model.borrow_mut().check_read(started, s, &buf);
        if let Err(e) = checked {
            ctx.record_failure("read returned stale or foreign data", e);
        }
    } else {
        ctx.model.borrow_mut().end_read(started);
    }
}

async fn do_discard(ctx: &Ctx, vol: &Vol) {
    let n = ctx.n();
    let len = {
        let mut r = ctx.world.rng();
        if r.chance(15) {
            r.range(64, 1024).min(n)
        } else {
            r.range(1, 64).min(n)
        }
    };
    let s = ctx.place(len, 1);
    // The whole range becomes undefined: the backing device may zero any of it, and the engine
    // drops the cached copies of the blocks it covers fully.
    let w = ctx.write_ticket_begin(s, len, UNDEF);
    if ctx.world.rng().chance(50) {
        // Let a sequential stream run over what was discarded (the sequential cutoff must not
        // bypass blocks whose old copy replay could map again).
        ctx.seq_next.set(s.div_ceil(8) * 8);
    }
    trace_op(ctx, "discard begin", s, len);
    let r = vol.discard(s, len).await;
    trace_op(ctx, "discard end", s, len);
    ctx.model.borrow_mut().end_write(&w, r.is_ok(), false);
}

async fn do_write_zeroes(ctx: &Ctx, vol: &Vol) {
    let n = ctx.n();
    let (len, big) = {
        let mut r = ctx.world.rng();
        if n > 2048 + 512 && r.chance(ctx.swarm.big_zeroes_pct) {
            (r.range(2049, 3 * 2048 + 700).min(n - 256), true)
        } else {
            (r.range(1, 64).min(n), false)
        }
    };
    let fua = ctx
        .world
        .rng()
        .chance(if big { 60 } else { ctx.swarm.fua_pct });
    let s = ctx.place(len, 1);
    if big {
        ctx.multi_chunk_zeroes.set(ctx.multi_chunk_zeroes.get() + 1);
        let mut c = ctx.cov.borrow_mut();
        c.multi_chunk_zeroes += 1;
        c.multi_chunk_zeroes_fua += fua as u64;
    }
    ctx.seq_next.set(s + len);
    let w = ctx.write_ticket_begin(s, len, 0);
    trace_op(ctx, &format!("write_zeroes fua={fua} begin"), s, len);
    let r = vol.write_zeroes(s, len, fua).await;
    trace_op(ctx, &format!("write_zeroes end {r:?}"), s, len);
    ctx.check_write("write_zeroes", &r);
    ctx.model.borrow_mut().end_write(&w, r.is_ok(), fua);
    if fua && r.is_ok() {
        ctx.durable_ack(big);
    }
}

async fn client(ctx: Rc<Ctx>, vol: Vol) {
    loop {
        if ctx.ops_left.get() == 0 || ctx.failure.borrow().is_some() {
            break;
        }
        ctx.ops_left.set(ctx.ops_left.get() - 1);
        let pick = ctx.world.rng().below(100);
        let me = ctx.next_op_tag.get();
        ctx.next_op_tag.set(me + 1);
        ctx.ops_in_flight.borrow_mut().insert(me, pick);
        let flush_end = 75 + ctx.swarm.flush_pct;
        let discard_end = flush_end + ctx.swarm.discard_pct;
        if pick < 40 {
            if ctx.world.rng().chance(ctx.swarm.stream_pct) {
                do_stream(&ctx, &vol).await;
            } else {
                do_write(&ctx, &vol).await;
            }
        } else if pick < 75 {
            do_read(&ctx, &vol).await;
        } else if pick < flush_end {
            let started = ctx.model.borrow_mut().begin_flush();
            trace_op(&ctx, "flush begin", 0, u64::MAX);
            let r = vol.flush().await;
            trace_op(&ctx, &format!("flush end {r:?}"), 0, u64::MAX);
            if r.is_ok() {
                ctx.model.borrow_mut().end_flush(started);
                ctx.durable_ack(false);
            }
        } else if pick < discard_end {
            do_discard(&ctx, &vol).await;
        } else if pick < discard_end + 9 {
            do_write_zeroes(&ctx, &vol).await;
        } else if pick < discard_end + 13 {
            let (key, v) = {
                let mut r = ctx.world.rng();
                match r.below(7) {
                    0 if !ctx.swarm.dirty => ("writeback_threshold", r.range(0, 100)),
                    5 => ("sequential_cutoff_kib", r.range(0, 32)),
                    6 => ("sequential_cutoff_min_io_kib", r.range(0, 64)),
                    1 | 0 => ("nr_max_batched_writeback", r.range(1, 8)),
                    2 => ("read_cache_threshold", r.range(0, 16)),
                    3 => ("sync_data_interval", r.range(0, 1)),
                    _ => ("update_sb_record_interval", r.range(0, 1)),
                }
            };
            set_option(&vol, key, v);
        } else if pick < discard_end + 14 {
            let _ = vol.drop_caches().await;
        } else {
            let d = ctx.world.rng().range(1_000, 200_000);
            ctx.world.after(d).await;
        }
        ctx.ops_in_flight.borrow_mut().remove(&me);
    }
    ctx.clients_running.set(ctx.clients_running.get() - 1);
}

async fn poller(vol: Vol, ctx: Rc<Ctx>, stop: Rc<Cell<bool>>) {
    let world = ctx.world.clone();
    while !stop.get() {
        vol.poll_all();
        vol.check_invariants();
        if !ctx.half_dirty.get() {
            let s = vol.status();
            if s.nr_dirty_cache_blocks * 2 >= s.nr_cache_blocks {
                ctx.half_dirty.set(true);
            }
        }
        if ctx.degraded_at.get().is_none() && vol.status().state == "degraded" {
            ctx.degraded_at.set(Some(world.now_ns()));
        }
        let d = world.rng().range(5_000, 300_000);
        world.after(d).await;
    }
}

fn set_faults(disks: &[&SimDisk], on: bool, boost: u64) {
    for d in disks {
        let mut st = d.st.borrow_mut();
        st.faults_enabled = on;
        st.fault_boost_per_10k = if on { boost } else { 0 };
    }
}

/// Sets a tunable; one this engine does not know (an older engine) is skipped.
fn set_option(vol: &Vol, key: &str, v: u64) {
    match vol.set_option(key, v) {
        Ok(()) | Err(ConfigError::UnknownKey { .. }) => {}
        Err(e) => panic!("set_option {key}={v}: {e}"),
    }
}

fn create_options(swarm: &Swarm, cfg: &VolCfg, uuid_seed: u64) -> CreateOptions {
    let mut options = Options {
        write_around_mode: cfg.write_around,
        writeback_threshold: cfg.writeback_threshold,
        read_cache_threshold: cfg.read_cache_threshold,
        sequential_cutoff_kib: swarm.seq_cutoff_kib,
        nr_max_batched_writeback: cfg.nr_max_batched_writeback,
        ..Options::default()
    };
    let _ = options.set(
        "sequential_cutoff_min_io_kib",
        cfg.seq_cutoff_min_io_kib,
        true,
    );
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&uuid_seed.to_le_bytes());
    CreateOptions {
        options,
        segment_size_kib: Some(swarm.segment_size_kib),
        force_format: false,
        new_format_uuid: uuid,
        nr_ram_buffers: swarm.nr_ram_buffers,
        accept_damaged_log: false,
    }
}

enum Created {
    Ok(Vol),
    Err(CreateError),
    /// A power cut at `cut_at` came first.
    Cut,
    Stalled,
}

/// Runs create; with `cut_at`, a power cut may interrupt it (the caller cuts the power).
fn try_create(
    world: &World,
    cache: &SimDisk,
    backing: &SimDisk,
    opts: CreateOptions,
    cut_at: Option<u64>,
) -> Created {
    let (c, b, rt) = (cache.clone(), backing.clone(), SimRuntime(world.clone()));
    let out = Rc::new(RefCell::new(None));
    let o = out.clone();
    world.spawn_task(async move {
        let r = Volume::create(c, b, rt, opts).await;
        *o.borrow_mut() = Some(r);
    });
    let w = world.clone();
    let end = world.run_until(|| out.borrow().is_some() || cut_at.is_some_and(|t| w.now_ns() >= t));
    let r = out.borrow_mut().take();
    match (r, end) {
        (Some(Ok((v, _))), _) => Created::Ok(v),
        (Some(Err(e)), _) => Created::Err(e),
        (None, RunEnd::Stopped) => Created::Cut,
        (None, RunEnd::Stalled) => Created::Stalled,
    }
}

fn power_cut(ctx: &Ctx, cache: &SimDisk, backing: &SimDisk) {
    note(&ctx.world, "power cut");
    ctx.world.kill_all();
    cache.power_cut();
    backing.power_cut();
    ctx.model.borrow_mut().reset_in_flight();
    ctx.cov.borrow_mut().power_cuts += 1;
}

/// Counters of a volume about to be dropped, into the coverage.
fn retire(ctx: &Ctx, vol: &Vol) {
    let c = vol.status().counters;
    ctx.cov.borrow_mut().bypass_retried_in_log += c.bypass_retried_in_log;
    ctx.cov.borrow_mut().relogged_blocks += c.relogged_blocks;
    ctx.cov.borrow_mut().writes_paced += c.writes_paced;
    ctx.staged.set(ctx.staged.get() + c.staged_blocks);
    ctx.bypassed.set(ctx.bypassed.get() + c.bytes_bypassed);
}

/// Opens the volume for the next epoch (the first one too) and checks every sector: `crashed`
/// says whether a power cut came since the model last knew everything was durable. Faults and
/// power cuts may hit create; a create that fails under faults is acceptable only if a create
/// after the faults stop succeeds and every acknowledged write is still there. A switch to
/// write-around refused for dirty data drains in write-back mode first.
#[allow(clippy::too_many_arguments)]
fn open_volume(
    ctx: &Rc<Ctx>,
    cache: &SimDisk,
    backing: &SimDisk,
    cfg: &VolCfg,
    mut crashed: bool,
    uuid_seed: u64,
    first: bool,
) -> Result<Option<Vol>, Failure> {
    let world = &ctx.world;
    let swarm = &ctx.swarm;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (faults, boost, cut_at) = {
            let mut r = world.rng();
            let faults = swarm.lifecycle_faults && !first && attempt == 1 && r.chance(60);
            let boost = if faults { r.range(20, 1500) } else { 0 };
            let cut = swarm.lifecycle_faults && !first && attempt <= 2 && r.chance(20);
            (
                faults,
                boost,
                cut.then(|| world.now_ns() + r.range(1_000, 400_000)),
            )
        };
        if faults {
            ctx.cov.borrow_mut().creates_with_faults += 1;
        }
        let read_errors_before = cache.st.borrow().read_errors;
        set_faults(&[cache, backing], faults, boost);
        let opts = create_options(swarm, cfg, uuid_seed * 16 + attempt);
        note(
            world,
            &format!("create {cfg:?} faults={faults} boost={boost} cut_at={cut_at:?}"),
        );
        let r = try_create(world, cache, backing, opts, cut_at);
        set_faults(&[cache, backing], false, 0);
        note(
            world,
            &format!(
                "create -> {}",
                match &r {
                    Created::Ok(_) => "ok".to_string(),
                    Created::Err(e) => e.to_string(),
                    Created::Cut => "cut".into(),
                    Created::Stalled => "stalled".into(),
                }
            ),
        );
        ctx.cov.borrow_mut().create_read_errors +=
            cache.st.borrow().read_errors - read_errors_before;
        match r {
            Created::Ok(vol) => {
                vol.set_reclaim_choice(swarm.reclaim);
                vol.check_invariants();
                verify_all(ctx, &vol, crashed, "recovery lost or resurrected data")?;
                ctx.superseded.set(false);
                return Ok(Some(vol));
            }
            Created::Cut => {
                ctx.cov.borrow_mut().creates_cut_by_power += 1;
                power_cut(ctx, cache, backing);
                crashed = true;
            }
            Created::Err(CreateError::SupersededCopiesInLog) if crashed && ctx.superseded.get() => {
                // The log holds copies that degraded write-throughs superseded, and no drained
                // shutdown forgot them: refusing is right (replaying would return older data).
                // The operator re-formats; the run ends here.
                ctx.cov.borrow_mut().creates_refused_superseded += 1;
                return Ok(None);
            }
            Created::Err(CreateError::DirtyInWriteAround { .. }) if cfg.write_around => {
                ctx.cov.borrow_mut().refused_dirty_write_around += 1;
                // Next: create in write-back mode, verify, drain, shut down, then the asked mode.
                let v =
                    match try_create(
                        world,
                        cache,
                        backing,
                        create_options(
                            swarm,
                            &VolCfg {
                                write_around: false,
                                ..cfg.clone()
                            },
                            uuid_seed * 16 + 15,
                        ),
                        None,
                    ) {
                        Created::Ok(v) => v,
                        Created::Err(e) => return fail(
                            "create in write-back mode failed after a refused write-around create",
                            e.to_string(),
                        ),
                        _ => return fail("create stalled", String::new()),
                    };
                v.check_invariants();
                verify_all(ctx, &v, crashed, "recovery lost or resurrected data")?;
                crashed = false;
                drain(ctx, &v)?;
                retire(ctx, &v);
                shutdown_clean(ctx, &v)?;
                drop(v);
            }
            Created::Err(e) if faults => {
                ctx.cov.borrow_mut().creates_failed_with_faults += 1;
                if attempt > 4 {
                    return fail("create keeps failing", e.to_string());
                }
                // Try again once the faults stop; that create must succeed with all the data.
            }
            Created::Err(e) => return fail("create failed", e.to_string()),
            Created::Stalled => return fail("create stalled", String::new()),
        }
    }
}

/// Clean shutdown without faults and without power loss (it must succeed).
fn shutdown_clean(ctx: &Ctx, vol: &Vol) -> Result<(), Failure> {
    note(&ctx.world, "clean shutdown (no faults)");
    let v = vol.clone();
    match ctx.world.block_on(async move { v.shutdown().await }) {
        Some(Ok(())) => {}
        Some(Err(e)) => return fail("clean shutdown failed without faults", e.to_string()),
        None => return fail("shutdown stalled", String::new()),
    }
    ctx.model.borrow_mut().all_durable();
    ctx.world.kill_all();
    Ok(())
}

/// drop_caches without faults: everything dirty reaches the backing device.
fn drain(ctx: &Rc<Ctx>, vol: &Vol) -> Result<(), Failure> {
    note(&ctx.world, "drain");
    let stop = Rc::new(Cell::new(false));
    ctx.world
        .spawn_task(poller(vol.clone(), ctx.clone(), stop.clone()));
    let v = vol.clone();
    let r = ctx.world.block_on(async move { v.drop_caches().await });
    stop.set(true);
    match r {
        Some(Ok(())) => {}
        Some(Err(e)) => return fail("drop_caches failed without faults", e.to_string()),
        None => return fail("drop_caches stalled", String::new()),
    }
    if vol.status().nr_dirty_cache_blocks != 0 {
        return fail(
            "drop_caches left dirty blocks",
            format!("{}", vol.status().nr_dirty_cache_blocks),
        );
    }
    vol.check_invariants();
    Ok(())
}

/// Reads the whole volume and checks each sector: after a power cut against what may survive
/// (then the value found is the new durable truth), otherwise as one read.
fn verify_all(ctx: &Ctx, vol: &Vol, crashed: bool, what: &str) -> Result<Vec<u8>, Failure> {
    let world = &ctx.world;
    let model = &ctx.model;
    let n = model.borrow().nr_sectors();
    let started = model.borrow_mut().begin_read();
    let v = vol.clone();
    let data = world
        .block_on(async move {
            let mut buf = vec![0u8; n as usize * 512];
            let mut s = 0;
            while s < n {
                let len = 256.min(n - s);
                v.read(s, &mut buf[s as usize * 512..(s + len) as usize * 512])
                    .await?;
                s += len;
            }
            Ok::<_, writeboost::engine::IoError>(buf)
        })
        .ok_or_else(|| Failure {
            property: "verify stalled".into(),
            detail: String::new(),
        })?
        .map_err(|e| Failure {
            property: "verify read failed".into(),
            detail: e.to_string(),
        })?;
    let mut m = model.borrow_mut();
    if !crashed {
        return m
            .check_read(started, 0, &data)
            .map(|()| data)
            .map_err(|e| Failure {
                property: what.into(),
                detail: e,
            });
    }
    m.end_read(started);
    for x in 0..n {
        let got = decode(&data[x as usize * 512..(x as usize + 1) * 512], x);
        let allowed = m.after_crash(x);
        match got {
            // Discarded and not written since: stays undefined (it may change on its own).
            Some(_) if matches!(allowed, Allowed::Any) => m.collapse(x, UNDEF),
            Some(id) if allowed.permits(id) => m.collapse(x, id),
            Some(id) => {
                return fail(
                    what,
                    format!("sector {x}: found write id {id}, allowed {allowed:?}"),
                )
            }
            None => return fail(what, format!("sector {x}: bytes no write produced")),
        }
    }
    Ok(data)
}

#[allow(clippy::result_large_err)]
pub fn run(seed: u64) -> Result<Outcome, (Swarm, Failure)> {
    run_with(seed, false)
}

#[allow(clippy::result_large_err)]
pub fn run_with(seed: u64, canary: bool) -> Result<Outcome, (Swarm, Failure)> {
    run_traced(seed, canary).0
}

/// A run and its execution trace (hash, events), failed or not.
#[allow(clippy::result_large_err)]
pub fn run_traced(seed: u64, canary: bool) -> (Result<Outcome, (Swarm, Failure)>, (u64, u64)) {
    let world = World::new(seed);
    let mut swarm = Swarm::from_seed(&world);
    swarm.canary = canary;
    let r = run_swarm(&world, &swarm);
    let trace = world.trace_summary();
    // Tasks hold the world (and the disks): break the cycle.
    world.kill_all();
    let r = match r {
        Ok(coverage) => Ok(Outcome { swarm, coverage }),
        Err(f) => Err((swarm, f)),
    };
    (r, trace)
}

fn run_swarm(world: &World, swarm: &Swarm) -> Result<Coverage, Failure> {
    let cache = SimDisk::new(
        world,
        DiskConfig {
            name: "sim-cache",
            size_bytes: (1 << 20) + swarm.nr_segments * swarm.segment_size_kib as u64 * 1024,
            read_error_per_10k: swarm.cache_faults_per_10k,
            write_error_per_10k: swarm.cache_faults_per_10k,
            flush_error_per_10k: swarm.cache_faults_per_10k / 4,
            latency: Latency::Uniform {
                min_ns: 2_000,
                max_ns: 40_000,
            },
        },
    );
    let backing = SimDisk::new(
        world,
        DiskConfig {
            name: "sim-backing",
            size_bytes: swarm.backing_sectors * 512,
            read_error_per_10k: swarm.backing_faults_per_10k,
            write_error_per_10k: swarm.backing_faults_per_10k,
            flush_error_per_10k: swarm.backing_faults_per_10k / 4,
            latency: Latency::Uniform {
                min_ns: 20_000,
                max_ns: 400_000,
            },
        },
    );
    cache.st.borrow_mut().read_at_issue = swarm.reads_at_issue;
    backing.st.borrow_mut().read_at_issue = swarm.reads_at_issue;
    let ctx = Rc::new(Ctx {
        world: world.clone(),
        swarm: swarm.clone(),
        model: RefCell::new(Model::new(swarm.backing_sectors)),
        next_id: Cell::new(1),
        failure: RefCell::new(None),
        ops_left: Cell::new(0),
        clients_running: Cell::new(0),
        seq_next: Cell::new(0),
        cov: RefCell::new(Coverage::default()),
        half_dirty: Cell::new(false),
        durable_acks: Cell::new(0),
        cut_at_ack: Cell::new(u64::MAX),
        cut_now: Cell::new(false),
        staged: Cell::new(0),
        bypassed: Cell::new(0),
        multi_chunk_zeroes: Cell::new(0),
        healthy_write_back: Cell::new(false),
        ops_in_flight: RefCell::new(Default::default()),
        next_op_tag: Cell::new(0),
        degraded_at: Cell::new(None),
        superseded: Cell::new(false),
    });
    run_epochs(&ctx, &cache, &backing).map_err(|mut f| {
        let c = ctx.cov.borrow();
        if c.creates_with_faults > 0 {
            f.detail += &format!(
                " [after {} creates under faults ({} failed, {} cache read errors)]",
                c.creates_with_faults, c.creates_failed_with_faults, c.create_read_errors
            );
        }
        f
    })
}

/// After `run_until`: the first recorded failure, a stall (nothing can run) or a missed deadline
/// fail the run, with the given properties and detail.
fn check_run_end(
    ctx: &Ctx,
    end: RunEnd,
    deadline: u64,
    stall: &str,
    late: &str,
    detail: impl Fn() -> String,
) -> Result<(), Failure> {
    if let Some(f) = ctx.failure.borrow_mut().take() {
        return Err(f);
    }
    if end == RunEnd::Stalled {
        return fail(stall, detail());
    }
    if ctx.world.now_ns() > deadline {
        return fail(late, detail());
    }
    Ok(())
}

/// One full-block write (1-3 blocks) outside the clients, checked by the model.
fn phase_write(
    ctx: &Rc<Ctx>,
    vol: &Vol,
    fua: bool,
) -> Result<Result<(), writeboost::engine::IoError>, Failure> {
    let n = ctx.n();
    let len = 8 * ctx.world.rng().range(1, 4).min(n / 8);
    let s = ctx.place(len, 8);
    let id = ctx.next_id.get();
    ctx.next_id.set(id + 1);
    let mut buf = vec![0u8; len as usize * 512];
    fill(&mut buf, s, id);
    let wt = ctx.write_ticket_begin(s, len, id);
    let v = vol.clone();
    let r = ctx
        .world
        .block_on(async move { v.write(s, &buf, fua).await })
        .ok_or_else(|| Failure {
            property: "a write after the cache failed stalled".into(),
            detail: String::new(),
        })?;
    ctx.model.borrow_mut().end_write(&wt, r.is_ok(), fua);
    note(
        &ctx.world,
        &format!("phase write [{s}, +{len}) fua={fua}: {r:?}"),
    );
    Ok(r)
}

/// The cache device fails for good at a seeded instant while clients run (the backing device
/// has no faults). Reads may fail but never return older data; the volume must become
/// degraded (the flusher retries a failed segment write for at most a second); writes that
/// begin once it is degraded and a cache that still reads must succeed. Returns true if the
/// run may go on to the final drain (the cache still reads), false if the cache is gone (every
/// sector is then read once: an error or allowed data).
fn cache_failure_phase(
    ctx: &Rc<Ctx>,
    cache: &SimDisk,
    vol: &Vol,
    kind: Dead,
    write_around: bool,
) -> Result<bool, Failure> {
    let world = &ctx.world;
    set_faults(&[cache], false, 0);
    ctx.cov.borrow_mut().seeds_cache_failure += 1;
    note(world, &format!("cache failure phase: {kind:?}"));
    ctx.ops_in_flight.borrow_mut().clear();
    ctx.ops_left.set(ctx.swarm.ops_per_epoch);
    ctx.clients_running.set(ctx.swarm.clients);
    let stop = Rc::new(Cell::new(false));
    world.spawn_task(poller(vol.clone(), ctx.clone(), stop.clone()));
    for _ in 0..ctx.swarm.clients {
        world.spawn_task(client(ctx.clone(), vol.clone()));
    }
    ctx.healthy_write_back.set(false);
    let die_at = world.now_ns() + world.rng().range(0, 5_000_000);
    let deadline = world.now_ns() + 600_000_000_000;
    let (c2, w2) = (ctx.clone(), world.clone());
    world.run_until(|| {
        c2.failure.borrow().is_some() || c2.clients_running.get() == 0 || w2.now_ns() >= die_at
    });
    cache.st.borrow_mut().dead = Some(kind);
    note(world, "the cache device failed");
    let (c2, w2) = (ctx.clone(), world.clone());
    let end = world.run_until(|| {
        c2.failure.borrow().is_some() || c2.clients_running.get() == 0 || w2.now_ns() > deadline
    });
    check_run_end(
        ctx,
        end,
        deadline,
        "deadlock after the cache failed",
        "liveness: clients did not finish in 600 s of virtual time after the cache failed",
        || {
            format!(
                "{kind:?}: {} clients still running, ops in flight (pick) {:?}; {:?}",
                ctx.clients_running.get(),
                ctx.ops_in_flight.borrow().values().collect::<Vec<_>>(),
                vol.status()
            )
        },
    )?;
    // FUA writes (they may fail: the cache cannot make them durable) make the flusher write
    // segments; one that keeps failing degrades the volume within a second. (No sequential
    // cutoff: these must go to the log. A write-around volume writes no segments: it need not
    // degrade.)
    set_option(vol, "sequential_cutoff_kib", 0);
    for _ in 0..4 {
        let _may_fail = phase_write(ctx, vol, true)?;
    }
    let w = world.clone();
    world.block_on(async move { w.after(2_000_000_000).await });
    let (refusals, first_refusal) = {
        let c = cache.st.borrow();
        (c.dead_refusals, c.first_refusal_ns)
    };
    let state = vol.status().state;
    if refusals > 0 && state != "degraded" && !write_around {
        return fail(
            "the cache failed for good but the volume is not degraded",
            format!(
                "{kind:?}: {refusals} refused operations, state {state}; {:?}",
                vol.status()
            ),
        );
    }
    if let (Some(t), Some(f)) = (ctx.degraded_at.get(), first_refusal) {
        let mut c = ctx.cov.borrow_mut();
        c.seeds_degraded += 1;
        c.ns_to_degraded_max = c.ns_to_degraded_max.max(t.saturating_sub(f));
    }
    // Writes on the degraded volume go to the backing device and must succeed where the cache
    // is not needed: full-block writes without FUA.
    for _ in 0..8 {
        let r = phase_write(ctx, vol, false)?;
        if state != "degraded" {
            continue;
        }
        if let Err(e) = r {
            return fail(
                "a full-block write failed on the degraded volume",
                e.to_string(),
            );
        }
    }
    stop.set(true);
    if kind == Dead::WritesFail {
        // The cache still reads: drop_caches (in the final drain) must get every acknowledged
        // write to the backing device.
        return Ok(true);
    }
    // Gone: every sector either fails to read or holds allowed data.
    let n = ctx.n();
    for s in (0..n).step_by(8) {
        let len = 8.min(n - s);
        let started = ctx.model.borrow_mut().begin_read();
        let v = vol.clone();
        let r = world
            .block_on(async move {
                let mut b = vec![0u8; len as usize * 512];
                v.read(s, &mut b).await.map(|()| b)
            })
            .ok_or_else(|| Failure {
                property: "a read of the volume stalled after the cache was gone".into(),
                detail: String::new(),
            })?;
        match r {
            Ok(buf) => {
                if let Err(e) = ctx.model.borrow_mut().check_read(started, s, &buf) {
                    return fail("a read returned stale data after the cache was gone", e);
                }
            }
            Err(_) => {
                ctx.model.borrow_mut().end_read(started);
                ctx.cov.borrow_mut().reads_failed_cache_gone += 1;
            }
        }
    }
    Ok(false)
}

fn run_epochs(ctx: &Rc<Ctx>, cache: &SimDisk, backing: &SimDisk) -> Result<Coverage, Failure> {
    let (world, swarm) = (&ctx.world, &ctx.swarm);
    let (cache, backing) = (cache.clone(), backing.clone());
    set_faults(&[&cache, &backing], false, 0);
    let mut cfg = VolCfg::draw(world, swarm, swarm.write_around);
    let mut vol = open_volume(ctx, &cache, &backing, &cfg, false, 1, true)?
        .expect("a first create is never refused for superseded copies");
    if swarm.canary {
        vol.plant_bug_skip_cache_flush();
    }
    for epoch in 0..swarm.epochs {
        set_faults(&[&cache, &backing], true, 0);
        ctx.healthy_write_back
            .set(!cfg.write_around && swarm.cache_faults_per_10k == 0);
        ctx.ops_left.set(swarm.ops_per_epoch);
        ctx.clients_running.set(swarm.clients);
        let stop = Rc::new(Cell::new(false));
        world.spawn_task(poller(vol.clone(), ctx.clone(), stop.clone()));
        for _ in 0..swarm.clients {
            world.spawn_task(client(ctx.clone(), vol.clone()));
        }
        // 0: power cut at a random instant; 1: quiesce, clean shutdown; 2: quiesce, power cut;
        // 3: power cut just after the k-th durability acknowledgement of the epoch.
        let mode = world.rng().below(4);
        ctx.cut_now.set(false);
        ctx.cut_at_ack.set(if mode == 3 {
            ctx.durable_acks.get() + world.rng().range(1, 12)
        } else {
            u64::MAX
        });
        note(world, &format!("epoch {epoch} mode {mode}"));
        let cut_at = world.now_ns() + world.rng().range(100_000, 20_000_000);
        let deadline = world.now_ns() + 600_000_000_000;
        let c2 = ctx.clone();
        let w2 = world.clone();
        let end = world.run_until(|| {
            c2.failure.borrow().is_some()
                || c2.clients_running.get() == 0
                || (mode == 0 && w2.now_ns() >= cut_at)
                || c2.cut_now.get()
                || w2.now_ns() > deadline
        });
        check_run_end(
            ctx,
            end,
            deadline,
            "deadlock: nothing can run",
            "liveness: epoch did not finish in 600 s of virtual time",
            || format!("epoch {epoch}"),
        )?;
        ctx.healthy_write_back.set(false);
        retire(ctx, &vol);
        let crashed = match mode {
            1 => {
                // Quiesced: clean shutdown; faults may hit it, a power cut may interrupt it.
                let (faults, boost, cut_at) = {
                    let mut r = world.rng();
                    let faults = swarm.lifecycle_faults && r.chance(50);
                    let boost = if faults { r.range(20, 1500) } else { 0 };
                    let cut = swarm.lifecycle_faults && r.chance(20);
                    (
                        faults,
                        boost,
                        cut.then(|| world.now_ns() + r.range(1_000, 600_000)),
                    )
                };
                if faults {
                    ctx.cov.borrow_mut().shutdowns_with_faults += 1;
                }
                note(
                    world,
                    &format!("shutdown faults={faults} boost={boost} cut_at={cut_at:?}"),
                );
                set_faults(&[&cache, &backing], faults, boost);
                let out = Rc::new(RefCell::new(None));
                let (o, v) = (out.clone(), vol.clone());
                world.spawn_task(async move {
                    let r = v.shutdown().await;
                    *o.borrow_mut() = Some(r);
                });
                let w = world.clone();
                let end = world.run_until(|| {
                    out.borrow().is_some() || cut_at.is_some_and(|t| w.now_ns() >= t)
                });
                set_faults(&[&cache, &backing], false, 0);
                let r = out.borrow_mut().take();
                match r {
                    Some(Ok(())) => {
                        ctx.model.borrow_mut().all_durable();
                        stop.set(true);
                        world.kill_all();
                        false
                    }
                    Some(Err(_)) if faults => {
                        // What the failed shutdown left in RAM is gone; the devices' volatile
                        // caches are not to be trusted either.
                        ctx.cov.borrow_mut().shutdowns_failed += 1;
                        power_cut(ctx, &cache, &backing);
                        true
                    }
                    Some(Err(e)) => return fail("clean shutdown failed", e.to_string()),
                    None if end == RunEnd::Stopped && cut_at.is_some() => {
                        ctx.cov.borrow_mut().shutdowns_cut_by_power += 1;
                        power_cut(ctx, &cache, &backing);
                        true
                    }
                    None => return fail("shutdown stalled", String::new()),
                }
            }
            _ => {
                // A power cut at a random instant (0), after quiescing (2), just after an
                // acknowledgement (3).
                power_cut(ctx, &cache, &backing);
                true
            }
        };
        ctx.superseded
            .set(ctx.superseded.get() || vol.status().superseded_copies_in_log);
        drop(vol);
        let write_around = if swarm.mode_changes && world.rng().chance(50) {
            let to = !cfg.write_around;
            let mut c = ctx.cov.borrow_mut();
            if to {
                c.resumes_write_back_to_around += 1;
            } else {
                c.resumes_write_around_to_back += 1;
            }
            to
        } else {
            cfg.write_around
        };
        cfg = VolCfg::draw(world, swarm, write_around);
        vol = match open_volume(ctx, &cache, &backing, &cfg, crashed, epoch + 2, false)? {
            Some(v) => v,
            None => {
                let mut cov = ctx.cov.borrow().clone();
                cov.seeds = 1;
                return Ok(cov);
            }
        };
        if swarm.canary {
            vol.plant_bug_skip_cache_flush();
        }
    }
    if let Some(kind) = swarm.cache_failure {
        if !cache_failure_phase(ctx, &cache, &vol, kind, cfg.write_around)? {
            let mut cov = ctx.cov.borrow().clone();
            cov.seeds = 1;
            return Ok(cov);
        }
    }
    // Liveness: faults stop, writeback drains everything to the backing device.
    set_faults(&[&cache, &backing], false, 0);
    drain(ctx, &vol)?;
    let data = verify_all(ctx, &vol, false, "data wrong after drop_caches")?;
    retire(ctx, &vol);
    // The backing device's durable image alone must hold the data: what a power cut now, or
    // deleting the cache, would leave.
    let durable = backing.st.borrow().durable.clone();
    let mut model = ctx.model.borrow_mut();
    if let Some(x) = (0..swarm.backing_sectors as usize).find(|&x| {
        durable[x * 512..(x + 1) * 512] != data[x * 512..(x + 1) * 512]
            && !model.is_undefined(x as u64)
    }) {
        return fail(
            "backing device (durable) does not hold the data after drop_caches",
            format!(
                "sector {x}: backing has {:?}, volume reads {:?}",
                decode(&durable[x * 512..(x + 1) * 512], x as u64),
                decode(&data[x * 512..(x + 1) * 512], x as u64)
            ),
        );
    }
    let mut cov = ctx.cov.borrow().clone();
    cov.seeds = 1;
    cov.overlapping_writes = model.overlapping_writes;
    cov.seeds_overlapping = (model.overlapping_writes > 0) as u64;
    cov.seeds_half_dirty = ctx.half_dirty.get() as u64;
    cov.bypassed_bytes = ctx.bypassed.get();
    cov.seeds_bypassed = (ctx.bypassed.get() > 0) as u64;
    cov.seeds_staged = (ctx.staged.get() > 0) as u64;
    cov.seeds_relogged = (cov.relogged_blocks > 0) as u64;
    cov.seeds_paced = (cov.writes_paced > 0) as u64;
    cov.seeds_staged_and_bypassed = (ctx.staged.get() > 0 && ctx.bypassed.get() > 0) as u64;
    cov.seeds_multi_chunk_zeroes_bypassed =
        (ctx.multi_chunk_zeroes.get() > 0 && ctx.bypassed.get() > 0) as u64;
    cov.discards_on_backing = backing.st.borrow().discards;
    Ok(cov)
}
