//! Cache health and the degraded state (DESIGN.md, "Failure semantics").
//!
//! Owns: the sliding window of cache device errors, the decision to go degraded (too many errors
//! in `degraded_error_window_s`, or a segment write that keeps failing), and what a degraded
//! volume does instead of caching:
//! - writes go to the backing device (write-through). Cached copies of the blocks stay readable
//!   until the backing write completes (a read may not return data older than the last completed
//!   write), then they are dropped. A partial write of a block whose cached copy has dirty sectors
//!   it does not cover is widened to the whole block with the newest data (read first: if the
//!   cache cannot give it, the write fails; it never writes an older copy).
//! - FLUSH (and FUA) first *rescues* every dirty block that is not durable on the cache (from the
//!   RAM buffers, or read back from the cache device) to the backing device and flushes it, so a
//!   FLUSH succeeds exactly when every acknowledged write is durable on one of the two devices.
//! - nothing new is staged or logged; writeback keeps draining what the cache can still read.
//!
//! A degraded volume's log may keep copies that the backing device has since superseded
//! (`stale_copies_in_log`); the volume must be drained (`drop_caches`) or its cache re-formatted
//! before it is created again (docs/SPDK.md, "Degraded state").

use super::*;
use crate::engine::stats::ErrorKind;

const NS_PER_S: u64 = 1_000_000_000;

/// Health of the cache device, as the volume has seen it.
#[derive(Default)]
pub(super) struct Health {
    /// Set once the volume is degraded: why.
    pub(super) degraded: Option<String>,
    /// Times (ns) of the cache device errors inside the window.
    cache_errors: VecDeque<u64>,
    /// A block was written to the backing device while the log holds a copy that a replay could
    /// map (it is newer on the backing device than in the log).
    pub(super) stale_copies_in_log: bool,
    /// A write-through superseded a copy that replay would map: every record says so
    /// (`RECORD_FLAG_SUPERSEDED_COPIES`) until a drained shutdown forgets the log.
    pub(super) superseded_in_log: bool,
    /// A record with that flag is durable.
    superseded_recorded: bool,
    /// After 3 failed record writes, no new try before this time (a dead cache would otherwise
    /// cost every write-through 3 failed writes); the error is logged once.
    superseded_next_try_ns: u64,
    superseded_warned: bool,
}

impl<D: BlockDevice + 'static, R: Runtime> Inner<D, R> {
    /// Counts a cache device error (and logs it, rate-limited); enough of them in the window put
    /// the volume in degraded state.
    pub(super) fn note_cache_error(&self, st: &mut State, kind: ErrorKind) {
        st.counters.note_error(kind);
        let threshold = st.opts.degraded_error_threshold;
        if threshold == 0 || st.health.degraded.is_some() {
            return;
        }
        let now = self.rt.now_ns();
        let window = st.opts.degraded_error_window_s * NS_PER_S;
        let h = &mut st.health;
        h.cache_errors.push_back(now);
        while h
            .cache_errors
            .front()
            .is_some_and(|&t| now.saturating_sub(t) > window)
        {
            h.cache_errors.pop_front();
        }
        if h.cache_errors.len() as u64 >= threshold {
            let reason = format!(
                "{} cache device errors within {} s (degraded_error_threshold {})",
                h.cache_errors.len(),
                st.opts.degraded_error_window_s,
                threshold
            );
            self.enter_degraded(st, reason);
        }
    }

    /// Puts the volume in degraded state (once; logged once). FLUSH/FUA waiting on the cache
    /// fail: what they wait for did not become durable there.
    pub(super) fn enter_degraded(&self, st: &mut State, reason: String) {
        if st.health.degraded.is_some() || st.opts.degraded_error_threshold == 0 {
            return;
        }
        tracing::error!(
            "writeboost: volume degraded: {reason}; writes go to the backing device, nothing new is cached"
        );
        st.health.degraded = Some(reason);
        st.health.cache_errors.clear();
        st.staging.marks.clear();
        st.durability.durability_error_gen += 1;
        st.counters.degraded_transitions += 1;
    }

    pub(super) fn is_degraded(&self) -> bool {
        self.st.borrow().health.degraded.is_some()
    }

    /// Before a write-through supersedes a copy in the log that replay would map (or once the log
    /// may hold such copies), the superblock record says so durably: a power cut before the log
    /// is drained then makes the next create refuse instead of replaying older data. Tried 3
    /// times, then at most once a second; a cache that cannot write its record keeps the write
    /// going (the errors are counted, and a create on such a cache cannot write its own record
    /// either).
    async fn record_superseded_before(self: &Rc<Self>, offset_sectors: u64, nr_sectors: u64) {
        let spb = SECTORS_PER_BLOCK as u64;
        {
            let mut st = self.st.borrow_mut();
            if st.health.superseded_recorded || self.rt.now_ns() < st.health.superseded_next_try_ns
            {
                return;
            }
            let hazard = st.health.stale_copies_in_log
                || (offset_sectors / spb..(offset_sectors + nr_sectors).div_ceil(spb))
                    .any(|b| st.replayable_copy(b));
            if !hazard {
                return;
            }
            st.health.superseded_in_log = true;
            st.health.stale_copies_in_log = true;
        }
        for _ in 0..3 {
            if self.write_record(false).await.is_ok() {
                self.st.borrow_mut().health.superseded_recorded = true;
                return;
            }
        }
        let mut st = self.st.borrow_mut();
        st.health.superseded_next_try_ns = self.rt.now_ns() + NS_PER_S;
        if !std::mem::replace(&mut st.health.superseded_warned, true) {
            tracing::error!(
                "writeboost: the superblock record could not say that the log holds superseded copies (retried every second); a create after a power cut may replay them"
            );
        }
    }

    /// The degraded write path.
    pub(super) async fn write_through(
        self: &Rc<Self>,
        offset_sectors: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<(), IoError> {
        let spb = SECTORS_PER_BLOCK as u64;
        let end = offset_sectors + (data.len() / SECTOR) as u64;
        let (first, last) = (offset_sectors / spb, end.div_ceil(spb));
        let ticket = self.gate_enter().await;
        // Overlapping write-throughs, and writeback of the blocks, finish first: two backing
        // writes of one block in flight could land in either order.
        self.wait_until(|st| {
            (first..last).all(|b| !st.cutoff.bypass_inflight.contains_key(&b))
                && (!st.wb.writeback_in_flight
                    || (first..last).all(|b| st.index.lookup(b).is_none()))
        })
        .await;
        // From here until the backing write ends, no writeback batch starts if a block has a
        // cached copy: it would skip the block (newer data is on its way) and still mark the
        // block's segment written back, with the block dirty in it.
        let over_cached = {
            let mut st = self.st.borrow_mut();
            let cached = (first..last).any(|b| st.index.lookup(b).is_some());
            st.wb.write_through_over_cached += cached as u32;
            cached
        };
        let done_over_cached = |this: &Self| {
            if over_cached {
                this.st.borrow_mut().wb.write_through_over_cached -= 1;
            }
        };
        let widened = self.widen_over_dirty_edges(offset_sectors, data).await;
        let (w_off, w_data) = match &widened {
            Ok(Some((o, d))) => (*o, &d[..]),
            Ok(None) => (offset_sectors, data),
            Err(e) => {
                done_over_cached(self);
                self.gate_exit(ticket);
                self.notify();
                return Err(e.clone());
            }
        };
        self.record_superseded_before(w_off, (w_data.len() / SECTOR) as u64)
            .await;
        {
            let mut st = self.st.borrow_mut();
            st.count_direct_write(offset_sectors, (data.len() / SECTOR) as u64);
            st.bypass_begin(first, last);
        }
        self.gate_exit(ticket);
        let r = self.write_backing_direct(w_off, w_data, fua).await;
        self.st.borrow_mut().bypass_end(first, last);
        done_over_cached(self);
        if r.is_ok() {
            // The backing device holds the newest data now: drop the cached copies. A replay
            // could map a copy still in the log over it.
            let nr = (w_data.len() / SECTOR) as u64;
            let hazard = {
                let st = self.st.borrow();
                (w_off / spb..(w_off + nr).div_ceil(spb)).any(|b| st.replayable_copy(b))
            };
            self.invalidate_range(w_off, nr, true);
            if hazard {
                self.st.borrow_mut().health.stale_copies_in_log = true;
            }
        } else {
            self.notify();
        }
        r
    }

    /// A partial write of a block whose cached copy has dirty sectors outside the write would,
    /// once the copy is dropped, lose them: such edge blocks are read whole (newest data) and the
    /// write widened to cover them. `None`: nothing to widen.
    async fn widen_over_dirty_edges(
        self: &Rc<Self>,
        offset_sectors: u64,
        data: &[u8],
    ) -> Result<Option<(u64, Vec<u8>)>, IoError> {
        let spb = SECTORS_PER_BLOCK as u64;
        let end = offset_sectors + (data.len() / SECTOR) as u64;
        // Whether `block`, partly covered by the write, has dirty sectors the write misses.
        let needs = |block: u64| -> bool {
            let first = offset_sectors.max(block * spb);
            let last = end.min((block + 1) * spb);
            if last - first == spb {
                return false;
            }
            let mask = mask_of((first - block * spb) as u32, (last - first) as u32);
            let st = self.st.borrow();
            st.index
                .lookup(block)
                .is_some_and(|cb| st.index.dirty(cb) & !mask != 0)
        };
        let (first_block, last_block) = (offset_sectors / spb, (end - 1) / spb);
        let widen_head = needs(first_block);
        let widen_tail = last_block != first_block && needs(last_block);
        if !widen_head && !widen_tail {
            return Ok(None);
        }
        let w_first = if widen_head {
            first_block * spb
        } else {
            offset_sectors
        };
        let w_end = if widen_tail || (widen_head && last_block == first_block) {
            (last_block + 1) * spb
        } else {
            end
        };
        let mut buf = vec![0u8; ((w_end - w_first) as usize) * SECTOR];
        if widen_head {
            self.read_copy(first_block * spb, &mut buf[..BLOCK]).await?;
        }
        if widen_tail {
            let o = ((last_block * spb - w_first) as usize) * SECTOR;
            self.read_copy(last_block * spb, &mut buf[o..o + BLOCK])
                .await?;
        }
        let o = ((offset_sectors - w_first) as usize) * SECTOR;
        buf[o..o + data.len()].copy_from_slice(data);
        Ok(Some((w_first, buf)))
    }

    /// Degraded FLUSH: every dirty block not durable on the cache (in a RAM buffer, or written
    /// but not flushed) is written to the backing device from RAM or read back from the cache,
    /// the backing device is flushed, and the blocks are dropped from the cache. Fails when a
    /// block can be had from neither.
    pub(super) async fn rescue_undurable(self: &Rc<Self>) -> Result<(), IoError> {
        let ticket = self.gate_enter().await;
        let r = self.rescue_undurable_gated().await;
        self.gate_exit(ticket);
        r
    }

    async fn rescue_undurable_gated(self: &Rc<Self>) -> Result<(), IoError> {
        self.wait_until(|st| st.cutoff.bypass_inflight.is_empty() && !st.wb.writeback_in_flight)
            .await;
        struct Rescue {
            block: u64,
            cb: u64,
            dirty: u8,
            data: Option<AlignedBuf>,
            slot: u64,
        }
        let mut items: Vec<Rescue> = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            // The open segment holds acknowledged writes too; sealing starts its (probably
            // failing) write and keeps its data in RAM.
            self.seal(&mut st);
            let dpb = st.dpb();
            for slot in 0..st.geo.nr_segments {
                let id = st.log.slot_id[slot as usize];
                if id <= st.log.last_durable || id == 0 {
                    continue;
                }
                for j in 0..st.log.slot_len[slot as usize] as u64 {
                    let cb = slot * dpb + j;
                    let block = st.index.backing_of(cb);
                    if block == index::NO_BLOCK || st.index.dirty(cb) == 0 {
                        continue;
                    }
                    let data = st.cb_in_ram(cb).map(|b| {
                        let off = st.cb_buf_offset(cb);
                        let mut d = AlignedBuf::for_overwrite(BLOCK);
                        d.copy_from_slice(&st.log.bufs[b].bytes()[off..off + BLOCK]);
                        d
                    });
                    if data.is_none() {
                        st.log.pin_slot(slot);
                    }
                    items.push(Rescue {
                        block,
                        cb,
                        dirty: st.index.dirty(cb),
                        data,
                        slot,
                    });
                }
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        let mut first_err = None;
        for it in &mut items {
            if it.data.is_some() {
                continue;
            }
            let off = self.st.borrow().cb_device_offset(it.cb);
            let (b, r) = self.cache.read(off, AlignedBuf::for_overwrite(BLOCK)).await;
            let mut st = self.st.borrow_mut();
            st.log.unpin_slot(it.slot);
            match r {
                Ok(()) => it.data = Some(b),
                Err(e) => {
                    self.note_cache_error(&mut st, ErrorKind::CacheRead);
                    first_err.get_or_insert(IoError::cache(e));
                }
            }
        }
        // Whatever could be read is written, even when something could not.
        for it in items.iter().filter(|it| it.data.is_some()) {
            let d = it.data.as_ref().expect("filtered");
            for (s, n) in runs(it.dirty) {
                let a = s as usize * SECTOR;
                let len = n as usize * SECTOR;
                let off = it.block * BLOCK as u64 + a as u64;
                let run = AlignedBuf::copy_of(&d[a..a + len]);
                if let (_, Err(e)) = self.backing.write(off, run).await {
                    self.st
                        .borrow_mut()
                        .counters
                        .note_error(ErrorKind::BackingWrite);
                    first_err.get_or_insert(IoError::backing(e));
                }
            }
        }
        self.flush_backing().await?;
        if let Some(e) = first_err {
            return Err(e);
        }
        {
            let mut st = self.st.borrow_mut();
            for it in &items {
                if st.index.maps(it.block, it.cb) && st.index.dirty(it.cb) != 0 {
                    st.nr_dirty -= 1;
                    st.index.remove(it.cb);
                    st.counters.rescued_blocks += 1;
                }
            }
            // Their segments may still reach the cache (the write is retried) and be replayed.
            st.health.stale_copies_in_log = true;
        }
        self.notify();
        Ok(())
    }
}
