//! The superblock: block 0 of the cache device, written once at format time.

use super::*;

pub const SUPERBLOCK_MAGIC: u64 = u64::from_le_bytes(*b"WBOOSTSB");
/// Formatted without a backing device (`bdev_writeboost_format`): the first create records the
/// backing device's identity and clears this flag. The log of an unbound cache is empty.
pub const SUPERBLOCK_FLAG_UNBOUND: u32 = 1;
/// Formatted by a `write_around_mode` volume (defined by minor version 1): the log holds only
/// clean copies staged by reads, and write-around writes may have made them stale on the backing
/// device without a trace in the log. A create in write-back mode formats such a cache anew
/// instead of replaying it.
pub const SUPERBLOCK_FLAG_READ_CACHE_ONLY: u32 = 2;

/// The lowest minor version that describes a superblock with these flags (older builds can read
/// everything that carries no newer flag).
pub fn minor_version_for_flags(flags: u32) -> u32 {
    if flags & SUPERBLOCK_FLAG_READ_CACHE_ONLY != 0 {
        1
    } else {
        0
    }
}
/// Encoded length; the rest of block 0 is zero.
pub const SUPERBLOCK_BYTES: usize = 128;

/// Cache device layout derived at format time and stored in the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Geometry {
    pub block_size_bytes: u32,
    pub segment_size_bytes: u32,
    /// Metadata blocks at the start of every segment slot.
    pub header_blocks: u32,
    pub nr_segments: u64,
    pub data_start_bytes: u64,
}

impl Geometry {
    /// The layout for a cache device of `cache_size_bytes` with segments of `segment_size_kib`.
    pub fn for_device(
        cache_size_bytes: u64,
        segment_size_kib: u32,
    ) -> Result<Geometry, DecodeError> {
        if !(SEGMENT_SIZE_KIB_MIN..=SEGMENT_SIZE_KIB_MAX).contains(&segment_size_kib)
            || !segment_size_kib.is_power_of_two()
        {
            return Err(DecodeError::OutOfRange {
                field: "segment_size_kib",
                value: segment_size_kib as u64,
            });
        }
        let segment_size_bytes = segment_size_kib * 1024;
        let blocks = segment_size_bytes / BLOCK_SIZE_BYTES;
        // Smallest header that holds one entry per remaining block.
        let mut header_blocks = 1;
        while (SEGMENT_HEADER_FIXED_BYTES + ENTRY_SIZE_BYTES * (blocks - header_blocks) as usize)
            > (header_blocks * BLOCK_SIZE_BYTES) as usize
        {
            header_blocks += 1;
        }
        let usable = cache_size_bytes.saturating_sub(DATA_START_BYTES);
        let nr_segments = usable / segment_size_bytes as u64;
        if nr_segments < 2 {
            return Err(DecodeError::OutOfRange {
                field: "cache_size_bytes",
                value: cache_size_bytes,
            });
        }
        Ok(Geometry {
            block_size_bytes: BLOCK_SIZE_BYTES,
            segment_size_bytes,
            header_blocks,
            nr_segments,
            data_start_bytes: DATA_START_BYTES,
        })
    }

    pub fn blocks_per_segment(&self) -> u32 {
        self.segment_size_bytes / self.block_size_bytes
    }

    /// Data blocks (and entries) per segment.
    pub fn data_blocks_per_segment(&self) -> u32 {
        self.blocks_per_segment() - self.header_blocks
    }

    pub fn header_bytes(&self) -> usize {
        (self.header_blocks * self.block_size_bytes) as usize
    }

    pub fn nr_cache_blocks(&self) -> u64 {
        self.nr_segments * self.data_blocks_per_segment() as u64
    }

    /// Slot (0-based) that holds segment `id` (ids start at 1).
    pub fn slot_of_id(&self, id: u64) -> u64 {
        debug_assert!(id >= 1);
        (id - 1) % self.nr_segments
    }

    pub fn slot_offset_bytes(&self, slot: u64) -> u64 {
        self.data_start_bytes + slot * self.segment_size_bytes as u64
    }

    /// Byte offset of data block `j` of slot `slot`.
    pub fn data_block_offset_bytes(&self, slot: u64, j: u32) -> u64 {
        self.slot_offset_bytes(slot)
            + ((self.header_blocks + j) as u64) * self.block_size_bytes as u64
    }
}

/// Block 0 of the cache device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Superblock {
    pub version_major: u32,
    pub version_minor: u32,
    pub format_uuid: [u8; 16],
    pub geometry: Geometry,
    pub cache_size_bytes: u64,
    pub backing_size_bytes: u64,
    /// All zero when the backing device has no UUID.
    pub backing_uuid: [u8; 16],
    pub flags: u32,
}

const OFF_MAGIC: usize = 0;
const OFF_VMAJ: usize = 8;
const OFF_VMIN: usize = 12;
const OFF_UUID: usize = 16;
const OFF_BLOCK: usize = 32;
const OFF_SEG: usize = 36;
const OFF_HDR_BLOCKS: usize = 40;
const OFF_FLAGS: usize = 44;
const OFF_NR_SEG: usize = 48;
const OFF_DATA_START: usize = 56;
const OFF_CACHE_SIZE: usize = 64;
const OFF_BACKING_SIZE: usize = 72;
const OFF_BACKING_UUID: usize = 80;
// 96..124 reserved, zero.
const OFF_CRC: usize = 124;

impl Superblock {
    /// Encodes into a full block (4096 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE_BYTES as usize];
        put_u64(&mut b, OFF_MAGIC, SUPERBLOCK_MAGIC);
        put_u32(&mut b, OFF_VMAJ, self.version_major);
        put_u32(&mut b, OFF_VMIN, self.version_minor);
        b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.format_uuid);
        put_u32(&mut b, OFF_BLOCK, self.geometry.block_size_bytes);
        put_u32(&mut b, OFF_SEG, self.geometry.segment_size_bytes);
        put_u32(&mut b, OFF_HDR_BLOCKS, self.geometry.header_blocks);
        put_u32(&mut b, OFF_FLAGS, self.flags);
        put_u64(&mut b, OFF_NR_SEG, self.geometry.nr_segments);
        put_u64(&mut b, OFF_DATA_START, self.geometry.data_start_bytes);
        put_u64(&mut b, OFF_CACHE_SIZE, self.cache_size_bytes);
        put_u64(&mut b, OFF_BACKING_SIZE, self.backing_size_bytes);
        b[OFF_BACKING_UUID..OFF_BACKING_UUID + 16].copy_from_slice(&self.backing_uuid);
        let crc = crc32c(&b[..OFF_CRC]);
        put_u32(&mut b, OFF_CRC, crc);
        b
    }

    /// True when the first block is entirely zero: the device is unformatted.
    pub fn is_zero(b: &[u8]) -> bool {
        b.iter().all(|&x| x == 0)
    }

    pub fn decode(b: &[u8]) -> Result<Superblock, DecodeError> {
        check_magic_and_crc(b, SUPERBLOCK_BYTES, SUPERBLOCK_MAGIC, OFF_CRC)?;
        let version_major = get_u32(b, OFF_VMAJ);
        let version_minor = get_u32(b, OFF_VMIN);
        if version_major == 0 {
            return Err(DecodeError::OutOfRange {
                field: "version_major",
                value: 0,
            });
        }
        if version_major > VERSION_MAJOR
            || (version_major == VERSION_MAJOR && version_minor > VERSION_MINOR)
        {
            return Err(DecodeError::VersionTooNew {
                major: version_major,
                minor: version_minor,
            });
        }
        let geometry = Geometry {
            block_size_bytes: get_u32(b, OFF_BLOCK),
            segment_size_bytes: get_u32(b, OFF_SEG),
            header_blocks: get_u32(b, OFF_HDR_BLOCKS),
            nr_segments: get_u64(b, OFF_NR_SEG),
            data_start_bytes: get_u64(b, OFF_DATA_START),
        };
        // What this version does not define must be zero: refuse what is not understood.
        check_zero(b, OFF_BACKING_UUID + 16, OFF_CRC, "reserved")?;
        let defined = if version_minor >= 1 {
            SUPERBLOCK_FLAG_UNBOUND | SUPERBLOCK_FLAG_READ_CACHE_ONLY
        } else {
            SUPERBLOCK_FLAG_UNBOUND
        };
        if get_u32(b, OFF_FLAGS) & !defined != 0 {
            return Err(DecodeError::OutOfRange {
                field: "flags",
                value: get_u32(b, OFF_FLAGS) as u64,
            });
        }
        let cache_size_bytes = get_u64(b, OFF_CACHE_SIZE);
        // Ranges: the geometry must be exactly what this build derives for the recorded size.
        if geometry.block_size_bytes != BLOCK_SIZE_BYTES {
            return Err(DecodeError::OutOfRange {
                field: "block_size_bytes",
                value: geometry.block_size_bytes as u64,
            });
        }
        let seg_kib = geometry.segment_size_bytes / 1024;
        let derived = Geometry::for_device(cache_size_bytes, seg_kib)?;
        if derived != geometry {
            return Err(DecodeError::OutOfRange {
                field: "geometry",
                value: geometry.nr_segments,
            });
        }
        let mut format_uuid = [0u8; 16];
        format_uuid.copy_from_slice(&b[OFF_UUID..OFF_UUID + 16]);
        let mut backing_uuid = [0u8; 16];
        backing_uuid.copy_from_slice(&b[OFF_BACKING_UUID..OFF_BACKING_UUID + 16]);
        Ok(Superblock {
            version_major,
            version_minor,
            format_uuid,
            geometry,
            cache_size_bytes,
            backing_size_bytes: get_u64(b, OFF_BACKING_SIZE),
            backing_uuid,
            flags: get_u32(b, OFF_FLAGS),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Superblock {
        Superblock {
            version_major: VERSION_MAJOR,
            version_minor: VERSION_MINOR,
            format_uuid: [7; 16],
            geometry: Geometry::for_device(64 << 20, 512).unwrap(),
            cache_size_bytes: 64 << 20,
            backing_size_bytes: 1 << 30,
            backing_uuid: [0; 16],
            flags: 0,
        }
    }

    #[test]
    fn superblock_round_trips() {
        let sb = sample();
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
    }

    #[test]
    fn geometry_of_default_segment_has_one_header_block() {
        let g = Geometry::for_device(64 << 20, 512).unwrap();
        assert_eq!(g.header_blocks, 1);
        assert_eq!(g.data_blocks_per_segment(), 127);
        assert_eq!(g.nr_segments, 126);
        let big = Geometry::for_device(1 << 30, 4096).unwrap();
        // 1024 blocks: 64 + 16 * 1019 = 16368 <= 4 * 4096.
        assert_eq!(big.header_blocks, 4);
    }

    #[test]
    fn superblock_rejects_zero_and_newer_major() {
        assert_eq!(Superblock::decode(&[0u8; 4096]), Err(DecodeError::Zero));
        let mut sb = sample();
        sb.version_major = 2;
        assert!(matches!(
            Superblock::decode(&sb.encode()),
            Err(DecodeError::VersionTooNew { major: 2, .. })
        ));
    }

    #[test]
    fn read_cache_only_flag_needs_minor_version_1() {
        let mut sb = sample();
        sb.flags = SUPERBLOCK_FLAG_READ_CACHE_ONLY;
        sb.version_minor = minor_version_for_flags(sb.flags);
        assert_eq!(sb.version_minor, 1);
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        sb.version_minor = 0;
        assert!(matches!(
            Superblock::decode(&sb.encode()),
            Err(DecodeError::OutOfRange { field: "flags", .. })
        ));
        sb.flags = 0;
        assert_eq!(minor_version_for_flags(0), 0);
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        sb.version_minor = VERSION_MINOR + 1;
        assert!(matches!(
            Superblock::decode(&sb.encode()),
            Err(DecodeError::VersionTooNew { .. })
        ));
    }

    #[test]
    fn superblock_rejects_every_single_bit_flip() {
        let enc = sample().encode();
        for bit in 0..(SUPERBLOCK_BYTES * 8) {
            let mut b = enc.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(Superblock::decode(&b).is_err(), "bit {bit} flip accepted");
        }
    }

    proptest! {
        #[test]
        fn superblock_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Superblock::decode(&bytes);
        }
    }
}
