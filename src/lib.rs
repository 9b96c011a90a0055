//! writeboost: a log-structured write-back block cache.
//!
//! - [`engine`]: the runtime-agnostic cache (format, index, log, writeback, replay, stats).
//! - [`format`]: the on-disk format, pure encoders and decoders (see `docs/FORMAT.md`).
//! - [`device`]: the block-device boundary, with file and in-memory devices.
//! - [`runtime`]: time, timers and spawning, provided by the host environment.
//! - [`cli`]: the offline `writeboost` command (inspect, check and rescue a cache device).
//! - `bdev` (feature `spdk`): the SPDK bdev module, the only home of `unsafe`.

pub mod cli;
pub mod device;
pub mod engine;
pub mod format;
pub mod runtime;

#[cfg(feature = "spdk")]
pub mod bdev;
