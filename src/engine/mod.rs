//! The writeboost engine: a log-structured write-back cache over two [`BlockDevice`]s.
//!
//! Single-threaded by design: one owner thread runs every future of a volume (an SPDK thread, the
//! offline command's executor, or the simulation). State lives in a `RefCell` that is never held
//! across an `.await`. Pipeline stages: `write.rs` (RAM buffers, the write gate), `log.rs`
//! (sealing, segment writes, FLUSH/FUA), `read.rs`, `writeback.rs`, `replay.rs` (create and
//! recovery), `daemons.rs` (the step functions that pollers call).

pub mod config;
pub mod error;
pub mod index;
pub mod stats;

mod create;
mod cutoff;
mod daemons;
mod health;
mod invariants;
mod log;
mod read;
mod relog;
pub mod replay;
mod segment_buf;
mod space;
mod write;
mod writeback;
mod writeback_plan;

pub use config::{ConfigError, Options, Tunable, TUNABLES};
pub use create::format_cache;
pub use error::{Base, CreateError, IoError};
pub use replay::{read_superblock, scan_log, LogDamage, LogScan, ScannedSegment};
pub use stats::Counters;

use crate::device::{AlignedBuf, BlockDevice, DeviceInfo, SharedSlice};
use crate::format::{Geometry, Superblock, SECTORS_PER_BLOCK, SECTOR_SIZE_BYTES};
use crate::runtime::Runtime;
use index::Index;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Default number of RAM segment buffers (one open, the rest sealed or being written).
pub const DEFAULT_NR_RAM_BUFFERS: usize = 8;
const NO_BUF: u32 = u32::MAX;

/// What `create` needs besides the two devices.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub options: Options,
    /// Used when formatting; when resuming it must match the recorded geometry if given.
    pub segment_size_kib: Option<u32>,
    pub force_format: bool,
    /// UUID for a new format (the caller supplies randomness; the engine has none).
    pub new_format_uuid: [u8; 16],
    pub nr_ram_buffers: usize,
    /// Resume even if the log is damaged (the offline rescue): what is intact is replayed.
    pub accept_damaged_log: bool,
}

impl Default for CreateOptions {
    fn default() -> CreateOptions {
        CreateOptions {
            options: Options::default(),
            segment_size_kib: None,
            force_format: false,
            new_format_uuid: [0x5a; 16],
            nr_ram_buffers: DEFAULT_NR_RAM_BUFFERS,
            accept_damaged_log: false,
        }
    }
}

/// How `create` came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Startup {
    Formatted,
    Resumed,
}

/// The segment being filled.
#[derive(Debug, Clone, Copy)]
struct OpenSegment {
    id: u64,
    slot: u64,
    buf: usize,
    len: u32,
}

/// FIFO ordering of index-changing operations (writes, discards): a later one never overtakes
/// an earlier one that had to wait (for space or for a read-modify-write). Only the front is
/// woken when the gate moves (N queued writes cost N wake-ups, not N^2).
#[derive(Default)]
struct Gate {
    /// Tickets in order (consecutive numbers), each with the waker of its waiting task.
    queue: VecDeque<(u64, Option<Waker>)>,
    next: u64,
}

impl Gate {
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes the next ticket.
    fn enter(&mut self) -> u64 {
        let t = self.next;
        self.next += 1;
        self.queue.push_back((t, None));
        t
    }

    /// True when `t` is at the front; otherwise remembers `waker` to wake when it gets there.
    fn poll_front(&mut self, t: u64, waker: &Waker) -> bool {
        let front = self.queue.front().expect("ticket in the gate").0;
        if front == t {
            return true;
        }
        let (_, w) = &mut self.queue[(t - front) as usize];
        *w = Some(waker.clone());
        false
    }

    /// Leaves the gate (the front's ticket `t`); returns the waker of the new front.
    fn exit(&mut self, t: u64) -> Option<Waker> {
        let front = self.queue.pop_front();
        debug_assert_eq!(front.map(|(f, _)| f), Some(t));
        self.queue.front_mut().and_then(|(_, w)| w.take())
    }
}

/// A volume's state: a composition of owned parts, each kept by the stage that owns its
/// invariants (the log's slots and buffers in log.rs, the FLUSH machinery in log.rs, writeback's
/// progress in writeback.rs, the backing load and the superblock record in daemons.rs, read
/// staging in read.rs, the sequential cutoff and in-flight bypasses in cutoff.rs, the degraded
/// state in health.rs), plus what every stage reads: geometry, options, the index, the gate.
struct State {
    geo: Geometry,
    sb: Superblock,
    opts: Options,
    index: Index,
    /// Dirty cache blocks in the index.
    nr_dirty: u64,
    log: log::LogState,
    durability: log::Durability,
    wb: writeback::WritebackState,
    load: daemons::BackingLoad,
    staging: read::Staging,
    cutoff: cutoff::CutoffState,
    record: daemons::RecordState,
    /// Test and benchmark hooks (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    hooks: Hooks,
    gate: Gate,
    health: health::Health,
    counters: Counters,
}

/// What the simulation and the benchmarks may change (feature `test-hooks`; never in a build
/// of the product).
#[cfg(feature = "test-hooks")]
#[derive(Default)]
struct Hooks {
    /// Write back in log order instead of LBA order (what sorting buys).
    writeback_unsorted: bool,
    /// Acknowledge FLUSH/FUA without flushing the cache device (a planted bug the simulation
    /// must catch).
    skip_cache_flush: bool,
    /// Overrides the measured choice between writing back and re-logging.
    reclaim: Option<ReclaimChoice>,
}

/// How a reclaim batch treats the live dirty blocks of the segments it frees (test hook).
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReclaimChoice {
    /// Re-log them whenever the rules allow it (not degraded, not draining, room at the head).
    Relog,
    /// Always write them back (the engine before re-logging existed).
    WriteBack,
}

struct Inner<D: BlockDevice, R: Runtime> {
    cache: D,
    backing: D,
    cache_info: DeviceInfo,
    backing_info: DeviceInfo,
    rt: R,
    st: RefCell<State>,
    waiters: RefCell<Vec<Waker>>,
    /// Polls that made progress, for pollers that report BUSY/IDLE.
    progress: Cell<u64>,
}

/// A writeboost volume. Cheap to clone; all clones are the same volume.
pub struct Volume<D: BlockDevice + 'static, R: Runtime> {
    inner: Rc<Inner<D, R>>,
}

impl<D: BlockDevice + 'static, R: Runtime> Clone for Volume<D, R> {
    fn clone(&self) -> Self {
        Volume {
            inner: self.inner.clone(),
        }
    }
}

/// The status fields of dm-writeboost plus ours.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub cursor_pos: u64,
    pub nr_cache_blocks: u64,
    pub nr_segments: u64,
    pub current_id: u64,
    pub last_flushed_id: u64,
    pub last_writeback_id: u64,
    pub nr_dirty_cache_blocks: u64,
    pub nr_partial_flushed: u64,
    pub nr_cur_batched_writeback: u64,
    pub backing_util_pct: u64,
    pub segment_size_kib: u32,
    pub format_uuid: String,
    pub dram_bytes_per_cache_block: f64,
    pub options: Options,
    /// `running` or `degraded`.
    pub state: &'static str,
    /// Why the volume is degraded.
    pub degraded_reason: Option<String>,
    /// The log may hold copies that writes made while degraded superseded on the backing device
    /// (a delete drains the volume first).
    pub stale_copies_in_log: bool,
    /// The superblock record says the log holds superseded copies: a create after a power cut
    /// refuses it (`CreateError::SupersededCopiesInLog`) until the cache is re-formatted.
    pub superseded_copies_in_log: bool,
    pub counters: Counters,
}

fn mask_of(first_sector: u32, nr: u32) -> u8 {
    debug_assert!(first_sector + nr <= SECTORS_PER_BLOCK && nr > 0);
    (((1u16 << nr) - 1) << first_sector) as u8
}

/// Maximal runs of set bits: (first sector, count).
fn runs(mask: u8) -> impl Iterator<Item = (u32, u32)> {
    let mut m = mask as u32;
    std::iter::from_fn(move || {
        if m == 0 {
            return None;
        }
        let start = m.trailing_zeros();
        let len = (m >> start).trailing_ones();
        m &= !(((1u32 << len) - 1) << start);
        Some((start, len))
    })
}

const SECTOR: usize = SECTOR_SIZE_BYTES as usize;
const BLOCK: usize = crate::format::BLOCK_SIZE_BYTES as usize;

impl<D: BlockDevice + 'static, R: Runtime> Inner<D, R> {
    /// Something changed: wakes the general waiters, and the FLUSH/FUA waiters if durability
    /// moved (they are many at a high queue depth, and wait for one thing).
    fn notify(&self) {
        let ws: Vec<Waker> = std::mem::take(&mut *self.waiters.borrow_mut());
        let (durability, space) = {
            let mut st = self.st.borrow_mut();
            let last_durable = st.log.last_durable;
            (
                st.durability.take_waiters_if_moved(last_durable),
                st.take_space_waiters_if_ready(),
            )
        };
        for w in ws.into_iter().chain(durability).chain(space) {
            w.wake();
        }
    }

    /// Waits until a write can take log space, or the volume is degraded (on the log's own
    /// waiter list, see [`State::take_space_waiters_if_ready`]).
    fn wait_for_space(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut st = self.st.borrow_mut();
            if st.space_available_or_degraded() {
                return Poll::Ready(());
            }
            st.log.space_wakers.push(cx.waker().clone());
            Poll::Pending
        })
    }

    /// Waits until `cond` holds; re-checked on every state change.
    fn wait_until<'a>(
        &'a self,
        mut cond: impl FnMut(&State) -> bool + 'a,
    ) -> impl Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx| {
            if cond(&self.st.borrow()) {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
    }

    /// Waits until `cond` holds (as [`Self::wait_until`]) or `ns` have passed, whichever comes
    /// first.
    async fn wait_until_at_most(&self, cond: impl FnMut(&State) -> bool, ns: u64) {
        let holds = self.wait_until(cond);
        let timer = self.rt.sleep(ns);
        futures::pin_mut!(holds, timer);
        futures::future::select(holds, timer).await;
    }

    fn bump_progress(&self) {
        self.progress.set(self.progress.get() + 1);
    }

    async fn gate_enter(&self) -> u64 {
        let t = self.st.borrow_mut().gate.enter();
        std::future::poll_fn(|cx| {
            if self.st.borrow_mut().gate.poll_front(t, cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        t
    }

    fn gate_exit(&self, t: u64) {
        let next = self.st.borrow_mut().gate.exit(t);
        if let Some(w) = next {
            w.wake();
        }
        self.notify();
    }

    fn backing_fg_begin(&self) {
        let now = self.rt.now_ns();
        let mut st = self.st.borrow_mut();
        if st.load.backing_fg_inflight == 0 {
            st.load.backing_busy_since_ns = now;
        }
        st.load.backing_fg_inflight += 1;
    }

    fn backing_fg_end(&self) {
        let now = self.rt.now_ns();
        let mut st = self.st.borrow_mut();
        st.load.backing_fg_inflight -= 1;
        if st.load.backing_fg_inflight == 0 {
            st.load.backing_busy_ns += now.saturating_sub(st.load.backing_busy_since_ns);
        }
    }
}

impl State {
    fn skip_cache_flush(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return self.hooks.skip_cache_flush;
        #[cfg(not(feature = "test-hooks"))]
        false
    }
    /// The test hook's override of the reclaim choice, if any.
    fn reclaim_override(&self) -> Option<bool> {
        #[cfg(feature = "test-hooks")]
        return self.hooks.reclaim.map(|c| c == ReclaimChoice::Relog);
        #[cfg(not(feature = "test-hooks"))]
        None
    }
    fn writeback_unsorted(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return self.hooks.writeback_unsorted;
        #[cfg(not(feature = "test-hooks"))]
        false
    }
    fn dpb(&self) -> u64 {
        self.geo.data_blocks_per_segment() as u64
    }
    /// The newest allocated segment id (the open one, else the last sealed).
    fn newest_id(&self) -> u64 {
        self.log.open.map(|o| o.id).unwrap_or(self.log.next_id - 1)
    }
    /// Whether the log holds a copy of `block` that replay could map: it is cached, or it was
    /// invalidated (`shadowed`) in a segment above the recorded writeback id.
    fn replayable_copy(&self, block: u64) -> bool {
        self.index.lookup(block).is_some()
            || self
                .cutoff
                .shadowed
                .get(&block)
                .is_some_and(|&id| id > self.log.recorded_writeback)
    }
    fn slot_of_cb(&self, cb: u64) -> u64 {
        cb / self.dpb()
    }
    fn cb_in_ram(&self, cb: u64) -> Option<usize> {
        let b = self.log.slot_buf[self.slot_of_cb(cb) as usize];
        (b != NO_BUF).then_some(b as usize)
    }
    /// Byte offset of cache block `cb` inside its segment image.
    fn cb_buf_offset(&self, cb: u64) -> usize {
        ((self.geo.header_blocks as u64 + cb % self.dpb()) as usize) * BLOCK
    }
    /// True when block `block` may hold backing data that no backing flush made durable.
    fn backing_block_unflushed(&self, block: u64) -> bool {
        self.durability.backing_flushed_through < self.durability.backing_unflushed_all_through
            || self.durability.backing_unflushed.contains_key(&block)
    }
    fn cb_device_offset(&self, cb: u64) -> u64 {
        self.geo
            .data_block_offset_bytes(self.slot_of_cb(cb), (cb % self.dpb()) as u32)
    }
}

impl<D: BlockDevice + 'static, R: Runtime> Volume<D, R> {
    /// Size of the volume in 512-byte sectors (the backing device's size).
    pub fn size_sectors(&self) -> u64 {
        self.inner.backing_info.size_bytes / SECTOR_SIZE_BYTES as u64
    }

    /// Where the index lookup of the block holding `sector` starts, for the glue to prefetch
    /// when an I/O arrives (the lookup runs a moment later, once the I/O's task is set up).
    pub fn index_home_addr(&self, sector: u64) -> *const u8 {
        let block = sector / SECTORS_PER_BLOCK as u64;
        self.inner.st.borrow().index.home_slot_addr(block)
    }

    pub fn cache_info(&self) -> &DeviceInfo {
        &self.inner.cache_info
    }

    pub fn backing_info(&self) -> &DeviceInfo {
        &self.inner.backing_info
    }

    pub fn superblock(&self) -> Superblock {
        self.inner.st.borrow().sb.clone()
    }

    pub fn options(&self) -> Options {
        self.inner.st.borrow().opts.clone()
    }

    /// Changes a dynamic tunable.
    pub fn set_option(&self, key: &str, value: u64) -> Result<(), ConfigError> {
        self.inner.st.borrow_mut().opts.set(key, value, false)?;
        self.inner.notify();
        Ok(())
    }

    /// Canary for the simulation: FLUSH and FUA complete without flushing the cache device.
    #[cfg(feature = "test-hooks")]
    pub fn plant_bug_skip_cache_flush(&self) {
        self.inner.st.borrow_mut().hooks.skip_cache_flush = true;
    }

    /// For benchmarks: write back in log order (no LBA sort), to measure what sorting buys.
    #[cfg(feature = "test-hooks")]
    pub fn set_writeback_unsorted(&self, unsorted: bool) {
        self.inner.st.borrow_mut().hooks.writeback_unsorted = unsorted;
    }

    /// For the simulation and benchmarks: re-log whenever allowed, or never, instead of
    /// choosing by measured cost (`None`).
    #[cfg(feature = "test-hooks")]
    pub fn set_reclaim_choice(&self, choice: Option<ReclaimChoice>) {
        self.inner.st.borrow_mut().hooks.reclaim = choice;
    }

    pub fn clear_stats(&self) {
        let mut st = self.inner.st.borrow_mut();
        st.counters = Counters::default();
    }

    /// Counter of polls that did work; pollers compare it before and after to report BUSY.
    pub fn progress(&self) -> u64 {
        self.inner.progress.get()
    }

    pub fn status(&self) -> Status {
        let st = self.inner.st.borrow();
        let cursor_pos = match st.log.open {
            Some(o) => o.slot * st.dpb() + o.len as u64,
            None => st.geo.slot_of_id(st.log.next_id) * st.dpb(),
        };
        Status {
            cursor_pos,
            nr_cache_blocks: st.geo.nr_cache_blocks(),
            nr_segments: st.geo.nr_segments,
            current_id: st.log.open.map(|o| o.id).unwrap_or(st.log.next_id),
            last_flushed_id: st.log.last_durable,
            last_writeback_id: st.log.last_writeback,
            nr_dirty_cache_blocks: st.nr_dirty,
            nr_partial_flushed: st.counters.nr_partial_flushed,
            nr_cur_batched_writeback: st.wb.nr_cur_batched_writeback,
            backing_util_pct: st.load.backing_util_pct,
            segment_size_kib: st.geo.segment_size_bytes / 1024,
            format_uuid: crate::format::uuid_to_string(&st.sb.format_uuid),
            dram_bytes_per_cache_block: st.index.dram_bytes_per_block(),
            options: st.opts.clone(),
            state: if st.health.degraded.is_some() {
                "degraded"
            } else {
                "running"
            },
            degraded_reason: st.health.degraded.clone(),
            stale_copies_in_log: st.health.stale_copies_in_log,
            superseded_copies_in_log: st.health.superseded_in_log,
            counters: st.counters.clone(),
        }
    }

    fn check_range(&self, offset_sectors: u64, nr_sectors: u64) -> Result<(), IoError> {
        let size_sectors = self.size_sectors();
        if nr_sectors == 0
            || offset_sectors
                .checked_add(nr_sectors)
                .is_none_or(|e| e > size_sectors)
        {
            return Err(IoError::OutOfRange {
                offset_sectors,
                nr_sectors,
                size_sectors,
            });
        }
        Ok(())
    }
}

/// A waker that counts its wake-ups (unit tests of the waiter lists).
#[cfg(test)]
pub(super) struct Count(pub(super) std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl std::task::Wake for Count {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn gate_wakes_only_the_new_front_in_order() {
        let mut g = Gate::default();
        let counts: Vec<Arc<Count>> = (0..4)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        let wakers: Vec<Waker> = counts.iter().map(|c| Waker::from(c.clone())).collect();
        let t: Vec<u64> = (0..4).map(|_| g.enter()).collect();
        assert!(g.poll_front(t[0], &wakers[0]));
        for i in 1..4 {
            assert!(!g.poll_front(t[i], &wakers[i]));
        }
        for i in 0..3 {
            let w = g.exit(t[i]).expect("the next ticket waits");
            w.wake();
            // Only the new front was woken, once.
            for (j, c) in counts.iter().enumerate() {
                let expect = usize::from(j >= 1 && j <= i + 1);
                assert_eq!(
                    c.0.load(Ordering::Relaxed),
                    expect,
                    "after exit {i}, waiter {j}"
                );
            }
            assert!(g.poll_front(t[i + 1], &wakers[i + 1]));
        }
        assert!(g.exit(t[3]).is_none());
        assert!(g.is_empty());
    }
}
