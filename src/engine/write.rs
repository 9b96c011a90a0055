//! The write path: RAM buffers, hits on the open buffer, invalidation of older copies,
//! partial-block merges, write-around, discard and write-zeroes.

use super::cutoff::Cutoff;
use super::*;
use crate::engine::stats::stat_index;
use crate::engine::stats::ErrorKind;

/// Outcome of trying to place one block in the open buffer.
enum Place {
    /// Applied; the block lives in segment `id`.
    Done { id: u64 },
    /// No free segment or RAM buffer: wait for the flusher or for writeback.
    NeedSpace,
    /// The older copy on the cache device has dirty sectors this write does not cover: read it.
    NeedOldCopy { cb: u64 },
    /// The block needs a new segment, and while a batch for space runs, segments open paced:
    /// wait until `at` (ns).
    Paced { at: u64 },
}

impl<D: BlockDevice + 'static, R: Runtime> Inner<D, R> {
    /// Places one block of a write. `data` holds the sectors of `mask` (in order); `old_copy`
    /// is the full old block when a previous attempt asked for it.
    fn place_block(
        self: &Rc<Self>,
        st: &mut State,
        block: u64,
        mask: u8,
        data: &[u8],
        old_copy: Option<(u64, &[u8])>,
    ) -> Place {
        let fullsize = mask == 0xff;
        let old = st.index.lookup(block);
        if !st.staging.marks.is_empty() {
            st.staging.marks.remove(&block);
        }
        // Hit on the open buffer: overwrite in place.
        if let (Some(cb), Some(o)) = (old, st.log.open) {
            if st.slot_of_cb(cb) == o.slot {
                let off = st.cb_buf_offset(cb);
                copy_sectors_in(st.log.bufs[o.buf].block_mut(off), mask, data);
                st.log.bufs[o.buf].update_crc(off);
                let (v, d) = (st.index.valid(cb), st.index.dirty(cb));
                if d == 0 {
                    st.nr_dirty += 1;
                }
                st.index.set_bits(cb, v | mask, d | mask);
                st.counters.stat[stat_index(true, true, true, fullsize)] += 1;
                return Place::Done { id: o.id };
            }
        }
        if !st.open_has_room() {
            // Sealed at once (its write starts), opened when pacing allows.
            self.seal(st);
            if let Some(at) = self.paced_open_at(st) {
                return Place::Paced { at };
            }
        }
        if !self.ensure_open_with_room(st) {
            return Place::NeedSpace;
        }
        // Opening a segment may have evicted a clean old copy (it only unmaps): look again.
        let old = old.filter(|&cb| st.index.maps(block, cb));
        let mut need = 0u8;
        let mut old_in_ram = None;
        if let Some(cb) = old {
            let (v, d) = (st.index.valid(cb), st.index.dirty(cb));
            old_in_ram = st.cb_in_ram(cb);
            need = if old_in_ram.is_some() {
                v & !mask
            } else {
                d & !mask
            };
            if need != 0 && old_in_ram.is_none() && old_copy.map(|(c, _)| c) != Some(cb) {
                return Place::NeedOldCopy { cb };
            }
        }
        let (cb, o) = st.append_block();
        let off = st.cb_buf_offset(cb);
        let mut valid = mask;
        let mut dirty = mask;
        // The old copy's sectors this write keeps (`need`): from its sealed RAM buffer, or from
        // the copy read from the cache.
        let kept = match old {
            Some(old_cb) if need != 0 => {
                let in_ram = old_in_ram.map(|b| {
                    assert_ne!(b, o.buf, "open-buffer hits are handled above");
                    (st.log.bufs[b].share(), st.cb_buf_offset(old_cb))
                });
                Some((st.index.dirty(old_cb), in_ram))
            }
            _ => None,
        };
        let dst = st.log.bufs[o.buf].block_mut(off);
        copy_sectors_in(dst, mask, data);
        if let Some((od, in_ram)) = kept {
            match in_ram {
                Some((src, ooff)) => copy_sectors_between(dst, &src[ooff..ooff + BLOCK], need),
                None => {
                    let (_, src) = old_copy.expect("old copy read");
                    copy_sectors_between(dst, src, need);
                }
            }
            valid |= need;
            dirty |= need & od;
        }
        st.log.bufs[o.buf].update_crc(off);
        match old {
            Some(old_cb) => {
                if st.index.dirty(old_cb) != 0 {
                    st.nr_dirty -= 1;
                }
                st.index.relocate(old_cb, cb, valid, dirty);
            }
            None => st.index.insert(block, cb, valid, dirty),
        }
        st.nr_dirty += 1;
        st.counters.stat[stat_index(true, old.is_some(), false, fullsize)] += 1;
        Place::Done { id: o.id }
    }

    async fn read_old_copy(&self, cb: u64) -> Result<AlignedBuf, IoError> {
        let (off, slot) = {
            let mut st = self.st.borrow_mut();
            let slot = st.slot_of_cb(cb);
            st.log.pin_slot(slot);
            (st.cb_device_offset(cb), slot)
        };
        let (buf, r) = self.cache.read(off, AlignedBuf::for_overwrite(BLOCK)).await;
        let mut st = self.st.borrow_mut();
        st.log.unpin_slot(slot);
        st.counters.bytes_cache_read += BLOCK as u64;
        if let Err(e) = r {
            self.note_cache_error(&mut st, ErrorKind::CacheRead);
            return Err(IoError::cache(e));
        }
        drop(st);
        self.notify();
        Ok(buf)
    }

    /// Writes `data` at `offset_sectors` into the log, in the gate (`ticket`: a place in it the
    /// caller already holds). Returns the newest segment id touched.
    async fn write_to_log(
        self: &Rc<Self>,
        offset_sectors: u64,
        data: &[u8],
        ticket: Option<u64>,
    ) -> Result<u64, IoError> {
        let ticket = match ticket {
            Some(t) => t,
            None => self.gate_enter().await,
        };
        let r = self.write_to_log_gated(offset_sectors, data).await;
        self.gate_exit(ticket);
        r
    }

    async fn write_to_log_gated(
        self: &Rc<Self>,
        offset_sectors: u64,
        data: &[u8],
    ) -> Result<u64, IoError> {
        let spb = SECTORS_PER_BLOCK as u64;
        let end = offset_sectors + (data.len() / SECTOR) as u64;
        if !self.st.borrow().cutoff.bypass_inflight.is_empty() {
            // A write that bypassed the cache is still going to the backing device: a newer copy
            // in the log could otherwise be written back before it lands, and lose to it.
            let (first, last) = (offset_sectors / spb, end.div_ceil(spb));
            self.wait_until(|st| {
                (first..last).all(|b| !st.cutoff.bypass_inflight.contains_key(&b))
            })
            .await;
        }
        let mut sector = offset_sectors;
        let mut last_id = 0;
        let mut waited = false;
        let mut paced = false;
        while sector < end {
            let block = sector / spb;
            let first = (sector % spb) as u32;
            let nr = ((spb - first as u64).min(end - sector)) as u32;
            let mask = mask_of(first, nr);
            let src_off = ((sector - offset_sectors) as usize) * SECTOR;
            let src = &data[src_off..src_off + nr as usize * SECTOR];
            let mut old_copy: Option<(u64, AlignedBuf)> = None;
            loop {
                let placed = {
                    let mut st = self.st.borrow_mut();
                    self.place_block(
                        &mut st,
                        block,
                        mask,
                        src,
                        old_copy.as_ref().map(|(c, b)| (*c, &b[..])),
                    )
                };
                match placed {
                    Place::Done { id } => {
                        last_id = id;
                        break;
                    }
                    Place::NeedOldCopy { cb } => {
                        old_copy = Some((cb, self.read_old_copy(cb).await?));
                    }
                    Place::Paced { at } => {
                        if !paced {
                            paced = true;
                            self.st.borrow_mut().counters.writes_paced += 1;
                        }
                        // Until `at`, or until the batch ends (its segments are free then).
                        let batch = self.st.borrow().wb.space_batch_started_ns;
                        self.wait_until_at_most(
                            move |st| st.wb.space_batch_started_ns != batch,
                            at.saturating_sub(self.rt.now_ns()),
                        )
                        .await;
                    }
                    Place::NeedSpace => {
                        if !waited {
                            waited = true;
                            self.st.borrow_mut().counters.write_waits_for_space += 1;
                        }
                        {
                            let mut st = self.st.borrow_mut();
                            st.wb.space_waiters += 1;
                            st.durability.flush_wanted =
                                st.durability.flush_wanted.max(st.log.last_sealed);
                        }
                        self.maybe_start_writeback();
                        self.kick_flush();
                        self.wait_for_space().await;
                        self.st.borrow_mut().wb.space_waiters -= 1;
                        if self.is_degraded() {
                            // No space will come from a failing cache: the caller writes the
                            // whole write through to the backing device instead.
                            return Err(IoError::Degraded);
                        }
                    }
                }
            }
            sector += nr as u64;
        }
        self.st.borrow_mut().counters.bytes_written += data.len() as u64;
        self.bump_progress();
        Ok(last_id)
    }

    /// Write-around: invalidate cached copies and write to the backing device.
    async fn write_around(
        self: &Rc<Self>,
        offset_sectors: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<(), IoError> {
        let ticket = self.gate_enter().await;
        self.invalidate_range(offset_sectors, (data.len() / SECTOR) as u64, true);
        self.gate_exit(ticket);
        let r = self.write_backing_direct(offset_sectors, data, fua).await;
        // A read that started before this write may have staged the old data meanwhile.
        self.invalidate_range(offset_sectors, (data.len() / SECTOR) as u64, true);
        r
    }

    /// The backing-device half of a write that does not go through the log.
    pub(super) async fn write_backing_direct(
        self: &Rc<Self>,
        offset_sectors: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<(), IoError> {
        self.backing_fg_begin();
        // The device owns what it writes until it completes: a copy of the caller's bytes.
        let (_, r) = self
            .backing
            .write(
                offset_sectors * SECTOR_SIZE_BYTES as u64,
                AlignedBuf::copy_of(data),
            )
            .await;
        self.backing_fg_end();
        {
            let mut st = self.st.borrow_mut();
            // Counted even when it failed: a failed write may have landed in part.
            st.durability.backing_writes_done += 1;
            st.note_backing_unflushed(offset_sectors, (data.len() / SECTOR) as u64);
            if let Err(e) = r {
                st.counters.note_error(ErrorKind::BackingWrite);
                return Err(IoError::backing(e));
            }
            st.counters.bytes_written += data.len() as u64;
        }
        if fua {
            self.flush_backing().await?;
        }
        Ok(())
    }

    /// Drops cached copies of every block the range touches (`partial_too`) or covers fully.
    pub(super) fn invalidate_range(&self, offset_sectors: u64, nr_sectors: u64, partial_too: bool) {
        let spb = SECTORS_PER_BLOCK as u64;
        let (first, last) = if partial_too {
            (
                offset_sectors / spb,
                (offset_sectors + nr_sectors).div_ceil(spb),
            )
        } else {
            (
                offset_sectors.div_ceil(spb),
                (offset_sectors + nr_sectors) / spb,
            )
        };
        if first >= last {
            return;
        }
        let mut st = self.st.borrow_mut();
        let drop_cb = |st: &mut State, cb: u64| {
            if st.index.dirty(cb) != 0 {
                st.nr_dirty -= 1;
            }
            let id = st.log.slot_id[st.slot_of_cb(cb) as usize];
            if id > st.log.recorded_writeback {
                let block = st.index.backing_of(cb);
                let e = st.cutoff.shadowed.entry(block).or_insert(id);
                *e = (*e).max(id);
            }
            st.index.remove(cb);
        };
        if last - first <= st.geo.nr_cache_blocks() {
            for block in first..last {
                st.staging.marks.remove(&block);
                if let Some(cb) = st.index.lookup(block) {
                    drop_cb(&mut st, cb);
                }
            }
        } else {
            st.staging.marks.retain(|b, _| *b < first || *b >= last);
            for cb in 0..st.geo.nr_cache_blocks() {
                let b = st.index.backing_of(cb);
                if b != index::NO_BLOCK && b >= first && b < last {
                    drop_cb(&mut st, cb);
                }
            }
        }
        drop(st);
        self.notify();
    }
}

impl State {
    /// Remembers that the blocks of a foreground backing write completed just now are not
    /// durable on the backing device until a backing flush that starts after it.
    fn note_backing_unflushed(&mut self, offset_sectors: u64, nr_sectors: u64) {
        let spb = SECTORS_PER_BLOCK as u64;
        let (first, last) = (
            offset_sectors / spb,
            (offset_sectors + nr_sectors).div_ceil(spb),
        );
        let n = self.durability.backing_writes_done;
        if self.durability.backing_unflushed.len() as u64 + (last - first)
            > self.geo.nr_cache_blocks()
        {
            self.durability.backing_unflushed.clear();
            self.durability.backing_unflushed_all_through = n;
            return;
        }
        for b in first..last {
            self.durability.backing_unflushed.insert(b, n);
        }
    }

    /// The hit/miss counters of a write that goes to the backing device instead of the log,
    /// block by block.
    pub(super) fn count_direct_write(&mut self, offset_sectors: u64, nr_sectors: u64) {
        let spb = SECTORS_PER_BLOCK as u64;
        let mut s = offset_sectors;
        let end = offset_sectors + nr_sectors;
        while s < end {
            let nr = (spb - s % spb).min(end - s);
            let hit = self.index.lookup(s / spb).is_some();
            self.counters.stat[stat_index(true, hit, false, nr == spb)] += 1;
            s += nr;
        }
    }
}

/// Copies the sectors of `mask` from `src` (packed, in order) into a block.
fn copy_sectors_in(block: &mut [u8], mask: u8, src: &[u8]) {
    let mut s = 0;
    for (first, nr) in runs(mask) {
        let (a, n) = (first as usize * SECTOR, nr as usize * SECTOR);
        block[a..a + n].copy_from_slice(&src[s..s + n]);
        s += n;
    }
}

/// Copies the sectors of `mask` between two blocks at the same positions.
fn copy_sectors_between(dst: &mut [u8], src: &[u8], mask: u8) {
    for (first, nr) in runs(mask) {
        let (a, n) = (first as usize * SECTOR, nr as usize * SECTOR);
        dst[a..a + n].copy_from_slice(&src[a..a + n]);
    }
}

impl<D: BlockDevice + 'static, R: Runtime> Volume<D, R> {
    /// Writes `data` (a multiple of 512 bytes) at `offset_sectors`. Without `fua` it completes once
    /// the data is in a RAM buffer; with `fua` once its segment is durable on the cache device.
    pub async fn write(&self, offset_sectors: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        assert!(
            data.len() % SECTOR == 0,
            "write length is not a multiple of 512"
        );
        self.check_range(offset_sectors, (data.len() / SECTOR) as u64)?;
        let inner = &self.inner;
        if fua {
            inner.st.borrow_mut().counters.fua_writes += 1;
        }
        if inner.is_degraded() {
            return inner.write_through(offset_sectors, data, fua).await;
        }
        if inner.st.borrow().opts.write_around_mode {
            inner
                .st
                .borrow_mut()
                .count_direct_write(offset_sectors, (data.len() / SECTOR) as u64);
            return inner.write_around(offset_sectors, data, fua).await;
        }
        let ticket = match inner.sequential_cutoff(offset_sectors, data, fua).await {
            Cutoff::Bypassed(Ok(())) => return Ok(()),
            Cutoff::Bypassed(Err(_)) => {
                // The engine chose the backing device, the user did not: a healthy cache takes
                // the write instead (the error is counted). The stream starts over, so the next
                // writes of it go to the log until it is long again.
                let mut st = inner.st.borrow_mut();
                st.counters.bypass_retried_in_log += 1;
                st.cutoff.wseq_bypassing = false;
                st.cutoff.wseq_run_sectors = 0;
                None
            }
            Cutoff::ToLog { ticket } => ticket,
        };
        let id = match inner.write_to_log(offset_sectors, data, ticket).await {
            Ok(id) => id,
            Err(IoError::Degraded) => return inner.write_through(offset_sectors, data, fua).await,
            Err(e) => return Err(e),
        };
        if fua {
            inner.make_durable(id, true).await?;
        }
        Ok(())
    }

    /// Discard/unmap: cached copies of fully covered blocks are dropped (they are never written
    /// back) and the range is discarded on the backing device. Contents become undefined.
    pub async fn discard(&self, offset_sectors: u64, nr_sectors: u64) -> Result<(), IoError> {
        self.check_range(offset_sectors, nr_sectors)?;
        let inner = &self.inner;
        let ticket = inner.gate_enter().await;
        inner.invalidate_range(offset_sectors, nr_sectors, false);
        inner.gate_exit(ticket);
        inner.st.borrow_mut().counters.discards += 1;
        let r = inner
            .backing
            .discard(
                offset_sectors * SECTOR_SIZE_BYTES as u64,
                nr_sectors * SECTOR_SIZE_BYTES as u64,
            )
            .await;
        if let Err(e) = r {
            // Discard is advisory on the backing device; count it, do not fail the I/O.
            if !matches!(e, crate::device::DeviceError::Unsupported { .. }) {
                inner
                    .st
                    .borrow_mut()
                    .counters
                    .note_error(ErrorKind::BackingWrite);
            }
        }
        Ok(())
    }

    /// Write-zeroes: zeroes are written like any data (so the usual ordering and durability
    /// rules hold), in chunks of at most 1 MiB. Each chunk takes its own path (the log, or the
    /// backing device through the sequential cutoff or write-around), so FUA is not passed to
    /// the chunks: once all are written, one FLUSH makes every one of them durable wherever it
    /// went.
    pub async fn write_zeroes(
        &self,
        offset_sectors: u64,
        nr_sectors: u64,
        fua: bool,
    ) -> Result<(), IoError> {
        self.check_range(offset_sectors, nr_sectors)?;
        const CHUNK_SECTORS: u64 = 2048;
        let zeroes = vec![0u8; (CHUNK_SECTORS.min(nr_sectors) as usize) * SECTOR];
        let mut s = offset_sectors;
        let end = offset_sectors + nr_sectors;
        while s < end {
            let n = CHUNK_SECTORS.min(end - s);
            self.write(s, &zeroes[..n as usize * SECTOR], false).await?;
            s += n;
        }
        if fua {
            self.inner.st.borrow_mut().counters.fua_writes += 1;
            self.inner.make_all_durable().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_masks() {
        assert_eq!(runs(0xff).collect::<Vec<_>>(), vec![(0, 8)]);
        assert_eq!(
            runs(0b1011_0001).collect::<Vec<_>>(),
            vec![(0, 1), (4, 2), (7, 1)]
        );
        assert_eq!(mask_of(0, 8), 0xff);
        assert_eq!(mask_of(3, 2), 0b0001_1000);
    }

    #[test]
    fn copy_sectors_in_packs_in_order() {
        let mut block = vec![0u8; BLOCK];
        let src: Vec<u8> = (0..2 * SECTOR).map(|i| (i / SECTOR + 1) as u8).collect();
        copy_sectors_in(&mut block, 0b1000_0010, &src);
        assert_eq!(block[SECTOR], 1);
        assert_eq!(block[7 * SECTOR], 2);
        assert_eq!(block[0], 0);
    }
}
