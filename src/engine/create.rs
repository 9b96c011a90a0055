//! Create: validate-or-format, resume (assemble the in-core state from a replay scan), and
//! format. The scan itself is `replay.rs`.

use super::*;
use crate::device::DeviceError;
use crate::format::{
    minor_version_for_flags, DecodeError, RECORD_FLAG_SUPERSEDED_COPIES, RECORD_OFFSETS_BYTES,
    SUPERBLOCK_FLAG_READ_CACHE_ONLY, SUPERBLOCK_FLAG_UNBOUND, VERSION_MAJOR,
};
use replay::{read_superblock, scan_log, LogScan};

/// Formats `cache` for `backing` (with `None`: unbound, the first create records the backing
/// device): zeroes the record copies, then writes the superblock, then flushes. Old segments
/// carry the old format UUID and are never replayed.
pub async fn format_cache<D: BlockDevice>(
    cache: &D,
    backing: Option<&DeviceInfo>,
    segment_size_kib: u32,
    format_uuid: [u8; 16],
) -> Result<Superblock, CreateError> {
    format_cache_with(cache, backing, segment_size_kib, format_uuid, false).await
}

/// `format_cache`, for a `write_around_mode` volume when `read_cache_only`
/// (`SUPERBLOCK_FLAG_READ_CACHE_ONLY`).
async fn format_cache_with<D: BlockDevice>(
    cache: &D,
    backing: Option<&DeviceInfo>,
    segment_size_kib: u32,
    format_uuid: [u8; 16],
    read_cache_only: bool,
) -> Result<Superblock, CreateError> {
    let cache_info = cache.info();
    let geometry = Geometry::for_device(cache_info.size_bytes, segment_size_kib)
        .map_err(CreateError::Geometry)?;
    let flags = if backing.is_some() {
        0
    } else {
        SUPERBLOCK_FLAG_UNBOUND
    } | if read_cache_only {
        SUPERBLOCK_FLAG_READ_CACHE_ONLY
    } else {
        0
    };
    let sb = Superblock {
        version_major: VERSION_MAJOR,
        version_minor: minor_version_for_flags(flags),
        format_uuid,
        geometry,
        cache_size_bytes: cache_info.size_bytes,
        backing_size_bytes: backing.map(|b| b.size_bytes).unwrap_or(0),
        backing_uuid: backing.and_then(|b| b.uuid).unwrap_or([0; 16]),
        flags,
    };
    let dev = |source| CreateError::Device {
        base: Base::Cache,
        source,
    };
    let zero = AlignedBuf::zeroed(BLOCK);
    // Crash-atomic: the old superblock goes first, so an interrupted or failed format leaves
    // either the old cache intact or one that reads as all-zero (formatted anew at the next
    // create), never the old superblock over wiped records (a log that reads as damaged).
    let (mut zero, r) = cache.write(0, zero).await;
    r.map_err(dev)?;
    cache.flush().await.map_err(dev)?;
    for off in RECORD_OFFSETS_BYTES {
        let r;
        (zero, r) = cache.write(off, zero).await;
        r.map_err(dev)?;
    }
    cache.flush().await.map_err(dev)?;
    let mut b = AlignedBuf::zeroed(BLOCK);
    b.copy_from_slice(&sb.encode());
    cache.write(0, b).await.1.map_err(dev)?;
    cache.flush().await.map_err(dev)?;
    Ok(sb)
}

fn uuid_str(u: Option<[u8; 16]>) -> String {
    u.map(|u| crate::format::uuid_to_string(&u))
        .unwrap_or_else(|| "none".into())
}

impl<D: BlockDevice + 'static, R: Runtime> Volume<D, R> {
    /// Opens a volume: formats an all-zero (or `force_format`) cache, resumes a valid one by
    /// replaying its log, and refuses anything else without writing.
    pub async fn create(
        cache: D,
        backing: D,
        rt: R,
        opts: CreateOptions,
    ) -> Result<(Volume<D, R>, Startup), CreateError> {
        let cache_info = cache.info();
        let backing_info = backing.info();
        let dev = |source| CreateError::Device {
            base: Base::Cache,
            source,
        };
        let seg_kib = opts.segment_size_kib;
        let mut startup = Startup::Resumed;
        let mut sb = if opts.force_format {
            None
        } else {
            match read_superblock(&cache).await.map_err(dev)? {
                Ok(sb) => Some(sb),
                Err(DecodeError::Zero) => None,
                Err(DecodeError::VersionTooNew { major, minor }) => {
                    return Err(CreateError::VersionTooNew { major, minor })
                }
                Err(reason) => return Err(CreateError::NotWriteboost { reason }),
            }
        };
        if let Some(s) = &sb {
            if s.cache_size_bytes != cache_info.size_bytes {
                return Err(CreateError::GeometryChanged {
                    what: "cache_size_bytes",
                    recorded: s.cache_size_bytes,
                    found: cache_info.size_bytes,
                });
            }
            if let Some(k) = seg_kib {
                if k * 1024 != s.geometry.segment_size_bytes {
                    return Err(CreateError::GeometryChanged {
                        what: "segment_size_kib",
                        recorded: (s.geometry.segment_size_bytes / 1024) as u64,
                        found: k as u64,
                    });
                }
            }
            let recorded_uuid = (s.backing_uuid != [0; 16]).then_some(s.backing_uuid);
            let unbound = s.flags & SUPERBLOCK_FLAG_UNBOUND != 0;
            if !unbound && s.backing_size_bytes != backing_info.size_bytes
                || (recorded_uuid.is_some() && recorded_uuid != backing_info.uuid)
            {
                return Err(CreateError::WrongBacking {
                    recorded_bytes: s.backing_size_bytes,
                    recorded_uuid: uuid_str(recorded_uuid),
                    found_bytes: backing_info.size_bytes,
                    found_uuid: uuid_str(backing_info.uuid),
                });
            }
        }
        // A re-format of a valid cache (write-around) keeps its segment size.
        let seg_kib = seg_kib
            .or(sb.as_ref().map(|s| s.geometry.segment_size_bytes / 1024))
            .unwrap_or(crate::format::SEGMENT_SIZE_KIB_DEFAULT);
        // An unbound format (bdev_writeboost_format) has an empty log: bind it to this backing
        // device, keeping its geometry and format UUID.
        if let Some(s) = sb
            .as_ref()
            .filter(|s| s.flags & SUPERBLOCK_FLAG_UNBOUND != 0)
        {
            let seg = s.geometry.segment_size_bytes / 1024;
            let bound = format_cache_with(
                &cache,
                Some(&backing_info),
                seg,
                s.format_uuid,
                opts.options.write_around_mode,
            )
            .await?;
            return Ok((
                Volume::assemble(cache, backing, cache_info, backing_info, rt, bound, opts),
                Startup::Formatted,
            ));
        }
        let write_around = opts.options.write_around_mode;
        if sb
            .as_ref()
            .is_some_and(|s| s.flags & SUPERBLOCK_FLAG_READ_CACHE_ONLY != 0 && !write_around)
        {
            // A write-around volume's log holds only clean staged copies, which its writes may
            // have made stale on the backing device (the invalidation was in RAM only): the
            // backing device holds the data, so a write-back volume starts from an empty cache.
            sb = None;
        }
        let scan = match &sb {
            Some(s) => {
                let scan = scan_log(&cache, s).await.map_err(dev)?;
                if scan.unreadable_blocks > 0 {
                    tracing::warn!(
                        blocks = scan.unreadable_blocks,
                        "writeboost: replay could not read {} metadata or data blocks of the cache; they count as missing",
                        scan.unreadable_blocks
                    );
                }
                if scan
                    .record
                    .as_ref()
                    .is_some_and(|r| r.flags & RECORD_FLAG_SUPERSEDED_COPIES != 0)
                {
                    return Err(CreateError::SupersededCopiesInLog);
                }
                if let Some(damage) = scan.damage.clone() {
                    if !opts.accept_damaged_log {
                        return Err(CreateError::LogDamaged { damage });
                    }
                }
                if opts.options.write_around_mode {
                    let (dirty, _) = scan.dirty_summary();
                    if dirty > 0 {
                        return Err(CreateError::DirtyInWriteAround {
                            nr_dirty_blocks: dirty,
                        });
                    }
                    // Write-around keeps only clean data: start from an empty cache.
                    sb = None;
                    None
                } else {
                    Some(scan)
                }
            }
            None => None,
        };
        let sb = match sb {
            Some(sb) => sb,
            None => {
                startup = Startup::Formatted;
                format_cache_with(
                    &cache,
                    Some(&backing_info),
                    seg_kib,
                    opts.new_format_uuid,
                    write_around,
                )
                .await?
            }
        };
        let vol = Volume::assemble(cache, backing, cache_info, backing_info, rt, sb, opts);
        if let Some(scan) = scan {
            vol.apply_scan(&scan).await.map_err(dev)?;
        }
        Ok((vol, startup))
    }

    fn assemble(
        cache: D,
        backing: D,
        cache_info: DeviceInfo,
        backing_info: DeviceInfo,
        rt: R,
        sb: Superblock,
        opts: CreateOptions,
    ) -> Volume<D, R> {
        let geo = sb.geometry;
        let nr = geo.nr_segments as usize;
        let nr_bufs = opts.nr_ram_buffers.max(2);
        let now = rt.now_ns();
        let st = State {
            geo,
            sb,
            opts: opts.options,
            index: Index::new(geo.nr_cache_blocks() as usize),
            nr_dirty: 0,
            log: super::log::LogState::new(nr, nr_bufs, geo.segment_size_bytes as usize),
            durability: Default::default(),
            wb: Default::default(),
            load: super::daemons::BackingLoad::new(now),
            staging: Default::default(),
            cutoff: Default::default(),
            record: super::daemons::RecordState::new(now),
            #[cfg(feature = "test-hooks")]
            hooks: Hooks::default(),
            gate: Gate::default(),
            health: Default::default(),
            counters: Counters::default(),
        };
        Volume {
            inner: Rc::new(Inner {
                cache,
                backing,
                cache_info,
                backing_info,
                rt,
                st: RefCell::new(st),
                waiters: RefCell::new(Vec::new()),
                progress: Cell::new(0),
            }),
        }
    }

    /// Builds the in-core index from a scan, invalidates stale tails and makes the log durable.
    async fn apply_scan(&self, scan: &LogScan) -> Result<(), DeviceError> {
        let inner = &self.inner;
        let hb = {
            let mut st = inner.st.borrow_mut();
            let dpb = st.dpb();
            let mut nr_dirty = 0u64;
            for s in &scan.segments {
                let id = s.header.id;
                st.log.slot_id[s.slot as usize] = id;
                if id <= scan.last_writeback_id {
                    // Written back (clean); its slot may have been partly overwritten since.
                    st.log.slot_len[s.slot as usize] = 0;
                    continue;
                }
                for (j, e) in s.header.entries.iter().enumerate() {
                    if e.valid_bits == 0 {
                        continue;
                    }
                    let cb = s.slot * dpb + j as u64;
                    let dirty = e.dirty_bits;
                    match st.index.lookup(e.backing_block) {
                        Some(old) => {
                            if st.index.dirty(old) != 0 {
                                nr_dirty -= 1;
                            }
                            st.index.relocate(old, cb, e.valid_bits, dirty);
                        }
                        None => st.index.insert(e.backing_block, cb, e.valid_bits, dirty),
                    }
                    if dirty != 0 {
                        nr_dirty += 1;
                    }
                }
                st.log.slot_len[s.slot as usize] = s.header.entries.len() as u32;
            }
            st.nr_dirty = nr_dirty;
            let head = scan.head_id;
            st.log.next_id = head + 1;
            st.log.last_sealed = head;
            st.log.last_written = head;
            st.log.last_durable = head;
            st.log.last_writeback = scan.last_writeback_id;
            st.log.recorded_writeback = scan.last_writeback_id;
            st.log.prev_header_crc = scan
                .segments
                .last()
                .map(|s| s.header.header_crc)
                .unwrap_or(0);
            st.record.record_seq = scan.record.as_ref().map(|r| r.seq).unwrap_or(0);
            st.geo.header_bytes()
        };
        // A valid header newer than the head must never join a later log: wipe it.
        let mut zero = AlignedBuf::zeroed(hb);
        for &slot in &scan.stale_slots {
            let off = inner.st.borrow().geo.slot_offset_bytes(slot);
            let r;
            (zero, r) = inner.cache.write(off, zero).await;
            r?;
        }
        // Segments the scan verified by reading may sit in a volatile cache: make them durable.
        inner.cache.flush().await?;
        Ok(())
    }
}
