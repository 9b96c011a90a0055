//! Read-only views: `meta` (superblock and record copies, or one segment's header), `dump` (one
//! data block) and `status` (what a replay would find).

use super::*;
use crate::engine::{scan_log, LogScan};
use crate::format::segment::data_block_crc;
use crate::format::{Entry, Record, RECORD_FLAG_CLEAN_SHUTDOWN, RECORD_OFFSETS_BYTES};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub(super) struct SuperblockView {
    pub version_major: u32,
    pub version_minor: u32,
    pub format_uuid: String,
    pub block_size_bytes: u32,
    pub segment_size_bytes: u32,
    pub header_blocks: u32,
    pub data_blocks_per_segment: u32,
    pub nr_segments: u64,
    pub nr_cache_blocks: u64,
    pub data_start_bytes: u64,
    pub cache_size_bytes: u64,
    pub backing_size_bytes: u64,
    pub backing_uuid: Option<String>,
    pub flags: u32,
}

impl SuperblockView {
    pub fn new(sb: &Superblock) -> SuperblockView {
        let g = sb.geometry;
        SuperblockView {
            version_major: sb.version_major,
            version_minor: sb.version_minor,
            format_uuid: uuid_str(&sb.format_uuid),
            block_size_bytes: g.block_size_bytes,
            segment_size_bytes: g.segment_size_bytes,
            header_blocks: g.header_blocks,
            data_blocks_per_segment: g.data_blocks_per_segment(),
            nr_segments: g.nr_segments,
            nr_cache_blocks: g.nr_cache_blocks(),
            data_start_bytes: g.data_start_bytes,
            cache_size_bytes: sb.cache_size_bytes,
            backing_size_bytes: sb.backing_size_bytes,
            backing_uuid: optional_uuid(&sb.backing_uuid),
            flags: sb.flags,
        }
    }

    fn print(&self, out: Out<'_>) -> Result<(), CliError> {
        say!(out, "superblock (block 0): valid\n")?;
        say!(
            out,
            "  version              {}.{}\n",
            self.version_major,
            self.version_minor
        )?;
        say!(out, "  format_uuid          {}\n", self.format_uuid)?;
        say!(
            out,
            "  block_size           {} bytes\n",
            self.block_size_bytes
        )?;
        say!(
            out,
            "  segment_size         {} KiB ({} header block(s), {} data blocks)\n",
            self.segment_size_bytes / 1024,
            self.header_blocks,
            self.data_blocks_per_segment
        )?;
        say!(
            out,
            "  nr_segments          {} ({} cache blocks)\n",
            self.nr_segments,
            self.nr_cache_blocks
        )?;
        say!(
            out,
            "  data_start           byte {}\n",
            self.data_start_bytes
        )?;
        say!(
            out,
            "  cache_size           {} bytes ({:.1} MiB)\n",
            self.cache_size_bytes,
            mib(self.cache_size_bytes)
        )?;
        say!(
            out,
            "  backing_size         {} bytes ({:.1} MiB)\n",
            self.backing_size_bytes,
            mib(self.backing_size_bytes)
        )?;
        say!(
            out,
            "  backing_uuid         {}\n",
            self.backing_uuid.as_deref().unwrap_or("none")
        )?;
        say!(out, "  flags                {:#010x}\n", self.flags)
    }
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct RecordView {
    pub format_uuid: String,
    pub seq: u64,
    pub last_writeback_id: u64,
    pub head_id: u64,
    pub flags: u32,
    pub clean_shutdown: bool,
}

impl RecordView {
    pub fn new(r: &Record) -> RecordView {
        RecordView {
            format_uuid: uuid_str(&r.format_uuid),
            seq: r.seq,
            last_writeback_id: r.last_writeback_id,
            head_id: r.head_id,
            flags: r.flags,
            clean_shutdown: r.flags & RECORD_FLAG_CLEAN_SHUTDOWN != 0,
        }
    }

    fn summary(&self) -> String {
        format!(
            "seq {}, head_id {}, last_writeback_id {}, flags {:#x}{}",
            self.seq,
            self.head_id,
            self.last_writeback_id,
            self.flags,
            if self.clean_shutdown {
                " (clean shutdown)"
            } else {
                ""
            }
        )
    }
}

/// State of one record copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RecordState {
    /// Decodes and belongs to this format.
    Valid,
    /// All zero: never written since format.
    Zero,
    /// Decodes but carries another format's UUID.
    OtherFormat,
    /// Does not decode (torn write or corruption).
    Invalid,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct RecordCopyView {
    pub copy: usize,
    pub offset_bytes: u64,
    pub state: RecordState,
    pub error: Option<String>,
    pub record: Option<RecordView>,
    /// The copy a replay uses (the valid one with the larger `seq`).
    pub newest: bool,
}

impl RecordCopyView {
    pub fn summary(&self) -> String {
        let what = match (self.state, &self.record, &self.error) {
            (RecordState::Valid, Some(r), _) => r.summary(),
            (RecordState::OtherFormat, Some(r), _) => {
                format!("belongs to format {} ({})", r.format_uuid, r.summary())
            }
            (RecordState::Zero, ..) => "zero (never written)".to_string(),
            (_, _, Some(e)) => format!("invalid: {e}"),
            _ => "invalid".to_string(),
        };
        format!(
            "record copy {} (byte {}): {what}{}",
            self.copy,
            self.offset_bytes,
            if self.newest { " [newest]" } else { "" }
        )
    }
}

/// Reads and classifies both record copies.
pub(super) fn record_copies(
    cache: &Cache,
    sb: &Superblock,
) -> Result<Vec<RecordCopyView>, CliError> {
    let mut views = Vec::new();
    let mut raw = Vec::new();
    for (copy, off) in RECORD_OFFSETS_BYTES.into_iter().enumerate() {
        let b = cache.read(off, BLOCK_SIZE_BYTES as usize)?;
        let (state, error, record) = match Record::decode(&b) {
            Ok(r) if r.format_uuid == sb.format_uuid => {
                (RecordState::Valid, None, Some(RecordView::new(&r)))
            }
            Ok(r) => (RecordState::OtherFormat, None, Some(RecordView::new(&r))),
            Err(DecodeError::Zero) => (RecordState::Zero, None, None),
            Err(e) => (RecordState::Invalid, Some(e.to_string()), None),
        };
        views.push(RecordCopyView {
            copy,
            offset_bytes: off,
            state,
            error,
            record,
            newest: false,
        });
        raw.push(b);
    }
    if let Some(newest) = Record::newest(&[&raw[0], &raw[1]], &sb.format_uuid) {
        if let Some(v) = views.iter_mut().find(|v| {
            v.state == RecordState::Valid && v.record.as_ref().map(|r| r.seq) == Some(newest.seq)
        }) {
            v.newest = true;
        }
    }
    Ok(views)
}

#[derive(Debug, Serialize)]
struct MetaView {
    cache: String,
    superblock: SuperblockView,
    records: Vec<RecordCopyView>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct EntryView {
    pub block: u32,
    pub backing_block: u64,
    pub backing_offset_bytes: u64,
    pub device_offset_bytes: u64,
    pub data_crc: u32,
    pub valid_bits: u8,
    pub dirty_bits: u8,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct HeaderView {
    pub format_uuid: String,
    pub id: u64,
    pub durable_through_id: u64,
    pub prev_header_crc: u32,
    pub flags: u32,
    pub header_crc: u32,
    pub nr_entries: usize,
    pub entries: Vec<EntryView>,
}

impl HeaderView {
    pub fn new(h: &SegmentHeader, sb: &Superblock, slot: u64) -> HeaderView {
        HeaderView {
            format_uuid: uuid_str(&h.format_uuid),
            id: h.id,
            durable_through_id: h.durable_through_id,
            prev_header_crc: h.prev_header_crc,
            flags: h.flags,
            header_crc: h.header_crc,
            nr_entries: h.entries.len(),
            entries: h
                .entries
                .iter()
                .enumerate()
                .map(|(j, e)| EntryView {
                    block: j as u32,
                    backing_block: e.backing_block,
                    backing_offset_bytes: e.backing_block.saturating_mul(BLOCK_SIZE_BYTES as u64),
                    device_offset_bytes: sb.geometry.data_block_offset_bytes(slot, j as u32),
                    data_crc: e.data_crc,
                    valid_bits: e.valid_bits,
                    dirty_bits: e.dirty_bits,
                })
                .collect(),
        }
    }
}

/// What a slot holds, for `meta --slot` and `meta --segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum SlotState {
    Valid,
    Misplaced,
    OtherFormat,
    /// No segment header at all: bytes from before the format.
    OtherData,
    Empty,
    Invalid,
}

#[derive(Debug, Serialize)]
struct SlotView {
    cache: String,
    slot: u64,
    offset_bytes: u64,
    state: SlotState,
    error: Option<String>,
    claimed_id: Option<u64>,
    header: Option<HeaderView>,
}

pub(super) fn meta(a: MetaArgs, out: Out<'_>) -> Result<ExitStatus, CliError> {
    let cache = Cache::open(&a.cache, false)?;
    let sb = cache.superblock()?;
    let slot_and_header = match (a.segment, a.slot) {
        (Some(id), _) => {
            let (slot, h) = cache.segment(&sb, id)?;
            Some((slot, SlotHeader::Ours(h)))
        }
        (None, Some(slot)) => {
            if slot >= sb.geometry.nr_segments {
                return Err(CliError::SlotOutOfRange {
                    path: cache.path.clone(),
                    slot,
                    nr_segments: sb.geometry.nr_segments,
                });
            }
            Some((slot, cache.slot_header(&sb, slot)?))
        }
        (None, None) => None,
    };
    let Some((slot, sh)) = slot_and_header else {
        let view = MetaView {
            cache: cache.path.display().to_string(),
            superblock: SuperblockView::new(&sb),
            records: record_copies(&cache, &sb)?,
        };
        if a.json {
            return emit_json(out, &view).map(|_| ExitStatus::Ok);
        }
        view.superblock.print(out)?;
        for r in &view.records {
            say!(out, "{}\n", r.summary())?;
        }
        return Ok(ExitStatus::Ok);
    };
    let (state, error, claimed_id, header) = match &sh {
        SlotHeader::Ours(h) => (SlotState::Valid, None, None, Some(h)),
        SlotHeader::Misplaced(h) => (SlotState::Misplaced, None, None, Some(h)),
        SlotHeader::Foreign {
            header: Some(h), ..
        } => (SlotState::OtherFormat, None, None, Some(h)),
        SlotHeader::Foreign { uuid, header: None } => (
            SlotState::OtherFormat,
            Some(format!(
                "a header of format {} that does not decode with this geometry",
                uuid_str(uuid)
            )),
            None,
            None,
        ),
        SlotHeader::OtherData(e) => (SlotState::OtherData, Some(e.to_string()), None, None),
        SlotHeader::Empty => (SlotState::Empty, None, None, None),
        SlotHeader::Invalid { error, claimed_id } => (
            SlotState::Invalid,
            Some(error.to_string()),
            Some(*claimed_id),
            None,
        ),
    };
    let view = SlotView {
        cache: cache.path.display().to_string(),
        slot,
        offset_bytes: sb.geometry.slot_offset_bytes(slot),
        state,
        error,
        claimed_id,
        header: header.map(|h| HeaderView::new(h, &sb, slot)),
    };
    if a.json {
        return emit_json(out, &view).map(|_| ExitStatus::Ok);
    }
    let Some(h) = &view.header else {
        say!(out, "slot {} (byte {}): ", view.slot, view.offset_bytes)?;
        let e = view.error.as_deref().unwrap_or("");
        return match (view.state, view.claimed_id) {
            (SlotState::Invalid, Some(id)) => {
                say!(out, "invalid header claiming segment {id}: {e}\n")
            }
            (SlotState::OtherData, _) => say!(
                out,
                "no segment header ({e}): data from before the format\n"
            ),
            (SlotState::OtherFormat, _) => say!(out, "{e}\n"),
            _ => say!(out, "empty (all-zero header)\n"),
        }
        .map(|_| ExitStatus::Ok);
    };
    let note = match view.state {
        SlotState::Misplaced => format!(
            " [MISPLACED: segment {} belongs in slot {}]",
            h.id,
            sb.geometry.slot_of_id(h.id)
        ),
        SlotState::OtherFormat => " [another format]".to_string(),
        _ => String::new(),
    };
    say!(
        out,
        "segment {} in slot {} (byte {}): header CRC {:#010x} valid{note}\n",
        h.id,
        view.slot,
        view.offset_bytes,
        h.header_crc
    )?;
    say!(out, "  format_uuid          {}\n", h.format_uuid)?;
    say!(out, "  durable_through_id   {}\n", h.durable_through_id)?;
    say!(out, "  prev_header_crc      {:#010x}\n", h.prev_header_crc)?;
    say!(out, "  flags                {:#010x}\n", h.flags)?;
    say!(
        out,
        "  entries              {} of {}\n",
        h.nr_entries,
        sb.geometry.data_blocks_per_segment()
    )?;
    say!(
        out,
        "  {:>5}  {:>14}  {:>14}  {:>10}  {:>5}  {:>5}\n",
        "block",
        "backing_block",
        "device_byte",
        "data_crc",
        "valid",
        "dirty"
    )?;
    for e in &h.entries {
        if e.valid_bits == 0 {
            say!(out, "  {:>5}  unused\n", e.block)?;
            continue;
        }
        say!(
            out,
            "  {:>5}  {:>14}  {:>14}  {:#010x}  {:#04x}  {:#04x}\n",
            e.block,
            e.backing_block,
            e.device_offset_bytes,
            e.data_crc,
            e.valid_bits,
            e.dirty_bits
        )?;
    }
    Ok(ExitStatus::Ok)
}

#[derive(Debug, Serialize)]
struct DumpView {
    cache: String,
    segment_id: u64,
    slot: u64,
    block: u32,
    backing_block: u64,
    backing_offset_bytes: u64,
    device_offset_bytes: u64,
    valid_bits: u8,
    dirty_bits: u8,
    stored_crc: u32,
    computed_crc: u32,
    crc_ok: bool,
    data_hex: String,
}

pub(super) fn dump(a: DumpArgs, out: Out<'_>) -> Result<ExitStatus, CliError> {
    let cache = Cache::open(&a.cache, false)?;
    let sb = cache.superblock()?;
    let (slot, h) = cache.segment(&sb, a.segment)?;
    let Some(e) = h.entries.get(a.block as usize).copied() else {
        return Err(CliError::BlockOutOfRange {
            id: a.segment,
            block: a.block,
            nr_blocks: h.entries.len() as u32,
        });
    };
    let device_offset_bytes = sb.geometry.data_block_offset_bytes(slot, a.block);
    let data = cache.read(device_offset_bytes, BLOCK_SIZE_BYTES as usize)?;
    if a.raw {
        return emit_raw(out, &data).map(|_| ExitStatus::Ok);
    }
    let Entry {
        backing_block,
        data_crc,
        valid_bits,
        dirty_bits,
    } = e;
    let computed_crc = data_block_crc(&data);
    let backing_offset_bytes = backing_block.saturating_mul(BLOCK_SIZE_BYTES as u64);
    let view = DumpView {
        cache: cache.path.display().to_string(),
        segment_id: a.segment,
        slot,
        block: a.block,
        backing_block,
        backing_offset_bytes,
        device_offset_bytes,
        valid_bits,
        dirty_bits,
        stored_crc: data_crc,
        computed_crc,
        crc_ok: computed_crc == data_crc,
        data_hex: data.iter().map(|b| format!("{b:02x}")).collect(),
    };
    if a.json {
        return emit_json(out, &view).map(|_| ExitStatus::Ok);
    }
    say!(
        out,
        "# segment {} (slot {}) block {}: backing block {} (byte {}), valid {:#04x}, dirty {:#04x}{}\n",
        view.segment_id,
        view.slot,
        view.block,
        backing_block,
        backing_offset_bytes,
        valid_bits,
        dirty_bits,
        if valid_bits == 0 { " (unused entry)" } else { "" }
    )?;
    say!(
        out,
        "# cache byte {}, data CRC stored {:#010x}, computed {:#010x}: {}; offsets below are backing bytes\n",
        device_offset_bytes,
        data_crc,
        computed_crc,
        if view.crc_ok { "ok" } else { "MISMATCH" }
    )?;
    say!(out, "{}", hexdump(&data, backing_offset_bytes))?;
    Ok(ExitStatus::Ok)
}

fn emit_raw(out: Out<'_>, bytes: &[u8]) -> Result<(), CliError> {
    out.write_all(bytes).map_err(|source| CliError::Output {
        path: "stdout".into(),
        source,
    })
}

#[derive(Debug, Serialize)]
struct StatusView {
    cache: String,
    format_uuid: String,
    cache_size_bytes: u64,
    backing_size_bytes: u64,
    backing_uuid: Option<String>,
    nr_segments: u64,
    segment_size_kib: u32,
    record: Option<RecordView>,
    /// The newest record says clean shutdown and the log ends where it says.
    clean_shutdown: bool,
    head_id: u64,
    /// Oldest segment of the live log (`None`: empty log).
    first_id: Option<u64>,
    nr_log_segments: usize,
    last_writeback_id: u64,
    durable_floor_id: u64,
    dirty_blocks: u64,
    dirty_bytes: u64,
    stale_slots: Vec<u64>,
    scan_bytes_read: u64,
}

/// Runs the replay scan (reads only; the wipe of stale slots is left to a real replay).
pub(super) fn scan(cache: &Cache, sb: &Superblock) -> Result<LogScan, CliError> {
    futures::executor::block_on(scan_log(&cache.dev, sb)).map_err(|e| cache.device_error(e))
}

pub(super) fn status(a: StatusArgs, out: Out<'_>) -> Result<ExitStatus, CliError> {
    let cache = Cache::open(&a.cache, false)?;
    let sb = cache.superblock()?;
    let scan = scan(&cache, &sb)?;
    let (dirty_blocks, dirty_bytes) = scan.dirty_summary();
    let record = scan.record.as_ref().map(RecordView::new);
    let view = StatusView {
        cache: cache.path.display().to_string(),
        format_uuid: uuid_str(&sb.format_uuid),
        cache_size_bytes: sb.cache_size_bytes,
        backing_size_bytes: sb.backing_size_bytes,
        backing_uuid: optional_uuid(&sb.backing_uuid),
        nr_segments: sb.geometry.nr_segments,
        segment_size_kib: sb.geometry.segment_size_bytes / 1024,
        clean_shutdown: record
            .as_ref()
            .is_some_and(|r| r.clean_shutdown && r.head_id == scan.head_id),
        record,
        head_id: scan.head_id,
        first_id: scan.segments.first().map(|s| s.header.id),
        nr_log_segments: scan.segments.len(),
        last_writeback_id: scan.last_writeback_id,
        durable_floor_id: scan.durable_floor_id,
        dirty_blocks,
        dirty_bytes,
        stale_slots: scan.stale_slots.clone(),
        scan_bytes_read: scan.bytes_read,
    };
    if a.json {
        return emit_json(out, &view).map(|_| ExitStatus::Ok);
    }
    say!(
        out,
        "cache              {} ({:.1} MiB, {} slots of {} KiB)\n",
        view.cache,
        mib(view.cache_size_bytes),
        view.nr_segments,
        view.segment_size_kib
    )?;
    say!(out, "format_uuid        {}\n", view.format_uuid)?;
    say!(
        out,
        "backing            {} bytes ({:.1} MiB), uuid {}\n",
        view.backing_size_bytes,
        mib(view.backing_size_bytes),
        view.backing_uuid.as_deref().unwrap_or("none")
    )?;
    match &view.record {
        Some(r) => say!(out, "record             {}\n", r.summary())?,
        None => say!(
            out,
            "record             none (never written since format)\n"
        )?,
    }
    match view.first_id {
        Some(first) => say!(
            out,
            "log                segments {first}..={} ({} segments)\n",
            view.head_id,
            view.nr_log_segments
        )?,
        None => say!(out, "log                empty\n")?,
    }
    say!(out, "head_id            {}\n", view.head_id)?;
    say!(out, "last_writeback_id  {}\n", view.last_writeback_id)?;
    say!(out, "durable_floor_id   {}\n", view.durable_floor_id)?;
    say!(
        out,
        "clean_shutdown     {}\n",
        if view.clean_shutdown { "yes" } else { "no" }
    )?;
    say!(out, "dirty_blocks       {}\n", view.dirty_blocks)?;
    say!(
        out,
        "to_write_back      {} bytes ({:.1} MiB)\n",
        view.dirty_bytes,
        mib(view.dirty_bytes)
    )?;
    if view.stale_slots.is_empty() {
        say!(out, "stale_slots        0\n")?;
    } else {
        say!(
            out,
            "stale_slots        {} {:?}: newer than the head, a replay wipes them\n",
            view.stale_slots.len(),
            view.stale_slots
        )?;
    }
    say!(
        out,
        "scan_read          {} bytes ({:.1} MiB, {:.2} % of the device)\n",
        view.scan_bytes_read,
        mib(view.scan_bytes_read),
        view.scan_bytes_read as f64 * 100.0 / view.cache_size_bytes.max(1) as f64
    )?;
    Ok(ExitStatus::Ok)
}
