//! Writeback planning, pure over headers and the index's answers: which copies a batch writes
//! ([`select`]) and how sorted copies become backing writes ([`coalesce`]).

use super::{runs, BLOCK};
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

/// Selects what a batch writes back: per backing block the copies to write, from the headers of
/// the batch's segments (oldest first). `slot_of_id` maps a segment id to its slot, `classify`
/// says what a copy (backing block, cache block) is. Pure: no device I/O, no state.
pub(super) fn select(
    headers: &[SegmentHeader],
    data_blocks_per_segment: u64,
    slot_of_id: impl Fn(u64) -> u64,
    mut classify: impl FnMut(u64, u64) -> Copy,
) -> Vec<Item> {
    let mut items = Vec::new();
    // Superseded copies whose newer copy is outside the batch and not durable yet: only the
    // newest of them per block is written (rare; a small map).
    let mut superseded: HashMap<u64, Item> = HashMap::new();
    for (k, h) in headers.iter().enumerate() {
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
            };
            match classify(it.block, it.cb) {
                Copy::Current { dirty } => {
                    it.dirty = dirty;
                    it.current = true;
                    if dirty != 0 {
                        items.push(it);
                    }
                }
                Copy::SupersededByUndurable => {
                    if it.dirty != 0 {
                        superseded.insert(it.block, it);
                    }
                }
                Copy::Skip => {}
            }
        }
    }
    items.extend(superseded.into_values());
    items
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

    fn item(block: u64, dirty: u8) -> Item {
        Item {
            block,
            cb: block,
            dirty,
            buf: 0,
            off: 0,
            current: true,
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
}
