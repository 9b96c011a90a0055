//! The I/O path between SPDK's submitting threads and a volume's thread: the per-I/O context,
//! the channels, submission and completion.
//!
//! No allocation and no thread message per I/O: the submitting thread pushes the bdev_io onto
//! the volume's submission queue (linked through the bdev_io's `driver_ctx`); the volume
//! thread's `wb_exec` poller takes the whole queue each reactor iteration and starts every I/O
//! in the engine (`dispatch.rs`). A finished I/O goes onto the completion queue of the channel
//! it came through, and that channel's poller (`wb_complete_<name>`, on the submitting thread)
//! completes the batch. I/O submitted on the volume thread itself is completed directly.
//!
//! - `queue`: the lock-free queues (pure Rust, unit-tested without SPDK);
//! - `dispatch`: the volume thread's side: an I/O into the engine, with bounce buffers.

pub mod dispatch;
pub mod queue;

use super::exec::Poller;
use super::ffi::{guard, wb_error};
use super::volume::Vbdev;
use queue::{IoBatch, IoQueue, Node};
use std::cell::Cell;
use std::ffi::c_void;
use writeboost_spdk_sys as sys;

/// The queue of bdev_ios (submission queue of a volume, completion queue of a channel).
pub type BdevIoQueue = IoQueue<sys::spdk_bdev_io>;
pub type BdevIoBatch = IoBatch<sys::spdk_bdev_io>;

/// Our part of every bdev_io, in its `driver_ctx` (`ctx_size`). Written by `submit_request` on
/// the submitting thread before the I/O goes anywhere.
#[repr(C)]
struct IoCtx {
    /// Link of the queue the bdev_io sits in (submission or completion queue).
    next: *mut sys::spdk_bdev_io,
    /// Completion queue of the submitting thread's channel; null when the I/O was submitted on
    /// the volume thread itself (then it is completed directly).
    chan: *const ChanCtx,
    /// The result, while the I/O sits in a completion queue.
    ok: bool,
}

/// Bytes of `driver_ctx` the module asks for (`get_ctx_size`).
pub fn ctx_size() -> usize {
    std::mem::size_of::<IoCtx>()
}

/// The module context of `io`.
///
/// # Safety
/// `io` must be a live bdev_io of our bdev (its driver_ctx holds `ctx_size` bytes).
unsafe fn io_ctx(io: *mut sys::spdk_bdev_io) -> *mut IoCtx {
    // SAFETY: per the contract; driver_ctx is cache-line aligned, enough for IoCtx.
    unsafe { (&raw mut (*io).driver_ctx) as *mut IoCtx }
}

// SAFETY: `IoCtx::next` is used by the queues only; the driver_ctx lives as long as the bdev_io.
// Only bdev_ios of our bdev are ever queued (submit_request, complete).
unsafe impl Node for sys::spdk_bdev_io {
    unsafe fn link(io: *mut Self) -> *mut *mut Self {
        // SAFETY: a live bdev_io of ours (contract).
        unsafe { &raw mut (*io_ctx(io)).next }
    }
    unsafe fn abandoned(io: *mut Self) {
        complete(io, false);
    }
}

/// Per-channel context (one per submitting thread): the completion queue the volume thread
/// fills and the poller of the channel's thread that completes what it holds. Lives in a Box
/// whose pointer is the 8-byte context of our `spdk_io_channel`.
struct ChanCtx {
    done: BdevIoQueue,
    /// Owning thread only.
    poller: Cell<Option<Poller>>,
}

/// Bytes of our channel context (`spdk_io_device_register`): a pointer to the [`ChanCtx`].
pub const CHANNEL_CTX_SIZE: u32 = std::mem::size_of::<*mut c_void>() as u32;

/// A thread gets our channel: its completion queue and the poller that drains it.
pub unsafe extern "C" fn channel_create(io_device: *mut c_void, ctx: *mut c_void) -> i32 {
    guard("channel_create", || {
        let chan = Box::into_raw(Box::new(ChanCtx {
            done: IoQueue::new(),
            poller: Cell::new(None),
        }));
        // SAFETY: io_device is our registered Vbdev (alive until its io_device is unregistered,
        // after every channel is destroyed); only its immutable name is read.
        let name = unsafe { &(*(io_device as *const Vbdev)).name };
        let cp = chan as *const ChanCtx;
        let poller = Poller::register(&format!("wb_complete_{name}"), 0, move || {
            // SAFETY: the ChanCtx is freed in channel_destroy only after this poller is
            // unregistered, on this same thread.
            complete_queued(unsafe { &*cp })
        });
        // SAFETY: chan is the fresh box; ctx is our 8-byte channel context, owned by this channel
        // until channel_destroy.
        unsafe {
            (*chan).poller.set(Some(poller));
            *(ctx as *mut *mut ChanCtx) = chan;
        }
        0
    })
}

pub unsafe extern "C" fn channel_destroy(_io_device: *mut c_void, ctx: *mut c_void) {
    guard("channel_destroy", || {
        // SAFETY: the pointer channel_create stored; destroy runs on the channel's thread, once.
        let chan = unsafe { Box::from_raw(*(ctx as *mut *mut ChanCtx)) };
        drop(chan.poller.take());
        // SPDK destroys a channel only once no I/O submitted through it is outstanding, so the
        // queue is empty. Completing a straggler now would touch the already destroyed bdev
        // channel; it is reported instead (and leaked).
        let mut left = chan.done.take();
        let n = left.by_ref().count();
        if n > 0 {
            wb_error!("{n} finished I/O left on a destroyed channel; not completed");
        }
    });
}

fn io_status(ok: bool) -> sys::spdk_bdev_io_status {
    if ok {
        sys::SPDK_BDEV_IO_STATUS_SUCCESS
    } else {
        sys::SPDK_BDEV_IO_STATUS_FAILED
    }
}

/// Completes an I/O that reached the volume thread (or one of its batches): directly when it
/// was submitted on this thread, else through the submitting channel's completion queue.
pub fn complete(io: *mut sys::spdk_bdev_io, ok: bool) {
    // SAFETY: io is a bdev_io submitted to us and not completed yet; its IoCtx was written at
    // submission.
    let chan = unsafe {
        let c = io_ctx(io);
        (*c).ok = ok;
        (*c).chan
    };
    if chan.is_null() {
        // SAFETY: a live bdev_io of ours, not completed.
        debug_assert!(unsafe { vbdev_of(io) }.thread.is_current());
        // SAFETY: submitted on this very thread: complete it here, once.
        unsafe { sys::spdk_bdev_io_complete(io, io_status(ok)) };
        return;
    }
    // SAFETY: the channel the I/O came through outlives it: SPDK destroys a channel only once
    // no I/O submitted through it is outstanding, and this one is outstanding until its thread
    // completes it from the queue. After the push neither io nor chan is touched here. The
    // completion queue is never closed.
    let queued = unsafe { (*chan).done.push(io) };
    debug_assert!(queued);
}

/// The channel's thread: completes every I/O the volume thread finished. True if any.
fn complete_queued(chan: &ChanCtx) -> bool {
    let batch = chan.done.take();
    if batch.is_empty() {
        return false;
    }
    for io in batch {
        // SAFETY: a finished I/O submitted on this thread, taken from its completion queue: it
        // is completed here, once, with the result the volume thread stored.
        unsafe { sys::spdk_bdev_io_complete(io, io_status((*io_ctx(io)).ok)) };
    }
    true
}

/// The Vbdev of one of our bdev_ios.
///
/// # Safety
/// `io` is a live bdev_io of our bdev, not completed yet (its bdev, whose `ctxt` is the Vbdev,
/// is registered, which keeps the Vbdev alive).
unsafe fn vbdev_of<'a>(io: *mut sys::spdk_bdev_io) -> &'a Vbdev {
    // SAFETY: per the contract.
    unsafe { &*((*(*io).bdev).ctxt as *const Vbdev) }
}

/// Submitting thread: hands `io` (its IoCtx written) to the volume thread, or fails it at once
/// when the volume is stopping.
fn submit(io: *mut sys::spdk_bdev_io) {
    // SAFETY: a live bdev_io of ours, not completed.
    let vb = unsafe { vbdev_of(io) };
    // SAFETY: io is live, ours, in no queue.
    if !unsafe { vb.subq.push(io) } {
        // SAFETY: on the submitting thread, not completed yet.
        unsafe { sys::spdk_bdev_io_complete(io, sys::SPDK_BDEV_IO_STATUS_FAILED) };
    }
}

unsafe extern "C" fn get_buf_done(
    _ch: *mut sys::spdk_io_channel,
    io: *mut sys::spdk_bdev_io,
    success: bool,
) {
    guard("get_buf", || {
        if success {
            submit(io);
        } else {
            // SAFETY: on the submitting thread, not completed yet.
            unsafe { sys::spdk_bdev_io_complete(io, sys::SPDK_BDEV_IO_STATUS_FAILED) };
        }
    });
}

/// `fn_table.submit_request`: any thread.
pub unsafe extern "C" fn submit_request(ch: *mut sys::spdk_io_channel, io: *mut sys::spdk_bdev_io) {
    guard("submit_request", || {
        // SAFETY: io is a live bdev_io for our bdev; reading its request fields.
        let (needs_buf, len, vb) = unsafe {
            let b = &(*io).u.bdev;
            let needs_buf = (*io).type_ as u32 == sys::SPDK_BDEV_IO_TYPE_READ
                && (b.iovcnt == 0 || (*b.iovs).iov_base.is_null());
            (
                needs_buf,
                b.num_blocks * (*(*io).bdev).blocklen as u64,
                vbdev_of(io),
            )
        };
        let chan = if vb.thread.is_current() {
            std::ptr::null()
        } else {
            // SAFETY: ch is our channel on this thread; channel_create stored a ChanCtx pointer
            // in its context.
            unsafe { *(sys::wb_shim_io_channel_get_ctx(ch) as *const *const ChanCtx) }
        };
        // SAFETY: our driver_ctx, not in use before this point.
        unsafe {
            io_ctx(io).write(IoCtx {
                next: std::ptr::null_mut(),
                chan,
                ok: false,
            })
        };
        if needs_buf {
            // SAFETY: on the submitting thread, as required.
            unsafe { sys::spdk_bdev_io_get_buf(io, Some(get_buf_done), len) };
        } else {
            submit(io);
        }
    });
}
