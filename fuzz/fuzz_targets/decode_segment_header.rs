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
        // The decoder accepts non-zero reserved bytes (covered by the CRC); the encoder writes
        // zeros there, so the CRC may differ from the input's, and nothing else.
        let crc = h.encode_into(&mut out);
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
