//! Writeback (migration): batches of the oldest durable segments, dirty blocks sorted by backing
//! LBA, contiguous runs coalesced into one write each, the backing device flushed before
//! `last_writeback_id` advances. Throttled by foreground load on the backing device.

use super::*;

/// Largest coalesced backing write.
const MAX_RUN_BLOCKS: u64 = 256;
/// Backing writes in flight per batch.
const WRITE_QUEUE_DEPTH: usize = 64;
const BACKOFF_MIN_NS: u64 = 1_000_000;
const BACKOFF_MAX_NS: u64 = 1_000_000_000;

struct Item {
    block: u64,
    cb: u64,
    dirty: u8,
    /// Index of the segment read buffer and byte offset in it.
    buf: usize,
    off: usize,
}

impl<D: BlockDevice + 'static, R: Runtime> Inner<D, R> {
    /// Whether a batch should start now.
    fn writeback_wanted(&self, st: &State, now_ns: u64) -> bool {
        if st.shutting_down || st.writeback_in_flight || now_ns < st.writeback_retry_at_ns {
            return false;
        }
        let used = st.open.map(|o| o.id).unwrap_or(st.next_id) - 1 - st.last_writeback;
        let free = st.geo.nr_segments.saturating_sub(used);
        // Keep a reserve of free segments so foreground writes rarely wait.
        let low_water = (st.geo.nr_segments / 4).max(2);
        let urgent = st.drop_caches_active > 0 || st.space_waiters > 0 || free < low_water;
        let background = st.opts.writeback_threshold > 0 && st.backing_util_pct < st.opts.writeback_threshold;
        urgent || background
    }

    /// Starts a writeback batch in the background if one is wanted. Returns true if it did.
    pub(super) fn maybe_start_writeback(self: &Rc<Self>) -> bool {
        let now = self.rt.now_ns();
        {
            let mut st = self.st.borrow_mut();
            if !self.writeback_wanted(&st, now) {
                return false;
            }
            if st.last_durable <= st.last_writeback && st.recorded_writeback >= st.last_writeback {
                // Only durable segments are written back: ask for a cache flush first.
                if st.last_written > st.last_durable {
                    st.flush_wanted = st.flush_wanted.max(st.last_written);
                    drop(st);
                    return self.kick_flush();
                }
                return false;
            }
        }
        let this = self.clone();
        self.st.borrow_mut().writeback_in_flight = true;
        self.rt.spawn(Box::pin(async move {
            let _ = this.writeback_batch().await;
        }));
        true
    }

    /// One batch. The caller set `writeback_in_flight`; this clears it.
    pub(super) async fn writeback_batch(self: &Rc<Self>) -> Result<u64, IoError> {
        let r = self.writeback_batch_inner().await;
        let now = self.rt.now_ns();
        {
            let mut st = self.st.borrow_mut();
            st.writeback_in_flight = false;
            match &r {
                Ok(_) => st.writeback_backoff_ns = 0,
                Err(_) => {
                    st.writeback_backoff_ns = (st.writeback_backoff_ns * 2).clamp(BACKOFF_MIN_NS, BACKOFF_MAX_NS);
                    st.writeback_retry_at_ns = now + st.writeback_backoff_ns;
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

    async fn writeback_batch_inner(self: &Rc<Self>) -> Result<u64, IoError> {
        // Collect the batch.
        let (first_id, last_id, slots, reads, mut items) = {
            let mut st = self.st.borrow_mut();
            let first_id = st.last_writeback + 1;
            let last_id = st.last_durable.min(st.last_writeback + st.opts.nr_max_batched_writeback);
            if last_id < first_id {
                let lagging = st.recorded_writeback < st.last_writeback;
                drop(st);
                if lagging {
                    self.write_record(false).await?;
                }
                return Ok(0);
            }
            let dpb = st.dpb();
            let mut slots = Vec::new();
            let mut reads: Vec<(u64, usize)> = Vec::new();
            let mut items = Vec::new();
            for id in first_id..=last_id {
                let slot = st.geo.slot_of_id(id);
                debug_assert_eq!(st.slot_id[slot as usize], id);
                let mut max_j = None;
                for j in 0..st.slot_len[slot as usize] as u64 {
                    let cb = slot * dpb + j;
                    let (block, dirty) = (st.index.backing_of(cb), st.index.dirty(cb));
                    if block != index::NO_BLOCK && dirty != 0 {
                        items.push(Item {
                            block,
                            cb,
                            dirty,
                            buf: reads.len(),
                            off: j as usize * BLOCK,
                        });
                        max_j = Some(j);
                    }
                }
                if let Some(j) = max_j {
                    st.slot_readers[slot as usize] += 1;
                    slots.push(slot);
                    let off = st.geo.data_block_offset_bytes(slot, 0);
                    reads.push((off, (j as usize + 1) * BLOCK));
                }
            }
            st.nr_cur_batched_writeback = last_id - first_id + 1;
            (first_id, last_id, slots, reads, items)
        };
        let _ = first_id;
        let unpin = |this: &Self| {
            let mut st = this.st.borrow_mut();
            for s in &slots {
                st.slot_readers[*s as usize] -= 1;
            }
        };
        // Read the data areas (one I/O per segment, all at once).
        let results = futures::future::join_all(reads.iter().map(|&(off, len)| async move {
            let mut b = AlignedBuf::zeroed(len);
            let r = self.cache.read(off, &mut b).await;
            (b, r)
        }))
        .await;
        let mut bufs = Vec::with_capacity(results.len());
        for (b, r) in results {
            if let Err(e) = r {
                unpin(self);
                self.st.borrow_mut().counters.cache_read_errors += 1;
                return Err(IoError::cache(e));
            }
            self.st.borrow_mut().counters.bytes_cache_read += b.len() as u64;
            bufs.push(b);
        }
        unpin(self);
        // Sort by backing LBA and coalesce.
        items.sort_unstable_by_key(|it| it.block);
        let mut writes: Vec<(u64, AlignedBuf)> = Vec::new();
        let mut i = 0;
        while i < items.len() {
            let it = &items[i];
            if it.dirty == 0xff {
                let mut j = i + 1;
                while j < items.len()
                    && items[j].dirty == 0xff
                    && items[j].block == items[j - 1].block + 1
                    && ((j - i) as u64) < MAX_RUN_BLOCKS
                {
                    j += 1;
                }
                let mut data = AlignedBuf::zeroed((j - i) * BLOCK);
                for (k, it) in items[i..j].iter().enumerate() {
                    data[k * BLOCK..(k + 1) * BLOCK].copy_from_slice(&bufs[it.buf][it.off..it.off + BLOCK]);
                }
                writes.push((it.block * BLOCK as u64, data));
                i = j;
            } else {
                for (s, n) in runs(it.dirty) {
                    let a = it.off + s as usize * SECTOR;
                    let mut data = AlignedBuf::zeroed(n as usize * SECTOR);
                    data.copy_from_slice(&bufs[it.buf][a..a + n as usize * SECTOR]);
                    writes.push((it.block * BLOCK as u64 + (s as usize * SECTOR) as u64, data));
                }
                i += 1;
            }
        }
        drop(bufs);
        let mut bytes = 0u64;
        for chunk in writes.chunks(WRITE_QUEUE_DEPTH) {
            let rs = futures::future::join_all(chunk.iter().map(|(off, data)| self.backing.write(*off, data))).await;
            for ((_, data), r) in chunk.iter().zip(rs) {
                if let Err(e) = r {
                    self.st.borrow_mut().counters.backing_write_errors += 1;
                    return Err(IoError::backing(e));
                }
                bytes += data.len() as u64;
            }
        }
        if !writes.is_empty() {
            if let Err(e) = self.backing.flush().await {
                self.st.borrow_mut().counters.backing_flush_errors += 1;
                return Err(IoError::backing(e));
            }
        }
        // Mark clean what is still the same copy, then advance.
        let mut st = self.st.borrow_mut();
        for it in &items {
            if st.index.backing_of(it.cb) == it.block && st.index.dirty(it.cb) != 0 {
                let v = st.index.valid(it.cb);
                st.index.set_bits(it.cb, v, 0);
                st.nr_dirty -= 1;
            }
        }
        st.last_writeback = last_id;
        st.counters.bytes_written_back += bytes;
        st.counters.writeback_batches += 1;
        drop(st);
        // Slots of these segments may be reused only once this is durably recorded.
        self.write_record(false).await?;
        Ok(bytes)
    }
}
