//! The sequential cutoff (bcache's and OCF's): a long sequential stream of uncached blocks goes
//! straight to the backing device once half the cache is dirty, when replay could not resurrect
//! an older copy over it.
//!
//! Owns: [`CutoffState`] (the stream, the `shadowed` invalidations, the bypasses in flight).

use super::*;

/// The sequential cutoff's stream, and what constrains writes that bypass the cache.
pub(super) struct CutoffState {
    pub(super) wseq_next_sector: u64,
    pub(super) wseq_run_sectors: u64,
    /// The current stream bypasses the cache: it keeps doing so until it breaks, even if
    /// writeback meanwhile cleaned the cache below half dirty (no flapping between paths).
    pub(super) wseq_bypassing: bool,
    /// Blocks dropped from the index by an invalidation (discard, write-around) while their copy
    /// sits in a segment above the recorded writeback id: replay would map that copy again, so
    /// such a block may not bypass the cache until the segment is recorded written back.
    pub(super) shadowed: HashMap<u64, u64>,
    /// Blocks with a bypassing write in flight: log writes of them wait, reads do not stage them.
    pub(super) bypass_inflight: HashMap<u64, u32>,
}

impl Default for CutoffState {
    fn default() -> CutoffState {
        CutoffState {
            wseq_next_sector: u64::MAX,
            wseq_run_sectors: 0,
            wseq_bypassing: false,
            shadowed: HashMap::new(),
            bypass_inflight: HashMap::new(),
        }
    }
}

/// Outcome of the sequential cutoff check.
pub(super) enum Cutoff {
    /// The write went to the backing device; its result.
    Bypassed(Result<(), IoError>),
    /// The write goes through the log, holding this gate ticket if the check took one.
    ToLog { ticket: Option<u64> },
}

impl<D: BlockDevice + 'static, R: Runtime> Inner<D, R> {
    /// Sequential cutoff: once half of the cache blocks are dirty, a write that continues a
    /// sequential stream longer than `sequential_cutoff_kib` goes straight to the backing device,
    /// provided no block it touches has a copy in the log that replay could map (cached, or
    /// invalidated but not yet recorded written back).
    pub(super) async fn sequential_cutoff(
        self: &Rc<Self>,
        offset_sectors: u64,
        data: &[u8],
        fua: bool,
    ) -> Cutoff {
        let nr_sectors = (data.len() / SECTOR) as u64;
        {
            let mut st = self.st.borrow_mut();
            if offset_sectors == st.cutoff.wseq_next_sector {
                st.cutoff.wseq_run_sectors += nr_sectors;
            } else {
                st.cutoff.wseq_run_sectors = nr_sectors;
                st.cutoff.wseq_bypassing = false;
            }
            st.cutoff.wseq_next_sector = offset_sectors + nr_sectors;
            let cutoff_sectors = st.opts.sequential_cutoff_kib * 2;
            if cutoff_sectors == 0
                || st.cutoff.wseq_run_sectors <= cutoff_sectors
                || nr_sectors < st.opts.sequential_cutoff_min_io_kib * 2
                || !(st.cutoff.wseq_bypassing || st.nr_dirty * 2 >= st.geo.nr_cache_blocks())
            {
                return Cutoff::ToLog { ticket: None };
            }
            st.cutoff.wseq_bypassing = true;
        }
        let spb = SECTORS_PER_BLOCK as u64;
        let (first, last) = (
            offset_sectors / spb,
            (offset_sectors + nr_sectors).div_ceil(spb),
        );
        let ticket = self.gate_enter().await;
        let clear = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let floor = st.log.recorded_writeback;
            if st.cutoff.shadowed.len() as u64 > st.geo.nr_cache_blocks() {
                st.cutoff.shadowed.retain(|_, id| *id > floor);
            }
            let clear = (first..last).all(|b| !st.replayable_copy(b));
            if clear {
                st.count_direct_write(offset_sectors, nr_sectors);
                for b in first..last {
                    st.cutoff.shadowed.remove(&b);
                }
                st.bypass_begin(first, last);
            }
            clear
        };
        if !clear {
            // The log path keeps this place in the gate, in order.
            return Cutoff::ToLog {
                ticket: Some(ticket),
            };
        }
        self.gate_exit(ticket);
        let r = self.write_backing_direct(offset_sectors, data, fua).await;
        {
            let mut st = self.st.borrow_mut();
            st.bypass_end(first, last);
            if r.is_ok() {
                st.counters.bytes_bypassed += data.len() as u64;
            }
        }
        self.notify();
        Cutoff::Bypassed(r)
    }
}

impl State {
    /// Registers a write to the backing device of blocks `first..last` that bypasses the log
    /// (cutoff, degraded write-through): log writes and writeback of them wait, and a read that
    /// began earlier must not stage what it read (it may be older).
    pub(super) fn bypass_begin(&mut self, first: u64, last: u64) {
        for b in first..last {
            self.staging.marks.remove(&b);
            *self.cutoff.bypass_inflight.entry(b).or_insert(0) += 1;
        }
    }

    /// The bypassing write of `first..last` completed (or failed).
    pub(super) fn bypass_end(&mut self, first: u64, last: u64) {
        for b in first..last {
            let n = self
                .cutoff
                .bypass_inflight
                .get_mut(&b)
                .expect("registered by bypass_begin");
            *n -= 1;
            if *n == 0 {
                self.cutoff.bypass_inflight.remove(&b);
            }
        }
    }
}
