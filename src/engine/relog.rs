//! Re-logging (log cleaning without the backing device): a reclaim batch that runs for space
//! may move the live dirty blocks of its segments to the head of the log instead of writing them
//! back, when the measured costs say so (docs/ARCHITECTURE.md, "Re-logging"). The batch itself
//! (segment selection, reads, the record) is writeback.rs's; this file holds the choice, the
//! moves and the durability step before the batch's segments are given up.
//!
//! Owns nothing: the measured costs live in `WritebackState`.

use super::writeback::RELOG_BURST;
use super::writeback_plan::{relog_is_cheaper, Item, ReclaimCosts};
use super::*;

/// How long a re-logging batch waits for the foreground to fill the open segment holding its
/// copies before it seals it partly full.
const RELOG_SEAL_WAIT_NS: u64 = 2_000_000;

impl<D: BlockDevice + 'static, R: Runtime> Inner<D, R> {
    /// Whether a batch that runs for space re-logs its live dirty blocks (`items` as selected;
    /// `last_id`: its last segment): never when degraded, draining or in write-around mode;
    /// otherwise by measured cost ([`relog_is_cheaper`]) unless a test hook decides.
    pub(super) fn relog_chosen(&self, items: &[Item], last_id: u64) -> bool {
        let st = self.st.borrow();
        if st.health.degraded.is_some()
            || st.wb.drop_caches_active > 0
            || st.wb.shutting_down
            || st.opts.write_around_mode
        {
            return false;
        }
        if let Some(relog) = st.reclaim_override() {
            return relog;
        }
        let dpb = st.dpb();
        let free = st.free_segments();
        relog_is_cheaper(ReclaimCosts {
            live_dirty: items.iter().filter(|it| it.current).count() as u64,
            batch_blocks: (last_id - st.log.last_writeback) * dpb,
            head_room_blocks: free.saturating_sub(1) * dpb,
            writeback_batch_ns: st.wb.writeback_batch_ns,
            relog_ns_per_block: st.wb.relog_ns_per_block,
            backing_write_ns: st.wb.backing_write_ns,
            cache_write_ns: st.wb.cache_write_ns,
        })
    }

    /// Makes segments up to `target` durable, for a re-logging batch. Sealing the open segment
    /// at once would waste its free room (a partial segment per batch), and the foreground
    /// usually fills it within a moment: it is sealed only after [`RELOG_SEAL_WAIT_NS`].
    async fn make_head_durable(self: &Rc<Self>, target: u64) -> Result<(), IoError> {
        if target <= self.st.borrow().log.last_durable {
            return Ok(());
        }
        {
            let st = &mut *self.st.borrow_mut();
            st.durability.flush_wanted = st.durability.flush_wanted.max(target);
        }
        self.wait_until_at_most(move |st| st.log.last_durable >= target, RELOG_SEAL_WAIT_NS)
            .await;
        self.make_durable(target, true).await
    }

    /// Appends the current copies among `items` (sorted in log order; their data in `bufs`) at
    /// the head of the log, each with its valid and dirty bits, and maps the block there. A copy
    /// that is no longer current (written or discarded meanwhile) is dropped: its newer state is
    /// in the log or on the backing device. Stops where the head has no room (or the volume is
    /// degraded), or after `max` copies: the items from there stay in `items`. Returns how many
    /// were re-logged, and whether it stopped for want of room.
    fn relog_items(
        self: &Rc<Self>,
        items: &mut Vec<Item>,
        bufs: &[Rc<AlignedBuf>],
        max: usize,
    ) -> (u64, bool) {
        let mut st = self.st.borrow_mut();
        let mut relogged = 0;
        let mut out_of_room = false;
        // Items before `i` are done (moved, or dropped as no longer current).
        let mut i = 0;
        while i < items.len() {
            let it = &items[i];
            if !st.index.maps(it.block, it.cb) {
                i += 1;
                continue;
            }
            if relogged as usize == max {
                break;
            }
            if st.health.degraded.is_some() || !self.ensure_open_with_room(&mut st) {
                out_of_room = true;
                break;
            }
            let bits = (st.index.valid(it.cb), st.index.dirty(it.cb));
            let data = &bufs[it.buf][it.off..it.off + BLOCK];
            // The copy keeps the CRC its segment header gave it: not computed again, and a
            // block read back damaged is not blessed with a CRC of the damage.
            st.append_copy(it.block, data, Some(it.data_crc), Some(it.cb), bits);
            relogged += 1;
            i += 1;
        }
        items.drain(..i);
        (relogged, out_of_room)
    }

    /// Re-logs `items` (the batch's current dirty copies, in log order; their data in `bufs`),
    /// [`RELOG_BURST`] per executor turn, waiting for what passes by itself (a RAM buffer); what is left once the head needs reclaim (or the volume is
    /// degraded) stays in `items` for the batch to write back. Then makes the head durable.
    /// Returns how many were re-logged.
    pub(super) async fn relog_batch(
        self: &Rc<Self>,
        items: &mut Vec<Item>,
        bufs: &[Rc<AlignedBuf>],
    ) -> Result<u64, IoError> {
        let mut relogged = 0;
        loop {
            let (n, out_of_room) = self.relog_items(items, bufs, RELOG_BURST);
            relogged += n;
            if !items.is_empty() && !out_of_room {
                // A burst moved: let the foreground run (tail latency).
                crate::runtime::yield_now().await;
                continue;
            }
            let done = {
                let st = self.st.borrow();
                items.is_empty() || st.health.degraded.is_some() || st.head_blocked_by_reclaim()
            };
            if done {
                // What is left is written back below.
                break;
            }
            // A RAM buffer or the next slot's reader: they pass by themselves.
            self.wait_until(|st| {
                st.head_has_room() || st.health.degraded.is_some() || st.head_blocked_by_reclaim()
            })
            .await;
        }
        // The re-logged copies, and the newer copies of what this batch skipped, must be
        // durable before the batch's segments may be replaced.
        let target = {
            let st = self.st.borrow();
            match st.log.open {
                Some(o) if o.len > 0 => o.id,
                _ => st.log.last_sealed,
            }
        };
        self.make_head_durable(target).await?;
        Ok(relogged)
    }
}
