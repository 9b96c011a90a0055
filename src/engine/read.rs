//! The read path: sectors come from RAM buffers (open or sealed, copied at once), from the cache
//! device, or from the backing device; contiguous pieces are read with one I/O each. Read misses
//! of whole blocks may be staged into the log as clean blocks (read caching).
//!
//! Owns: [`Staging`] (which in-flight read may stage which block; the sequential run of reads).

use super::*;
use crate::engine::stats::stat_index;
use crate::engine::stats::ErrorKind;

/// Read caching: which blocks a read in flight may stage, and the sequential run of reads.
pub(super) struct Staging {
    /// Blocks a read may stage, with the token of the read allowed to.
    pub(super) marks: HashMap<u64, u64>,
    pub(super) token: u64,
    pub(super) seq_next_block: u64,
    pub(super) seq_run_blocks: u64,
}

impl Default for Staging {
    fn default() -> Staging {
        Staging {
            marks: HashMap::new(),
            token: 0,
            seq_next_block: u64::MAX,
            seq_run_blocks: 0,
        }
    }
}

/// One device read of the plan.
struct Piece {
    base: Base,
    device_offset_bytes: u64,
    len_bytes: usize,
    out_offset_bytes: usize,
    /// Slot pinned for a cache read.
    slot: Option<u64>,
}

impl<D: BlockDevice + 'static, R: Runtime> Inner<D, R> {
    fn stage_blocks(
        self: &Rc<Self>,
        token: u64,
        blocks: &[u64],
        out: &[u8],
        out_first_sector: u64,
    ) {
        let mut st = self.st.borrow_mut();
        let spb = SECTORS_PER_BLOCK as u64;
        for &block in blocks {
            // The mark must still be this read's: a write or discard since the read began
            // removed it, a later read replaced it. Staging never waits behind queued writes.
            if st.staging.marks.get(&block) != Some(&token) {
                continue;
            }
            st.staging.marks.remove(&block);
            if !st.gate.is_empty()
                || st.index.lookup(block).is_some()
                || st.cutoff.bypass_inflight.contains_key(&block)
                || st.backing_block_unflushed(block)
            {
                continue;
            }
            if !self.ensure_open_with_room(&mut st) {
                continue;
            }
            let src = ((block * spb - out_first_sector) as usize) * SECTOR;
            st.append_copy(block, &out[src..src + BLOCK], None, None, (0xff, 0));
            st.counters.staged_blocks += 1;
        }
    }

    /// Reads into `out` and gives it back. When one device read covers all of `out` (a read of
    /// cached or uncached blocks that are contiguous on their device), the device reads into
    /// `out` itself; otherwise each device read has a buffer of its own, copied in after.
    pub(super) async fn read_into(
        self: &Rc<Self>,
        offset_sectors: u64,
        mut out: AlignedBuf,
    ) -> (AlignedBuf, Result<(), IoError>) {
        let r = self.read_planned(offset_sectors, &mut out).await;
        (out, r)
    }

    /// [`Self::read_into`] through a buffer of the engine's, copied into `out`.
    pub(super) async fn read_copy(
        self: &Rc<Self>,
        offset_sectors: u64,
        out: &mut [u8],
    ) -> Result<(), IoError> {
        let (buf, r) = self
            .read_into(offset_sectors, AlignedBuf::for_overwrite(out.len()))
            .await;
        r?;
        out.copy_from_slice(&buf);
        Ok(())
    }

    async fn read_planned(
        self: &Rc<Self>,
        offset_sectors: u64,
        out_buf: &mut AlignedBuf,
    ) -> Result<(), IoError> {
        let out: &mut [u8] = out_buf;
        let spb = SECTORS_PER_BLOCK as u64;
        let nr_sectors = (out.len() / SECTOR) as u64;
        let end = offset_sectors + nr_sectors;
        let mut pieces: Vec<Piece> = Vec::new();
        let mut stage: Vec<u64> = Vec::new();
        let token;
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let first_block = offset_sectors / spb;
            let last_block = (end - 1) / spb;
            let nr_blocks = last_block - first_block + 1;
            if first_block == st.staging.seq_next_block {
                st.staging.seq_run_blocks += nr_blocks;
            } else {
                st.staging.seq_run_blocks = nr_blocks;
            }
            st.staging.seq_next_block = last_block + 1;
            let threshold = st.opts.read_cache_threshold;
            let may_stage = threshold > 0
                && st.staging.seq_run_blocks <= threshold
                && st.health.degraded.is_none();
            st.staging.token += 1;
            token = st.staging.token;
            let mut sector = offset_sectors;
            while sector < end {
                let block = sector / spb;
                let first = (sector % spb) as u32;
                let nr = ((spb - first as u64).min(end - sector)) as u32;
                let mask = mask_of(first, nr);
                let fullsize = mask == 0xff;
                let out_block_start = (block * spb) as i64 - offset_sectors as i64;
                let cb = st.index.lookup(block);
                let on_buffer = match (cb, st.log.open) {
                    (Some(cb), Some(o)) => st.slot_of_cb(cb) == o.slot,
                    _ => false,
                };
                st.counters.stat[stat_index(false, cb.is_some(), on_buffer, fullsize)] += 1;
                let (cached, from_backing) = match cb {
                    Some(cb) => (mask & st.index.valid(cb), mask & !st.index.valid(cb)),
                    None => (0, mask),
                };
                if let Some(cb) = cb {
                    if cached != 0 {
                        match st.cb_in_ram(cb) {
                            Some(b) => {
                                let off = st.cb_buf_offset(cb);
                                let buf = st.log.bufs[b].bytes();
                                for (s, n) in runs(cached) {
                                    let o = ((out_block_start + s as i64) as usize) * SECTOR;
                                    let a = off + s as usize * SECTOR;
                                    out[o..o + n as usize * SECTOR]
                                        .copy_from_slice(&buf[a..a + n as usize * SECTOR]);
                                }
                            }
                            None => {
                                let slot = st.slot_of_cb(cb);
                                for (s, n) in runs(cached) {
                                    let dev =
                                        st.cb_device_offset(cb) + (s as usize * SECTOR) as u64;
                                    let o = ((out_block_start + s as i64) as usize) * SECTOR;
                                    let len = n as usize * SECTOR;
                                    match pieces.last_mut() {
                                        Some(p)
                                            if p.base == Base::Cache
                                                && p.slot == Some(slot)
                                                && p.device_offset_bytes + p.len_bytes as u64
                                                    == dev
                                                && p.out_offset_bytes + p.len_bytes == o =>
                                        {
                                            p.len_bytes += len;
                                        }
                                        _ => {
                                            st.log.pin_slot(slot);
                                            pieces.push(Piece {
                                                base: Base::Cache,
                                                device_offset_bytes: dev,
                                                len_bytes: len,
                                                out_offset_bytes: o,
                                                slot: Some(slot),
                                            });
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                for (s, n) in runs(from_backing) {
                    let dev = (block * spb + s as u64) * SECTOR_SIZE_BYTES as u64;
                    let o = ((out_block_start + s as i64) as usize) * SECTOR;
                    let len = n as usize * SECTOR;
                    match pieces.last_mut() {
                        Some(p)
                            if p.base == Base::Backing
                                && p.device_offset_bytes + p.len_bytes as u64 == dev
                                && p.out_offset_bytes + p.len_bytes == o =>
                        {
                            p.len_bytes += len;
                        }
                        _ => pieces.push(Piece {
                            base: Base::Backing,
                            device_offset_bytes: dev,
                            len_bytes: len,
                            out_offset_bytes: o,
                            slot: None,
                        }),
                    }
                }
                if may_stage
                    && fullsize
                    && cb.is_none()
                    && !st.cutoff.bypass_inflight.contains_key(&block)
                    && !st.backing_block_unflushed(block)
                {
                    st.staging.marks.insert(block, token);
                    stage.push(block);
                }
                sector += nr as u64;
            }
            st.counters.bytes_read += out.len() as u64;
        }
        let has_backing = pieces.iter().any(|p| p.base == Base::Backing);
        if has_backing {
            self.backing_fg_begin();
        }
        let out_len = out.len();
        // One piece that covers all of `out`: the device reads into `out` itself. Otherwise
        // every piece is read into a buffer of its own (the device owns it until the read
        // completes), all at once, and copied in after.
        let direct =
            matches!(&pieces[..], [p] if p.out_offset_bytes == 0 && p.len_bytes == out_len);
        let results = if direct {
            let p = &pieces[0];
            let buf = std::mem::replace(out_buf, AlignedBuf::empty());
            let (buf, r) = match p.base {
                Base::Cache => self.cache.read(p.device_offset_bytes, buf).await,
                Base::Backing => self.backing.read(p.device_offset_bytes, buf).await,
            };
            *out_buf = buf;
            vec![(None, r)]
        } else {
            let reads = pieces.iter().map(|p| async move {
                let buf = AlignedBuf::for_overwrite(p.len_bytes);
                let (buf, r) = match p.base {
                    Base::Cache => self.cache.read(p.device_offset_bytes, buf).await,
                    Base::Backing => self.backing.read(p.device_offset_bytes, buf).await,
                };
                (Some(buf), r)
            });
            futures::future::join_all(reads).await
        };
        let out: &mut [u8] = out_buf;
        if has_backing {
            self.backing_fg_end();
        }
        let mut first_err = None;
        {
            let mut st = self.st.borrow_mut();
            for (p, (buf, r)) in pieces.iter().zip(results) {
                if let Some(slot) = p.slot {
                    st.log.unpin_slot(slot);
                }
                match (p.base, r) {
                    (Base::Cache, Ok(())) => st.counters.bytes_cache_read += p.len_bytes as u64,
                    (Base::Backing, Ok(())) => st.counters.bytes_backing_read += p.len_bytes as u64,
                    (base, Err(e)) => {
                        match base {
                            Base::Cache => self.note_cache_error(&mut st, ErrorKind::CacheRead),
                            Base::Backing => st.counters.note_error(ErrorKind::BackingRead),
                        }
                        first_err.get_or_insert(IoError::Device { base, source: e });
                        continue;
                    }
                }
                if let Some(buf) = buf {
                    out[p.out_offset_bytes..p.out_offset_bytes + p.len_bytes].copy_from_slice(&buf);
                }
            }
        }
        self.notify();
        self.bump_progress();
        if let Some(e) = first_err {
            let mut st = self.st.borrow_mut();
            for b in &stage {
                if st.staging.marks.get(b) == Some(&token) {
                    st.staging.marks.remove(b);
                }
            }
            return Err(e);
        }
        if !stage.is_empty() {
            self.stage_blocks(token, &stage, out, offset_sectors);
        }
        Ok(())
    }
}

impl<D: BlockDevice + 'static, R: Runtime> Volume<D, R> {
    /// Reads `out.len()` bytes (a multiple of 512) at `offset_sectors`: always the newest data.
    /// (Through a buffer of the engine's, copied into `out`: [`Self::read_buf`] saves that copy.)
    pub async fn read(&self, offset_sectors: u64, out: &mut [u8]) -> Result<(), IoError> {
        self.check_read(offset_sectors, out.len())?;
        self.inner.read_copy(offset_sectors, out).await
    }

    /// [`Self::read`] into a buffer the caller hands over and gets back (the SPDK glue lends
    /// the request's own buffer: [`AlignedBuf::lent`]), which a read served by one device read
    /// fills directly.
    pub async fn read_buf(
        &self,
        offset_sectors: u64,
        out: AlignedBuf,
    ) -> (AlignedBuf, Result<(), IoError>) {
        if let Err(e) = self.check_read(offset_sectors, out.len()) {
            return (out, Err(e));
        }
        self.inner.read_into(offset_sectors, out).await
    }

    /// A read of `len` bytes at `offset_sectors` is whole sectors (else a caller's bug: panics)
    /// inside the volume.
    fn check_read(&self, offset_sectors: u64, len: usize) -> Result<(), IoError> {
        assert!(len % SECTOR == 0, "read length is not a multiple of 512");
        self.check_range(offset_sectors, (len / SECTOR) as u64)
    }
}
