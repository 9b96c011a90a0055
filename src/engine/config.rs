//! The tunables: one table (name, range, default, dynamic) that the engine, the JSON-RPC layer,
//! the rpc.py plugin test and the docs all read.

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Tunable {
    pub name: &'static str,
    pub min: u64,
    pub max: u64,
    pub default: u64,
    /// Can be changed on a live volume with `bdev_writeboost_set_options`.
    pub dynamic: bool,
    pub doc: &'static str,
}

pub const TUNABLES: &[Tunable] = &[
    Tunable {
        name: "writeback_threshold",
        min: 0,
        max: 100,
        default: 0,
        dynamic: true,
        doc: "background writeback runs while foreground load on the backing device is below this % (0: only when the log needs space or on drop_caches)",
    },
    Tunable {
        name: "nr_max_batched_writeback",
        min: 1,
        max: 256,
        default: 32,
        dynamic: true,
        doc: "segments per writeback batch at most (a quarter of it once the backing device is measured fast, half while re-logging keeps space free)",
    },
    Tunable {
        name: "update_sb_record_interval",
        min: 0,
        max: 3600,
        default: 60,
        dynamic: true,
        doc: "seconds between superblock record writes (0: only at clean shutdown)",
    },
    Tunable {
        name: "sync_data_interval",
        min: 0,
        max: 3600,
        default: 0,
        dynamic: true,
        doc: "seconds between forced seals + cache flushes (0: off)",
    },
    Tunable {
        name: "read_cache_threshold",
        min: 0,
        max: 127,
        default: 0,
        dynamic: true,
        doc: "reads are staged into the cache unless part of a sequential run longer than this many 4 KiB blocks (0: read caching off)",
    },
    Tunable {
        name: "sequential_cutoff_kib",
        min: 0,
        max: 1_048_576,
        default: 4096,
        dynamic: true,
        doc: "a write continuing a sequential stream longer than this many KiB goes straight to the backing device if none of its blocks is cached, once half of the cache blocks are dirty and then until the stream breaks (0: off)",
    },
    Tunable {
        name: "sequential_cutoff_min_io_kib",
        min: 0,
        max: 1024,
        default: 64,
        dynamic: true,
        doc: "writes smaller than this many KiB never bypass the cache through the sequential cutoff (each would cost the backing device a seek; in the log, writeback merges them into runs)",
    },
    Tunable {
        name: "degraded_error_threshold",
        min: 0,
        max: 1_000_000,
        default: 16,
        dynamic: true,
        doc: "cache device errors within degraded_error_window_s that put the volume in degraded state (write-through, nothing new cached); a segment write that keeps failing for min(window, 1 s) does too (0: never degrade)",
    },
    Tunable {
        name: "degraded_error_window_s",
        min: 1,
        max: 3600,
        default: 10,
        dynamic: true,
        doc: "seconds over which cache device errors are counted for degraded_error_threshold",
    },
    Tunable {
        name: "write_around_mode",
        min: 0,
        max: 1,
        default: 0,
        dynamic: false,
        doc: "writes bypass the cache (read cache only); set at create",
    },
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown option '{key}'; known options: {known}")]
    UnknownKey { key: String, known: String },
    #[error("option '{key}' = {value} is out of range {min}..={max}")]
    OutOfRange {
        key: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("option '{key}' can only be set at create")]
    NotDynamic { key: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Options {
    pub writeback_threshold: u64,
    pub nr_max_batched_writeback: u64,
    pub update_sb_record_interval: u64,
    pub sync_data_interval: u64,
    pub read_cache_threshold: u64,
    pub sequential_cutoff_kib: u64,
    pub sequential_cutoff_min_io_kib: u64,
    pub degraded_error_threshold: u64,
    pub degraded_error_window_s: u64,
    pub write_around_mode: bool,
}

impl Default for Options {
    fn default() -> Options {
        let mut o = Options {
            writeback_threshold: 0,
            nr_max_batched_writeback: 0,
            update_sb_record_interval: 0,
            sync_data_interval: 0,
            read_cache_threshold: 0,
            sequential_cutoff_kib: 0,
            sequential_cutoff_min_io_kib: 0,
            degraded_error_threshold: 0,
            degraded_error_window_s: 0,
            write_around_mode: false,
        };
        for t in TUNABLES {
            o.store(t.name, t.default);
        }
        o
    }
}

pub fn tunable(key: &str) -> Option<&'static Tunable> {
    TUNABLES.iter().find(|t| t.name.eq_ignore_ascii_case(key))
}

impl Options {
    fn store(&mut self, name: &str, v: u64) {
        match name {
            "writeback_threshold" => self.writeback_threshold = v,
            "nr_max_batched_writeback" => self.nr_max_batched_writeback = v,
            "update_sb_record_interval" => self.update_sb_record_interval = v,
            "sync_data_interval" => self.sync_data_interval = v,
            "read_cache_threshold" => self.read_cache_threshold = v,
            "sequential_cutoff_kib" => self.sequential_cutoff_kib = v,
            "sequential_cutoff_min_io_kib" => self.sequential_cutoff_min_io_kib = v,
            "degraded_error_threshold" => self.degraded_error_threshold = v,
            "degraded_error_window_s" => self.degraded_error_window_s = v,
            "write_around_mode" => self.write_around_mode = v != 0,
            _ => unreachable!("tunable table and Options disagree on {name}"),
        }
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        Some(match tunable(name)?.name {
            "writeback_threshold" => self.writeback_threshold,
            "nr_max_batched_writeback" => self.nr_max_batched_writeback,
            "update_sb_record_interval" => self.update_sb_record_interval,
            "sync_data_interval" => self.sync_data_interval,
            "read_cache_threshold" => self.read_cache_threshold,
            "sequential_cutoff_kib" => self.sequential_cutoff_kib,
            "sequential_cutoff_min_io_kib" => self.sequential_cutoff_min_io_kib,
            "degraded_error_threshold" => self.degraded_error_threshold,
            "degraded_error_window_s" => self.degraded_error_window_s,
            "write_around_mode" => self.write_around_mode as u64,
            _ => return None,
        })
    }

    /// Validates and sets `key`. `at_create` allows the static options.
    pub fn set(&mut self, key: &str, value: u64, at_create: bool) -> Result<(), ConfigError> {
        let t = tunable(key).ok_or_else(|| ConfigError::UnknownKey {
            key: key.to_string(),
            known: TUNABLES
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        if value < t.min || value > t.max {
            return Err(ConfigError::OutOfRange {
                key: t.name,
                value,
                min: t.min,
                max: t.max,
            });
        }
        if !t.dynamic && !at_create {
            return Err(ConfigError::NotDynamic { key: t.name });
        }
        self.store(t.name, value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names_key_and_range() {
        let mut o = Options::default();
        let e = o.set("writeback_threshold", 101, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "option 'writeback_threshold' = 101 is out of range 0..=100"
        );
        assert!(matches!(
            o.set("bogus", 1, false),
            Err(ConfigError::UnknownKey { .. })
        ));
        assert!(matches!(
            o.set("write_around_mode", 1, false),
            Err(ConfigError::NotDynamic { .. })
        ));
        o.set("READ_CACHE_THRESHOLD", 5, false).unwrap();
        assert_eq!(o.read_cache_threshold, 5);
        for t in TUNABLES {
            assert_eq!(Options::default().get(t.name), Some(t.default));
        }
    }
}
