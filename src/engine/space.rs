//! Room in the log: appending at the head, the slot-reuse rule (a slot is reused only once it
//! has no reader, no RAM buffer, and the record says its segment was written back), what writes
//! waiting for space wait for, and how many segments reclaim has freed. Predicates over
//! [`LogState`](super::log::LogState) and the volume's health; no I/O.
//!
//! Owns nothing: the state is the log's.

use super::writeback_plan::{paced_open_at, OpenPacing};
use super::*;

impl State {
    /// Takes the next block of the open segment (the caller made sure it has room): its cache
    /// block number and the open segment.
    #[inline]
    pub(super) fn append_block(&mut self) -> (u64, OpenSegment) {
        let dpb = self.dpb();
        let o = self.log.open.as_mut().expect("an open segment with room");
        debug_assert!((o.len as u64) < dpb);
        let cb = o.slot * dpb + o.len as u64;
        o.len += 1;
        (cb, *o)
    }

    /// Appends a copy of `block` (its 4 KiB `data`) at the head, with its CRC (`known_crc`:
    /// the CRC `data` was logged with before, else computed), and maps `block` there with
    /// `valid` and `dirty` bits: a new mapping, or `moved_from`'s (the cache block mapping
    /// `block` now) moved. The caller made sure the head has room. Used by read staging and
    /// re-logging; writes merge sectors first.
    pub(super) fn append_copy(
        &mut self,
        block: u64,
        data: &[u8],
        known_crc: Option<u32>,
        moved_from: Option<u64>,
        (valid, dirty): (u8, u8),
    ) {
        let (cb, o) = self.append_block();
        let off = self.cb_buf_offset(cb);
        let buf = &mut self.log.bufs[o.buf];
        buf.block_mut(off).copy_from_slice(data);
        match known_crc {
            Some(crc) => buf.set_crc(off, crc),
            None => buf.update_crc(off),
        }
        match moved_from {
            Some(from) => {
                debug_assert!(self.index.maps(block, from));
                self.index.relocate(from, cb, valid, dirty);
            }
            None => self.index.insert(block, cb, valid, dirty),
        }
    }

    /// True when the next segment's slot still holds a segment not (recorded) written back.
    #[inline]
    pub(super) fn log_full(&self) -> bool {
        self.slot_awaits_reclaim(self.log.next_id + self.log.open.is_some() as u64)
    }

    /// Whether the open segment exists and has room for a block.
    #[inline]
    pub(super) fn open_has_room(&self) -> bool {
        self.log
            .open
            .is_some_and(|o| o.len < self.geo.data_blocks_per_segment())
    }

    /// What a write waiting for space waits for: space, or a degraded volume (which takes no
    /// new data into the log).
    #[inline]
    pub(super) fn space_available_or_degraded(&self) -> bool {
        self.space_available() || self.health.degraded.is_some()
    }

    /// The writes waiting for space to wake: all of them once what they wait for holds
    /// ([`Self::space_available_or_degraded`]), else none.
    #[inline]
    pub(super) fn take_space_waiters_if_ready(&mut self) -> Vec<Waker> {
        if self.log.space_wakers.is_empty() || !self.space_available_or_degraded() {
            return Vec::new();
        }
        std::mem::take(&mut self.log.space_wakers)
    }

    /// True when a segment can be opened (or the open one has room).
    #[inline]
    pub(super) fn space_available(&self) -> bool {
        // Sealing the open segment frees nothing, so a buffer must be free besides it.
        self.open_has_room() || self.can_open(self.log.next_id + self.log.open.is_some() as u64)
    }

    /// Whether the head can take a block now: the open segment has room, or the next one can be
    /// opened.
    #[inline]
    pub(super) fn head_has_room(&self) -> bool {
        self.open_has_room() || self.can_open(self.log.next_id)
    }

    /// True when the head cannot take a block until reclaim records the next slot's segment
    /// written back. (A RAM buffer, or a reader of the slot, is waited for: those pass by
    /// themselves.) The open segment, if any, is full: the head continues in segment `next_id`.
    pub(super) fn head_blocked_by_reclaim(&self) -> bool {
        !self.open_has_room() && self.slot_awaits_reclaim(self.log.next_id)
    }

    /// True when segment `id`'s slot still holds a segment the record does not say was written
    /// back (only reclaim changes that).
    #[inline]
    fn slot_awaits_reclaim(&self, id: u64) -> bool {
        let nr = self.geo.nr_segments;
        id > nr && self.log.recorded_writeback < id - nr
    }

    /// The slot-reuse rule: segment `id` may be opened when a RAM buffer is free and its slot
    /// has no RAM buffer and holds a segment the record says was written back. (Reads of the
    /// slot's old data may still be in flight: the new segment's data stays in its RAM buffer
    /// until they end, [`Inner::write_segment`](super::Inner) waits for them.)
    #[inline]
    pub(super) fn can_open(&self, id: u64) -> bool {
        let slot = self.geo.slot_of_id(id) as usize;
        !self.log.free_bufs.is_empty()
            && !self.slot_awaits_reclaim(id)
            && self.log.slot_buf[slot] == NO_BUF
    }

    /// Segments the next writeback batch takes at most
    /// ([`writeback_plan::batch_segments`](super::writeback_plan::batch_segments)). Draining
    /// (`drop_caches`, shutdown) never re-logs, so it takes full batches to a slow device even
    /// when the last batch for space re-logged.
    pub(super) fn batch_segments(&self) -> u64 {
        let draining = self.wb.drop_caches_active > 0 || self.wb.shutting_down;
        super::writeback_plan::batch_segments(
            self.opts.nr_max_batched_writeback,
            self.wb.backing_write_ns,
            self.wb.cache_write_ns,
            self.wb.relog_favoured && !draining,
        )
    }

    /// Segments not written back (counted from `last_writeback_id` to the open one) subtracted
    /// from the log's: what reclaim has freed.
    #[inline]
    pub(super) fn free_segments(&self) -> u64 {
        let used =
            self.log.open.map(|o| o.id).unwrap_or(self.log.next_id) - 1 - self.log.last_writeback;
        self.geo.nr_segments.saturating_sub(used)
    }
}

impl<D: BlockDevice + 'static, R: Runtime> Inner<D, R> {
    /// When the foreground may open its next segment, while a batch that runs for space is in
    /// flight ([`paced_open_at`]); `None`: now (or no such batch, or the volume is degraded).
    /// Pacing every sixteen blocks instead cost 7 % of the overflow benchmark's IOPS for the
    /// same tail.
    pub(super) fn paced_open_at(&self, st: &State) -> Option<u64> {
        let started = st.wb.space_batch_started_ns?;
        if st.health.degraded.is_some() {
            return None;
        }
        paced_open_at(OpenPacing {
            now_ns: self.rt.now_ns(),
            last_open_ns: st.log.last_open_ns,
            free_segments: st.free_segments(),
            batch_started_ns: started,
            batch_ns: st.wb.space_batch_ns,
        })
    }
}
