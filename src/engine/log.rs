//! The log: sealing the open buffer into a segment, writing segments (concurrently, completions
//! tracked contiguously), cache-device FLUSH with group commit, and FLUSH/FUA semantics.
//!
//! Owns: [`LogState`] (slots, RAM segment buffers, the open segment, the ids sealed, written,
//! durable and written back; its rules for space are in space.rs) and [`Durability`] (group
//! commit, backing-flush coverage, the FLUSH/FUA waiters).

use super::*;
use crate::engine::stats::ErrorKind;
use crate::format::{Entry, SegmentHeader};

/// The log: its slots on the cache device, the RAM segment buffers, the open segment and how
/// far segments got (sealed, written, durable, written back, recorded written back).
pub(super) struct LogState {
    pub(super) slot_id: Vec<u64>,
    pub(super) slot_len: Vec<u32>,
    /// In-flight device reads of each slot (cache hits, writeback): a slot's next segment is not
    /// written while > 0 (it may be opened: its data stays in RAM until then).
    pub(super) slot_readers: Vec<u32>,
    /// RAM buffer holding the slot's current segment, or `NO_BUF` once it is on the device.
    pub(super) slot_buf: Vec<u32>,
    pub(super) bufs: Vec<segment_buf::SegmentBuf>,
    pub(super) free_bufs: Vec<usize>,
    pub(super) open: Option<OpenSegment>,
    pub(super) next_id: u64,
    pub(super) last_sealed: u64,
    /// Completed segment writes above `last_written` (completions may come out of order).
    pub(super) written_above: BTreeSet<u64>,
    pub(super) last_written: u64,
    pub(super) last_durable: u64,
    pub(super) last_writeback: u64,
    /// `last_writeback` as durably recorded in the superblock record. A slot is reused only
    /// once its previous segment is recorded written back, so replay never maps a segment whose
    /// slot a newer, torn segment may have overwritten.
    pub(super) recorded_writeback: u64,
    pub(super) prev_header_crc: u32,
    /// Writes waiting for log space: woken only once space is available (or the volume
    /// degraded), not on every change of the volume's state.
    pub(super) space_wakers: Vec<Waker>,
    /// When a segment was last opened (foreground writes are paced on it while a batch for
    /// space runs: [`writeback_plan::paced_open_at`](super::writeback_plan::paced_open_at)).
    pub(super) last_open_ns: u64,
}

impl LogState {
    /// A device read of a segment in `slot` starts: no new segment is written there until it ends.
    #[inline]
    pub(super) fn pin_slot(&mut self, slot: u64) {
        self.slot_readers[slot as usize] += 1;
    }

    #[inline]
    pub(super) fn unpin_slot(&mut self, slot: u64) {
        self.slot_readers[slot as usize] -= 1;
    }

    pub(super) fn new(nr_slots: usize, nr_bufs: usize, segment_size_bytes: usize) -> LogState {
        LogState {
            slot_id: vec![0; nr_slots],
            slot_len: vec![0; nr_slots],
            slot_readers: vec![0; nr_slots],
            slot_buf: vec![NO_BUF; nr_slots],
            bufs: (0..nr_bufs)
                .map(|_| segment_buf::SegmentBuf::zeroed(segment_size_bytes))
                .collect(),
            free_bufs: (0..nr_bufs).rev().collect(),
            open: None,
            next_id: 1,
            last_sealed: 0,
            written_above: BTreeSet::new(),
            last_written: 0,
            last_durable: 0,
            last_writeback: 0,
            recorded_writeback: 0,
            prev_header_crc: 0,
            space_wakers: Vec::new(),
            last_open_ns: 0,
        }
    }
}

/// FLUSH machinery: group commit of cache flushes, and which foreground writes to the backing
/// device a backing flush covers.
#[derive(Default)]
pub(super) struct Durability {
    pub(super) flush_wanted: u64,
    pub(super) flush_in_flight: bool,
    /// Bumped when durability failed; waiters that saw an older value fail.
    pub(super) durability_error_gen: u64,
    /// Foreground writes to the backing device completed so far (write-around).
    pub(super) backing_writes_done: u64,
    /// `backing_writes_done` as of the start of the last successful backing flush: every
    /// write counted up to here is durable. A FLUSH that finds a backing flush in flight
    /// cannot rely on it (it may fail, or have started before this FLUSH's writes).
    pub(super) backing_flushed_through: u64,
    /// Blocks written to the backing device by a foreground write (bypass, write-around) that no
    /// backing flush covers yet, with the `backing_writes_done` count that covers them. Reads do
    /// not stage such blocks: a staged copy could become durable on the cache while the write
    /// it copies is still in the backing device's volatile cache, and outlive it after a power
    /// cut (the old value would come back once the staged copy is evicted).
    pub(super) backing_unflushed: HashMap<u64, u64>,
    /// When `backing_unflushed` would grow past the cache's size it is dropped and no block is
    /// staged until a backing flush covers this count.
    pub(super) backing_unflushed_all_through: u64,
    /// FLUSH/FUA waiters (up to the queue depth): woken only when what they wait for moved,
    /// `last_durable` or `durability_error_gen`, not on every change of the volume's state.
    pub(super) waiters: Vec<Waker>,
    /// (`last_durable`, `durability_error_gen`) when the waiters were last woken.
    pub(super) woken_at: (u64, u64),
}

impl Durability {
    /// The waiters to wake: all of them if `last_durable` or the error generation moved since
    /// they were last woken, else none.
    #[inline]
    pub(super) fn take_waiters_if_moved(&mut self, last_durable: u64) -> Vec<Waker> {
        let now = (last_durable, self.durability_error_gen);
        if now == self.woken_at {
            return Vec::new();
        }
        self.woken_at = now;
        std::mem::take(&mut self.waiters)
    }
}

/// A segment is written in pieces of this size, one after the other.
const SEGMENT_WRITE_PIECE_BYTES: usize = 128 << 10;
/// Failed attempts after which FLUSH/FUA waiting on a segment complete with an error.
const SEGMENT_WRITE_ATTEMPTS_BEFORE_ERROR: u32 = 3;
const RETRY_BACKOFF_MIN_NS: u64 = 1_000_000;
/// A segment write failing for this long (or the error window, if shorter) degrades the volume.
const SEGMENT_FAILING_FOR_NS: u64 = 1_000_000_000;
const RETRY_BACKOFF_MAX_NS: u64 = 1_000_000_000;
/// Tries of a backing device FLUSH before its error is returned.
const BACKING_FLUSH_ATTEMPTS: u32 = 3;

impl<D: BlockDevice + 'static, R: Runtime> Inner<D, R> {
    /// Opens a new segment if none is open, or seals the full one and opens the next.
    /// Returns false when space is not available yet.
    #[inline]
    pub(super) fn ensure_open_with_room(self: &Rc<Self>, st: &mut State) -> bool {
        if st.open_has_room() {
            return true;
        }
        // A full open segment is sealed (nothing happens without one).
        self.seal(st);
        self.try_open_segment(st)
    }

    fn try_open_segment(&self, st: &mut State) -> bool {
        debug_assert!(st.log.open.is_none());
        let id = st.log.next_id;
        if !st.can_open(id) {
            return false;
        }
        let slot = st.geo.slot_of_id(id);
        let buf = st.log.free_bufs.pop().expect("checked");
        // Evict what the slot held: all of it is clean (written back).
        let dpb = st.dpb();
        for j in 0..st.log.slot_len[slot as usize] as u64 {
            let cb = slot * dpb + j;
            if st.index.backing_of(cb) != index::NO_BLOCK {
                assert_eq!(st.index.dirty(cb), 0, "reusing slot {slot} with dirty data");
                st.index.remove(cb);
            }
        }
        st.log.slot_id[slot as usize] = id;
        st.log.slot_len[slot as usize] = 0;
        st.log.slot_buf[slot as usize] = buf as u32;
        st.log.open = Some(OpenSegment {
            id,
            slot,
            buf,
            len: 0,
        });
        st.log.next_id += 1;
        st.log.last_open_ns = self.rt.now_ns();
        true
    }

    /// Seals the open segment (if it holds any block) and starts its write. An empty open
    /// segment stays open: an empty FLUSH writes no empty segment.
    pub(super) fn seal(self: &Rc<Self>, st: &mut State) {
        let Some(o) = st.log.open else { return };
        if o.len == 0 {
            return;
        }
        st.log.open = None;
        let dpb = st.dpb();
        let mut entries = Vec::with_capacity(o.len as usize);
        {
            let buf = &st.log.bufs[o.buf];
            for j in 0..o.len as u64 {
                let cb = o.slot * dpb + j;
                let backing_block = st.index.backing_of(cb);
                let off = st.cb_buf_offset(cb);
                if backing_block == index::NO_BLOCK {
                    entries.push(Entry::default());
                    continue;
                }
                entries.push(Entry {
                    backing_block,
                    data_crc: buf.crc_of(off),
                    valid_bits: st.index.valid(cb),
                    dirty_bits: st.index.dirty(cb),
                });
            }
            let header = SegmentHeader {
                format_uuid: st.sb.format_uuid,
                id: o.id,
                durable_through_id: st.log.last_durable,
                prev_header_crc: st.log.prev_header_crc,
                flags: 0,
                entries,
                header_crc: 0,
            };
            let hb = st.geo.header_bytes();
            st.log.prev_header_crc = header.encode_into(&mut st.log.bufs[o.buf].bytes_mut()[..hb]);
        }
        st.log.slot_len[o.slot as usize] = o.len;
        st.log.last_sealed = o.id;
        let len_bytes = (st.geo.header_blocks as usize + o.len as usize) * BLOCK;
        let offset = st.geo.slot_offset_bytes(o.slot);
        let this = self.clone();
        self.rt.spawn(Box::pin(async move {
            this.write_segment(o.id, o.buf, o.slot, offset, len_bytes)
                .await;
        }));
    }

    async fn write_segment(
        self: Rc<Self>,
        id: u64,
        buf: usize,
        slot: u64,
        offset: u64,
        len_bytes: usize,
    ) {
        // Reads of the slot's old data that began before this segment was opened end first.
        // (No new one can begin: the old blocks left the index when it was opened.) Re-checked
        // every 100 us too, as not every reader's end wakes the volume's waiters.
        while self.st.borrow().log.slot_readers[slot as usize] > 0 {
            self.wait_until_at_most(move |st| st.log.slot_readers[slot as usize] == 0, 100_000)
                .await;
        }
        let mut attempts = 0u32;
        let mut backoff = RETRY_BACKOFF_MIN_NS;
        let mut first_failure_ns = None;
        loop {
            // This write's own reference: the sealed buffer stays allocated and read-only
            // (reads that hit it copy out of it) until the write completes.
            let shared = self.st.borrow().log.bufs[buf].share();
            let t0 = self.rt.now_ns();
            // In pieces, one after the other: a device that copies with the CPU (a malloc bdev)
            // would otherwise copy the whole segment in one go, and every foreground I/O queued
            // behind that copy would wait for it (the write path's p99).
            let mut r = Ok(());
            for start in (0..len_bytes).step_by(SEGMENT_WRITE_PIECE_BYTES) {
                let len = SEGMENT_WRITE_PIECE_BYTES.min(len_bytes - start);
                let piece = SharedSlice {
                    buf: Rc::clone(&shared),
                    start,
                    len,
                };
                r = self.cache.write(offset + start as u64, piece).await.1;
                if r.is_err() {
                    break;
                }
            }
            drop(shared);
            if r.is_ok() {
                let took = self.rt.now_ns().saturating_sub(t0).max(1);
                let st = &mut *self.st.borrow_mut();
                st.wb.cache_write_ns = super::writeback::ewma(st.wb.cache_write_ns, took);
                break;
            }
            attempts += 1;
            {
                let mut st = self.st.borrow_mut();
                self.note_cache_error(&mut st, ErrorKind::CacheWrite);
                let now = self.rt.now_ns();
                let since = *first_failure_ns.get_or_insert(now);
                if attempts >= SEGMENT_WRITE_ATTEMPTS_BEFORE_ERROR {
                    // FLUSH/FUA waiting on it fail, also those that began waiting after an
                    // earlier failure; the write keeps retrying.
                    st.durability.durability_error_gen += 1;
                }
                // Bounded retries: a segment that keeps failing for longer than the error
                // window (at most a second: about 10 attempts) degrades the volume, so that no
                // foreground write waits for it forever. A short burst of errors is judged by
                // degraded_error_threshold alone.
                let bound =
                    (st.opts.degraded_error_window_s * 1_000_000_000).min(SEGMENT_FAILING_FOR_NS);
                if attempts >= SEGMENT_WRITE_ATTEMPTS_BEFORE_ERROR && now - since >= bound {
                    self.enter_degraded(
                        &mut st,
                        format!(
                            "segment {id} write failed {attempts} times over {} ms",
                            (now - since) / 1_000_000
                        ),
                    );
                }
            }
            self.notify();
            self.rt.sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX_NS);
        }
        {
            let mut st = self.st.borrow_mut();
            st.counters.segments_written += 1;
            st.counters.bytes_cache_written += len_bytes as u64;
            st.log.slot_buf[slot as usize] = NO_BUF;
            st.log.free_bufs.push(buf);
            if id == st.log.last_written + 1 {
                st.log.last_written = id;
                loop {
                    let next = st.log.last_written + 1;
                    if !st.log.written_above.remove(&next) {
                        break;
                    }
                    st.log.last_written = next;
                }
            } else {
                st.log.written_above.insert(id);
            }
        }
        self.bump_progress();
        self.notify();
        self.kick_flush();
    }

    /// Starts a cache-device flush when a waiter needs one and its segments are written.
    pub(super) fn kick_flush(self: &Rc<Self>) -> bool {
        let target = {
            let mut st = self.st.borrow_mut();
            if st.durability.flush_in_flight
                || st.durability.flush_wanted <= st.log.last_durable
                // Group commit: wait until what is wanted is written, one flush covers it. Not
                // when degraded: the segments not written yet may never be, and those written
                // must still become durable to be written back.
                || (st.health.degraded.is_none()
                    && st.log.last_written < st.durability.flush_wanted.min(st.log.last_sealed))
                || st.log.last_written <= st.log.last_durable
            {
                return false;
            }
            st.durability.flush_in_flight = true;
            st.log.last_written
        };
        let this = self.clone();
        self.rt.spawn(Box::pin(async move {
            let r = if this.st.borrow().skip_cache_flush() {
                Ok(())
            } else {
                this.cache.flush().await
            };
            {
                let mut st = this.st.borrow_mut();
                st.durability.flush_in_flight = false;
                match r {
                    Ok(()) => {
                        st.log.last_durable = st.log.last_durable.max(target);
                    }
                    Err(_) => {
                        this.note_cache_error(&mut st, ErrorKind::CacheFlush);
                        st.durability.durability_error_gen += 1;
                        // Waiters fail; a later FLUSH asks again.
                        st.durability.flush_wanted = st.log.last_durable;
                    }
                }
            }
            this.bump_progress();
            this.notify();
            this.kick_flush();
            this.maybe_start_writeback();
        }));
        true
    }

    /// Waits until segment `id` is durable on the cache device. `seal_open` seals the open
    /// segment first when it is the one holding `id`.
    pub(super) async fn make_durable(
        self: &Rc<Self>,
        id: u64,
        seal_open: bool,
    ) -> Result<(), IoError> {
        let gen = {
            let mut st = self.st.borrow_mut();
            if seal_open && st.log.open.map(|o| o.id) == Some(id) {
                if st
                    .log
                    .open
                    .map(|o| o.len < st.geo.data_blocks_per_segment())
                    == Some(true)
                {
                    st.counters.nr_partial_flushed += 1;
                }
                self.seal(&mut st);
            }
            if st.log.last_durable >= id {
                return Ok(());
            }
            st.durability.flush_wanted = st.durability.flush_wanted.max(id);
            st.durability.durability_error_gen
        };
        self.kick_flush();
        std::future::poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            if st.log.last_durable >= id || st.durability.durability_error_gen != gen {
                return Poll::Ready(());
            }
            st.durability.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if self.st.borrow().log.last_durable >= id {
            Ok(())
        } else {
            Err(IoError::NotDurable)
        }
    }

    pub(super) async fn flush_backing(&self) -> Result<(), IoError> {
        let covers = self.st.borrow().durability.backing_writes_done;
        // A transient error must not fail a FLUSH, FUA or write-zeroes that wrote to the backing
        // device because the engine chose to (every error is counted).
        let mut attempt = 1;
        while let Err(e) = self.backing.flush().await {
            let mut st = self.st.borrow_mut();
            st.counters.note_error(ErrorKind::BackingFlush);
            if attempt == BACKING_FLUSH_ATTEMPTS {
                return Err(IoError::backing(e));
            }
            attempt += 1;
        }
        let mut st = self.st.borrow_mut();
        st.durability.backing_flushed_through = st.durability.backing_flushed_through.max(covers);
        if !st.durability.backing_unflushed.is_empty() {
            st.durability.backing_unflushed.retain(|_, n| *n > covers);
        }
        Ok(())
    }

    /// FLUSH: every write completed before this call becomes durable.
    pub(super) async fn flush_all(self: &Rc<Self>) -> Result<(), IoError> {
        self.st.borrow_mut().counters.flushes += 1;
        self.make_all_durable().await
    }

    /// Makes every write completed before this call durable, on the cache device and on the
    /// backing device (writes that went there directly). Degraded: what is not durable on the
    /// cache goes to the backing device instead.
    pub(super) async fn make_all_durable(self: &Rc<Self>) -> Result<(), IoError> {
        // A write-around volume (set at create) caches only clean staged copies: nothing on the
        // cache needs to be durable, the backing device holds every write.
        let write_around = self.st.borrow().opts.write_around_mode;
        if write_around {
            // Nothing to make durable on the cache.
        } else if self.is_degraded() {
            self.rescue_undurable().await?;
        } else {
            let target = {
                let st = self.st.borrow();
                match st.log.open {
                    Some(o) if o.len > 0 => o.id,
                    _ => st.log.last_sealed,
                }
            };
            if target > 0 {
                self.make_durable(target, true).await?;
            }
        }
        let backing_unflushed = {
            let st = self.st.borrow();
            st.durability.backing_flushed_through < st.durability.backing_writes_done
        };
        if backing_unflushed {
            self.flush_backing().await?;
        }
        self.bump_progress();
        Ok(())
    }
}

impl<D: BlockDevice + 'static, R: Runtime> Volume<D, R> {
    /// FLUSH: completes once every write completed before it is durable. An empty FLUSH (nothing
    /// written since the last one) writes nothing.
    pub async fn flush(&self) -> Result<(), IoError> {
        self.inner.flush_all().await
    }
}

#[cfg(test)]
mod tests {
    use super::super::Count;
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn durability_waiters_wake_only_when_durability_moved() {
        let mut d = Durability::default();
        let c = Arc::new(Count(AtomicUsize::new(0)));
        let w = Waker::from(c.clone());
        d.waiters = vec![w.clone(), w.clone(), w.clone()];
        // Nothing moved: nobody is woken, the waiters stay.
        assert!(d.take_waiters_if_moved(0).is_empty());
        assert_eq!(d.waiters.len(), 3);
        // last_durable moved: all of them, once.
        assert_eq!(d.take_waiters_if_moved(5).len(), 3);
        d.waiters.push(w.clone());
        assert!(d.take_waiters_if_moved(5).is_empty());
        // A failure (the error generation) moves it too.
        d.durability_error_gen += 1;
        assert_eq!(d.take_waiters_if_moved(5).len(), 1);
        assert!(d.waiters.is_empty());
        assert_eq!(c.0.load(Ordering::Relaxed), 0, "taking is not waking");
    }
}
