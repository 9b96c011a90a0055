//! Reclaim planning, pure over headers, the index's answers and measured costs: which copies a
//! batch writes ([`Selection`]), how sorted copies become backing writes ([`coalesce`]), and
//! whether a batch re-logs its live dirty blocks instead of writing them back
//! ([`relog_is_cheaper`]); and how one copy is classified against the volume's state
//! ([`State::classify_copy`], the one part that reads it).

use super::{runs, State, BLOCK};
use crate::format::SegmentHeader;
use std::collections::HashMap;

/// Largest coalesced backing write.
pub(super) const MAX_RUN_BLOCKS: u64 = 256;

/// One copy of a block that a batch writes back.
pub(super) struct Item {
    pub(super) block: u64,
    pub(super) cb: u64,
    pub(super) dirty: u8,
    /// Index of the segment read buffer and byte offset in it.
    pub(super) buf: usize,
    pub(super) off: usize,
    /// Still the block's current copy: marked clean once written back.
    pub(super) current: bool,
    /// The data CRC its segment header holds.
    pub(super) data_crc: u32,
}

/// How the batch treats one copy of a block it found in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Copy {
    /// The block's current copy, with its dirty sectors now: written if dirty, then marked clean.
    Current { dirty: u8 },
    /// Superseded by a newer copy that a power cut could still lose: written with its dirty bits
    /// at seal time (the newest such copy per block).
    SupersededByUndurable,
    /// Superseded by a durable copy or one in this batch, discarded, or not to be touched now.
    Skip,
}

/// Selects what a batch writes back, a few headers at a time: per backing block the copies to
/// write, from the headers of the batch's segments (oldest first). Pure: no device I/O, no state.
/// (A batch's 32 segments hold 4000 copies, each an index lookup: classified at once, they would
/// hold the thread for most of a millisecond.)
#[derive(Default)]
pub(super) struct Selection {
    items: Vec<Item>,
    /// Superseded copies whose newer copy is outside the batch and not durable yet: only the
    /// newest of them per block is written (rare; a small map).
    superseded: HashMap<u64, Item>,
}

impl Selection {
    /// Adds the copies of header `h`, the batch's `k`-th (headers come oldest first).
    pub(super) fn add(
        &mut self,
        k: usize,
        h: &SegmentHeader,
        data_blocks_per_segment: u64,
        slot_of_id: impl Fn(u64) -> u64,
        mut classify: impl FnMut(u64, u64) -> Copy,
    ) {
        let slot = slot_of_id(h.id);
        for (j, e) in h.entries.iter().enumerate() {
            if e.valid_bits == 0 {
                continue;
            }
            let mut it = Item {
                block: e.backing_block,
                cb: slot * data_blocks_per_segment + j as u64,
                dirty: e.dirty_bits,
                buf: k,
                off: j * BLOCK,
                current: false,
                data_crc: e.data_crc,
            };
            match classify(it.block, it.cb) {
                Copy::Current { dirty } => {
                    it.dirty = dirty;
                    it.current = true;
                    if dirty != 0 {
                        self.items.push(it);
                    }
                }
                Copy::SupersededByUndurable => {
                    if it.dirty != 0 {
                        self.superseded.insert(it.block, it);
                    }
                }
                Copy::Skip => {}
            }
        }
    }

    pub(super) fn finish(mut self) -> Vec<Item> {
        self.items.extend(self.superseded.into_values());
        self.items
    }
}

impl State {
    /// What a batch whose last segment is `last_id` does with the copy of `block` in cache
    /// block `cb` (`found`: where the index maps `block`).
    pub(super) fn classify_copy(
        &self,
        block: u64,
        cb: u64,
        found: Option<u64>,
        last_id: u64,
    ) -> Copy {
        // A block being written through (degraded) is newer on its way to the backing device:
        // writing the cached copy could land after it.
        if self.cutoff.bypass_inflight.contains_key(&block) {
            return Copy::Skip;
        }
        match found {
            Some(c) if c == cb => Copy::Current {
                dirty: self.index.dirty(cb),
            },
            Some(c) => {
                let newer_id = self.log.slot_id[self.slot_of_cb(c) as usize];
                // A newer copy in this batch is written itself; a durable one is safe.
                let newer_safe = newer_id <= last_id
                    || (newer_id <= self.log.last_durable && self.cb_in_ram(c).is_none());
                if newer_safe {
                    Copy::Skip
                } else {
                    Copy::SupersededByUndurable
                }
            }
            None => Copy::Skip,
        }
    }
}

/// Re-logging moves at most this share of a batch's blocks: a batch must free more than it
/// takes at the head (and a log nearly all live is cleaned by writing back).
pub(super) const RELOG_MAX_LIVE_PCT: u64 = 50;

/// What the choice between writing back and re-logging a batch rests on.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReclaimCosts {
    /// Live dirty blocks the batch would move (or write back).
    pub(super) live_dirty: u64,
    /// Data blocks the batch's segments can hold.
    pub(super) batch_blocks: u64,
    /// Blocks the head can take without waiting for space (free segments, less one).
    pub(super) head_room_blocks: u64,
    /// Measured: how long a writeback batch takes (0: not measured yet).
    pub(super) writeback_batch_ns: u64,
    /// Measured: how long re-logging takes per block (0: not measured yet).
    pub(super) relog_ns_per_block: u64,
    /// Measured: latency of a backing write (writeback) and of a cache segment write.
    pub(super) backing_write_ns: u64,
    pub(super) cache_write_ns: u64,
}

/// Re-logging is considered only when a backing write takes this many times a cache segment
/// write: on devices of similar speed, writing back costs less (one write per block instead of
/// a copy, a CRC and a segment write, and the copy comes back to be reclaimed again).
pub(super) const RELOG_MIN_LATENCY_RATIO: u64 = 8;

/// Whether the backing device was measured slow: a write there (`backing_write_ns`) takes at
/// least [`RELOG_MIN_LATENCY_RATIO`] times a cache segment write (`cache_write_ns`). Not before
/// both were measured. Pure.
pub(super) fn backing_is_slow(backing_write_ns: u64, cache_write_ns: u64) -> bool {
    backing_write_ns != 0
        && cache_write_ns != 0
        && backing_write_ns >= cache_write_ns.saturating_mul(RELOG_MIN_LATENCY_RATIO)
}

/// Segments a writeback batch takes at most: `nr_max_batched_writeback`; a quarter of it (at
/// least 1) once the backing device was measured fast (not [`backing_is_slow`]); half of it
/// while re-logging is what keeps space free (`relog_favoured`). A slow device needs deep
/// batches to keep many writes in flight; a fast one completes a short batch quickly, so space
/// comes back sooner and in smaller steps (overflow: p99 and p99.9 down by a tenth to a fifth,
/// docs/BENCHMARKS.md). A re-logging batch never waits for the backing device, and a shorter one
/// holds fewer segments out of use (slow fits re-logged 31 % of what was written instead of
/// 35 %, with 15-25 % more IOPS); a quarter was too short there (its fixed costs, a cache FLUSH
/// and a record per batch, fell behind the foreground: writers waited for space). Before the
/// backing device was measured, the full batch. Pure.
pub(super) fn batch_segments(
    nr_max_batched: u64,
    backing_write_ns: u64,
    cache_write_ns: u64,
    relog_favoured: bool,
) -> u64 {
    if relog_favoured {
        (nr_max_batched / 2).max(1)
    } else if backing_write_ns == 0
        || cache_write_ns == 0
        || backing_is_slow(backing_write_ns, cache_write_ns)
    {
        nr_max_batched
    } else {
        (nr_max_batched / 4).max(1)
    }
}

/// Whether re-logging the batch's live dirty blocks frees log space faster than writing them
/// back: writeback frees the batch's segments in one batch time; re-logging frees only the
/// share not re-logged (`1 - live`), so its time counts `1 / (1 - live)` times. Never when the
/// head has no room for them or when more than [`RELOG_MAX_LIVE_PCT`] % of the batch is live.
/// Before writeback was measured, writeback is chosen (its measurement is what decides); and
/// only a backing device [`RELOG_MIN_LATENCY_RATIO`] times slower than the cache is worth it.
/// Pure.
pub(super) fn relog_is_cheaper(c: ReclaimCosts) -> bool {
    if !backing_is_slow(c.backing_write_ns, c.cache_write_ns) {
        return false;
    }
    if c.batch_blocks == 0
        || c.live_dirty > c.head_room_blocks
        || c.live_dirty * 100 > c.batch_blocks * RELOG_MAX_LIVE_PCT
        || c.writeback_batch_ns == 0
    {
        return false;
    }
    let relog_ns = (c.live_dirty as u128) * (c.relog_ns_per_block as u128);
    // relog_ns / (1 - live/batch) < writeback_ns, in integers.
    relog_ns * (c.batch_blocks as u128)
        < (c.writeback_batch_ns as u128) * ((c.batch_blocks - c.live_dirty) as u128)
}

/// What pacing the foreground's segment opens rests on, while a batch that runs for space is
/// in flight.
#[derive(Debug, Clone, Copy)]
pub(super) struct OpenPacing {
    pub(super) now_ns: u64,
    /// When a segment was last opened (by the foreground or by re-logging).
    pub(super) last_open_ns: u64,
    /// Segments free to open now.
    pub(super) free_segments: u64,
    /// When the batch in flight started, and how long such batches take (moving average; 0:
    /// not measured yet).
    pub(super) batch_started_ns: u64,
    pub(super) batch_ns: u64,
}

/// Free segments pacing keeps for a batch that ends later than its average: overflow, with
/// batches of 8 segments, had 1,330-1,460 waits for space per run with none kept, 32-226 with
/// one, 3-10 (one run 84) with two, and p99.9 fell from about 405 to 385 µs (docs/BENCHMARKS.md).
const PACING_SPARE_SEGMENTS: u64 = 2;

/// When the foreground may open its next segment (`None`: now). The free segments but
/// [`PACING_SPARE_SEGMENTS`] are spread evenly over what remains of the batch in flight (at least
/// an eighth of a batch, once it overruns), so that writers wait a little at each segment, rather
/// than all together for a whole batch once the free segments run out. Pure.
pub(super) fn paced_open_at(p: OpenPacing) -> Option<u64> {
    if p.batch_ns == 0 || p.free_segments == 0 {
        return None;
    }
    let end = p.batch_started_ns.saturating_add(p.batch_ns);
    let remaining = end.saturating_sub(p.now_ns).max(p.batch_ns / 8);
    let at = p
        .last_open_ns
        .saturating_add(remaining / p.free_segments.saturating_sub(PACING_SPARE_SEGMENTS).max(1));
    (at > p.now_ns).then_some(at)
}

/// One backing write of a batch, over `items` (sorted by backing block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PlannedWrite {
    /// `count` full blocks of consecutive backing blocks, items `first..first + count`.
    Blocks { first: usize, count: usize },
    /// Sectors `first..first + nr` of one partly dirty block.
    Sectors { item: usize, first: u32, nr: u32 },
}

/// Coalesces sorted items into backing writes: runs of full dirty blocks with consecutive
/// backing blocks (at most [`MAX_RUN_BLOCKS`]) become one write; a partly dirty block becomes one
/// write per run of dirty sectors. Pure.
pub(super) fn coalesce(items: &[Item]) -> Vec<PlannedWrite> {
    let mut writes = Vec::new();
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
            writes.push(PlannedWrite::Blocks {
                first: i,
                count: j - i,
            });
            i = j;
        } else {
            for (first, nr) in runs(it.dirty) {
                writes.push(PlannedWrite::Sectors { item: i, first, nr });
            }
            i += 1;
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Entry;

    /// [`Selection`] over all headers at once (the batch adds a few per executor turn).
    /// `slot_of_id` maps a segment id to its slot, `classify` says what a copy (backing block,
    /// cache block) is.
    fn select(
        headers: &[SegmentHeader],
        data_blocks_per_segment: u64,
        slot_of_id: impl Fn(u64) -> u64,
        mut classify: impl FnMut(u64, u64) -> Copy,
    ) -> Vec<Item> {
        let mut s = Selection::default();
        for (k, h) in headers.iter().enumerate() {
            s.add(k, h, data_blocks_per_segment, &slot_of_id, &mut classify);
        }
        s.finish()
    }

    fn header(id: u64, blocks: &[(u64, u8)]) -> SegmentHeader {
        SegmentHeader {
            format_uuid: [0; 16],
            id,
            durable_through_id: 0,
            prev_header_crc: 0,
            flags: 0,
            entries: blocks
                .iter()
                .map(|&(b, d)| Entry {
                    backing_block: b,
                    data_crc: 0,
                    valid_bits: if d == 0 { 0xff } else { d | 0x01 },
                    dirty_bits: d,
                })
                .collect(),
            header_crc: 0,
        }
    }

    fn costs(live_dirty: u64, wb_ns: u64, relog_ns: u64) -> ReclaimCosts {
        ReclaimCosts {
            live_dirty,
            batch_blocks: 1000,
            head_room_blocks: 10_000,
            writeback_batch_ns: wb_ns,
            relog_ns_per_block: relog_ns,
            backing_write_ns: 4_000_000,
            cache_write_ns: 50_000,
        }
    }

    #[test]
    fn relog_is_chosen_by_time_per_freed_segment() {
        // 100 live of 1000: re-logging 100 blocks at 1 us frees 900 blocks in 100 us; a batch
        // of writeback takes 30 ms: re-log.
        assert!(relog_is_cheaper(costs(100, 30_000_000, 1_000)));
        // A fast backing device: writeback in 100 us beats re-logging 100 blocks at 2 us
        // (200 us for 90 % of the space).
        assert!(!relog_is_cheaper(costs(100, 100_000, 2_000)));
        // The boundary: 400 live at 1 us = 400 us for 60 % => 666 us per batch's worth.
        assert!(!relog_is_cheaper(costs(400, 666_000, 1_000)));
        assert!(relog_is_cheaper(costs(400, 667_000, 1_000)));
    }

    #[test]
    fn relog_needs_a_measured_writeback_room_and_a_mostly_dead_batch() {
        // Writeback not measured yet: write back (and measure).
        assert!(!relog_is_cheaper(costs(10, 0, 1)));
        // More than half live: writing back is what cleans such a log.
        assert!(relog_is_cheaper(costs(500, u64::MAX / 4, 1)));
        assert!(!relog_is_cheaper(costs(501, u64::MAX / 4, 1)));
        // No room at the head for what it would move.
        let mut c = costs(100, 30_000_000, 1);
        c.head_room_blocks = 99;
        assert!(!relog_is_cheaper(c));
        c.head_room_blocks = 100;
        assert!(relog_is_cheaper(c));
        // A backing device not much slower than the cache: write back (fits on two RAM disks).
        c.backing_write_ns = 7 * c.cache_write_ns;
        assert!(!relog_is_cheaper(c));
        c.backing_write_ns = 8 * c.cache_write_ns;
        assert!(relog_is_cheaper(c));
        c.cache_write_ns = 0;
        assert!(!relog_is_cheaper(c), "not measured yet");
        c.cache_write_ns = 1;
        // An empty batch frees nothing either way.
        c.batch_blocks = 0;
        c.live_dirty = 0;
        assert!(!relog_is_cheaper(c));
        // Nothing live: re-logging is free.
        assert!(relog_is_cheaper(costs(0, 1, 1_000_000)));
    }

    fn item(block: u64, dirty: u8) -> Item {
        Item {
            block,
            cb: block,
            dirty,
            buf: 0,
            off: 0,
            current: true,
            data_crc: 0,
        }
    }

    #[test]
    fn select_writes_current_dirty_copies_and_the_newest_unsafe_superseded_one() {
        // Segment 1: blocks 10, 11, 12; segment 2: blocks 12, 13. Cache block = slot * 4 + j.
        let hs = [
            header(1, &[(10, 0xff), (11, 0xff), (12, 0x0f)]),
            header(2, &[(12, 0xff), (13, 0)]),
        ];
        let items = select(
            &hs,
            4,
            |id| id - 1,
            |block, cb| match (block, cb) {
                (10, 0) => Copy::Current { dirty: 0xff },
                (11, 1) => Copy::Current { dirty: 0 }, // cleaned meanwhile
                (12, 2) => Copy::SupersededByUndurable,
                (12, 4) => Copy::SupersededByUndurable,
                (13, 5) => Copy::Current { dirty: 0 },
                _ => Copy::Skip,
            },
        );
        let mut got: Vec<(u64, u64, u8, bool)> = items
            .iter()
            .map(|i| (i.block, i.cb, i.dirty, i.current))
            .collect();
        got.sort();
        // Block 12: only the newer superseded copy (segment 2), with its seal-time dirty bits.
        assert_eq!(got, vec![(10, 0, 0xff, true), (12, 4, 0xff, false)]);
    }

    #[test]
    fn coalesce_joins_consecutive_full_blocks_and_splits_sector_runs() {
        let items = [
            item(1, 0xff),
            item(2, 0xff),
            item(3, 0xff),
            item(5, 0xff),
            item(6, 0b1000_0011),
            item(7, 0xff),
        ];
        assert_eq!(
            coalesce(&items),
            vec![
                PlannedWrite::Blocks { first: 0, count: 3 },
                PlannedWrite::Blocks { first: 3, count: 1 },
                PlannedWrite::Sectors {
                    item: 4,
                    first: 0,
                    nr: 2
                },
                PlannedWrite::Sectors {
                    item: 4,
                    first: 7,
                    nr: 1
                },
                PlannedWrite::Blocks { first: 5, count: 1 },
            ]
        );
        let long: Vec<Item> = (0..MAX_RUN_BLOCKS + 3).map(|b| item(b, 0xff)).collect();
        assert_eq!(
            coalesce(&long),
            vec![
                PlannedWrite::Blocks {
                    first: 0,
                    count: MAX_RUN_BLOCKS as usize
                },
                PlannedWrite::Blocks {
                    first: MAX_RUN_BLOCKS as usize,
                    count: 3
                },
            ]
        );
    }

    fn pacing(now_ns: u64, last_open_ns: u64, free_segments: u64) -> OpenPacing {
        OpenPacing {
            now_ns,
            last_open_ns,
            free_segments,
            batch_started_ns: 1_000_000,
            batch_ns: 8_000_000,
        }
    }

    #[test]
    fn batches_are_shorter_on_a_fast_backing_device_and_while_relogging() {
        // Cache segment writes of 40 us: slow from 8 x 40 = 320 us per backing write.
        assert!(!backing_is_slow(319_999, 40_000));
        assert!(backing_is_slow(320_000, 40_000));
        assert!(!backing_is_slow(0, 40_000) && !backing_is_slow(4_000_000, 0));
        // Not measured yet: the full batch.
        assert_eq!(batch_segments(32, 0, 40_000, false), 32);
        assert_eq!(batch_segments(32, 2_000, 0, false), 32);
        // Slow (a 4 ms disk): the full batch.
        assert_eq!(batch_segments(32, 4_000_000, 40_000, false), 32);
        // Fast: a quarter, at least one segment.
        assert_eq!(batch_segments(32, 2_000, 40_000, false), 8);
        assert_eq!(batch_segments(3, 2_000, 40_000, false), 1);
        assert_eq!(batch_segments(256, 2_000, 40_000, false), 64);
        // Re-logging keeps space free (on a slow device): half.
        assert_eq!(batch_segments(32, 4_000_000, 40_000, true), 16);
        assert_eq!(batch_segments(1, 4_000_000, 40_000, true), 1);
    }

    #[test]
    fn paced_opens_spread_the_free_segments_over_the_rest_of_the_batch() {
        // 4 ms left, 10 free (two kept spare): one open per 0.5 ms.
        assert_eq!(
            paced_open_at(pacing(5_000_000, 4_900_000, 10)),
            Some(5_400_000)
        );
        assert_eq!(paced_open_at(pacing(5_000_000, 4_400_000, 10)), None);
        // Fewer free segments: longer waits.
        assert_eq!(
            paced_open_at(pacing(5_000_000, 4_900_000, 4)),
            Some(6_900_000)
        );
        // The last free segments are for when the batch runs late.
        for free in [1, 2, 3] {
            assert_eq!(
                paced_open_at(pacing(5_000_000, 4_900_000, free)),
                Some(8_900_000)
            );
        }
        // An overrunning batch is taken to end within an eighth of a batch (1 ms).
        assert_eq!(
            paced_open_at(pacing(20_000_000, 19_900_000, 6)),
            Some(20_150_000)
        );
    }

    #[test]
    fn nothing_is_paced_unmeasured_or_without_free_segments() {
        let mut p = pacing(5_000_000, 4_999_000, 8);
        p.batch_ns = 0;
        assert_eq!(paced_open_at(p), None);
        // No free segment: the write waits for space instead (not for a time).
        assert_eq!(paced_open_at(pacing(5_000_000, 4_999_000, 0)), None);
    }
}
