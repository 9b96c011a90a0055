//! The on-disk format: pure little-endian encoders and decoders over byte slices, CRC-32C.
//!
//! Every structure is documented byte by byte in `docs/FORMAT.md`. Decoders check, in this order:
//! magic, CRC (its own field excluded), version, then ranges; they never panic on arbitrary bytes.

pub mod record;
pub mod segment;
pub mod superblock;

pub use record::{Record, RECORD_FLAG_CLEAN_SHUTDOWN, RECORD_FLAG_SUPERSEDED_COPIES};
pub use segment::{Entry, SegmentHeader, ENTRY_SIZE_BYTES, SEGMENT_HEADER_FIXED_BYTES};
pub use superblock::{
    minor_version_for_flags, Geometry, Superblock, SUPERBLOCK_FLAG_READ_CACHE_ONLY,
    SUPERBLOCK_FLAG_UNBOUND,
};

/// Size of a cache block (the unit of the index) and of every metadata block.
pub const BLOCK_SIZE_BYTES: u32 = 4096;
/// Size of a sector: the granularity of the valid/dirty bits.
pub const SECTOR_SIZE_BYTES: u32 = 512;
/// Sectors per cache block.
pub const SECTORS_PER_BLOCK: u32 = BLOCK_SIZE_BYTES / SECTOR_SIZE_BYTES;
/// Byte offset of the first segment slot: block 0 is the superblock, blocks 1 and 2 hold the two
/// copies of the superblock record, the rest of the first MiB is reserved.
pub const DATA_START_BYTES: u64 = 1 << 20;
/// Byte offsets of the two superblock record copies.
pub const RECORD_OFFSETS_BYTES: [u64; 2] = [4096, 8192];

/// Format version written by this build. A larger major is refused; a larger minor is read.
pub const VERSION_MAJOR: u32 = 1;
/// The newest minor version this build reads (it writes the lowest one that describes the
/// superblock: `superblock::minor_version_for_flags`).
pub const VERSION_MINOR: u32 = 1;

/// Segment size bounds (KiB): a power of two in this range.
pub const SEGMENT_SIZE_KIB_MIN: u32 = 16;
pub const SEGMENT_SIZE_KIB_MAX: u32 = 4096;
pub const SEGMENT_SIZE_KIB_DEFAULT: u32 = 512;

/// Why a structure failed to decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("buffer too short: {found} bytes, need {need}")]
    TooShort { need: usize, found: usize },
    #[error("all bytes are zero (never written)")]
    Zero,
    #[error("bad magic {found:#018x}")]
    BadMagic { found: u64 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error(
        "format version {major}.{minor} is newer than this build ({VERSION_MAJOR}.{VERSION_MINOR})"
    )]
    VersionTooNew { major: u32, minor: u32 },
    #[error("field {field} out of range: {value}")]
    OutOfRange { field: &'static str, value: u64 },
}

/// CRC-32C (Castagnoli, reflected, init and xorout `0xffffffff`) of `bytes`.
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(bytes)
}

/// The CRC-32C of the concatenation of the bytes behind `crc` and `bytes`.
pub(crate) fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    // The register before the final xor is `crc ^ 0xffffffff`: continue from it.
    let mut d = crc_fast::Digest::new_with_init_state(
        crc_fast::CrcAlgorithm::Crc32Iscsi,
        (crc ^ 0xffff_ffff) as u64,
    );
    d.update(bytes);
    d.finalize() as u32
}

pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// The common start of a fixed 128-byte structure (superblock, record): magic at byte 0 (an
/// all-zero structure is `Zero`), then the CRC at `off_crc` over the bytes before it.
pub(crate) fn check_magic_and_crc(
    b: &[u8],
    len: usize,
    magic: u64,
    off_crc: usize,
) -> Result<(), DecodeError> {
    need(b, len)?;
    let found = get_u64(b, 0);
    if found != magic {
        if b[..len].iter().all(|&x| x == 0) {
            return Err(DecodeError::Zero);
        }
        return Err(DecodeError::BadMagic { found });
    }
    let stored = get_u32(b, off_crc);
    let computed = crc32c(&b[..off_crc]);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    Ok(())
}

/// Reserved bytes must be zero.
pub(crate) fn check_zero(
    b: &[u8],
    from: usize,
    to: usize,
    field: &'static str,
) -> Result<(), DecodeError> {
    match b[from..to].iter().position(|&x| x != 0) {
        None => Ok(()),
        Some(i) => Err(DecodeError::OutOfRange {
            field,
            value: (from + i) as u64,
        }),
    }
}

pub(crate) fn need(b: &[u8], len: usize) -> Result<(), DecodeError> {
    if b.len() < len {
        return Err(DecodeError::TooShort {
            need: len,
            found: b.len(),
        });
    }
    Ok(())
}

/// Formats a UUID (16 raw bytes) in the canonical 8-4-4-4-12 form.
pub fn uuid_to_string(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    proptest! {
        /// The fast CRC matches an independent CRC-32C (the crc32c crate) on every length,
        /// whole and appended, so that the format's checksums do not depend on the CPU.
        #[test]
        fn crc32c_matches_an_independent_implementation(
            bytes in proptest::collection::vec(any::<u8>(), 0..9000),
            split in any::<prop::sample::Index>(),
        ) {
            prop_assert_eq!(crc32c(&bytes), ::crc32c::crc32c(&bytes));
            let at = split.index(bytes.len() + 1);
            let (a, b) = bytes.split_at(at);
            prop_assert_eq!(crc32c_append(crc32c(a), b), ::crc32c::crc32c(&bytes));
        }
    }
}
