//! Typed errors, one enum per operation. The SPDK glue maps them to errno and JSON-RPC errors,
//! the offline command to exit codes.

use crate::device::DeviceError;
use crate::format::DecodeError;

/// Which base device an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Base {
    Cache,
    Backing,
}

impl std::fmt::Display for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Base::Cache => "cache",
            Base::Backing => "backing",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("{base} device: {source}")]
    Device { base: Base, source: DeviceError },
    #[error("cache device does not hold a writeboost format ({reason}); format it explicitly (force_format)")]
    NotWriteboost { reason: DecodeError },
    #[error("cache format version {major}.{minor} is newer than this build supports")]
    VersionTooNew { major: u32, minor: u32 },
    #[error("cache device was formatted for a different backing device (recorded size {recorded_bytes} bytes, uuid {recorded_uuid}; found {found_bytes} bytes, uuid {found_uuid})")]
    WrongBacking {
        recorded_bytes: u64,
        recorded_uuid: String,
        found_bytes: u64,
        found_uuid: String,
    },
    #[error("cache geometry changed: {what} was {recorded}, now {found}")]
    GeometryChanged {
        what: &'static str,
        recorded: u64,
        found: u64,
    },
    #[error("the cache's log is damaged: {damage}; nothing was written (inspect with `writeboost check`; `force_format` discards the cache)")]
    LogDamaged {
        damage: crate::engine::replay::LogDamage,
    },
    #[error("the log holds copies that writes made while the volume was degraded superseded on the backing device, and it was not drained before the volume stopped (power loss or a failed delete): replaying it would return older data. Create with force_format: the backing device holds every write made while degraded (dirty data only in the cache's log is lost)")]
    SupersededCopiesInLog,
    #[error("invalid geometry: {0}")]
    Geometry(DecodeError),
    #[error("write_around_mode needs a cache without dirty data; this cache holds {nr_dirty_blocks} dirty blocks: create it in write-back mode and drop_caches first")]
    DirtyInWriteAround { nr_dirty_blocks: u64 },
    #[error("{0}")]
    Option(#[from] crate::engine::config::ConfigError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    #[error(
        "I/O range out of bounds: sector {offset_sectors} +{nr_sectors} beyond {size_sectors}"
    )]
    OutOfRange {
        offset_sectors: u64,
        nr_sectors: u64,
        size_sectors: u64,
    },
    #[error("{base} device: {source}")]
    Device { base: Base, source: DeviceError },
    #[error("data could not be made durable on the cache device")]
    NotDurable,
    /// Internal: the volume went degraded while the write waited for log space (the engine
    /// then writes it through; never returned to a caller).
    #[error("the volume is degraded")]
    Degraded,
    #[error("the log holds copies that writes made while degraded superseded on the backing device, and {nr_dirty_blocks} dirty blocks could not be written back: a create would replay both (drain with drop_caches once the cache reads, or create with force_format)")]
    StaleLogNotDrained { nr_dirty_blocks: u64 },
    /// A broken invariant: drop_caches found dirty blocks but no segment left to write back.
    #[error("internal error: {nr_dirty_blocks} dirty blocks are in segments already marked written back; drop_caches cannot drain them (please report it with the volume's get_stats)")]
    DirtyInWrittenBackSegments { nr_dirty_blocks: u64 },
}

impl IoError {
    pub fn cache(source: DeviceError) -> IoError {
        IoError::Device {
            base: Base::Cache,
            source,
        }
    }
    pub fn backing(source: DeviceError) -> IoError {
        IoError::Device {
            base: Base::Backing,
            source,
        }
    }
}
