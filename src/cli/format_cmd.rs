//! `format`: a new, empty format on the cache device for a backing device's identity.

use super::inspect::{scan, SuperblockView};
use super::*;
use crate::device::DeviceInfo;
use crate::engine::format_cache;
use crate::format::{Geometry, SEGMENT_SIZE_KIB_MAX, SEGMENT_SIZE_KIB_MIN};
use std::io::Read;

pub(super) fn run(a: FormatArgs, out: Out<'_>) -> Result<ExitStatus, CliError> {
    let seg_kib = a.segment_size_kib;
    if !(SEGMENT_SIZE_KIB_MIN..=SEGMENT_SIZE_KIB_MAX).contains(&seg_kib)
        || !seg_kib.is_power_of_two()
    {
        return Err(ArgumentError::SegmentSize(seg_kib).into());
    }
    let cache = Cache::open(&a.cache, true)?;
    let cache_size_bytes = cache.dev.info().size_bytes;
    if Geometry::for_device(cache_size_bytes, seg_kib).is_err() {
        return Err(ArgumentError::CacheTooSmall {
            cache_size_bytes,
            segment_size_kib: seg_kib,
        }
        .into());
    }
    let backing = match (&a.backing, a.backing_size_bytes) {
        (Some(path), _) => {
            let info = open_device(path, false)?.info();
            DeviceInfo {
                uuid: a.backing_uuid.or(info.uuid),
                ..info
            }
        }
        (None, Some(size_bytes)) => {
            if size_bytes == 0 || size_bytes % 512 != 0 {
                return Err(ArgumentError::BackingSize(size_bytes).into());
            }
            DeviceInfo {
                name: "backing".into(),
                size_bytes,
                block_size_bytes: 512,
                uuid: a.backing_uuid,
            }
        }
        (None, None) => unreachable!("clap requires --backing or --backing-size-bytes"),
    };
    if !a.force {
        refuse_unless_safe(&cache)?;
    }
    let uuid = random_uuid().map_err(|source| CliError::Open {
        path: "/dev/urandom".into(),
        source,
    })?;
    let sb = futures::executor::block_on(format_cache(&cache.dev, Some(&backing), seg_kib, uuid))
        .map_err(|source| CliError::Create {
        path: cache.path.clone(),
        source,
    })?;
    let view = SuperblockView::new(&sb);
    if a.json {
        emit_json(out, &view)?;
        return Ok(ExitStatus::Ok);
    }
    say!(
        out,
        "formatted {}: format {}, {} segments of {} KiB ({} cache blocks of 4 KiB), backing {} bytes, uuid {}\n",
        cache.path.display(),
        view.format_uuid,
        view.nr_segments,
        view.segment_size_bytes / 1024,
        view.nr_cache_blocks,
        view.backing_size_bytes,
        view.backing_uuid.as_deref().unwrap_or("none")
    )?;
    Ok(ExitStatus::Ok)
}

/// Without `--force`: an all-zero or a clean cache may be formatted; dirty data or content that
/// is not a readable writeboost format may not.
fn refuse_unless_safe(cache: &Cache) -> Result<(), CliError> {
    let decoded = futures::executor::block_on(crate::engine::read_superblock(&cache.dev))
        .map_err(|e| cache.device_error(e))?;
    let refuse = |reason| CliError::Refused {
        path: cache.path.clone(),
        reason,
    };
    match decoded {
        Err(DecodeError::Zero) => Ok(()),
        Err(e @ (DecodeError::BadMagic { .. } | DecodeError::TooShort { .. })) => {
            Err(refuse(RefuseReason::Unrecognized(e)))
        }
        Err(e) => Err(refuse(RefuseReason::Unreadable(e))),
        Ok(sb) => {
            let (dirty_blocks, dirty_bytes) = scan(cache, &sb)?.dirty_summary();
            if dirty_blocks > 0 {
                return Err(refuse(RefuseReason::Dirty {
                    dirty_blocks,
                    dirty_bytes,
                }));
            }
            Ok(())
        }
    }
}

/// A random (version 4) UUID from the kernel.
fn random_uuid() -> std::io::Result<[u8; 16]> {
    let mut u = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut u)?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}
