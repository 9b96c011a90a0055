//! The offline `writeboost` command: inspect, check and rescue a cache device (a file or a block
//! device) with no SPDK running. `src/bin/writeboost.rs` calls [`main`]; integration tests run
//! the binary.
//!
//! Subcommands: `format`, `check`, `meta`, `dump`, `status` (read-only, `--json`) and `writeback`.
//! Every failure is one line on stderr and a distinct exit status ([`ExitStatus`]).

mod check;
mod format_cmd;
mod hexdump;
mod inspect;
mod writeback;

pub use hexdump::hexdump;

use crate::device::file::FileDevice;
use crate::device::{AlignedBuf, BlockDevice, DeviceError};
use crate::engine::{CreateError, IoError};
use crate::format::{
    DecodeError, SegmentHeader, Superblock, BLOCK_SIZE_BYTES, VERSION_MAJOR, VERSION_MINOR,
};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Exit statuses of the command (also listed in `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitStatus {
    Ok = 0,
    /// `check` found corruption, or a command met a corrupt superblock.
    Corrupt = 1,
    /// Bad arguments (clap uses 2 as well), or a segment or block number out of range.
    Usage = 2,
    /// A file is missing or unreadable, an I/O error, or the requested segment is not on the device.
    NotFoundOrIo = 3,
    /// The cache device holds no writeboost format (all zero, or other data).
    NotWriteboost = 4,
    /// The cache was formatted for another backing device, or the cache device changed size.
    WrongDevice = 5,
    /// The cache's format version is newer than this build.
    VersionTooNew = 6,
    /// `format` refused: the cache holds dirty data or unrecognized content (use `--force`).
    Refused = 7,
}

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success (check: no corruption found)
  1  corruption found (check), or a corrupt superblock
  2  usage error: bad arguments, segment or block number out of range
  3  file not found, I/O error, or the segment is not on the device
  4  not a writeboost cache (unformatted, or other data)
  5  wrong device: formatted for another backing device, or the cache size changed
  6  the cache's format version is newer than this build
  7  format refused: dirty data or unrecognized content on the cache (use --force)";

/// One line on stderr, one exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Device { path: PathBuf, source: DeviceError },
    #[error("{}: not a writeboost cache: {reason}", path.display())]
    NotWriteboost { path: PathBuf, reason: DecodeError },
    #[error("{}: corrupt superblock: {reason}", path.display())]
    CorruptSuperblock { path: PathBuf, reason: DecodeError },
    #[error("{}: format version {major}.{minor} is newer than this build supports ({VERSION_MAJOR}.{VERSION_MINOR})", path.display())]
    VersionTooNew {
        path: PathBuf,
        major: u32,
        minor: u32,
    },
    #[error("{}: {source}", path.display())]
    Create { path: PathBuf, source: CreateError },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: IoError },
    #[error("{}: refusing to format: {reason}; pass --force to overwrite", path.display())]
    Refused { path: PathBuf, reason: RefuseReason },
    #[error("{}: segment {id} is not on the device: slot {slot} holds {found}", path.display())]
    SegmentNotFound {
        path: PathBuf,
        id: u64,
        slot: u64,
        found: SlotContent,
    },
    #[error("segment {id} has {nr_blocks} data blocks (0..{}), no block {block}", nr_blocks.saturating_sub(1))]
    BlockOutOfRange { id: u64, block: u32, nr_blocks: u32 },
    #[error("{}: the device has {nr_segments} slots (0..{}), no slot {slot}", path.display(), nr_segments.saturating_sub(1))]
    SlotOutOfRange {
        path: PathBuf,
        slot: u64,
        nr_segments: u64,
    },
    #[error("invalid argument: {0}")]
    Argument(#[from] ArgumentError),
    #[error("{}: {source}", path.display())]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An argument that clap accepted but that is invalid for this device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentError {
    #[error("--segment-size-kib {0}: a power of two in {min}..={max}", min = crate::format::SEGMENT_SIZE_KIB_MIN, max = crate::format::SEGMENT_SIZE_KIB_MAX)]
    SegmentSize(u32),
    #[error("--backing-size-bytes {0}: a positive multiple of 512")]
    BackingSize(u64),
    #[error("cache device of {cache_size_bytes} bytes is too small for two segments of {segment_size_kib} KiB after the first MiB")]
    CacheTooSmall {
        cache_size_bytes: u64,
        segment_size_kib: u32,
    },
}

/// Why `format` refused without `--force`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefuseReason {
    #[error("the cache holds {dirty_blocks} dirty blocks ({dirty_bytes} bytes) not yet written back (run `writeboost writeback` first)")]
    Dirty { dirty_blocks: u64, dirty_bytes: u64 },
    #[error("block 0 holds data that is not a writeboost superblock ({0})")]
    Unrecognized(DecodeError),
    #[error("block 0 holds a writeboost superblock this build cannot read ({0})")]
    Unreadable(DecodeError),
}

/// What a slot holds instead of the segment asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotContent {
    Empty,
    Invalid(DecodeError),
    Foreign,
    Segment(u64),
}

impl std::fmt::Display for SlotContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotContent::Empty => f.write_str("no segment (all-zero header)"),
            SlotContent::Invalid(e) => write!(f, "an invalid header ({e})"),
            SlotContent::Foreign => f.write_str("a segment of another format"),
            SlotContent::Segment(id) => write!(f, "segment {id}"),
        }
    }
}

impl CliError {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            CliError::Open { .. }
            | CliError::Device { .. }
            | CliError::Io { .. }
            | CliError::Output { .. } => ExitStatus::NotFoundOrIo,
            CliError::SegmentNotFound { .. } => ExitStatus::NotFoundOrIo,
            CliError::NotWriteboost { .. } => ExitStatus::NotWriteboost,
            CliError::CorruptSuperblock { .. } => ExitStatus::Corrupt,
            CliError::VersionTooNew { .. } => ExitStatus::VersionTooNew,
            CliError::Refused { .. } => ExitStatus::Refused,
            CliError::BlockOutOfRange { .. }
            | CliError::SlotOutOfRange { .. }
            | CliError::Argument(_) => ExitStatus::Usage,
            CliError::Create { source, .. } => match source {
                CreateError::Device { .. } => ExitStatus::NotFoundOrIo,
                CreateError::NotWriteboost { .. } => ExitStatus::NotWriteboost,
                CreateError::VersionTooNew { .. } => ExitStatus::VersionTooNew,
                CreateError::WrongBacking { .. } | CreateError::GeometryChanged { .. } => {
                    ExitStatus::WrongDevice
                }
                CreateError::LogDamaged { .. } | CreateError::SupersededCopiesInLog => {
                    ExitStatus::Corrupt
                }
                CreateError::Geometry(_)
                | CreateError::DirtyInWriteAround { .. }
                | CreateError::Option(_) => ExitStatus::Usage,
            },
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "writeboost",
    version,
    about = "Inspect, check and rescue a writeboost cache device offline (no SPDK needed)",
    long_about = "Inspect, check and rescue a writeboost cache device offline (no SPDK needed).\n\n\
        CACHE and BACKING are files or block devices. Only `format` and `writeback` write; \
        every other subcommand opens the cache read-only and accepts --json.",
    after_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new, empty writeboost format on CACHE for a backing device.
    #[command(after_help = EXIT_STATUS_HELP)]
    Format(FormatArgs),
    /// Verify the superblock, both record copies, every segment header and (with --all or
    /// --segment) every data block checksum; exit status 1 on any corruption.
    #[command(after_help = EXIT_STATUS_HELP)]
    Check(CheckArgs),
    /// Print the superblock and record copies, or one segment's header and per-block entries.
    #[command(after_help = EXIT_STATUS_HELP)]
    Meta(MetaArgs),
    /// Print one cached data block (hex, or raw bytes with --raw).
    #[command(after_help = EXIT_STATUS_HELP)]
    Dump(DumpArgs),
    /// What a replay would find: log head, last written-back segment, dirty blocks and bytes.
    #[command(after_help = EXIT_STATUS_HELP)]
    Status(StatusArgs),
    /// Replay the log, write every dirty block to BACKING, flush it, then mark the cache clean.
    /// Safe to interrupt and run again.
    #[command(after_help = EXIT_STATUS_HELP)]
    Writeback(WritebackArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("backing_identity").required(true).args(["backing", "backing_size_bytes"])))]
struct FormatArgs {
    /// The cache file or block device.
    cache: PathBuf,
    /// The backing file or block device (only its size is read).
    #[arg(long, value_name = "PATH")]
    backing: Option<PathBuf>,
    /// The backing device's size, when it is not at hand (e.g. an SPDK bdev).
    #[arg(long, value_name = "BYTES")]
    backing_size_bytes: Option<u64>,
    /// The backing device's UUID to record (e.g. the SPDK bdev's UUID); none by default.
    #[arg(long, value_name = "UUID", value_parser = parse_uuid)]
    backing_uuid: Option<[u8; 16]>,
    /// Segment size in KiB: a power of two from 16 to 4096.
    #[arg(long, value_name = "KIB", default_value_t = crate::format::SEGMENT_SIZE_KIB_DEFAULT)]
    segment_size_kib: u32,
    /// Format even if the cache holds dirty data or unrecognized content.
    #[arg(long)]
    force: bool,
    /// Print the new superblock as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").args(["segment", "all"])))]
struct CheckArgs {
    /// The cache file or block device.
    cache: PathBuf,
    /// Check only this segment (header, log links and every data block).
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    segment: Option<u64>,
    /// Also verify every data block of every segment (reads the whole log area).
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").args(["segment", "slot"])))]
struct MetaArgs {
    /// The cache file or block device.
    cache: PathBuf,
    /// Show this segment's header and entries.
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    segment: Option<u64>,
    /// Show the header in this slot (0-based), whatever it holds.
    #[arg(long, value_name = "N")]
    slot: Option<u64>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DumpArgs {
    /// The cache file or block device.
    cache: PathBuf,
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    segment: u64,
    /// Data block number inside the segment (0-based).
    #[arg(long, value_name = "N")]
    block: u32,
    /// Write the 4096 raw bytes to stdout.
    #[arg(long, conflicts_with = "json")]
    raw: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The cache file or block device.
    cache: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct WritebackArgs {
    /// The cache file or block device.
    #[arg(long, value_name = "PATH")]
    cache: PathBuf,
    /// The backing file or block device the cache was formatted for.
    #[arg(long, value_name = "PATH")]
    backing: PathBuf,
    /// Segments read per writeback batch.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=256))]
    batch_segments: u64,
    /// Rescue what is intact even when `check` reports log damage (durable segments that
    /// cannot be replayed, or a hole): the damaged part is lost either way.
    #[arg(long)]
    accept_damaged_log: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("expected 32 hex digits, e.g. 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into());
    }
    let mut u = [0u8; 16];
    for (i, b) in u.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(u)
}

/// Runs the command with `args` (the program name first); returns the exit status.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let r = match cli.command {
        Command::Format(a) => format_cmd::run(a, &mut out),
        Command::Check(a) => check::run(a, &mut out),
        Command::Meta(a) => inspect::meta(a, &mut out),
        Command::Dump(a) => inspect::dump(a, &mut out),
        Command::Status(a) => inspect::status(a, &mut out),
        Command::Writeback(a) => writeback::run(a, &mut out),
    };
    let r = r.and_then(|status| {
        out.flush().map_err(|source| CliError::Output {
            path: "stdout".into(),
            source,
        })?;
        Ok(status)
    });
    match r {
        Ok(status) => status as i32,
        // A reader that stopped early (`| head`) is not an error.
        Err(CliError::Output { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            0
        }
        Err(e) => {
            eprintln!("writeboost: {e}");
            e.exit_status() as i32
        }
    }
}

/// The process entry point.
pub fn main() -> i32 {
    run(std::env::args_os())
}

// Helpers shared by the subcommands.

type Out<'a> = &'a mut dyn Write;

/// Writes to stdout, turning an I/O error into a [`CliError`].
fn emit(out: Out<'_>, text: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    out.write_fmt(text).map_err(|source| CliError::Output {
        path: "stdout".into(),
        source,
    })
}

macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        $crate::cli::emit($out, format_args!($($arg)*))
    };
}
use say;

fn emit_json<T: serde::Serialize>(out: Out<'_>, value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).expect("report structs serialize");
    say!(out, "{text}\n")
}

fn open_device(path: &Path, writable: bool) -> Result<FileDevice, CliError> {
    FileDevice::open(path, writable).map_err(|source| CliError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// A cache device opened by a subcommand, with its path for messages.
struct Cache {
    path: PathBuf,
    dev: FileDevice,
}

impl Cache {
    fn open(path: &Path, writable: bool) -> Result<Cache, CliError> {
        Ok(Cache {
            path: path.to_path_buf(),
            dev: open_device(path, writable)?,
        })
    }

    fn device_error(&self, source: DeviceError) -> CliError {
        CliError::Device {
            path: self.path.clone(),
            source,
        }
    }

    fn read(&self, offset_bytes: u64, len_bytes: usize) -> Result<AlignedBuf, CliError> {
        let (b, r) =
            futures::executor::block_on(self.dev.read(offset_bytes, AlignedBuf::zeroed(len_bytes)));
        r.map_err(|e| self.device_error(e))?;
        Ok(b)
    }

    /// The superblock, or the error that says why this is not a usable cache.
    fn superblock(&self) -> Result<Superblock, CliError> {
        let r = futures::executor::block_on(crate::engine::read_superblock(&self.dev));
        let decoded = r.map_err(|e| self.device_error(e))?;
        decoded.map_err(|reason| superblock_error(&self.path, reason))
    }

    /// Reads and classifies the header in `slot`.
    fn slot_header(&self, sb: &Superblock, slot: u64) -> Result<SlotHeader, CliError> {
        let geo = sb.geometry;
        let b = self.read(geo.slot_offset_bytes(slot), geo.header_bytes())?;
        Ok(SlotHeader::classify(&b, sb, slot))
    }

    /// The data blocks of a segment's entries, read in one I/O.
    fn segment_data(
        &self,
        sb: &Superblock,
        slot: u64,
        nr_blocks: usize,
    ) -> Result<AlignedBuf, CliError> {
        self.read(
            sb.geometry.data_block_offset_bytes(slot, 0),
            nr_blocks * BLOCK_SIZE_BYTES as usize,
        )
    }

    /// The header of segment `id`, or why it is not on the device.
    fn segment(&self, sb: &Superblock, id: u64) -> Result<(u64, SegmentHeader), CliError> {
        let slot = sb.geometry.slot_of_id(id);
        let found = match self.slot_header(sb, slot)? {
            SlotHeader::Ours(h) if h.id == id => return Ok((slot, h)),
            SlotHeader::Ours(h) | SlotHeader::Misplaced(h) => SlotContent::Segment(h.id),
            SlotHeader::Empty => SlotContent::Empty,
            SlotHeader::Invalid { error, .. } | SlotHeader::OtherData(error) => {
                SlotContent::Invalid(error)
            }
            SlotHeader::Foreign { .. } => SlotContent::Foreign,
        };
        Err(CliError::SegmentNotFound {
            path: self.path.clone(),
            id,
            slot,
            found,
        })
    }
}

fn superblock_error(path: &Path, reason: DecodeError) -> CliError {
    let path = path.to_path_buf();
    match reason {
        DecodeError::VersionTooNew { major, minor } => {
            CliError::VersionTooNew { path, major, minor }
        }
        // The magic matched: this was a writeboost superblock and it is damaged.
        DecodeError::BadChecksum { .. } | DecodeError::OutOfRange { .. } => {
            CliError::CorruptSuperblock { path, reason }
        }
        DecodeError::Zero | DecodeError::BadMagic { .. } | DecodeError::TooShort { .. } => {
            CliError::NotWriteboost { path, reason }
        }
    }
}

/// Byte offsets of the format UUID and the id in a segment header (docs/FORMAT.md), read from
/// headers that do not decode, to tell another format's leftovers from damage to this one.
const HEADER_UUID_OFFSET: usize = 8;
const HEADER_ID_OFFSET: usize = 24;

/// What one slot's header blocks hold.
#[derive(Debug, Clone)]
enum SlotHeader {
    /// All-zero fixed header: never written, or wiped by a replay.
    Empty,
    /// Not a segment header at all (bad magic): bytes from before the format.
    OtherData(DecodeError),
    /// A header of this format that does not decode; `claimed_id` is its id field.
    Invalid { error: DecodeError, claimed_id: u64 },
    /// A header of another format (a previous format of this device); `header` when it also
    /// decodes with this format's geometry.
    Foreign {
        uuid: [u8; 16],
        header: Option<SegmentHeader>,
    },
    /// A valid header of this format whose id belongs in another slot.
    Misplaced(SegmentHeader),
    /// A valid header of this format in its own slot.
    Ours(SegmentHeader),
}

impl SlotHeader {
    fn classify(b: &[u8], sb: &Superblock, slot: u64) -> SlotHeader {
        let uuid: [u8; 16] = b[HEADER_UUID_OFFSET..HEADER_UUID_OFFSET + 16]
            .try_into()
            .expect("16 bytes");
        match SegmentHeader::decode(b, sb.geometry.data_blocks_per_segment()) {
            Err(DecodeError::Zero) => SlotHeader::Empty,
            Err(e @ DecodeError::BadMagic { .. }) => SlotHeader::OtherData(e),
            Err(_) if uuid != sb.format_uuid => SlotHeader::Foreign { uuid, header: None },
            Err(error) => SlotHeader::Invalid {
                error,
                claimed_id: u64::from_le_bytes(
                    b[HEADER_ID_OFFSET..HEADER_ID_OFFSET + 8]
                        .try_into()
                        .expect("8 bytes"),
                ),
            },
            Ok(h) if h.format_uuid != sb.format_uuid => SlotHeader::Foreign {
                uuid,
                header: Some(h),
            },
            Ok(h) if sb.geometry.slot_of_id(h.id) != slot => SlotHeader::Misplaced(h),
            Ok(h) => SlotHeader::Ours(h),
        }
    }
}

/// Mebibytes, for human output.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn uuid_str(u: &[u8; 16]) -> String {
    crate::format::uuid_to_string(u)
}

/// `Some(uuid)` unless all zero (the format's "no UUID").
fn optional_uuid(u: &[u8; 16]) -> Option<String> {
    (u != &[0u8; 16]).then(|| uuid_str(u))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_uuid_accepts_canonical_and_plain_hex() {
        let u = parse_uuid("000102030405060708090a0b0c0d0e0f").unwrap();
        assert_eq!(u[15], 15);
        assert_eq!(uuid_str(&u), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert_eq!(parse_uuid(&uuid_str(&u)).unwrap(), u);
        assert!(parse_uuid("0001").is_err());
        assert!(parse_uuid("zz0102030405060708090a0b0c0d0e0f").is_err());
    }

    #[test]
    fn superblock_errors_map_to_distinct_statuses() {
        let p = Path::new("c");
        assert_eq!(
            superblock_error(p, DecodeError::Zero).exit_status(),
            ExitStatus::NotWriteboost
        );
        assert_eq!(
            superblock_error(
                p,
                DecodeError::BadChecksum {
                    stored: 1,
                    computed: 2
                }
            )
            .exit_status(),
            ExitStatus::Corrupt
        );
        assert_eq!(
            superblock_error(p, DecodeError::VersionTooNew { major: 2, minor: 0 }).exit_status(),
            ExitStatus::VersionTooNew
        );
    }
}
