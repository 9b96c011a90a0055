//! Background work as step functions: each `poll_*` checks whether its daemon has work, starts
//! it (as a task on the volume's runtime) and returns true when it did. The SPDK glue calls them
//! from named pollers (`wb_flush`, `wb_writeback`, `wb_sb_record`, `wb_sync`); tests call them
//! from the simulation loop. Plus the long operations built on them: drop_caches and shutdown.
//!
//! Owns: [`BackingLoad`] (foreground utilization of the backing device) and [`RecordState`]
//! (the superblock record's sequence and timing, the periodic sync).

use super::*;
use crate::engine::stats::ErrorKind;
use crate::format::{
    Record, RECORD_FLAG_CLEAN_SHUTDOWN, RECORD_FLAG_SUPERSEDED_COPIES, RECORD_OFFSETS_BYTES,
};

/// Foreground load on the backing device (writeback runs below `writeback_threshold` %).
pub(super) struct BackingLoad {
    pub(super) backing_fg_inflight: u32,
    pub(super) backing_busy_since_ns: u64,
    pub(super) backing_busy_ns: u64,
    pub(super) util_sample_at_ns: u64,
    pub(super) util_sample_busy_ns: u64,
    pub(super) backing_util_pct: u64,
}

impl BackingLoad {
    pub(super) fn new(now_ns: u64) -> BackingLoad {
        BackingLoad {
            backing_fg_inflight: 0,
            backing_busy_since_ns: now_ns,
            backing_busy_ns: 0,
            util_sample_at_ns: now_ns,
            util_sample_busy_ns: 0,
            backing_util_pct: 0,
        }
    }
}

/// The superblock record (its alternating copies) and the periodic sync.
pub(super) struct RecordState {
    pub(super) record_seq: u64,
    pub(super) record_in_flight: bool,
    pub(super) last_record_ns: u64,
    pub(super) last_sync_ns: u64,
    /// Set by a drained shutdown of a log with superseded copies: the clean record says every
    /// allocated segment is written back (nothing of the log is replayed).
    pub(super) forget_log_at_record: bool,
}

impl RecordState {
    pub(super) fn new(now_ns: u64) -> RecordState {
        RecordState {
            record_seq: 0,
            record_in_flight: false,
            last_record_ns: now_ns,
            last_sync_ns: now_ns,
            forget_log_at_record: false,
        }
    }
}

const NS_PER_S: u64 = 1_000_000_000;
const UTIL_SAMPLE_NS: u64 = 100_000_000;
const DROP_CACHES_MAX_FAILURES: u32 = 8;

impl<D: BlockDevice + 'static, R: Runtime> Inner<D, R> {
    /// Writes the superblock record (copies alternate) and flushes. Record writes never overlap.
    pub(super) async fn write_record(self: &Rc<Self>, clean: bool) -> Result<(), IoError> {
        self.wait_until(|st| !st.record.record_in_flight).await;
        self.st.borrow_mut().record.record_in_flight = true;
        let r = self.write_record_inner(clean).await;
        self.st.borrow_mut().record.record_in_flight = false;
        self.notify();
        r
    }

    async fn write_record_inner(self: &Rc<Self>, clean: bool) -> Result<(), IoError> {
        let (off, enc, recorded) = {
            let mut st = self.st.borrow_mut();
            st.record.record_seq += 1;
            // A drained shutdown of a log with superseded copies forgets every allocated id.
            let newest_id = st.newest_id();
            let (last_writeback_id, head_id) = if st.record.forget_log_at_record {
                (newest_id, newest_id)
            } else {
                (st.log.last_writeback, st.log.last_durable)
            };
            let r = Record {
                format_uuid: st.sb.format_uuid,
                seq: st.record.record_seq,
                last_writeback_id,
                head_id,
                flags: if clean { RECORD_FLAG_CLEAN_SHUTDOWN } else { 0 }
                    | if st.health.superseded_in_log && !st.record.forget_log_at_record {
                        RECORD_FLAG_SUPERSEDED_COPIES
                    } else {
                        0
                    },
            };
            (
                RECORD_OFFSETS_BYTES[(st.record.record_seq % 2) as usize],
                r.encode(),
                r.last_writeback_id,
            )
        };
        let r = match self.cache.write(off, AlignedBuf::copy_of(&enc)).await.1 {
            Ok(()) => self.cache.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.note_cache_error(&mut self.st.borrow_mut(), ErrorKind::CacheWrite);
            return Err(IoError::cache(e));
        }
        let mut st = self.st.borrow_mut();
        st.log.recorded_writeback = st.log.recorded_writeback.max(recorded);
        Ok(())
    }
}

impl<D: BlockDevice + 'static, R: Runtime> Volume<D, R> {
    /// Segment flusher: starts a cache flush that FLUSH/FUA waiters need.
    pub fn poll_flush(&self) -> bool {
        self.inner.kick_flush()
    }

    /// Writeback: samples the backing load and starts a batch when allowed or needed.
    pub fn poll_writeback(&self) -> bool {
        let now = self.inner.rt.now_ns();
        {
            let mut st = self.inner.st.borrow_mut();
            let elapsed = now.saturating_sub(st.load.util_sample_at_ns);
            if elapsed >= UTIL_SAMPLE_NS {
                let mut busy = st.load.backing_busy_ns;
                if st.load.backing_fg_inflight > 0 {
                    busy += now.saturating_sub(st.load.backing_busy_since_ns);
                    st.load.backing_busy_ns = busy;
                    st.load.backing_busy_since_ns = now;
                }
                let delta = busy - st.load.util_sample_busy_ns;
                st.load.backing_util_pct = (delta * 100 / elapsed).min(100);
                st.load.util_sample_busy_ns = busy;
                st.load.util_sample_at_ns = now;
            }
        }
        self.inner.maybe_start_writeback()
    }

    /// Superblock record updater: every `update_sb_record_interval` seconds.
    pub fn poll_sb_record(&self) -> bool {
        let now = self.inner.rt.now_ns();
        {
            let mut st = self.inner.st.borrow_mut();
            let interval = st.opts.update_sb_record_interval;
            if interval == 0
                || st.record.record_in_flight
                || now.saturating_sub(st.record.last_record_ns) < interval * NS_PER_S
            {
                return false;
            }
            st.record.last_record_ns = now;
        }
        let inner = self.inner.clone();
        self.inner.rt.spawn(Box::pin(async move {
            let _ = inner.write_record(false).await;
        }));
        true
    }

    /// Data synchronizer: every `sync_data_interval` seconds, seal and flush what is in RAM.
    pub fn poll_sync(&self) -> bool {
        let now = self.inner.rt.now_ns();
        let target = {
            let mut st = self.inner.st.borrow_mut();
            let interval = st.opts.sync_data_interval;
            if interval == 0 || now.saturating_sub(st.record.last_sync_ns) < interval * NS_PER_S {
                return false;
            }
            st.record.last_sync_ns = now;
            let target = match st.log.open {
                Some(o) if o.len > 0 => o.id,
                _ => st.log.last_sealed,
            };
            if target <= st.log.last_durable {
                return false;
            }
            target
        };
        let inner = self.inner.clone();
        self.inner.rt.spawn(Box::pin(async move {
            let _ = inner.make_durable(target, true).await;
        }));
        true
    }

    /// All four step functions; true if any did work.
    pub fn poll_all(&self) -> bool {
        let a = self.poll_flush();
        let b = self.poll_writeback();
        let c = self.poll_sb_record();
        let d = self.poll_sync();
        a | b | c | d
    }

    /// Seals the RAM buffer and writes back every dirty block; completes once none is left.
    pub async fn drop_caches(&self) -> Result<(), IoError> {
        let inner = &self.inner;
        inner.st.borrow_mut().wb.drop_caches_active += 1;
        let r = self.drop_caches_inner().await;
        inner.st.borrow_mut().wb.drop_caches_active -= 1;
        r
    }

    async fn drop_caches_inner(&self) -> Result<(), IoError> {
        let inner = &self.inner;
        let mut failures = 0;
        loop {
            if let Err(e) = inner.flush_all().await {
                if !inner.is_degraded() {
                    return Err(e);
                }
                // Degraded: write back whatever the cache can still give, then report.
                failures += 1;
                if failures >= DROP_CACHES_MAX_FAILURES {
                    return Err(e);
                }
            }
            if inner.st.borrow().nr_dirty == 0 {
                return Ok(());
            }
            inner
                .wait_until(|st| !st.wb.writeback_in_flight && st.wb.write_through_over_cached == 0)
                .await;
            {
                // Dirty blocks with every segment written back: no batch can take them, and
                // this loop would spin without yielding (a frozen reactor). A broken invariant.
                let st = inner.st.borrow();
                if st.nr_dirty > 0 && st.newest_id() <= st.log.last_writeback {
                    tracing::error!(
                        "writeboost: internal error: {} dirty blocks in written-back segments (last_writeback_id {}); drop_caches gives up",
                        st.nr_dirty,
                        st.log.last_writeback
                    );
                    return Err(IoError::DirtyInWrittenBackSegments {
                        nr_dirty_blocks: st.nr_dirty,
                    });
                }
            }
            inner.st.borrow_mut().wb.writeback_in_flight = true;
            if let Err(e) = inner.writeback_batch(false).await {
                failures += 1;
                if failures >= DROP_CACHES_MAX_FAILURES {
                    return Err(e);
                }
                let backoff = inner.st.borrow().wb.writeback_backoff_ns;
                inner.rt.sleep(backoff).await;
            }
        }
    }

    /// Clean shutdown: everything in RAM becomes durable and the superblock record is written
    /// with the clean flag. Dirty data stays on the cache for the next create.
    ///
    /// A log holding copies that write-throughs superseded (`stale_copies_in_log`, after the
    /// volume was degraded) is drained first, and the record then says that every segment ever
    /// allocated is written back: the next create maps none of them, so no superseded copy comes
    /// back. If the drain fails, the shutdown fails (the next create replays the log).
    pub async fn shutdown(&self) -> Result<(), IoError> {
        let inner = &self.inner;
        inner.st.borrow_mut().wb.shutting_down = true;
        let stale = inner.st.borrow().health.stale_copies_in_log;
        if stale {
            self.drop_caches().await?;
        }
        inner.flush_all().await?;
        inner
            .wait_until(|st| {
                !st.wb.writeback_in_flight
                    && !st.record.record_in_flight
                    && !st.durability.flush_in_flight
            })
            .await;
        if stale {
            let mut st = inner.st.borrow_mut();
            if st.nr_dirty != 0 {
                return Err(IoError::StaleLogNotDrained {
                    nr_dirty_blocks: st.nr_dirty,
                });
            }
            // Nothing is dirty and the backing device is flushed: the log holds nothing a
            // replay needs, and everything up to the newest allocated id may be forgotten.
            st.record.forget_log_at_record = true;
        }
        inner.write_record(true).await
    }
}
