//! Replay (scan only): finds the live log on a cache device. `create.rs` builds a volume from it.
//!
//! Replay reads the superblock, both record copies and the header blocks of every slot (1 block
//! of each segment: 0.8 % of the device with 512 KiB segments), plus the data of the few newest
//! segments that no header proves durable (verified block by block against the CRCs in their
//! headers). It never resurrects stale segments: a segment counts only if its format UUID
//! matches, its id matches its slot, and its `prev_header_crc` links it to its predecessor.

use super::*;
use crate::device::DeviceError;
use crate::format::segment::data_block_crc;
use crate::format::{DecodeError, Record, SegmentHeader, RECORD_OFFSETS_BYTES};

const SCAN_QUEUE_DEPTH: usize = 32;
/// Reads during a scan are tried this often before the block counts as unreadable.
const SCAN_READ_ATTEMPTS: usize = 3;

/// One segment of the live log.
#[derive(Debug, Clone, Serialize)]
pub struct ScannedSegment {
    pub slot: u64,
    pub header: SegmentHeader,
}

/// Log damage that a resume must not paper over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LogDamage {
    /// Segments up to `durable_floor_id` were proven durable, but no intact chain reaches them.
    DurableNotReplayed { durable_floor_id: u64, head_id: u64 },
    /// The log starts at `first_id` although only segments up to `recorded_writeback_id` were
    /// recorded written back: the segments in between are missing or damaged.
    Hole {
        recorded_writeback_id: u64,
        first_id: u64,
    },
    /// The block that says whether the log goes on after `head_id` (the header of the next
    /// slot, or the data of the next segment being verified) does not read: segments there may
    /// hold acknowledged writes, so the log cannot be said to end at `head_id`.
    UnreadableTail { head_id: u64, slot: u64 },
}

impl std::fmt::Display for LogDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogDamage::DurableNotReplayed { durable_floor_id, head_id } => write!(
                f,
                "segments up to id {durable_floor_id} are durable but the intact log ends at id {head_id}"
            ),
            LogDamage::Hole { recorded_writeback_id, first_id } => write!(
                f,
                "the intact log starts at id {first_id} but only ids up to {recorded_writeback_id} were written back"
            ),
            LogDamage::UnreadableTail { head_id, slot } => write!(
                f,
                "the log may go on after id {head_id} but slot {slot} of the cache does not read"
            ),
        }
    }
}

/// What a replay finds on a cache device.
#[derive(Debug, Clone, Serialize)]
pub struct LogScan {
    pub record: Option<Record>,
    /// The live log, oldest first; ids are contiguous.
    pub segments: Vec<ScannedSegment>,
    /// Newest id of the log (0: empty).
    pub head_id: u64,
    /// Segments up to this id are known written back.
    pub last_writeback_id: u64,
    /// Segments up to this id were proven durable without reading their data.
    pub durable_floor_id: u64,
    /// Slots holding a valid header newer than the head (torn tails, never acknowledged).
    pub stale_slots: Vec<u64>,
    /// Damage that makes the log unsafe to resume (create refuses it).
    pub damage: Option<LogDamage>,
    pub bytes_read: u64,
    /// Blocks that failed to read (record copies, headers, data being verified) after
    /// `SCAN_READ_ATTEMPTS` tries: treated as missing, except where the log's end is decided
    /// (`LogDamage::UnreadableTail`).
    pub unreadable_blocks: u64,
}

impl LogScan {
    /// Dirty blocks a replay would restore and bytes to write back (newest copy per block).
    pub fn dirty_summary(&self) -> (u64, u64) {
        let mut newest: HashMap<u64, (u8, u64)> = HashMap::new();
        for s in &self.segments {
            for e in &s.header.entries {
                if e.valid_bits != 0 {
                    newest.insert(e.backing_block, (e.dirty_bits, s.header.id));
                }
            }
        }
        let mut blocks = 0;
        let mut bytes = 0;
        for (dirty, id) in newest.values() {
            if *dirty != 0 && *id > self.last_writeback_id {
                blocks += 1;
                bytes += dirty.count_ones() as u64 * SECTOR_SIZE_BYTES as u64;
            }
        }
        (blocks, bytes)
    }
}

pub(super) async fn read_at<D: BlockDevice>(
    dev: &D,
    off: u64,
    len: usize,
) -> Result<AlignedBuf, DeviceError> {
    let (b, r) = dev.read(off, AlignedBuf::for_overwrite(len)).await;
    r.map(|()| b)
}

/// `read_at`, tried `SCAN_READ_ATTEMPTS` times (a transient error must not hide a segment).
async fn read_retrying<D: BlockDevice>(
    dev: &D,
    off: u64,
    len: usize,
) -> Result<AlignedBuf, DeviceError> {
    let mut attempt = 1;
    loop {
        match read_at(dev, off, len).await {
            Err(_) if attempt < SCAN_READ_ATTEMPTS => attempt += 1,
            r => return r,
        }
    }
}

/// Reads and validates the superblock.
pub async fn read_superblock<D: BlockDevice>(
    cache: &D,
) -> Result<Result<Superblock, DecodeError>, DeviceError> {
    let b = read_at(cache, 0, BLOCK).await?;
    Ok(Superblock::decode(&b))
}

/// Finds the live log (see the module doc). Reads no data block of a segment proven durable.
pub async fn scan_log<D: BlockDevice>(cache: &D, sb: &Superblock) -> Result<LogScan, DeviceError> {
    let geo = sb.geometry;
    let nr = geo.nr_segments;
    let hb = geo.header_bytes();
    let mut bytes_read = 0u64;
    // An unreadable record copy, header or data block is missing, not fatal: the scan goes on
    // with what reads, and the log's own checks (links, CRCs, the durable floor) decide.
    let mut unreadable_blocks = 0u64;
    let mut recs = Vec::new();
    for off in RECORD_OFFSETS_BYTES {
        recs.push(match read_retrying(cache, off, BLOCK).await {
            Ok(b) => b,
            Err(_) => {
                unreadable_blocks += 1;
                AlignedBuf::zeroed(BLOCK)
            }
        });
        bytes_read += BLOCK as u64;
    }
    let record = Record::newest(&[&recs[0], &recs[1]], &sb.format_uuid);
    // Every slot's header, QD SCAN_QUEUE_DEPTH.
    let mut headers: Vec<Option<SegmentHeader>> = Vec::with_capacity(nr as usize);
    let mut unreadable_header = vec![false; nr as usize];
    let mut slot = 0;
    while slot < nr {
        let end = (slot + SCAN_QUEUE_DEPTH as u64).min(nr);
        let rs = futures::future::join_all(
            (slot..end).map(|s| read_retrying(cache, geo.slot_offset_bytes(s), hb)),
        )
        .await;
        for (s, r) in (slot..end).zip(rs) {
            bytes_read += hb as u64;
            let h = match r {
                Ok(b) => SegmentHeader::decode(&b, geo.data_blocks_per_segment())
                    .ok()
                    .filter(|h| h.format_uuid == sb.format_uuid && geo.slot_of_id(h.id) == s),
                Err(_) => {
                    unreadable_blocks += geo.header_blocks as u64;
                    unreadable_header[s as usize] = true;
                    None
                }
            };
            headers.push(h);
        }
        slot = end;
    }
    let at = |id: u64| -> Option<&SegmentHeader> {
        headers[geo.slot_of_id(id) as usize]
            .as_ref()
            .filter(|h| h.id == id)
    };
    // Proven durable: what any header or the record says was durable.
    let mut floor = record.as_ref().map(|r| r.head_id).unwrap_or(0);
    for h in headers.iter().flatten() {
        floor = floor.max(h.durable_through_id);
    }
    let mut candidates: Vec<u64> = headers.iter().flatten().map(|h| h.id).collect();
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    let mut head = 0;
    let mut start = 1;
    // Ids whose data could not be read to verify them.
    let mut unverifiable: Vec<u64> = Vec::new();
    'candidates: for &c in &candidates {
        if c < floor {
            break;
        }
        // Walk back along the links.
        let mut lo = c;
        while lo > 1 && c - lo + 1 < nr {
            let cur = at(lo).expect("in chain");
            match at(lo - 1) {
                Some(p) if p.header_crc == cur.prev_header_crc => lo -= 1,
                _ => break,
            }
        }
        if lo > floor + 1 {
            continue; // Does not reach what is proven durable: a torn or stale tail.
        }
        if lo == floor + 1 && lo > 1 {
            // Starts right after the durable floor: it must link to the floor's segment where
            // that header is there (a stale segment of an older history does not).
            let links = match at(floor) {
                Some(p) => p.header_crc == at(lo).expect("in chain").prev_header_crc,
                None => true,
            };
            if !links {
                continue;
            }
        }
        // Verify the data of segments not proven durable, oldest first.
        let mut good = c;
        for id in (floor + 1).max(lo)..=c {
            let h = at(id).expect("in chain");
            let slot = geo.slot_of_id(id);
            let len = h.entries.len() * BLOCK;
            bytes_read += len as u64;
            let ok = match read_retrying(cache, geo.data_block_offset_bytes(slot, 0), len).await {
                Ok(data) => h.entries.iter().enumerate().all(|(j, e)| {
                    e.valid_bits == 0
                        || data_block_crc(&data[j * BLOCK..(j + 1) * BLOCK]) == e.data_crc
                }),
                // Unverifiable: not replayed, and the log cannot end before it (below).
                Err(_) => {
                    unreadable_blocks += h.entries.len() as u64;
                    unverifiable.push(id);
                    false
                }
            };
            if !ok {
                good = id - 1;
                break;
            }
        }
        if good < floor {
            continue 'candidates;
        }
        head = good;
        start = lo;
        break;
    }
    let recorded_writeback_id = record
        .as_ref()
        .map(|r| r.last_writeback_id)
        .filter(|&w| w <= floor)
        .unwrap_or(0);
    if head < floor && floor <= recorded_writeback_id {
        // Everything proven durable was also written back, and nothing newer survived intact:
        // the log is empty and continues after the floor.
        head = floor;
        start = floor + 1;
    }
    let mut segments = Vec::new();
    if start <= head {
        for id in start..=head {
            segments.push(ScannedSegment {
                slot: geo.slot_of_id(id),
                header: at(id).expect("in chain").clone(),
            });
        }
    }
    let stale_slots = headers
        .iter()
        .enumerate()
        .filter_map(|(s, h)| h.as_ref().filter(|h| h.id > head).map(|_| s as u64))
        .collect();
    let mut last_writeback_id = start.saturating_sub(1).max(head.saturating_sub(nr));
    if head == 0 {
        last_writeback_id = 0;
    }
    last_writeback_id = last_writeback_id.max(recorded_writeback_id);
    // A slot is reused only after its segment is recorded written back, so an intact log starts
    // right after the recorded id (or earlier), and reaches what headers proved durable.
    let damage = if head < floor {
        Some(LogDamage::DurableNotReplayed {
            durable_floor_id: floor,
            head_id: head,
        })
    } else if head > 0 && start > recorded_writeback_id + 1 {
        Some(LogDamage::Hole {
            recorded_writeback_id,
            first_id: start,
        })
    } else if unreadable_header[geo.slot_of_id(head + 1) as usize]
        || unverifiable.contains(&(head + 1))
    {
        Some(LogDamage::UnreadableTail {
            head_id: head,
            slot: geo.slot_of_id(head + 1),
        })
    } else {
        None
    };
    Ok(LogScan {
        record,
        segments,
        head_id: head,
        last_writeback_id,
        durable_floor_id: floor.min(head),
        stale_slots,
        damage,
        bytes_read,
        unreadable_blocks,
    })
}
