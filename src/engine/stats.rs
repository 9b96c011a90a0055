//! Counters: dm-writeboost's 16 hit/miss counters, plus bytes and errors.

use serde::Serialize;

/// Index of a hit/miss counter, as dm-writeboost numbers them:
/// `(write << 3) | (hit << 2) | (on_buffer << 1) | fullsize`.
pub fn stat_index(write: bool, hit: bool, on_buffer: bool, fullsize: bool) -> usize {
    ((write as usize) << 3)
        | ((hit as usize) << 2)
        | ((on_buffer as usize) << 1)
        | fullsize as usize
}

pub fn stat_name(i: usize) -> String {
    format!(
        "{}_{}_{}_{}",
        if i & 8 != 0 { "write" } else { "read" },
        if i & 4 != 0 { "hit" } else { "miss" },
        if i & 2 != 0 {
            "on_buffer"
        } else {
            "not_on_buffer"
        },
        if i & 1 != 0 { "fullsize" } else { "partial" },
    )
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub stat: [u64; 16],
    pub nr_partial_flushed: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub bytes_written_back: u64,
    pub bytes_cache_read: u64,
    pub bytes_cache_written: u64,
    pub bytes_backing_read: u64,
    pub segments_written: u64,
    pub writeback_batches: u64,
    pub flushes: u64,
    pub fua_writes: u64,
    pub discards: u64,
    pub staged_blocks: u64,
    pub cache_read_errors: u64,
    pub cache_write_errors: u64,
    pub cache_flush_errors: u64,
    pub backing_read_errors: u64,
    pub backing_write_errors: u64,
    pub backing_flush_errors: u64,
    /// Foreground writes that had to wait for log space.
    pub write_waits_for_space: u64,
    /// Foreground writes that waited for their turn to open a segment while a batch for space
    /// ran (the free segments are spread over the batch, so that writers wait a little often
    /// rather than for a whole batch at once).
    pub writes_paced: u64,
    /// Bytes of writes that bypassed the cache (sequential cutoff).
    pub bytes_bypassed: u64,
    /// Bypassed writes that failed on the backing device and were written through the log.
    pub bypass_retried_in_log: u64,
    /// Times the volume went degraded (0 or 1 per run).
    pub degraded_transitions: u64,
    /// Dirty blocks not durable on the cache that a degraded FLUSH wrote to the backing device.
    pub rescued_blocks: u64,
    /// Live dirty blocks that reclaim moved to the head of the log instead of writing them back
    /// (log cleaning without the backing device).
    pub relogged_blocks: u64,
    /// Reclaim batches that re-logged (the others wrote back: `writeback_batches`).
    pub relog_batches: u64,
}

/// The error counters, by device and operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    CacheRead,
    CacheWrite,
    CacheFlush,
    BackingRead,
    BackingWrite,
    BackingFlush,
}

impl Counters {
    /// Counts an I/O error and logs it, rate-limited: the 1st, 2nd, 4th, 8th... of each kind.
    pub fn note_error(&mut self, kind: ErrorKind) {
        let (n, what) = match kind {
            ErrorKind::CacheRead => (&mut self.cache_read_errors, "cache device read"),
            ErrorKind::CacheWrite => (&mut self.cache_write_errors, "cache device write"),
            ErrorKind::CacheFlush => (&mut self.cache_flush_errors, "cache device flush"),
            ErrorKind::BackingRead => (&mut self.backing_read_errors, "backing device read"),
            ErrorKind::BackingWrite => (&mut self.backing_write_errors, "backing device write"),
            ErrorKind::BackingFlush => (&mut self.backing_flush_errors, "backing device flush"),
        };
        *n += 1;
        if n.is_power_of_two() {
            tracing::warn!(errors = *n, "writeboost: {what} error ({} so far)", *n);
        }
    }

    pub fn stat_map(&self) -> serde_json::Map<String, serde_json::Value> {
        (0..16)
            .map(|i| (stat_name(i), serde_json::Value::from(self.stat[i])))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dm_writeboost_order() {
        assert_eq!(
            stat_name(stat_index(true, false, false, true)),
            "write_miss_not_on_buffer_fullsize"
        );
        assert_eq!(stat_index(true, false, false, true), 9);
        assert_eq!(stat_index(false, true, true, true), 7);
        assert_eq!(stat_name(7), "read_hit_on_buffer_fullsize");
    }
}
