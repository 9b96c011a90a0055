//! `check`: the superblock, both record copies, every slot's segment header (checksum, format,
//! id/slot), the log's links and durability promises, and with `--all` or `--segment` every data
//! block's CRC.
//!
//! Errors (exit status 1) are damage that can lose data or that the engine never writes: an
//! undecodable record copy or segment header, a segment in the wrong slot, a broken
//! `prev_header_crc` link, a data block whose CRC does not match, segments that the record or a
//! header promises durable but that replay would not reach, and a log that starts after a segment
//! that is neither recorded as written back nor overwritten. A write torn by a crash looks exactly
//! like damage, so each finding says what replay does with the segment (its [`ReplayRole`]).
//! Warnings (exit status 0) cannot lose data: a record of another format, a segment newer than
//! the log head (replay ignores and wipes it), a mismatching block in a segment already written
//! back. Slots holding another format's header or no header at all (bytes from before the
//! format) are only counted: if a live segment's header were damaged that way, the log checks
//! report the segment missing.

use super::inspect::{record_copies, scan, RecordCopyView, RecordState};
use super::*;
use crate::engine::LogScan;
use crate::format::segment::data_block_crc;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A record copy that does not decode, or belongs to another format.
    RecordCopy,
    /// A slot whose header does not decode (bad magic, checksum or field range).
    SegmentHeader,
    /// A valid header of this format in a slot its id does not map to.
    Misplaced,
    /// A data block whose CRC-32C differs from its entry's `data_crc`.
    DataCrc,
    /// `prev_header_crc` of segment N differs from the header CRC of segment N-1.
    Chain,
    /// The record or a header says segments up to N are durable; replay stops before N.
    DurableNotReplayed,
    /// Replay treats segments before the log as written back without evidence.
    LogHole,
    /// A valid segment newer than the log head: replay ignores it and wipes its header.
    StaleTail,
}

/// What a replay does with the segment a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayRole {
    /// In the live log: replay indexes it and writeback copies its dirty blocks.
    LiveLog,
    /// Older than the live log: written back already, replay does not read it.
    WrittenBack,
    /// Newer than the log head: never acknowledged as far as the device shows; replay wipes it.
    StaleTail,
}

impl ReplayRole {
    fn explain(self) -> &'static str {
        match self {
            ReplayRole::LiveLog => "part of the live log",
            ReplayRole::WrittenBack => "written back already, replay does not need it (a torn reuse of the slot looks the same)",
            ReplayRole::StaleTail => {
                "newer than the log head, replay ignores it (a write torn by a crash looks the same)"
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub slot: Option<u64>,
    pub segment_id: Option<u64>,
    pub block: Option<u32>,
    pub backing_block: Option<u64>,
    pub device_offset_bytes: Option<u64>,
    pub expected_crc: Option<u32>,
    pub found_crc: Option<u32>,
    pub role: Option<ReplayRole>,
    pub message: String,
}

impl Finding {
    fn new(kind: FindingKind, message: String) -> Finding {
        Finding {
            kind,
            slot: None,
            segment_id: None,
            block: None,
            backing_block: None,
            device_offset_bytes: None,
            expected_crc: None,
            found_crc: None,
            role: None,
            message,
        }
    }

    fn at(mut self, slot: u64, segment_id: Option<u64>) -> Finding {
        self.slot = Some(slot);
        self.segment_id = segment_id;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckScope {
    /// Superblock, records, every header and the log; no data blocks.
    Metadata,
    /// Everything, data blocks included.
    All,
    /// One segment: its header, its links and its data blocks.
    Segment,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub cache: String,
    pub scope: CheckScope,
    pub format_uuid: String,
    pub records: Vec<RecordCopyView>,
    pub slots_checked: u64,
    pub segments_checked: u64,
    pub data_blocks_checked: u64,
    pub empty_slots: u64,
    pub other_format_slots: u64,
    /// Slots whose first bytes are no segment header at all (data from before the format).
    pub other_data_slots: u64,
    pub head_id: u64,
    pub first_id: Option<u64>,
    pub last_writeback_id: u64,
    /// Highest id the record or any header of this format promises durable.
    pub promised_durable_id: u64,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

/// Where a valid segment stands relative to the log a replay finds.
fn role_of(scan: &LogScan, id: u64) -> ReplayRole {
    match scan.segments.first() {
        _ if id > scan.head_id => ReplayRole::StaleTail,
        _ if id <= scan.last_writeback_id => ReplayRole::WrittenBack,
        Some(first) if id >= first.header.id => ReplayRole::LiveLog,
        _ => ReplayRole::WrittenBack,
    }
}

struct Checker<'a> {
    cache: &'a Cache,
    sb: &'a Superblock,
    scan: LogScan,
    report: CheckReport,
    /// Valid headers of this format in their own slots, by id.
    segments: BTreeMap<u64, (u64, SegmentHeader)>,
    /// What each examined slot holds, for messages.
    contents: HashMap<u64, SlotContent>,
}

impl Checker<'_> {
    fn error(&mut self, f: Finding) {
        self.report.errors.push(f);
    }

    fn warning(&mut self, f: Finding) {
        self.report.warnings.push(f);
    }

    fn check_records(&mut self) {
        for r in self.report.records.clone() {
            match r.state {
                RecordState::Invalid => self.error(Finding::new(
                    FindingKind::RecordCopy,
                    format!("{}; replay uses the other copy", r.summary()),
                )),
                RecordState::OtherFormat => self.warning(Finding::new(
                    FindingKind::RecordCopy,
                    format!("{}; replay ignores it", r.summary()),
                )),
                RecordState::Valid | RecordState::Zero => {}
            }
        }
    }

    /// Classifies one slot; with `verify_data`, checks the data blocks of a valid segment.
    fn check_slot(&mut self, slot: u64, verify_data: bool) -> Result<(), CliError> {
        self.report.slots_checked += 1;
        let offset = self.sb.geometry.slot_offset_bytes(slot);
        match self.cache.slot_header(self.sb, slot)? {
            SlotHeader::Empty => {
                self.report.empty_slots += 1;
                self.contents.insert(slot, SlotContent::Empty);
            }
            SlotHeader::Foreign { .. } => {
                self.report.other_format_slots += 1;
                self.contents.insert(slot, SlotContent::Foreign);
            }
            SlotHeader::OtherData(error) => {
                self.report.other_data_slots += 1;
                self.contents.insert(slot, SlotContent::Invalid(error));
            }
            SlotHeader::Invalid { error, claimed_id } => {
                let mut f = Finding::new(
                    FindingKind::SegmentHeader,
                    format!(
                        "slot {slot} (cache byte {offset}): invalid segment header claiming segment \
                         {claimed_id}: {error}"
                    ),
                )
                .at(slot, Some(claimed_id));
                f.device_offset_bytes = Some(offset);
                if let DecodeError::BadChecksum { stored, computed } = error {
                    f.expected_crc = Some(stored);
                    f.found_crc = Some(computed);
                }
                self.error(f);
                self.contents.insert(slot, SlotContent::Invalid(error));
            }
            SlotHeader::Misplaced(h) => {
                let home = self.sb.geometry.slot_of_id(h.id);
                self.error(
                    Finding::new(
                        FindingKind::Misplaced,
                        format!(
                            "slot {slot} holds segment {} of this format, which belongs in slot {home}",
                            h.id
                        ),
                    )
                    .at(slot, Some(h.id)),
                );
                self.contents.insert(slot, SlotContent::Segment(h.id));
            }
            SlotHeader::Ours(h) => {
                self.report.segments_checked += 1;
                self.contents.insert(slot, SlotContent::Segment(h.id));
                if verify_data {
                    self.check_data(slot, &h)?;
                }
                self.segments.insert(h.id, (slot, h));
            }
        }
        Ok(())
    }

    fn check_data(&mut self, slot: u64, h: &SegmentHeader) -> Result<(), CliError> {
        let data = self.cache.segment_data(self.sb, slot, h.entries.len())?;
        let role = role_of(&self.scan, h.id);
        let block_bytes = BLOCK_SIZE_BYTES as usize;
        for (j, e) in h.entries.iter().enumerate() {
            if e.valid_bits == 0 {
                continue;
            }
            self.report.data_blocks_checked += 1;
            let found = data_block_crc(&data[j * block_bytes..(j + 1) * block_bytes]);
            if found == e.data_crc {
                continue;
            }
            let device_offset = self.sb.geometry.data_block_offset_bytes(slot, j as u32);
            let mut f = Finding::new(
                FindingKind::DataCrc,
                format!(
                    "segment {} (slot {slot}) data block {j} (backing block {}, cache byte {device_offset}): \
                     CRC expected {:#010x}, found {found:#010x}; {}",
                    h.id,
                    e.backing_block,
                    e.data_crc,
                    role.explain()
                ),
            )
            .at(slot, Some(h.id));
            f.block = Some(j as u32);
            f.backing_block = Some(e.backing_block);
            f.device_offset_bytes = Some(device_offset);
            f.expected_crc = Some(e.data_crc);
            f.found_crc = Some(found);
            f.role = Some(role);
            if role == ReplayRole::WrittenBack {
                self.warning(f);
            } else {
                self.error(f);
            }
        }
        Ok(())
    }

    /// `prev_header_crc` links between consecutive valid segments (`only`: links touching it).
    fn check_links(&mut self, only: Option<u64>) {
        let mut broken = Vec::new();
        for (&id, (slot, h)) in &self.segments {
            let Some((_, prev)) = self.segments.get(&(id - 1)) else {
                continue;
            };
            if only.is_some_and(|o| o != id && o != id - 1) || h.prev_header_crc == prev.header_crc
            {
                continue;
            }
            let mut f = Finding::new(
                FindingKind::Chain,
                format!(
                    "segment {id} (slot {slot}): prev_header_crc {:#010x} does not match the header CRC \
                     {:#010x} of segment {}; {}",
                    h.prev_header_crc,
                    prev.header_crc,
                    id - 1,
                    role_of(&self.scan, id).explain()
                ),
            )
            .at(*slot, Some(id));
            f.expected_crc = Some(prev.header_crc);
            f.found_crc = Some(h.prev_header_crc);
            f.role = Some(role_of(&self.scan, id));
            broken.push(f);
        }
        for f in broken {
            self.error(f);
        }
    }

    /// Durability promises vs the log replay finds; stale tails; the evidence for the log's start.
    fn check_log(&mut self) {
        let geo = self.sb.geometry;
        let head = self.scan.head_id;
        let record_head = self.scan.record.as_ref().map(|r| r.head_id).unwrap_or(0);
        let (header_floor, floor_from) = self
            .segments
            .values()
            .map(|(_, h)| (h.durable_through_id, h.id))
            .max()
            .unwrap_or((0, 0));
        let promised = record_head.max(header_floor);
        self.report.promised_durable_id = promised;
        if promised > head {
            let by = if record_head >= header_floor {
                "the superblock record".to_string()
            } else {
                format!("the header of segment {floor_from}")
            };
            // The first promised segment that is missing or does not link to its predecessor;
            // if all are there, replay rejected the first one's data.
            let lowest = (head + 1).max(promised.saturating_sub(geo.nr_segments - 1));
            let culprit = (lowest..=promised)
                .find(|&id| match self.segments.get(&id) {
                    None => true,
                    Some((_, h)) => {
                        id > lowest
                            && self
                                .segments
                                .get(&(id - 1))
                                .is_some_and(|(_, p)| p.header_crc != h.prev_header_crc)
                    }
                })
                .unwrap_or(lowest);
            let slot = geo.slot_of_id(culprit);
            let holds = self.describe(slot, culprit);
            let mut f = Finding::new(
                FindingKind::DurableNotReplayed,
                format!(
                    "{by} says segments up to {promised} are durable, but replay stops at head_id {head} and \
                     would drop segments {}..={promised}: segment {culprit} (slot {slot}) {holds}",
                    head + 1
                ),
            )
            .at(slot, Some(culprit));
            f.role = Some(ReplayRole::StaleTail);
            self.error(f);
        }
        if let Some(first) = self.scan.segments.first().map(|s| s.header.id) {
            let record_lw = self
                .scan
                .record
                .as_ref()
                .map(|r| r.last_writeback_id)
                .unwrap_or(0);
            let before = first - 1;
            // The slot of `before` is not reused by the live log, and nothing says it was written back.
            if before > record_lw && before + geo.nr_segments > head {
                let slot = geo.slot_of_id(before);
                let reused = matches!(self.contents.get(&slot), Some(SlotContent::Segment(id)) if *id > before);
                if !reused {
                    let holds = self.describe(slot, before);
                    self.error(
                        Finding::new(
                            FindingKind::LogHole,
                            format!(
                                "replay starts the log at segment {first} and treats segments up to {before} as \
                                 written back, but the record says only up to {record_lw}: segment {before} \
                                 (slot {slot}) {holds}"
                            ),
                        )
                        .at(slot, Some(before)),
                    );
                }
            }
        }
        let stale: Vec<(u64, u64)> = self
            .segments
            .iter()
            .filter(|(&id, _)| id > head)
            .map(|(&id, (slot, _))| (id, *slot))
            .collect();
        for (id, slot) in stale {
            let mut f = Finding::new(
                FindingKind::StaleTail,
                format!(
                    "segment {id} (slot {slot}) is newer than the log head {head}: replay ignores it and wipes \
                     its header (an unflushed or torn tail)"
                ),
            )
            .at(slot, Some(id));
            f.role = Some(ReplayRole::StaleTail);
            self.warning(f);
        }
    }

    /// What the slot of segment `id` holds, as the end of a sentence about that segment.
    fn describe(&self, slot: u64, id: u64) -> String {
        match self.contents.get(&slot) {
            Some(SlotContent::Segment(found)) if *found == id => {
                "is present but does not join the log".to_string()
            }
            Some(c) => format!("is missing: the slot holds {c}"),
            None => "was not examined".to_string(),
        }
    }
}

pub(super) fn run(a: CheckArgs, out: Out<'_>) -> Result<ExitStatus, CliError> {
    let cache = Cache::open(&a.cache, false)?;
    let sb = cache.superblock()?;
    let scope = match (a.segment, a.all) {
        (Some(_), _) => CheckScope::Segment,
        (None, true) => CheckScope::All,
        (None, false) => CheckScope::Metadata,
    };
    let scan = scan(&cache, &sb)?;
    let report = CheckReport {
        cache: cache.path.display().to_string(),
        scope,
        format_uuid: uuid_str(&sb.format_uuid),
        records: record_copies(&cache, &sb)?,
        slots_checked: 0,
        segments_checked: 0,
        data_blocks_checked: 0,
        empty_slots: 0,
        other_format_slots: 0,
        other_data_slots: 0,
        head_id: scan.head_id,
        first_id: scan.segments.first().map(|s| s.header.id),
        last_writeback_id: scan.last_writeback_id,
        promised_durable_id: 0,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let mut c = Checker {
        cache: &cache,
        sb: &sb,
        scan,
        report,
        segments: BTreeMap::new(),
        contents: HashMap::new(),
    };
    match a.segment {
        Some(id) => {
            let slot = sb.geometry.slot_of_id(id);
            c.check_slot(slot, true)?;
            // A segment that is simply not there is "not found"; a damaged header is a finding.
            let found = c.contents.get(&slot).cloned().expect("slot examined");
            if found != SlotContent::Segment(id) && c.report.errors.is_empty() {
                return Err(CliError::SegmentNotFound {
                    path: cache.path.clone(),
                    id,
                    slot,
                    found,
                });
            }
            // The neighbours, for the links only.
            for n in [id - 1, id + 1] {
                if n == 0 {
                    continue;
                }
                if let Ok((slot, h)) = cache.segment(&sb, n) {
                    c.segments.insert(n, (slot, h));
                }
            }
            c.check_links(Some(id));
        }
        None => {
            c.check_records();
            for slot in 0..sb.geometry.nr_segments {
                c.check_slot(slot, a.all)?;
            }
            c.check_links(None);
            c.check_log();
        }
    }
    let report = c.report;
    let status = if report.errors.is_empty() {
        ExitStatus::Ok
    } else {
        ExitStatus::Corrupt
    };
    if a.json {
        emit_json(out, &report)?;
        return Ok(status);
    }
    print_report(&report, &sb, out)?;
    Ok(status)
}

fn print_report(r: &CheckReport, sb: &Superblock, out: Out<'_>) -> Result<(), CliError> {
    let what = match r.scope {
        CheckScope::Metadata => "headers only; --all also verifies data blocks",
        CheckScope::All => "headers and data blocks",
        CheckScope::Segment => "one segment",
    };
    say!(
        out,
        "check {}: superblock valid (format {}, version {}.{})\n",
        r.cache,
        r.format_uuid,
        sb.version_major,
        sb.version_minor
    )?;
    say!(
        out,
        "checked {} slots ({what}): {} segments, {} data blocks; {} empty, {} of another format, \
         {} with data from before the format\n",
        r.slots_checked,
        r.segments_checked,
        r.data_blocks_checked,
        r.empty_slots,
        r.other_format_slots,
        r.other_data_slots
    )?;
    if r.scope != CheckScope::Segment {
        for rc in &r.records {
            say!(out, "{}\n", rc.summary())?;
        }
    }
    match r.first_id {
        Some(first) => say!(
            out,
            "log: segments {first}..={}, last_writeback_id {}\n",
            r.head_id,
            r.last_writeback_id
        )?,
        None => say!(out, "log: empty\n")?,
    }
    for f in &r.errors {
        say!(out, "ERROR    {}\n", f.message)?;
    }
    for f in &r.warnings {
        say!(out, "WARNING  {}\n", f.message)?;
    }
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    if r.errors.is_empty() {
        say!(
            out,
            "result: clean ({})\n",
            plural(r.warnings.len(), "warning")
        )
    } else {
        say!(
            out,
            "result: CORRUPT ({}, {})\n",
            plural(r.errors.len(), "error"),
            plural(r.warnings.len(), "warning")
        )
    }
}
