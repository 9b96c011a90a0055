//! `writeback`: the rescue path. Replays the log with the engine (as `bdev_writeboost_create`
//! would), writes every dirty block back (`drop_caches`: sorted, coalesced, backing flushed before
//! each batch counts as done) and shuts down cleanly, which writes the superblock record that
//! marks the cache clean. Killing it at any point is safe: the record moves only after a batch's
//! blocks are on the backing device and flushed, so a rerun replays the log from the last
//! recorded batch and writes the remaining blocks (some of them again).

use super::*;
use crate::engine::{Base, CreateOptions, Options, Volume};
use crate::runtime::{LocalRuntime, Runtime};
use serde::Serialize;
use std::io::IsTerminal;

const PROGRESS_INTERVAL_NS: u64 = 250_000_000;
const NS_PER_S: f64 = 1e9;

#[derive(Debug, Serialize)]
struct WritebackSummary {
    cache: String,
    backing: String,
    head_id: u64,
    dirty_blocks_before: u64,
    dirty_blocks_after: u64,
    last_writeback_id: u64,
    bytes_written_back: u64,
    replay_seconds: f64,
    writeback_seconds: f64,
    mib_per_s: f64,
}

pub(super) fn run(a: WritebackArgs, out: Out<'_>) -> Result<ExitStatus, CliError> {
    let cache = Cache::open(&a.cache, true)?;
    // Refuse what is not a valid format here: create would format an all-zero cache.
    cache.superblock()?;
    let backing = open_device(&a.backing, true)?;
    let mut options = Options::default();
    for (key, value) in [
        ("writeback_threshold", 0),
        ("nr_max_batched_writeback", a.batch_segments),
        ("update_sb_record_interval", 0),
        ("sync_data_interval", 0),
    ] {
        options
            .set(key, value, true)
            .map_err(|e| CliError::Create {
                path: a.cache.clone(),
                source: e.into(),
            })?;
    }
    let opts = CreateOptions {
        options,
        segment_size_kib: None,
        force_format: false,
        new_format_uuid: [0; 16],
        nr_ram_buffers: 2,
        accept_damaged_log: a.accept_damaged_log,
    };
    let show_progress = std::io::stderr().is_terminal();
    let rt = LocalRuntime::new();
    let (cache_path, backing_path) = (a.cache.clone(), a.backing.clone());
    let summary = rt.block_on({
        let rt = rt.clone();
        async move {
            let t0_ns = rt.now_ns();
            let (vol, _) = Volume::create(cache.dev, backing, rt.clone(), opts)
                .await
                .map_err(|source| CliError::Create {
                    path: cache_path.clone(),
                    source,
                })?;
            let before = vol.status();
            let t1_ns = rt.now_ns();
            let work = async {
                vol.drop_caches().await?;
                vol.shutdown().await
            };
            let r = if show_progress {
                let line = progress_line(vol.clone(), rt.clone(), before.nr_dirty_cache_blocks);
                match futures::future::select(std::pin::pin!(work), std::pin::pin!(line)).await {
                    futures::future::Either::Left((r, _)) => r,
                    futures::future::Either::Right((never, _)) => match never {},
                }
            } else {
                work.await
            };
            if show_progress {
                eprint!("\r\x1b[K");
            }
            r.map_err(|source| {
                let path = match source {
                    crate::engine::IoError::Device {
                        base: Base::Backing,
                        ..
                    } => backing_path.clone(),
                    _ => cache_path.clone(),
                };
                CliError::Io { path, source }
            })?;
            let t2_ns = rt.now_ns();
            let after = vol.status();
            let bytes = after.counters.bytes_written_back;
            let writeback_seconds = (t2_ns - t1_ns) as f64 / NS_PER_S;
            Ok::<_, CliError>(WritebackSummary {
                cache: cache_path.display().to_string(),
                backing: backing_path.display().to_string(),
                head_id: after.last_flushed_id,
                dirty_blocks_before: before.nr_dirty_cache_blocks,
                dirty_blocks_after: after.nr_dirty_cache_blocks,
                last_writeback_id: after.last_writeback_id,
                bytes_written_back: bytes,
                replay_seconds: (t1_ns - t0_ns) as f64 / NS_PER_S,
                writeback_seconds,
                mib_per_s: if writeback_seconds > 0.0 {
                    mib(bytes) / writeback_seconds
                } else {
                    0.0
                },
            })
        }
    })?;
    if a.json {
        emit_json(out, &summary)?;
        return Ok(ExitStatus::Ok);
    }
    let s = &summary;
    say!(out, "writeback {} -> {}\n", s.cache, s.backing)?;
    say!(
        out,
        "  replay: head_id {}, {} dirty blocks, {:.2} s\n",
        s.head_id,
        s.dirty_blocks_before,
        s.replay_seconds
    )?;
    say!(
        out,
        "  wrote back {:.1} MiB ({} bytes) in {:.2} s: {:.1} MiB/s\n",
        mib(s.bytes_written_back),
        s.bytes_written_back,
        s.writeback_seconds,
        s.mib_per_s
    )?;
    say!(
        out,
        "  backing flushed; cache marked clean (last_writeback_id {}, {} dirty blocks left)\n",
        s.last_writeback_id,
        s.dirty_blocks_after
    )?;
    Ok(ExitStatus::Ok)
}

/// Redraws one progress line on stderr until dropped.
async fn progress_line<D: BlockDevice + 'static, R: Runtime>(
    vol: Volume<D, R>,
    rt: R,
    total_blocks: u64,
) -> std::convert::Infallible {
    let start_ns = rt.now_ns();
    loop {
        rt.sleep(PROGRESS_INTERVAL_NS).await;
        let s = vol.status();
        let done_blocks = total_blocks.saturating_sub(s.nr_dirty_cache_blocks);
        let bytes = s.counters.bytes_written_back;
        let secs = (rt.now_ns() - start_ns) as f64 / NS_PER_S;
        eprint!(
            "\rwriteback: {done_blocks}/{total_blocks} blocks ({:.0} %), {:.1} MiB, {:.1} MiB/s\x1b[K",
            done_blocks as f64 * 100.0 / total_blocks.max(1) as f64,
            mib(bytes),
            mib(bytes) / secs.max(1e-9)
        );
    }
}
