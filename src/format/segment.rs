//! A segment: header block(s) with one 16-byte entry per data block, then the data blocks.

use super::*;

pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"WBOOSTSG");
pub const SEGMENT_HEADER_FIXED_BYTES: usize = 64;
pub const ENTRY_SIZE_BYTES: usize = 16;

/// Metadata of one data block of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Entry {
    /// Backing-device block number (units of 4 KiB).
    pub backing_block: u64,
    /// CRC-32C of the whole 4 KiB data block as written.
    pub data_crc: u32,
    /// Sectors of the block that hold data in this copy. 0: unused entry.
    pub valid_bits: u8,
    /// Sectors that still need writeback (a subset of `valid_bits`).
    pub dirty_bits: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SegmentHeader {
    pub format_uuid: [u8; 16],
    pub id: u64,
    /// Every segment with an id up to this one was durable when this header was built.
    pub durable_through_id: u64,
    /// `header_crc` of segment `id - 1`, chaining the log (0 for the first segment of a format).
    pub prev_header_crc: u32,
    pub flags: u32,
    pub entries: Vec<Entry>,
    /// Filled by `decode`; ignored by `encode`.
    pub header_crc: u32,
}

const OFF_MAGIC: usize = 0;
const OFF_UUID: usize = 8;
const OFF_ID: usize = 24;
const OFF_DURABLE: usize = 32;
const OFF_PREV: usize = 40;
const OFF_NR: usize = 44;
const OFF_FLAGS: usize = 48;
// 52..60 reserved, zero.
const OFF_CRC: usize = 60;

impl SegmentHeader {
    /// Encodes into `out` (the header blocks of a segment image) and returns the header CRC.
    pub fn encode_into(&self, out: &mut [u8]) -> u32 {
        let len = SEGMENT_HEADER_FIXED_BYTES + ENTRY_SIZE_BYTES * self.entries.len();
        assert!(out.len() >= len, "segment header does not fit");
        out[..SEGMENT_HEADER_FIXED_BYTES].fill(0);
        put_u64(out, OFF_MAGIC, SEGMENT_MAGIC);
        out[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.format_uuid);
        put_u64(out, OFF_ID, self.id);
        put_u64(out, OFF_DURABLE, self.durable_through_id);
        put_u32(out, OFF_PREV, self.prev_header_crc);
        put_u32(out, OFF_NR, self.entries.len() as u32);
        put_u32(out, OFF_FLAGS, self.flags);
        for (i, e) in self.entries.iter().enumerate() {
            let o = SEGMENT_HEADER_FIXED_BYTES + i * ENTRY_SIZE_BYTES;
            put_u64(out, o, e.backing_block);
            put_u32(out, o + 8, e.data_crc);
            out[o + 12] = e.valid_bits;
            out[o + 13] = e.dirty_bits;
            out[o + 14] = 0;
            out[o + 15] = 0;
        }
        // Bytes after the last entry are not covered by the CRC: zero them (no stale entries
        // from the buffer's previous segment for forensic tools to trip over).
        out[len..].fill(0);
        let crc = Self::compute_crc(out, self.entries.len());
        put_u32(out, OFF_CRC, crc);
        crc
    }

    fn compute_crc(b: &[u8], nr: usize) -> u32 {
        let c = crc32c(&b[..OFF_CRC]);
        crc32c_append(
            c,
            &b[SEGMENT_HEADER_FIXED_BYTES..SEGMENT_HEADER_FIXED_BYTES + nr * ENTRY_SIZE_BYTES],
        )
    }

    /// Decodes a header; `max_entries` is the geometry's data blocks per segment.
    pub fn decode(b: &[u8], max_entries: u32) -> Result<SegmentHeader, DecodeError> {
        need(b, SEGMENT_HEADER_FIXED_BYTES)?;
        let magic = get_u64(b, OFF_MAGIC);
        if magic != SEGMENT_MAGIC {
            if b[..SEGMENT_HEADER_FIXED_BYTES].iter().all(|&x| x == 0) {
                return Err(DecodeError::Zero);
            }
            return Err(DecodeError::BadMagic { found: magic });
        }
        let nr = get_u32(b, OFF_NR);
        if nr > max_entries {
            return Err(DecodeError::OutOfRange {
                field: "nr_entries",
                value: nr as u64,
            });
        }
        let nr = nr as usize;
        need(b, SEGMENT_HEADER_FIXED_BYTES + nr * ENTRY_SIZE_BYTES)?;
        let stored = get_u32(b, OFF_CRC);
        let computed = Self::compute_crc(b, nr);
        if stored != computed {
            return Err(DecodeError::BadChecksum { stored, computed });
        }
        check_zero(b, OFF_FLAGS + 4, OFF_CRC, "reserved")?;
        if get_u32(b, OFF_FLAGS) != 0 {
            return Err(DecodeError::OutOfRange {
                field: "flags",
                value: get_u32(b, OFF_FLAGS) as u64,
            });
        }
        let id = get_u64(b, OFF_ID);
        if id == 0 {
            return Err(DecodeError::OutOfRange {
                field: "id",
                value: 0,
            });
        }
        let durable_through_id = get_u64(b, OFF_DURABLE);
        if durable_through_id >= id {
            return Err(DecodeError::OutOfRange {
                field: "durable_through_id",
                value: durable_through_id,
            });
        }
        let mut entries = Vec::with_capacity(nr);
        for i in 0..nr {
            let o = SEGMENT_HEADER_FIXED_BYTES + i * ENTRY_SIZE_BYTES;
            let e = Entry {
                backing_block: get_u64(b, o),
                data_crc: get_u32(b, o + 8),
                valid_bits: b[o + 12],
                dirty_bits: b[o + 13],
            };
            check_zero(b, o + 14, o + 16, "entry reserved")?;
            if e.dirty_bits & !e.valid_bits != 0 {
                return Err(DecodeError::OutOfRange {
                    field: "dirty_bits",
                    value: e.dirty_bits as u64,
                });
            }
            entries.push(e);
        }
        Ok(SegmentHeader {
            format_uuid: b[OFF_UUID..OFF_UUID + 16].try_into().expect("16 bytes"),
            id,
            durable_through_id,
            prev_header_crc: get_u32(b, OFF_PREV),
            flags: get_u32(b, OFF_FLAGS),
            entries,
            header_crc: stored,
        })
    }
}

/// CRC-32C of one data block.
pub fn data_block_crc(block: &[u8]) -> u32 {
    crc32c(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> SegmentHeader {
        SegmentHeader {
            format_uuid: [9; 16],
            id: 42,
            durable_through_id: 40,
            prev_header_crc: 0xdead_beef,
            flags: 0,
            entries: vec![
                Entry {
                    backing_block: 5,
                    data_crc: 1,
                    valid_bits: 0xff,
                    dirty_bits: 0xff,
                },
                Entry {
                    backing_block: 1 << 40,
                    data_crc: 2,
                    valid_bits: 0x0f,
                    dirty_bits: 0x03,
                },
            ],
            header_crc: 0,
        }
    }

    #[test]
    fn segment_header_round_trips() {
        let h = sample();
        let mut b = vec![0u8; 4096];
        let crc = h.encode_into(&mut b);
        let d = SegmentHeader::decode(&b, 127).unwrap();
        assert_eq!(d.header_crc, crc);
        assert_eq!(d.entries, h.entries);
        assert_eq!(
            (d.id, d.durable_through_id, d.prev_header_crc),
            (42, 40, 0xdead_beef)
        );
    }

    #[test]
    fn segment_header_rejects_bit_flips_in_covered_bytes() {
        let mut b = vec![0u8; 4096];
        sample().encode_into(&mut b);
        for bit in 0..((SEGMENT_HEADER_FIXED_BYTES + 2 * ENTRY_SIZE_BYTES) * 8) {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentHeader::decode(&c, 127).is_err(),
                "bit {bit} flip accepted"
            );
        }
    }

    #[test]
    fn segment_header_refuses_non_zero_reserved_bytes_even_with_a_good_crc() {
        let mut b = vec![0u8; 4096];
        sample().encode_into(&mut b);
        for off in [52usize, 59, SEGMENT_HEADER_FIXED_BYTES + 14] {
            let mut c = b.clone();
            c[off] = 1;
            let crc = SegmentHeader::compute_crc(&c, 2);
            put_u32(&mut c, OFF_CRC, crc);
            assert!(
                matches!(
                    SegmentHeader::decode(&c, 127),
                    Err(DecodeError::OutOfRange { .. })
                ),
                "byte {off}"
            );
        }
    }

    proptest! {
        #[test]
        fn segment_header_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000), max in 0u32..2000) {
            let _ = SegmentHeader::decode(&bytes, max);
        }
    }
}
