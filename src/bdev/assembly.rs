//! Assembly of a volume, across the app thread and the volume thread (SPDK passthru's register
//! order; teardown.rs undoes it in reverse):
//!
//! app: open+claim cache, backing -> create thread (`prepare`) -> volume thread: channels,
//! executor, replay (`Volume::create`), pollers (`vol_start`) -> app: io_device,
//! `spdk_bdev_register` (`assembled`). A failure at any step hands the volume to the teardown,
//! which reports the failure once everything is undone.

use super::base::{BaseDesc, SpdkDevice};
use super::error::{Error, Role};
use super::exec::{Poller, SpdkRt};
use super::ffi::{assert_app_thread, cstring, wb_notice, wb_warn, SpdkThread};
use super::registry::{self, Config};
use super::volume::{
    new_format_uuid, volume_uuid, AssembleDone, Shared, Vbdev, VbdevParts, Vol, VolCtx,
};
use super::{module, teardown};
use crate::device::AlignedBuf;
use crate::engine::{CreateOptions, Startup, Volume};
use serde_json::Value;
use std::cell::Cell;
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use writeboost_spdk_sys as sys;

/// Largest block size of our bdev (the engine's cache block).
const MAX_BLOCKLEN: u32 = 4096;

/// Assembles the configured volume `name` (which must be `Waiting`). `done` runs on the app
/// thread with the bdev name, or the error once everything was undone.
pub fn assemble(name: &str, done: AssembleDone) {
    match prepare(name) {
        Ok(vb) => launch(vb, done),
        Err(e) => done(Err(e)),
    }
}

/// First, synchronous half of an assembly (app thread): opens and claims both bases and creates
/// the volume thread. The volume is `Assembling`; on failure, `Waiting` again.
pub fn prepare(name: &str) -> Result<Arc<Vbdev>, Error> {
    assert_app_thread("assembly::prepare");
    let cfg = registry::begin_assembly(name)?;
    prepare_bases(cfg).inspect_err(|_| registry::assembly_failed(name))
}

fn prepare_bases(cfg: Config) -> Result<Arc<Vbdev>, Error> {
    let open = |bdev: &str, role| {
        BaseDesc::open(
            bdev,
            &cfg.name,
            module::get(),
            teardown::on_base_event,
            true,
        )
        .map_err(|err| Error::Base { role, err })
    };
    let cache = open(&cfg.cache_bdev, Role::Cache)?;
    let backing = match open(&cfg.backing_bdev, Role::Backing) {
        Ok(b) => b,
        Err(e) => {
            cache.close();
            return Err(e);
        }
    };
    match volume_thread(&cfg, &cache, &backing) {
        Ok((thread, blocklen, shared)) => Ok(Vbdev::new(VbdevParts {
            cfg,
            thread,
            blocklen,
            align_log2: cache.align_log2.max(backing.align_log2),
            shared,
            cache,
            backing,
        })),
        Err(e) => {
            cache.close();
            backing.close();
            Err(e)
        }
    }
}

/// Checks the geometry and the cpumask, probes both bases' durability and creates the volume
/// thread.
fn volume_thread(
    cfg: &Config,
    cache: &BaseDesc,
    backing: &BaseDesc,
) -> Result<(SpdkThread, u32, Arc<Shared>), Error> {
    let blocklen = cache.blocklen.max(backing.blocklen).max(512);
    if blocklen > MAX_BLOCKLEN || !blocklen.is_power_of_two() {
        return Err(Error::BlockSize {
            blocklen,
            cache_bdev: cache.name.clone(),
            cache_blocklen: cache.blocklen,
            backing_bdev: backing.name.clone(),
            backing_blocklen: backing.blocklen,
            max: MAX_BLOCKLEN,
        });
    }
    let mask = super::cpumask::for_volume(cfg.cpumask.as_deref()).map_err(Error::Cpumask)?;
    let cache_durability = super::durability::probe(cache);
    let backing_durability = super::durability::probe(backing);
    cache_durability.log_at_create(&cfg.name, super::durability::Role::Cache);
    backing_durability.log_at_create(&cfg.name, super::durability::Role::Backing);
    let tname = cstring(&format!("writeboost_{}", cfg.name));
    // SAFETY: valid name and cpumask (both copied by SPDK). Never a NULL mask: the thread must
    // not land on a reactor the application may block (cpumask.rs).
    let thread = unsafe { sys::spdk_thread_create(tname.as_ptr(), mask.raw()) };
    let thread = SpdkThread::from_raw(thread).ok_or(Error::NoThread {
        what: "the volume thread",
    })?;
    let shared = Arc::new(Shared {
        name: cfg.name.clone(),
        cache_bdev: cfg.cache_bdev.clone(),
        backing_bdev: cfg.backing_bdev.clone(),
        snapshot: Mutex::new(Value::Null),
        io_buffers_dma: AtomicBool::new(false),
        cpumask: mask.to_hex(),
        cpumask_requested: cfg.cpumask.clone(),
        cache_durability,
        backing_durability,
    });
    Ok((thread, blocklen, shared))
}

/// Second, asynchronous half (app thread): replay on the volume thread, then register.
pub fn launch(vb: Arc<Vbdev>, done: AssembleDone) {
    let app = vb.app.get();
    *app.assemble_done.borrow_mut() = Some(done);
    let opts = CreateOptions {
        options: vb.cfg.options.clone(),
        segment_size_kib: vb.cfg.segment_size_kib,
        force_format: vb.cfg.force_format,
        new_format_uuid: new_format_uuid(),
        ..CreateOptions::default()
    };
    let handles = app.handles.clone();
    let v = vb.clone();
    vb.thread.send(move || vol_start(v, handles, opts));
}

/// Volume thread: channels, executor, replay.
fn vol_start(
    vb: Arc<Vbdev>,
    (cache, backing): (super::base::BaseHandle, super::base::BaseHandle),
    opts: CreateOptions,
) {
    let rt = SpdkRt::new();
    let inflight = Rc::new(Cell::new(0u64));
    let ctx = Rc::new(VolCtx::new(vb.clone(), rt.clone(), inflight.clone()));
    vb.set_ctx(&ctx);
    let w = Rc::downgrade(&ctx);
    ctx.pollers
        .borrow_mut()
        .push(Poller::register("wb_exec", 0, move || {
            w.upgrade().map(|c| c.exec_poll()).unwrap_or(false)
        }));
    let cache = SpdkDevice::new(cache, rt.clone(), inflight.clone());
    let backing = SpdkDevice::new(backing, rt.clone(), inflight.clone());
    let (Some(cache), Some(backing)) = (cache, backing) else {
        let err = Error::NoChannel {
            what: "I/O channels of the base bdevs",
        };
        return SpdkThread::app().send(move || assembled(vb, Err(err)));
    };
    let c2 = ctx.clone();
    rt.spawn_then(
        Volume::create(cache, backing, rt.clone(), opts),
        move |r| match r {
            Ok((vol, startup)) => {
                let dma = super::dma::is_dma_memory(&AlignedBuf::for_overwrite(4096));
                vb.shared.io_buffers_dma.store(dma, Ordering::Relaxed);
                if !dma {
                    wb_warn!("I/O buffers are not DMA-able memory: bdevs that DMA from their buffers (local PCIe NVMe) will fail I/O");
                }
                start_pollers(&c2, &vol);
                let st = vol.status();
                let size_bytes = vol.size_sectors() * 512;
                *c2.vol.borrow_mut() = Some(vol);
                c2.refresh_snapshot();
                let info = Assembled {
                    startup,
                    format_uuid: st.format_uuid.clone(),
                    size_bytes,
                    segment_size_kib: st.segment_size_kib,
                    nr_dirty: st.nr_dirty_cache_blocks,
                };
                SpdkThread::app().send(move || assembled(vb, Ok(info)));
            }
            Err(e) => SpdkThread::app().send(move || assembled(vb, Err(Error::Create(e)))),
        },
    );
    ctx.rt.turn();
}

fn start_pollers(ctx: &Rc<VolCtx>, vol: &Vol) {
    let mut p = ctx.pollers.borrow_mut();
    type Step = fn(&Vol) -> bool;
    let steps: [(&str, u64, Step); 4] = [
        ("wb_flush", 100, |v| v.poll_flush()),
        ("wb_writeback", 1_000, |v| v.poll_writeback()),
        ("wb_sb_record", 100_000, |v| v.poll_sb_record()),
        ("wb_sync", 100_000, |v| v.poll_sync()),
    ];
    for (name, period_us, step) in steps {
        let w = Rc::downgrade(ctx);
        let vol = vol.clone();
        p.push(Poller::register(name, period_us, move || {
            let busy = step(&vol);
            if let Some(c) = w.upgrade() {
                c.rt.turn();
            }
            busy
        }));
    }
}

struct Assembled {
    startup: Startup,
    format_uuid: String,
    size_bytes: u64,
    segment_size_kib: u32,
    nr_dirty: u64,
}

/// App thread: the volume thread finished `Volume::create`; register the bdev.
fn assembled(vb: Arc<Vbdev>, r: Result<Assembled, Error>) {
    let app = vb.app.get();
    let info = match r {
        Ok(_) if !registry::may_register(&vb.name) => {
            *app.failure.borrow_mut() = Some(Error::RemovedWhileCreating);
            return teardown::begin(vb);
        }
        Ok(i) => i,
        Err(e) => {
            *app.failure.borrow_mut() = Some(e);
            return teardown::begin(vb);
        }
    };
    let ctxt = Arc::as_ptr(&vb) as *mut c_void;
    // SAFETY: not registered yet; the strings the struct points to live in the Vbdev, which
    // outlives the bdev (freed after destruct_done and the io_device's unregistration).
    unsafe {
        vb.bdev().init(|b| {
            b.name = vb.cname.as_ptr() as *mut _;
            b.product_name = module::MODULE_NAME.as_ptr() as *mut _;
            b.write_cache = 1;
            b.blocklen = vb.blocklen;
            b.blockcnt = info.size_bytes / vb.blocklen as u64;
            b.required_alignment = vb.align_log2;
            b.uuid = volume_uuid(&info.format_uuid, &vb.name);
            b.ctxt = ctxt;
            b.fn_table = module::fn_table();
            b.module = module::get();
        })
    };
    // SPDK's reference to the Vbdev (the io_device and the bdev's ctxt), released when the
    // io_device is unregistered (teardown.rs).
    let spdk_ref = Arc::into_raw(vb.clone()) as *mut c_void;
    // SAFETY: a unique, stable address (an Arc kept alive by the reference just taken); the
    // callbacks match the io_device contract.
    unsafe {
        sys::spdk_io_device_register(
            spdk_ref,
            Some(super::io::channel_create),
            Some(super::io::channel_destroy),
            super::io::CHANNEL_CTX_SIZE,
            vb.cname.as_ptr(),
        );
    }
    app.io_device.set(true);
    // SAFETY: fully initialised bdev, app thread.
    let rc = unsafe { sys::spdk_bdev_register(vb.bdev_ptr()) };
    if rc != 0 {
        *app.failure.borrow_mut() = Some(Error::Register { rc });
        return teardown::begin(vb);
    }
    registry::running(&vb, info.segment_size_kib);
    wb_notice!(
        "volume {}: {} (format {}, {} dirty blocks), cache {} backing {}",
        vb.name,
        match info.startup {
            Startup::Formatted => "formatted a new cache",
            Startup::Resumed => "resumed",
        },
        info.format_uuid,
        info.nr_dirty,
        vb.shared.cache_bdev,
        vb.shared.backing_bdev
    );
    let done = app.assemble_done.borrow_mut().take();
    if let Some(d) = done {
        d(Ok(vb.name.clone()));
    }
}
