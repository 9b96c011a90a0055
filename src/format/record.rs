//! The superblock record: mutable progress markers, written periodically and at clean shutdown.
//! Two copies (blocks 1 and 2) are written alternately; the valid copy with the larger `seq` wins,
//! so a torn record write never loses the previous one.

use super::*;

pub const RECORD_MAGIC: u64 = u64::from_le_bytes(*b"WBOOSTRC");
pub const RECORD_BYTES: usize = 128;
/// Set when the volume was shut down cleanly: every segment up to `head_id` was durable.
pub const RECORD_FLAG_CLEAN_SHUTDOWN: u32 = 1;
/// Set once a degraded volume wrote a block through to the backing device while the log held a
/// copy of it that replay would map: the log holds superseded copies, and a create must not
/// replay it (it refuses; `force_format` starts over from the backing device). A drained clean
/// shutdown writes a record without it.
pub const RECORD_FLAG_SUPERSEDED_COPIES: u32 = 2;
const RECORD_FLAGS_KNOWN: u32 = RECORD_FLAG_CLEAN_SHUTDOWN | RECORD_FLAG_SUPERSEDED_COPIES;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub format_uuid: [u8; 16],
    /// Incremented at every record write; picks the newer of the two copies.
    pub seq: u64,
    /// Every segment with an id up to this one has been written back to the backing device.
    pub last_writeback_id: u64,
    /// The newest durable segment id when the record was written.
    pub head_id: u64,
    pub flags: u32,
}

const OFF_MAGIC: usize = 0;
const OFF_UUID: usize = 8;
const OFF_SEQ: usize = 24;
const OFF_WB: usize = 32;
const OFF_HEAD: usize = 40;
const OFF_FLAGS: usize = 48;
const OFF_CRC: usize = 124;

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE_BYTES as usize];
        put_u64(&mut b, OFF_MAGIC, RECORD_MAGIC);
        b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.format_uuid);
        put_u64(&mut b, OFF_SEQ, self.seq);
        put_u64(&mut b, OFF_WB, self.last_writeback_id);
        put_u64(&mut b, OFF_HEAD, self.head_id);
        put_u32(&mut b, OFF_FLAGS, self.flags);
        let crc = crc32c(&b[..OFF_CRC]);
        put_u32(&mut b, OFF_CRC, crc);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Record, DecodeError> {
        check_magic_and_crc(b, RECORD_BYTES, RECORD_MAGIC, OFF_CRC)?;
        check_zero(b, OFF_FLAGS + 4, OFF_CRC, "reserved")?;
        if get_u32(b, OFF_FLAGS) & !RECORD_FLAGS_KNOWN != 0 {
            return Err(DecodeError::OutOfRange {
                field: "flags",
                value: get_u32(b, OFF_FLAGS) as u64,
            });
        }
        let r = Record {
            format_uuid: b[OFF_UUID..OFF_UUID + 16].try_into().expect("16 bytes"),
            seq: get_u64(b, OFF_SEQ),
            last_writeback_id: get_u64(b, OFF_WB),
            head_id: get_u64(b, OFF_HEAD),
            flags: get_u32(b, OFF_FLAGS),
        };
        if r.last_writeback_id > r.head_id {
            return Err(DecodeError::OutOfRange {
                field: "last_writeback_id",
                value: r.last_writeback_id,
            });
        }
        Ok(r)
    }

    /// Picks the newest valid copy belonging to `format_uuid`.
    pub fn newest(copies: &[&[u8]], format_uuid: &[u8; 16]) -> Option<Record> {
        copies
            .iter()
            .filter_map(|c| Record::decode(c).ok())
            .filter(|r| &r.format_uuid == format_uuid)
            .max_by_key(|r| r.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn record_round_trips_and_newest_wins() {
        let a = Record {
            format_uuid: [1; 16],
            seq: 4,
            last_writeback_id: 10,
            head_id: 12,
            flags: 0,
        };
        let mut b = a.clone();
        b.seq = 5;
        b.last_writeback_id = 11;
        assert_eq!(Record::decode(&a.encode()).unwrap(), a);
        let (ea, eb) = (a.encode(), b.encode());
        assert_eq!(Record::newest(&[&ea, &eb], &[1; 16]).unwrap(), b);
        // A torn newer copy leaves the older one in force.
        let mut torn = eb.clone();
        torn[40] ^= 0xff;
        assert_eq!(Record::newest(&[&ea, &torn], &[1; 16]).unwrap(), a);
        // A record of another format is ignored.
        assert_eq!(Record::newest(&[&ea], &[2; 16]), None);
    }

    proptest! {
        #[test]
        fn record_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&bytes);
        }
    }
}
