//! Reclaim: batches of the oldest durable segments. Writeback (migration) writes their live
//! dirty blocks to the backing device, sorted by backing LBA, contiguous runs coalesced into one
//! write each, the backing device flushed before `last_writeback_id` advances; throttled by
//! foreground load on the backing device. When log space is short and the backing device is slow
//! (measured), a batch re-logs its live dirty blocks instead: it appends them at the head of the
//! log, makes the head durable, and then advances `last_writeback_id` the same way (log cleaning
//! without the backing device).
//!
//! Owns: [`WritebackState`] (a batch in flight, its backoff, what holds writeback back, and the
//! measured costs that choose between writing back and re-logging).

use super::writeback_plan::{coalesce, PlannedWrite, Selection};
use super::*;
use crate::engine::stats::ErrorKind;
use crate::format::SegmentHeader;

/// Writeback's progress and pacing, and what may hold it back.
#[derive(Default)]
pub(super) struct WritebackState {
    pub(super) writeback_in_flight: bool,
    pub(super) writeback_retry_at_ns: u64,
    pub(super) writeback_backoff_ns: u64,
    pub(super) nr_cur_batched_writeback: u64,
    pub(super) drop_caches_active: u32,
    /// Writes waiting for log space (writeback becomes urgent).
    pub(super) space_waiters: u32,
    pub(super) shutting_down: bool,
    /// Degraded write-throughs in flight over blocks with cached copies: writeback starts no
    /// batch meanwhile (it could not write those blocks back, nor mark their segments done).
    pub(super) write_through_over_cached: u32,
    /// Measured (moving averages): how long a writeback batch takes, and re-logging per block.
    pub(super) writeback_batch_ns: u64,
    pub(super) relog_ns_per_block: u64,
    /// Measured (moving averages): the latency of a writeback write to the backing device, and
    /// of a segment write to the cache device.
    pub(super) backing_write_ns: u64,
    pub(super) cache_write_ns: u64,
    /// The last batch that ran for space re-logged: background writeback then starts only while
    /// the free segments cover what the foreground fills during one writeback batch, so that a
    /// slow batch never leaves writers waiting for space.
    pub(super) relog_favoured: bool,
    /// Segments sealed per second (moving average), and the (time, `last_sealed`) it was last
    /// sampled at.
    pub(super) seal_rate_per_s: u64,
    pub(super) seal_sample: (u64, u64),
    /// When the batch in flight that runs for space started (`None`: no such batch), and how
    /// long such batches take, start to record (moving average): foreground segment opens are
    /// paced on them.
    pub(super) space_batch_started_ns: Option<u64>,
    pub(super) space_batch_ns: u64,
}

/// Moving average with weight 1/4 for the new sample (the first sample is taken as it is).
pub(super) fn ewma(avg: u64, sample: u64) -> u64 {
    if avg == 0 {
        sample
    } else {
        avg - avg / 4 + sample / 4
    }
}

/// Device operations in flight per batch: deep enough to keep a slow backing device busy (a
/// 4 ms device needs hundreds in flight to match the cache).
const QUEUE_DEPTH: usize = 1024;
/// Device operations, and bytes, a batch starts per executor turn: a batch of a thousand I/Os
/// started at once would hold the thread for a millisecond and show in the foreground's tail
/// latency (with CPU copies, as malloc bdevs do, the bytes are what costs). 32 operations and
/// 128 KiB gave fits a p99.9 of 209-221 µs, this 130-166 µs (docs/BENCHMARKS.md, "Tail latency").
const SUBMIT_BURST: usize = 16;
const SUBMIT_BURST_BYTES: usize = 64 << 10;
/// Copies re-logging moves per executor turn (copies into the open segment; 16 made slow
/// fits' p99.9 three times worse, as segments then filled more slowly).
pub(super) const RELOG_BURST: usize = 32;
/// Segment headers classified per executor turn (about 500 index lookups).
const SELECT_HEADERS_PER_TURN: usize = 4;
/// Copies marked clean per executor turn after a batch's writes.
const MARK_CLEAN_PER_TURN: usize = 512;
const BACKOFF_MIN_NS: u64 = 1_000_000;
const BACKOFF_MAX_NS: u64 = 1_000_000_000;

/// The bytes of one backing write: a range of a segment read buffer, or a gathered run.
fn shared_slice(buf: &Rc<AlignedBuf>, start: usize, len: usize) -> SharedSlice {
    SharedSlice {
        buf: Rc::clone(buf),
        start,
        len,
    }
}

/// Runs `ops` (each with its size in bytes) with at most `depth` in flight, starting at most
/// [`SUBMIT_BURST`] operations or [`SUBMIT_BURST_BYTES`] (at least one operation) between two
/// yields to the executor, and hands each result to `done` in completion order. (Counted across
/// completions too: a window kept full would otherwise start as many operations in one poll as
/// completions were ready.) Every operation runs to completion (an I/O future is never dropped
/// in flight).
async fn paced<F: Future>(
    ops: impl Iterator<Item = (usize, F)>,
    depth: usize,
    mut done: impl FnMut(F::Output),
) {
    use futures::stream::{FuturesUnordered, StreamExt};
    use futures::FutureExt;
    let mut ops = ops.peekable();
    let mut inflight = FuturesUnordered::new();
    // Started since the last yield.
    let (mut started, mut bytes) = (0, 0);
    loop {
        while inflight.len() < depth && started < SUBMIT_BURST && bytes < SUBMIT_BURST_BYTES {
            match ops.next() {
                Some((len, op)) => {
                    inflight.push(op);
                    started += 1;
                    bytes += len;
                }
                None => break,
            }
        }
        if inflight.is_empty() {
            return;
        }
        let budget_spent = started == SUBMIT_BURST || bytes >= SUBMIT_BURST_BYTES;
        if budget_spent && ops.peek().is_some() {
            // Start the new ones and take what is already done, then let the thread run other
            // work. (A completion seen by this poll's no-op waker is queued inside `inflight`
            // and taken by the next real poll.)
            while let Some(Some(r)) = inflight.next().now_or_never() {
                done(r);
            }
            crate::runtime::yield_now().await;
            (started, bytes) = (0, 0);
            continue;
        }
        if let Some(r) = inflight.next().await {
            done(r);
        }
    }
}

type ReadResult = (AlignedBuf, Result<(), crate::device::DeviceError>);

impl<D: BlockDevice + 'static, R: Runtime> Inner<D, R> {
    /// Reads each (device offset, length) of `ranges` from the cache device into a fresh buffer,
    /// [`paced`] like every device I/O of a batch. Results come in the order of `ranges`.
    async fn read_cache_ranges(&self, ranges: &[(u64, usize)]) -> Vec<ReadResult> {
        let mut results: Vec<Option<ReadResult>> = (0..ranges.len()).map(|_| None).collect();
        paced(
            ranges.iter().enumerate().map(|(k, &(off, len))| {
                (len, async move {
                    let (b, r) = self.cache.read(off, AlignedBuf::for_overwrite(len)).await;
                    (k, b, r)
                })
            }),
            QUEUE_DEPTH,
            |(k, b, r)| results[k] = Some((b, r)),
        )
        .await;
        results
            .into_iter()
            .map(|r| r.expect("every read completed"))
            .collect()
    }

    /// Whether a batch should start now: `Some(for_space)`, where `for_space` says that log space
    /// is short (the batch may re-log).
    fn writeback_wanted(&self, st: &mut State, now_ns: u64) -> Option<bool> {
        if st.wb.shutting_down
            || st.wb.writeback_in_flight
            || st.wb.write_through_over_cached > 0
            || now_ns < st.wb.writeback_retry_at_ns
        {
            return None;
        }
        // Degraded write-throughs and FLUSH rescues wait in the gate for writeback to pause.
        if st.health.degraded.is_some() && !st.gate.is_empty() {
            return None;
        }
        // How fast the foreground fills segments (sampled every 10 ms or more).
        let (at, sealed) = st.wb.seal_sample;
        if now_ns >= at + 10_000_000 {
            let rate = (st.log.last_sealed.saturating_sub(sealed) as u128 * 1_000_000_000
                / (now_ns - at).max(1) as u128) as u64;
            st.wb.seal_rate_per_s = ewma(st.wb.seal_rate_per_s, rate).max(rate / 4);
            st.wb.seal_sample = (now_ns, st.log.last_sealed);
        }
        let free = st.free_segments();
        // Keep a reserve of free segments so foreground writes rarely wait: room for what the
        // RAM buffers and one batch's worth of writes consume while a batch runs, or an eighth
        // of the log. (A quarter wrote back 6-9 % more in the fits benchmark, for nothing.)
        let low_water = (st.geo.nr_segments / 8)
            .max(st.batch_segments() + st.log.bufs.len() as u64)
            .min(st.geo.nr_segments / 2)
            .max(2);
        let for_space = (st.wb.space_waiters > 0 && st.log_full()) || free < low_water;
        let urgent = st.wb.drop_caches_active > 0 || for_space;
        // While re-logging is what keeps space free, a background writeback batch (slow: that is
        // why re-logging won) starts only with room for what the foreground fills while it runs,
        // so that it never leaves writers waiting for space. (Batches for space keep the free
        // segments at the low water mark: a larger reserve there would leave fewer segments for
        // the data, and more live blocks to re-log: slow fits re-logged 61 % of what was written
        // with a quarter of the log kept free, 39 % with an eighth.)
        let room_for_background = !st.wb.relog_favoured || {
            let fills = (st.wb.seal_rate_per_s as u128 * st.wb.writeback_batch_ns as u128
                / 1_000_000_000) as u64;
            free >= low_water + fills
        };
        let background = st.opts.writeback_threshold > 0
            && st.load.backing_util_pct < st.opts.writeback_threshold
            && room_for_background;
        (urgent || background).then_some(for_space)
    }

    /// Starts a writeback batch in the background if one is wanted. Returns true if it did.
    pub(super) fn maybe_start_writeback(self: &Rc<Self>) -> bool {
        let now = self.rt.now_ns();
        let for_space;
        {
            let mut st = self.st.borrow_mut();
            match self.writeback_wanted(&mut st, now) {
                Some(s) => for_space = s,
                None => return false,
            }
            if st.log.last_durable <= st.log.last_writeback
                && st.log.recorded_writeback >= st.log.last_writeback
            {
                // Only durable segments are written back: ask for a cache flush first.
                if st.log.last_written > st.log.last_durable {
                    st.durability.flush_wanted =
                        st.durability.flush_wanted.max(st.log.last_written);
                    drop(st);
                    return self.kick_flush();
                }
                return false;
            }
        }
        let this = self.clone();
        self.st.borrow_mut().wb.writeback_in_flight = true;
        self.rt.spawn(Box::pin(async move {
            let _ = this.writeback_batch(for_space).await;
        }));
        true
    }

    /// One batch. The caller set `writeback_in_flight`; this clears it. `for_space`: log space
    /// is short, so the batch may re-log instead of writing back.
    pub(super) async fn writeback_batch(self: &Rc<Self>, for_space: bool) -> Result<u64, IoError> {
        let before = self.st.borrow().log.last_writeback;
        if for_space {
            self.st.borrow_mut().wb.space_batch_started_ns = Some(self.rt.now_ns());
        }
        let r = self.writeback_batch_inner(for_space).await;
        let now = self.rt.now_ns();
        {
            let mut st = self.st.borrow_mut();
            st.wb.writeback_in_flight = false;
            if let Some(started) = st.wb.space_batch_started_ns.take() {
                // Batches that reclaimed segments (not those that found nothing to do).
                if r.is_ok() && st.log.last_writeback > before {
                    st.wb.space_batch_ns = ewma(st.wb.space_batch_ns, now.saturating_sub(started));
                }
            }
            match &r {
                Ok(_) => st.wb.writeback_backoff_ns = 0,
                Err(_) => {
                    st.wb.writeback_backoff_ns =
                        (st.wb.writeback_backoff_ns * 2).clamp(BACKOFF_MIN_NS, BACKOFF_MAX_NS);
                    st.wb.writeback_retry_at_ns = now + st.wb.writeback_backoff_ns;
                }
            }
        }
        self.bump_progress();
        self.notify();
        if r.is_ok() {
            // Keep going while there is reason to.
            self.maybe_start_writeback();
        }
        r
    }

    async fn writeback_batch_inner(self: &Rc<Self>, for_space: bool) -> Result<u64, IoError> {
        let started_ns = self.rt.now_ns();
        // Make every written segment durable first: a copy superseded by a durable newer copy
        // need not be written back, and without FLUSHes from the host most would not be.
        let written = self.st.borrow().log.last_written;
        if written > self.st.borrow().log.last_durable {
            self.make_durable(written, false).await?;
        }
        // The batch: whole segment images (header and data) of the oldest durable segments.
        let lagging = {
            let st = self.st.borrow();
            let nothing = st.log.last_durable <= st.log.last_writeback;
            nothing.then_some(st.log.recorded_writeback < st.log.last_writeback)
        };
        if let Some(lagging) = lagging {
            if lagging {
                self.write_record(false).await?;
            }
            return Ok(0);
        }
        let (last_id, slots, reads) = {
            let mut st = self.st.borrow_mut();
            let first_id = st.log.last_writeback + 1;
            let last_id = st
                .log
                .last_durable
                .min(st.log.last_writeback + st.batch_segments());
            let mut slots = Vec::new();
            // (segment id, slot offset) of each segment with blocks.
            let mut reads: Vec<(u64, u64)> = Vec::new();
            for id in first_id..=last_id {
                let slot = st.geo.slot_of_id(id);
                debug_assert_eq!(st.log.slot_id[slot as usize], id);
                if st.log.slot_len[slot as usize] == 0 {
                    continue;
                }
                st.log.pin_slot(slot);
                slots.push(slot);
                let off = st.geo.slot_offset_bytes(slot);
                reads.push((id, off));
            }
            st.wb.nr_cur_batched_writeback = last_id - first_id + 1;
            (last_id, slots, reads)
        };
        let unpin = |this: &Self| {
            let mut st = this.st.borrow_mut();
            for s in &slots {
                st.log.unpin_slot(*s);
            }
        };
        // First the headers (a block or a few per segment) ...
        let hb = self.st.borrow().geo.header_bytes();
        let header_ranges: Vec<(u64, usize)> = reads.iter().map(|&(_, off)| (off, hb)).collect();
        let results = self.read_cache_ranges(&header_ranges).await;
        let mut headers = Vec::with_capacity(results.len());
        let mut bad_header = None;
        for (k, (b, r)) in results.into_iter().enumerate() {
            let bad = |op| {
                IoError::cache(crate::device::DeviceError::Io {
                    op,
                    offset_bytes: reads[k].1,
                    len_bytes: hb as u64,
                })
            };
            // A read error, or a header that no longer decodes to this segment.
            let max = self.st.borrow().geo.data_blocks_per_segment();
            let header = r
                .ok()
                .and_then(|()| SegmentHeader::decode(&b, max).ok())
                .filter(|h| h.id == reads[k].0);
            let Some(h) = header else {
                // Every failed read is counted, not only the first.
                self.note_cache_error(&mut self.st.borrow_mut(), ErrorKind::CacheRead);
                bad_header.get_or_insert(bad(crate::device::DeviceOp::Read));
                continue;
            };
            headers.push(h);
            self.st.borrow_mut().counters.bytes_cache_read += hb as u64;
        }
        if let Some(e) = bad_header {
            unpin(self);
            return Err(e);
        }
        // What to write: per backing block, the newest copy in the batch. A copy that is still
        // the current one is written with its dirty bits and marked clean afterwards. A copy
        // superseded by one that is not durable yet is written too (with its dirty bits at seal
        // time): after a power cut the newer copy may be gone, and replay maps no segment at or
        // below the recorded writeback id. A copy superseded by a durable one, or discarded,
        // is skipped.
        let mut selection = Selection::default();
        let (mut blocks, mut found) = (Vec::new(), Vec::new());
        for (n, chunk) in headers.chunks(SELECT_HEADERS_PER_TURN).enumerate() {
            if n > 0 {
                // The foreground runs between chunks (tail latency). A copy classified before
                // it changed is handled as any copy whose block is written during the batch.
                crate::runtime::yield_now().await;
            }
            let st = self.st.borrow();
            let dpb = st.dpb();
            for (i, h) in chunk.iter().enumerate() {
                blocks.clear();
                blocks.extend(h.entries.iter().map(|e| e.backing_block));
                st.index.lookup_many(&blocks, &mut found);
                selection.add(
                    n * SELECT_HEADERS_PER_TURN + i,
                    h,
                    dpb,
                    |h| st.geo.slot_of_id(h),
                    |block, cb| st.classify_copy(block, cb, found[(cb % dpb) as usize], last_id),
                );
            }
        }
        let mut items = selection.finish();
        let relog = for_space && self.relog_chosen(&items, last_id);
        if relog {
            // Superseded copies need no writing: the head, which holds their newer copies, is
            // made durable before this batch's segments are given up.
            items.retain(|it| it.current);
        }
        // ... then the data blocks needed: one read per run of adjacent needed blocks (reading
        // whole segments would copy mostly superseded data).
        items.sort_unstable_by_key(|it| (it.buf, it.off));
        let mut runs_to_read: Vec<(u64, usize)> = Vec::new(); // (device offset, blocks)
        let mut last: Option<(usize, usize)> = None; // (segment, block) of the previous item
        for it in &mut items {
            let (k, j) = (it.buf, it.off / BLOCK);
            match last {
                Some((lk, lj)) if lk == k && lj + 1 == j => {
                    runs_to_read.last_mut().expect("run").1 += 1
                }
                _ => runs_to_read.push((reads[k].1 + (hb + j * BLOCK) as u64, 1)),
            }
            last = Some((k, j));
            let run = runs_to_read.len() - 1;
            it.off = (runs_to_read[run].1 - 1) * BLOCK;
            it.buf = run;
        }
        let data_ranges: Vec<(u64, usize)> = runs_to_read
            .iter()
            .map(|&(off, blocks)| (off, blocks * BLOCK))
            .collect();
        let data_reads = self.read_cache_ranges(&data_ranges).await;
        unpin(self);
        let mut bufs = Vec::with_capacity(data_reads.len());
        let mut first_err = None;
        for (b, r) in data_reads {
            if let Err(e) = r {
                self.note_cache_error(&mut self.st.borrow_mut(), ErrorKind::CacheRead);
                first_err.get_or_insert(e);
                continue;
            }
            self.st.borrow_mut().counters.bytes_cache_read += b.len() as u64;
            bufs.push(Rc::new(b));
        }
        if let Some(e) = first_err {
            return Err(IoError::cache(e));
        }
        let relogged = if relog {
            self.relog_batch(&mut items, &bufs).await?
        } else {
            0
        };
        // Sort by backing LBA and coalesce.
        if self.st.borrow().writeback_unsorted() {
            items.sort_unstable_by_key(|it| it.cb);
        } else {
            items.sort_unstable_by_key(|it| it.block);
        }
        // Runs of several full blocks are gathered into one buffer; single blocks and sector runs
        // are written straight from the segment read buffers.
        let writes: Vec<(u64, SharedSlice)> = coalesce(&items)
            .into_iter()
            .map(|w| match w {
                PlannedWrite::Blocks { first, count: 1 } => {
                    let it = &items[first];
                    (
                        it.block * BLOCK as u64,
                        shared_slice(&bufs[it.buf], it.off, BLOCK),
                    )
                }
                PlannedWrite::Blocks { first, count } => {
                    let mut data = AlignedBuf::for_overwrite(count * BLOCK);
                    for (k, it) in items[first..first + count].iter().enumerate() {
                        data[k * BLOCK..(k + 1) * BLOCK]
                            .copy_from_slice(&bufs[it.buf][it.off..it.off + BLOCK]);
                    }
                    let len = data.len();
                    (
                        items[first].block * BLOCK as u64,
                        shared_slice(&Rc::new(data), 0, len),
                    )
                }
                PlannedWrite::Sectors { item, first, nr } => {
                    let it = &items[item];
                    (
                        it.block * BLOCK as u64 + (first as usize * SECTOR) as u64,
                        shared_slice(
                            &bufs[it.buf],
                            it.off + first as usize * SECTOR,
                            nr as usize * SECTOR,
                        ),
                    )
                }
            })
            .collect();
        let mut bytes = 0u64;
        // A sliding window: a new write starts as soon as one completes, so one slow write
        // does not hold back the others.
        {
            // Every write runs to completion even after an error.
            let mut first_err = None;
            // Mean latency of the writes that succeeded (a failed one says nothing of it).
            let (mut latency_sum_ns, mut ok_writes) = (0u64, 0u64);
            paced(
                writes.iter().map(|(off, src)| {
                    let len = src.len;
                    (len, async move {
                        let t0 = self.rt.now_ns();
                        let r = self.backing.write(*off, src.clone()).await.1;
                        (r, len as u64, self.rt.now_ns().saturating_sub(t0))
                    })
                }),
                QUEUE_DEPTH,
                |(r, len, ns)| match r {
                    Ok(()) => {
                        bytes += len;
                        latency_sum_ns += ns;
                        ok_writes += 1;
                    }
                    Err(e) => {
                        self.st
                            .borrow_mut()
                            .counters
                            .note_error(ErrorKind::BackingWrite);
                        first_err.get_or_insert(e);
                    }
                },
            )
            .await;
            if let Some(mean) = latency_sum_ns.checked_div(ok_writes) {
                let st = &mut *self.st.borrow_mut();
                st.wb.backing_write_ns = ewma(st.wb.backing_write_ns, mean.max(1));
            }
            if let Some(e) = first_err {
                return Err(IoError::backing(e));
            }
        }
        if !writes.is_empty() {
            self.flush_backing().await?;
        }
        // Mark clean what is still the same copy (a few hundred at a time: the foreground runs
        // between), then advance.
        for (n, chunk) in items.chunks(MARK_CLEAN_PER_TURN).enumerate() {
            if n > 0 {
                crate::runtime::yield_now().await;
            }
            let mut st = self.st.borrow_mut();
            for it in chunk.iter().filter(|it| it.current) {
                if st.index.maps(it.block, it.cb) && st.index.dirty(it.cb) != 0 {
                    let v = st.index.valid(it.cb);
                    st.index.set_bits(it.cb, v, 0);
                    st.nr_dirty -= 1;
                }
            }
        }
        {
            let mut st = self.st.borrow_mut();
            st.log.last_writeback = last_id;
            st.counters.bytes_written_back += bytes;
            if relog {
                st.counters.relog_batches += 1;
                st.counters.relogged_blocks += relogged;
            } else {
                st.counters.writeback_batches += 1;
            }
            // Measure what the choice rests on.
            let took = self.rt.now_ns().saturating_sub(started_ns).max(1);
            if relog {
                if let Some(per_block) = took.checked_div(relogged) {
                    st.wb.relog_ns_per_block = ewma(st.wb.relog_ns_per_block, per_block);
                }
            } else if bytes > 0 {
                st.wb.writeback_batch_ns = ewma(st.wb.writeback_batch_ns, took);
                // Re-logging is tried again from time to time.
                st.wb.relog_ns_per_block -= st.wb.relog_ns_per_block / 8;
            }
            if for_space {
                st.wb.relog_favoured = relog;
            }
        }
        // Slots of these segments may be reused only once this is durably recorded. A degraded
        // volume reuses no slot (it caches nothing new): a record it cannot write does not stop
        // it from draining what the cache still reads.
        if let Err(e) = self.write_record(false).await {
            if !self.is_degraded() {
                return Err(e);
            }
        }
        Ok(bytes)
    }
}
