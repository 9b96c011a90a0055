//! Teardown of a volume, the assembly in reverse, across the volume thread and the app thread:
//! after SPDK's `destruct` (delete, hot-remove of a base, application shutdown) or a failed
//! assembly.
//!
//! volume thread: wait for user I/O and management operations, clean `shutdown()`, drop the
//! volume (puts channels), unregister pollers, `spdk_thread_exit` (`vol_stop`, `vol_finish`)
//! -> app: release+close bases, unregister the io_device, `destruct_done`, the registry's
//! `finished`, the assembly's reply if it failed (`app_finish`, `finish`).

use super::error::Error;
use super::exec::Poller;
use super::ffi::{defer, guard, wb_error, wb_notice, wb_warn, SpdkThread};
use super::registry;
use super::volume::Vbdev;
use std::ffi::c_void;
use std::sync::Arc;
use writeboost_spdk_sys as sys;

/// Base event (app thread): a removed base unregisters the volume; its entry stays, so the
/// volume comes back (resuming the dirty data on its cache) when the base reappears.
pub fn on_base_event(volume: &str, base: &str, remove: bool) {
    if !remove {
        return;
    }
    if let Some(vb) = registry::hot_remove(volume) {
        wb_warn!("volume {volume}: base bdev {base} is being removed; unregistering the volume (dirty data stays on the cache for the next create)");
        // SAFETY: vb is registered (it was Running) and its teardown has not started (it starts
        // from the destruct this unregister causes); app thread.
        unsafe { sys::spdk_bdev_unregister(vb.bdev_ptr(), None, std::ptr::null_mut()) };
    }
}

/// `fn_table.destruct` (app thread): SPDK is done with the bdev; finish asynchronously.
pub fn destruct(vb: Arc<Vbdev>) {
    vb.app.get().destructing.set(true);
    registry::destructing(&vb);
    begin(vb);
}

/// App thread: starts taking the volume down (after destruct, or a failed assembly).
pub fn begin(vb: Arc<Vbdev>) {
    let app = vb.app.get();
    assert!(
        !app.teardown_started.replace(true),
        "teardown started twice"
    );
    let v = vb.clone();
    vb.thread.send(move || vol_stop(v));
}

/// Volume thread: let user I/O and management operations finish, then shut down cleanly.
fn vol_stop(vb: Arc<Vbdev>) {
    let Some(ctx) = vb.ctx() else {
        return vol_finish(vb);
    };
    let c2 = ctx.clone();
    let v = vb.clone();
    ctx.rt.spawn_then(
        async move {
            // User I/O: wait until none is in flight, then close the submission queue (later
            // submissions fail at once instead of racing with the shutdown). I/O found queued
            // at the close is started, and waited for, like any other.
            loop {
                c2.user_io.zero().await;
                if !c2.start_batch(v.subq.close()) {
                    break;
                }
            }
            c2.mgmt.zero().await;
            let vol = c2.vol.borrow().clone();
            if let Some(vol) = vol {
                let name = &v.name;
                match vol.shutdown().await {
                    Ok(()) => wb_notice!(
                        "volume {name}: stopped cleanly; {} dirty blocks stay on the cache for the next create",
                        vol.status().nr_dirty_cache_blocks
                    ),
                    Err(e) => wb_error!(
                        "volume {name}: clean shutdown failed: {e}; the next create replays the log"
                    ),
                }
            }
        },
        move |()| defer(move || vol_finish(vb)),
    );
    ctx.rt.turn();
}

/// Volume thread, in a message (not inside a poller): drop everything and exit the thread.
fn vol_finish(vb: Arc<Vbdev>) {
    // Normally closed and empty already (vol_stop); without a volume context (failed assembly)
    // this is the close. Nothing may stay queued once this thread exits.
    for io in vb.subq.close() {
        super::io::complete(io, false);
    }
    if let Some(ctx) = vb.ctx() {
        if ctx.dev_inflight.get() > 0 {
            // A base operation is still in flight: its buffer must outlive it. Try again.
            ctx.rt.turn();
            return defer(move || vol_finish(vb));
        }
        ctx.vol.borrow_mut().take();
        let pollers: Vec<Poller> = ctx.pollers.borrow_mut().drain(..).collect();
        drop(pollers);
        ctx.rt.clear();
        drop(ctx);
        drop(vb.take_ctx());
    }
    vb.thread.assert_current("vol_finish");
    // SAFETY: called on the volume thread itself, once (its last message: nothing is sent here
    // once the teardown started, see `on_volume`).
    unsafe { sys::spdk_thread_exit(vb.thread.as_ptr()) };
    SpdkThread::app().send(move || app_finish(vb));
}

/// App thread: close the bases, then unregister the io_device.
fn app_finish(vb: Arc<Vbdev>) {
    let app = vb.app.get();
    if let Some(b) = app.cache.borrow_mut().take() {
        b.close();
    }
    if let Some(b) = app.backing.borrow_mut().take() {
        b.close();
    }
    if app.io_device.get() {
        // SAFETY: registered by `assembled` with this address (SPDK's reference, which the
        // callback releases).
        unsafe {
            sys::spdk_io_device_unregister(
                Arc::as_ptr(&vb) as *mut c_void,
                Some(io_device_unregistered),
            )
        };
    } else {
        finish(&vb);
    }
}

unsafe extern "C" fn io_device_unregistered(io_device: *mut c_void) {
    guard("io_device unregister", || {
        // SAFETY: the reference `assembled` leaked for SPDK with Arc::into_raw; SPDK is done
        // with it (every channel destroyed, the io_device gone), so it is released here, once.
        let vb = unsafe { Arc::from_raw(io_device as *const Vbdev) };
        finish(&vb);
    });
}

/// App thread: the last step. SPDK no longer refers to the volume; the Vbdev is freed when the
/// last `Arc` goes (here or in the registry).
fn finish(vb: &Arc<Vbdev>) {
    let app = vb.app.get();
    registry::finished(vb);
    if app.destructing.get() {
        // SAFETY: our registered bdev finishing its asynchronous destruct.
        unsafe { sys::spdk_bdev_destruct_done(vb.bdev_ptr(), 0) };
    }
    let failure = app.failure.borrow_mut().take();
    let done = app.assemble_done.borrow_mut().take();
    if let Some(d) = done {
        d(Err(failure.unwrap_or_else(|| Error::Cancelled {
            name: vb.name.clone(),
        })));
    }
}
