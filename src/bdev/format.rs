//! `bdev_writeboost_format`: writes an unbound format onto a bdev no volume uses, on a worker
//! thread of its own (`writeboost_format`), refusing (without `force`) what the offline
//! `writeboost format` refuses.
//!
//! app: check unused, open+claim, check geometry, create the worker -> worker: channel,
//! executor, check, format -> worker: drop executor, exit -> app: release+close, answer.

use super::base::{BaseDesc, SpdkDevice};
use super::error::{Error, Role};
use super::exec::{Poller, SpdkRt};
use super::ffi::{cstring, defer, wb_notice, SpdkThread};
use super::ops::Done;
use super::{module, registry};
use crate::device::BlockDevice;
use crate::engine::{format_cache, read_superblock, scan_log};
use crate::format::{DecodeError, Geometry, SEGMENT_SIZE_KIB_DEFAULT};
use std::cell::Cell;
use std::rc::Rc;
use writeboost_spdk_sys as sys;

/// What the worker thread keeps between its start and its finish (worker thread only).
struct Worker {
    rt: SpdkRt,
    poller: Option<Poller>,
}

/// Formats `cache` (app thread); `done` runs on the app thread once the bdev is closed again.
pub fn format(cache: String, segment_size_kib: Option<u32>, force: bool, done: impl Done<()>) {
    let base = match open(&cache, segment_size_kib) {
        Ok(b) => b,
        Err(e) => return done(Err(e)),
    };
    let tname = cstring("writeboost_format");
    // The worker runs on this (app) thread's core, never on a reactor the application may block
    // (cpumask.rs).
    let mask = super::cpumask::current_core();
    // SAFETY: valid name and cpumask (both copied by SPDK).
    let thread = unsafe { sys::spdk_thread_create(tname.as_ptr(), mask.raw()) };
    let Some(thread) = SpdkThread::from_raw(thread) else {
        base.close();
        return done(Err(Error::NoThread {
            what: "a worker thread",
        }));
    };
    let seg = segment_size_kib.unwrap_or(SEGMENT_SIZE_KIB_DEFAULT);
    thread.send(move || work(base, seg, force, done));
}

/// Checks and opens (claiming it) the bdev to format.
fn open(cache: &str, segment_size_kib: Option<u32>) -> Result<BaseDesc, Error> {
    registry::check_unused(cache)?;
    let base =
        BaseDesc::open(cache, "(format)", module::get(), |_, _, _| {}, true).map_err(|err| {
            Error::Base {
                role: Role::Cache,
                err,
            }
        })?;
    let size_bytes = base.info.size_bytes;
    let seg = segment_size_kib.unwrap_or(SEGMENT_SIZE_KIB_DEFAULT);
    if let Err(reason) = Geometry::for_device(size_bytes, seg) {
        base.close();
        return Err(Error::TooSmall {
            bdev: cache.into(),
            size_bytes,
            reason,
        });
    }
    Ok(base)
}

/// Worker thread: channel, executor, the format job.
fn work(base: BaseDesc, seg: u32, force: bool, done: impl Done<()>) {
    let rt = SpdkRt::new();
    let r2 = rt.clone();
    let worker = Worker {
        rt: rt.clone(),
        poller: Some(Poller::register("wb_exec", 0, move || r2.turn())),
    };
    let Some(dev) = SpdkDevice::new(base.handle(), rt.clone(), Rc::new(Cell::new(0))) else {
        let e = Error::NoChannel {
            what: "an I/O channel",
        };
        return finish(worker, base, done, Err(e));
    };
    let job = async move {
        let name = dev.info().name;
        if !force {
            refuse_unless_safe(&dev, &name).await?;
        }
        // An unbound format: the geometry and a new format UUID now, the backing device's
        // identity at the next create.
        let uuid = super::volume::new_format_uuid();
        format_cache(&dev, None, seg, uuid)
            .await
            .map_err(|source| Error::Format {
                bdev: name.clone(),
                source,
            })?;
        wb_notice!(
            "bdev {name} formatted ({seg} KiB segments, format {}): its next bdev_writeboost_create starts an empty cache",
            crate::format::uuid_to_string(&uuid)
        );
        Ok(())
    };
    rt.spawn_then(job, move |r| defer(move || finish(worker, base, done, r)));
    rt.turn();
}

/// Without `force`, the offline `writeboost format`'s rule: an all-zero cache or a writeboost
/// cache without dirty data may be formatted. Refused: content that is not a writeboost
/// superblock, a superblock this build cannot decode (newer version, bad checksum: it may hold
/// dirty data), a log whose scan reports damage (durable segments no replay reaches, a hole:
/// dirty data the chain does not count), and dirty blocks. Reads only.
async fn refuse_unless_safe(dev: &SpdkDevice, name: &str) -> Result<(), Error> {
    let bdev = || name.to_string();
    let sb = match read_superblock(dev).await {
        Err(source) => {
            return Err(Error::ReadSuperblock {
                bdev: bdev(),
                source,
            })
        }
        Ok(Err(DecodeError::Zero)) => return Ok(()),
        Ok(Err(reason @ (DecodeError::BadMagic { .. } | DecodeError::TooShort { .. }))) => {
            return Err(Error::NotWriteboost {
                bdev: bdev(),
                reason,
            })
        }
        Ok(Err(reason)) => {
            return Err(Error::Unreadable {
                bdev: bdev(),
                reason,
            })
        }
        Ok(Ok(sb)) => sb,
    };
    let format_uuid = crate::format::uuid_to_string(&sb.format_uuid);
    let scan = scan_log(dev, &sb).await.map_err(|source| Error::Scan {
        bdev: bdev(),
        source,
    })?;
    if let Some(d) = &scan.damage {
        return Err(Error::DamagedLog {
            bdev: bdev(),
            format_uuid,
            damage: d.clone(),
        });
    }
    let (blocks, bytes) = scan.dirty_summary();
    if blocks > 0 {
        return Err(Error::Dirty {
            bdev: bdev(),
            blocks,
            bytes,
            format_uuid,
        });
    }
    Ok(())
}

/// Worker thread, in a message: drop the executor and poller, exit, then close on the app thread.
fn finish(mut worker: Worker, base: BaseDesc, done: impl Done<()>, r: Result<(), Error>) {
    worker.rt.clear();
    worker.poller.take();
    drop(worker);
    let me = SpdkThread::current().expect("the worker runs on an SPDK thread");
    // SAFETY: called on the worker thread itself, once (its last message).
    unsafe { sys::spdk_thread_exit(me.as_ptr()) };
    SpdkThread::app().send(move || {
        base.close();
        done(r)
    });
}
