//! The index: backing block -> cache block, and per cache block its backing block and its
//! per-sector valid/dirty bits.
//!
//! DRAM budget per cache block: 8 bytes (backing block) + 1 (valid bits) + 1 (dirty bits) in flat
//! arrays, plus an open-addressing table of `u32` cache-block numbers at a load factor between
//! 3/8 and 3/4 (5.3 to 10.7 bytes per block): 15 to 21 bytes in all. The table stores no keys; a
//! probe compares the key with the cache block's own backing block.

pub const NO_BLOCK: u64 = u64::MAX;
const EMPTY: u32 = u32::MAX;

pub struct Index {
    /// Backing block held by each cache block, or `NO_BLOCK`.
    backing: Vec<u64>,
    valid: Vec<u8>,
    dirty: Vec<u8>,
    table: Vec<u32>,
    mask: usize,
    len: usize,
}

fn hash(block: u64) -> u64 {
    let h = block.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 29)
}

impl Index {
    pub fn new(nr_cache_blocks: usize) -> Index {
        assert!(nr_cache_blocks < EMPTY as usize, "too many cache blocks");
        let cap = (nr_cache_blocks * 4 / 3 + 1).next_power_of_two().max(16);
        Index {
            backing: vec![NO_BLOCK; nr_cache_blocks],
            valid: vec![0; nr_cache_blocks],
            dirty: vec![0; nr_cache_blocks],
            table: vec![EMPTY; cap],
            mask: cap - 1,
            len: 0,
        }
    }

    /// DRAM bytes used per cache block (arrays and table).
    pub fn dram_bytes_per_block(&self) -> f64 {
        let n = self.backing.len() as f64;
        (self.backing.len() * 10 + self.table.len() * 4) as f64 / n
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn lookup(&self, block: u64) -> Option<u64> {
        let mut i = hash(block) as usize & self.mask;
        loop {
            let cb = self.table[i];
            if cb == EMPTY {
                return None;
            }
            if self.backing[cb as usize] == block {
                return Some(cb as u64);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// [`Self::lookup`] of each of `blocks`, into `out`. The table slots, then the cache
    /// blocks' entries, are loaded in two passes of independent loads, so that their cache
    /// misses overlap instead of following one another (a lookup is two dependent misses).
    pub fn lookup_many(&self, blocks: &[u64], out: &mut Vec<Option<u64>>) {
        out.clear();
        out.extend(blocks.iter().map(|&b| {
            let cb = self.table[hash(b) as usize & self.mask];
            (cb != EMPTY).then_some(cb as u64)
        }));
        for (o, &b) in out.iter_mut().zip(blocks) {
            if let Some(cb) = *o {
                if self.backing[cb as usize] != b {
                    // Not in its home slot: probe on.
                    *o = self.lookup(b);
                }
            }
        }
    }

    /// Whether `block` is mapped to `cb`: the same answer as `lookup(block) == Some(cb)`, from
    /// the cache block's own entry (adjacent cache blocks are adjacent in memory) instead of a
    /// hash probe (two dependent cache misses).
    pub fn maps(&self, block: u64, cb: u64) -> bool {
        block != NO_BLOCK && self.backing[cb as usize] == block
    }

    /// The address of `block`'s home slot in the table, where its lookup starts: for a caller
    /// that prefetches it while it does other work (a lookup's first cache miss).
    pub fn home_slot_addr(&self, block: u64) -> *const u8 {
        let i = hash(block) as usize & self.mask;
        self.table[i..].as_ptr().cast()
    }

    pub fn backing_of(&self, cb: u64) -> u64 {
        self.backing[cb as usize]
    }
    pub fn valid(&self, cb: u64) -> u8 {
        self.valid[cb as usize]
    }
    pub fn dirty(&self, cb: u64) -> u8 {
        self.dirty[cb as usize]
    }
    pub fn set_bits(&mut self, cb: u64, valid: u8, dirty: u8) {
        debug_assert_eq!(dirty & !valid, 0);
        self.valid[cb as usize] = valid;
        self.dirty[cb as usize] = dirty;
    }

    /// Maps `block` to the unused cache block `cb`. The block must not be mapped.
    pub fn insert(&mut self, block: u64, cb: u64, valid: u8, dirty: u8) {
        debug_assert!(block != NO_BLOCK);
        debug_assert_eq!(self.backing[cb as usize], NO_BLOCK, "cache block in use");
        debug_assert!(self.lookup(block).is_none(), "block already mapped");
        self.backing[cb as usize] = block;
        self.set_bits(cb, valid, dirty);
        let mut i = hash(block) as usize & self.mask;
        while self.table[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.table[i] = cb as u32;
        self.len += 1;
    }

    /// Moves the mapping of cache block `from` (which must be mapped) to the unused cache block
    /// `to`, with new bits: what `remove(from)` then `insert(block, to, ..)` do, in place. The
    /// table slot keeps its place, so neither the backward shift nor a new probe runs (each
    /// reads the entries of other blocks: cache misses).
    pub fn relocate(&mut self, from: u64, to: u64, valid: u8, dirty: u8) {
        debug_assert_eq!(self.backing[to as usize], NO_BLOCK, "cache block in use");
        let (i, block) = self.table_slot_of(from);
        self.table[i] = to as u32;
        self.clear_entry(from);
        self.backing[to as usize] = block;
        self.set_bits(to, valid, dirty);
    }

    /// The table slot holding cache block `cb` (which must be mapped), and `cb`'s block.
    fn table_slot_of(&self, cb: u64) -> (usize, u64) {
        let block = self.backing[cb as usize];
        debug_assert!(block != NO_BLOCK);
        let mut i = hash(block) as usize & self.mask;
        while self.table[i] != cb as u32 {
            // Checked in release builds too: a broken caller would otherwise spin here forever.
            assert!(
                self.table[i] != EMPTY,
                "cache block {cb} (block {block}) missing from the table"
            );
            i = (i + 1) & self.mask;
        }
        (i, block)
    }

    /// Forgets cache block `cb`'s own entry (the caller updated its table slot).
    fn clear_entry(&mut self, cb: u64) {
        self.backing[cb as usize] = NO_BLOCK;
        self.valid[cb as usize] = 0;
        self.dirty[cb as usize] = 0;
    }

    /// Unmaps cache block `cb` (which must be mapped). Backward-shift deletion keeps probes short.
    pub fn remove(&mut self, cb: u64) {
        let (i, _) = self.table_slot_of(cb);
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        loop {
            let c = self.table[j];
            if c == EMPTY {
                break;
            }
            let home = hash(self.backing[c as usize]) as usize & self.mask;
            // Move c into the hole if its home is not cyclically in (hole, j].
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.table[hole] = c;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.table[hole] = EMPTY;
        self.clear_entry(cb);
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        #[test]
        fn index_matches_a_hashmap(ops in proptest::collection::vec((0u8..4, 0u64..64, 0u64..48), 1..400)) {
            let mut idx = Index::new(48);
            let mut model: HashMap<u64, u64> = HashMap::new();
            for (op, block, cb) in ops {
                match op {
                    0 => {
                        if model.contains_key(&block) || model.values().any(|&c| c == cb) { continue; }
                        idx.insert(block, cb, 0xff, 0x0f);
                        model.insert(block, cb);
                    }
                    1 => {
                        if let Some(cb) = model.remove(&block) { idx.remove(cb); }
                    }
                    2 => {
                        // Move `block` to the unused cache block `cb`.
                        let Some(&from) = model.get(&block) else { continue };
                        if model.values().any(|&c| c == cb) { continue; }
                        idx.relocate(from, cb, 0x0f, 0x03);
                        model.insert(block, cb);
                        prop_assert_eq!(idx.backing_of(from), NO_BLOCK);
                        prop_assert_eq!((idx.valid(cb), idx.dirty(cb)), (0x0f, 0x03));
                    }
                    _ => {}
                }
                let all: Vec<u64> = (0..64).collect();
                let mut many = Vec::new();
                idx.lookup_many(&all, &mut many);
                for b in 0..64 {
                    prop_assert_eq!(idx.lookup(b), model.get(&b).copied());
                    prop_assert_eq!(many[b as usize], model.get(&b).copied());
                    for c in 0..48 {
                        prop_assert_eq!(idx.maps(b, c), idx.lookup(b) == Some(c));
                    }
                }
                prop_assert_eq!(idx.len(), model.len());
            }
        }
    }

    #[test]
    fn dram_per_block_is_within_budget() {
        for n in [1000usize, 4096, 100_000, 1 << 20] {
            let idx = Index::new(n);
            assert!(
                idx.dram_bytes_per_block() <= 24.0,
                "{n}: {}",
                idx.dram_bytes_per_block()
            );
        }
    }
}
