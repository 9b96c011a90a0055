//! The glue's typed errors and the one place they become numbers: [`Error::errno`] (a negative
//! errno, SPDK's convention) and [`Error::rpc_code`] (the JSON-RPC error code: `-32602` for bad
//! parameters, else the errno). No other code picks an errno; SPDK return codes are carried as
//! they came (`rc`).
//!
//! The messages are the operator's (docs/SPDK.md, "JSON-RPC"): each names the volume, the bdev
//! or the parameter, and what to do.

use super::base::BaseError;
use crate::engine::config::ConfigError;
use crate::engine::{CreateError, IoError};
use crate::format::DecodeError;

/// Why a volume's lifecycle step was refused (`registry.rs`, the only writer of volume state).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("no writeboost volume named '{name}'")]
    NoVolume { name: String },
    #[error("volume '{name}' already exists")]
    Exists { name: String },
    #[error("volume '{volume}' already uses bdev '{cache_bdev}' or '{backing_bdev}'")]
    BaseInUse {
        volume: String,
        cache_bdev: String,
        backing_bdev: String,
    },
    #[error("a bdev named '{name}' already exists")]
    BdevNameTaken { name: String },
    #[error("volume '{name}' is already being created or running")]
    AlreadyStarted { name: String },
    #[error("volume '{name}' is being created")]
    BeingCreated { name: String },
    /// A delete that arrives during the assembly: the caller may retry once it is done.
    #[error("volume '{name}' is being created; retry")]
    DeleteWhileCreating { name: String },
    #[error("volume '{name}' is being stopped")]
    BeingStopped { name: String },
    #[error("volume '{name}' is already being stopped")]
    AlreadyStopping { name: String },
    #[error("volume '{name}' is not running: waiting for its base bdevs (cache_bdev '{cache_bdev}', backing_bdev '{backing_bdev}')")]
    Waiting {
        name: String,
        cache_bdev: String,
        backing_bdev: String,
    },
    /// The volume thread found no volume (it stopped between the check and the message).
    #[error("volume is stopped")]
    Stopped,
    #[error("bdev '{bdev}' belongs to writeboost volume '{volume}'; delete the volume first")]
    BdevOfVolume { bdev: String, volume: String },
}

/// Which base bdev an error is about (the message's prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Cache,
    Backing,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Cache => "cache_bdev",
            Role::Backing => "backing_bdev",
        })
    }
}

/// Every failure the glue reports (to an RPC caller, or in the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A parameter the RPC decoder refused (the message names it and its range).
    #[error("{0}")]
    InvalidParams(String),
    #[error("{0}")]
    InvalidOption(#[from] ConfigError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("{role}: {}", .err.msg)]
    Base { role: Role, err: BaseError },
    #[error("block size {blocklen} is not supported (cache_bdev {cache_bdev} has {cache_blocklen}, backing_bdev {backing_bdev} has {backing_blocklen}; at most {max})")]
    BlockSize {
        blocklen: u32,
        cache_bdev: String,
        cache_blocklen: u32,
        backing_bdev: String,
        backing_blocklen: u32,
        max: u32,
    },
    /// A `cpumask` that selects no usable core (the message is `cpumask::parse`'s).
    #[error("{0}")]
    Cpumask(String),
    #[error("cannot create {what}")]
    NoThread { what: &'static str },
    #[error("cannot get {what}")]
    NoChannel { what: &'static str },
    #[error("{0}")]
    Create(CreateError),
    #[error("a base bdev was removed while the volume was being created")]
    RemovedWhileCreating,
    #[error("spdk_bdev_register failed: {}", super::ffi::strerror(*.rc))]
    Register { rc: i32 },
    #[error("unregister failed: {}", super::ffi::strerror(*.rc))]
    Unregister { rc: i32 },
    /// The assembly was cancelled by a teardown (delete, shutdown) before it finished.
    #[error("volume '{name}' was stopped")]
    Cancelled { name: String },
    #[error("writeback failed: {0}")]
    Writeback(IoError),
    #[error("writeback before delete failed: {0}; the volume stays")]
    WritebackBeforeDelete(IoError),
    #[error("a base bdev was removed during the writeback ({0}); the volume is deleted, dirty data stays on the cache")]
    RemovedDuringWriteback(IoError),
    #[error("cache_bdev '{bdev}' ({size_bytes} bytes) cannot hold a writeboost cache: {reason}")]
    TooSmall {
        bdev: String,
        size_bytes: u64,
        reason: DecodeError,
    },
    #[error("reading the superblock of '{bdev}': {source}; pass force to format anyway")]
    ReadSuperblock {
        bdev: String,
        source: crate::device::DeviceError,
    },
    #[error("cache_bdev '{bdev}' holds data that is not a writeboost superblock ({reason}); pass force to overwrite it")]
    NotWriteboost { bdev: String, reason: DecodeError },
    #[error("cache_bdev '{bdev}' holds a writeboost superblock this build cannot read ({reason}); it may hold dirty data: write it back first (with a build that reads it, or the offline `writeboost writeback`), or pass force")]
    Unreadable { bdev: String, reason: DecodeError },
    #[error("scanning the log of '{bdev}': {source}; pass force to format anyway")]
    Scan {
        bdev: String,
        source: crate::device::DeviceError,
    },
    #[error("the log of cache_bdev '{bdev}' (writeboost format {format_uuid}) is damaged ({damage}) and may hold dirty data that cannot be counted; rescue it first (offline `writeboost writeback --accept-damaged-log`) or pass force")]
    DamagedLog {
        bdev: String,
        format_uuid: String,
        damage: crate::engine::replay::LogDamage,
    },
    #[error("cache_bdev '{bdev}' holds {blocks} dirty blocks ({bytes} bytes) of writeboost format {format_uuid}; write them back first (create the volume, then bdev_writeboost_drop_caches) or pass force")]
    Dirty {
        bdev: String,
        blocks: u64,
        bytes: u64,
        format_uuid: String,
    },
    #[error("formatting '{bdev}': {source}")]
    Format { bdev: String, source: CreateError },
}

impl Error {
    /// The negative errno of this error (SPDK's convention). The one errno table of the glue.
    pub fn errno(&self) -> i32 {
        use LifecycleError as L;
        -match self {
            Error::InvalidParams(_)
            | Error::InvalidOption(_)
            | Error::TooSmall { .. }
            | Error::BlockSize { .. }
            | Error::Cpumask(_)
            | Error::NotWriteboost { .. }
            | Error::Unreadable { .. } => libc::EINVAL,
            Error::Lifecycle(l) => match l {
                L::NoVolume { .. } | L::Stopped => libc::ENODEV,
                L::Exists { .. } | L::BaseInUse { .. } | L::BdevNameTaken { .. } => libc::EEXIST,
                L::AlreadyStarted { .. }
                | L::BeingCreated { .. }
                | L::DeleteWhileCreating { .. }
                | L::BeingStopped { .. }
                | L::AlreadyStopping { .. }
                | L::BdevOfVolume { .. } => libc::EBUSY,
                L::Waiting { .. } => libc::EAGAIN,
            },
            // SPDK's own return codes, as they came (negative).
            Error::Base { err, .. } => return err.rc,
            Error::Register { rc } | Error::Unregister { rc } => return *rc,
            Error::NoThread { .. } | Error::NoChannel { .. } => libc::ENOMEM,
            Error::Create(CreateError::Device { .. }) => libc::EIO,
            Error::Create(_) => libc::EINVAL,
            Error::RemovedWhileCreating | Error::RemovedDuringWriteback(_) => libc::ENODEV,
            Error::Cancelled { .. } => libc::ECANCELED,
            Error::Writeback(_)
            | Error::WritebackBeforeDelete(_)
            | Error::ReadSuperblock { .. }
            | Error::Scan { .. }
            | Error::Format { .. } => libc::EIO,
            Error::DamagedLog { .. } | Error::Dirty { .. } => libc::EBUSY,
        }
    }

    /// The JSON-RPC error code: invalid parameters (`-32602`) for what the caller can fix in the
    /// request, else [`Self::errno`].
    pub fn rpc_code(&self) -> i32 {
        match self {
            Error::InvalidParams(_) | Error::InvalidOption(_) | Error::TooSmall { .. } => {
                JSONRPC_INVALID_PARAMS
            }
            _ => self.errno(),
        }
    }
}

/// `SPDK_JSONRPC_ERROR_INVALID_PARAMS` (JSON-RPC 2.0's "Invalid params").
pub const JSONRPC_INVALID_PARAMS: i32 = -32602;

#[cfg(test)]
mod tests {
    use super::*;

    fn l(e: LifecycleError) -> Error {
        Error::Lifecycle(e)
    }

    #[test]
    fn codes_follow_docs_spdk_md() {
        let name = || "wb0".to_string();
        assert_eq!(Error::InvalidParams("x".into()).rpc_code(), -32602);
        assert_eq!(l(LifecycleError::NoVolume { name: name() }).rpc_code(), -19);
        assert_eq!(
            l(LifecycleError::BeingStopped { name: name() }).rpc_code(),
            -16
        );
        assert_eq!(l(LifecycleError::Exists { name: name() }).rpc_code(), -17);
        let waiting = LifecycleError::Waiting {
            name: name(),
            cache_bdev: "C".into(),
            backing_bdev: "B".into(),
        };
        assert_eq!(l(waiting).rpc_code(), -11);
        assert_eq!(Error::Register { rc: -12 }.errno(), -12);
        assert_eq!(Error::Cancelled { name: name() }.errno(), -libc::ECANCELED);
    }

    #[test]
    fn messages_name_what_failed() {
        let e = l(LifecycleError::NoVolume {
            name: "nope".into(),
        });
        assert_eq!(e.to_string(), "no writeboost volume named 'nope'");
        let e = Error::Base {
            role: Role::Backing,
            err: BaseError {
                rc: -19,
                msg: "bdev 'X' does not exist".into(),
            },
        };
        assert_eq!(e.to_string(), "backing_bdev: bdev 'X' does not exist");
        assert_eq!(
            Error::NoThread {
                what: "the volume thread"
            }
            .to_string(),
            "cannot create the volume thread"
        );
    }
}
