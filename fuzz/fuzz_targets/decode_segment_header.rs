//! `SegmentHeader::decode` on arbitrary bytes with an arbitrary entry limit (the first two bytes):
//! never panics, and whatever it accepts re-encodes to a header that decodes to the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writeboost::format::{SegmentHeader, ENTRY_SIZE_BYTES, SEGMENT_HEADER_FIXED_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((limit, header)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_entries = u32::from(u16::from_le_bytes(*limit) % 2048);
    if let Ok(h) = SegmentHeader::decode(header, max_entries) {
        let mut out = vec![0u8; SEGMENT_HEADER_FIXED_BYTES + ENTRY_SIZE_BYTES * h.entries.len()];
        // Reserved bytes must be zero to decode, so re-encoding gives the same CRC.
        let crc = h.encode_into(&mut out);
        assert_eq!(crc, h.header_crc);
        let again = SegmentHeader::decode(&out, max_entries).expect("a re-encoded header decodes");
        assert_eq!(again.header_crc, crc);
        assert_eq!(
            again,
            SegmentHeader {
                header_crc: crc,
                ..h
            }
        );
    }
});
