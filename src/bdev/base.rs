//! The two base bdevs: opening and claiming them (app thread), and [`SpdkDevice`], the engine's
//! [`BlockDevice`] over a descriptor and an I/O channel of the volume thread.
//!
//! Completions arrive on the thread that submitted (the volume thread): the callback records the
//! result in the operation's slot and wakes its waker. `-ENOMEM` from the bdev layer is answered
//! with `spdk_bdev_queue_io_wait`, and the operation is resubmitted when an I/O frees up.

use super::exec::SpdkRt;
use super::ffi::{cstring, guard, wb_notice, SpdkThread};
use crate::device::{BlockDevice, DeviceError, DeviceInfo, DeviceOp, IoBuf, IoBufMut, IoResult};
use crate::runtime::Runtime;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::ffi::{c_void, CStr};
use std::rc::Rc;
use std::task::{Poll, Waker};
use writeboost_spdk_sys as sys;

/// Why a base could not be opened: SPDK's return code (a negative errno) and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseError {
    pub rc: i32,
    pub msg: String,
}

/// An open, claimed base bdev. Opened and closed on the same thread (the app thread).
pub struct BaseDesc {
    /// The opening thread: SPDK delivers events there, and the descriptor is closed there.
    opener: SpdkThread,
    pub name: String,
    pub desc: *mut sys::spdk_bdev_desc,
    pub bdev: *mut sys::spdk_bdev,
    pub info: DeviceInfo,
    pub blocklen: u32,
    pub align_log2: u8,
    pub supports_flush: bool,
    pub supports_unmap: bool,
    claimed: bool,
    /// The event callback's context (the volume name), freed after close.
    event_ctx: *mut EventCtx,
}

pub type EventFn = fn(volume: &str, base: &str, remove: bool);

struct EventCtx {
    volume: String,
    base: String,
    f: EventFn,
}

unsafe extern "C" fn base_event_cb(
    ty: sys::spdk_bdev_event_type,
    _bdev: *mut sys::spdk_bdev,
    ctx: *mut c_void,
) {
    // SAFETY: ctx is the EventCtx box owned by the BaseDesc, freed only after the descriptor is
    // closed; events are delivered on the opening (app) thread.
    let ctx = unsafe { &*(ctx as *const EventCtx) };
    guard("base bdev event", || match ty {
        sys::SPDK_BDEV_EVENT_REMOVE => (ctx.f)(&ctx.volume, &ctx.base, true),
        other => wb_notice!(
            "volume {}: event {other} on base bdev {} ignored",
            ctx.volume,
            ctx.base
        ),
    });
}

/// The name of `bdev`.
///
/// # Safety
/// `bdev` is a registered bdev (SPDK's pointer, valid for the call).
pub unsafe fn bdev_name(bdev: *const sys::spdk_bdev) -> String {
    // SAFETY: bdev is a registered bdev (contract); its name is a NUL-terminated string it owns.
    unsafe { CStr::from_ptr(sys::spdk_bdev_get_name(bdev)) }
        .to_string_lossy()
        .into_owned()
}

pub fn bdev_exists(name: &str) -> bool {
    let c = cstring(name);
    // SAFETY: lookup by a valid C string.
    !unsafe { sys::spdk_bdev_get_by_name(c.as_ptr()) }.is_null()
}

/// Name of the module holding a claim on `name`, if any. App thread (which owns claims).
pub fn claimed_by(name: &str) -> Option<String> {
    super::ffi::assert_app_thread("claimed_by");
    let c = cstring(name);
    // SAFETY: lookup by a valid C string; the returned bdev is only read here, on the app thread.
    unsafe {
        let bdev = sys::spdk_bdev_get_by_name(c.as_ptr());
        if bdev.is_null() {
            return None;
        }
        let ty = (*bdev).internal.claim_type;
        if ty == sys::SPDK_BDEV_CLAIM_NONE {
            return None;
        }
        let m = (*bdev).internal.claim.v1.module;
        if ty != sys::SPDK_BDEV_CLAIM_EXCL_WRITE || m.is_null() || (*m).name.is_null() {
            let kind = CStr::from_ptr(sys::spdk_bdev_claim_get_name(ty)).to_string_lossy();
            return Some(format!("another module ({kind} claim)"));
        }
        Some(format!(
            "module {}",
            CStr::from_ptr((*m).name).to_string_lossy()
        ))
    }
}

/// What the volume thread needs of an open base: plain handles, valid until the base is closed
/// (which happens only after the volume thread is done).
#[derive(Clone)]
pub struct BaseHandle {
    desc: *mut sys::spdk_bdev_desc,
    bdev: *mut sys::spdk_bdev,
    info: DeviceInfo,
    supports_flush: bool,
    supports_unmap: bool,
}

// Send: see ffi.rs (every `unsafe impl Send` lives there).

impl BaseDesc {
    pub fn handle(&self) -> BaseHandle {
        BaseHandle {
            desc: self.desc,
            bdev: self.bdev,
            info: self.info.clone(),
            supports_flush: self.supports_flush,
            supports_unmap: self.supports_unmap,
        }
    }

    /// Opens `name` read-write and claims it for `module` (exclusive write).
    pub fn open(
        name: &str,
        volume: &str,
        module: *mut sys::spdk_bdev_module,
        on_event: EventFn,
        claim: bool,
    ) -> Result<BaseDesc, BaseError> {
        let c = cstring(name);
        let ctx = Box::into_raw(Box::new(EventCtx {
            volume: volume.to_string(),
            base: name.to_string(),
            f: on_event,
        }));
        let mut desc: *mut sys::spdk_bdev_desc = std::ptr::null_mut();
        // SAFETY: valid name, callback and out-pointer; ctx stays alive until close.
        let rc = unsafe {
            sys::spdk_bdev_open_ext(
                c.as_ptr(),
                true,
                Some(base_event_cb),
                ctx as *mut c_void,
                &mut desc,
            )
        };
        if rc != 0 {
            // SAFETY: the open failed, nobody else holds ctx.
            drop(unsafe { Box::from_raw(ctx) });
            let msg = if rc == -libc::ENODEV {
                format!("bdev '{name}' does not exist")
            } else {
                format!("cannot open bdev '{name}': {}", super::ffi::strerror(rc))
            };
            return Err(BaseError { rc, msg });
        }
        // SAFETY: desc was just opened successfully.
        let bdev = unsafe { sys::spdk_bdev_desc_get_bdev(desc) };
        // SAFETY: bdev is open; plain getters and a field read.
        let (blocklen, align_log2, supports_flush, supports_unmap) = unsafe {
            (
                sys::spdk_bdev_get_block_size(bdev),
                (*bdev).required_alignment,
                sys::spdk_bdev_io_type_supported(bdev, sys::SPDK_BDEV_IO_TYPE_FLUSH),
                sys::spdk_bdev_io_type_supported(bdev, sys::SPDK_BDEV_IO_TYPE_UNMAP),
            )
        };
        let mut base = BaseDesc {
            opener: SpdkThread::current().expect("bdevs are opened on an SPDK thread"),
            name: name.to_string(),
            desc,
            bdev,
            // SAFETY: bdev was just opened.
            info: unsafe { device_info(bdev) },
            blocklen,
            align_log2,
            supports_flush,
            supports_unmap,
            claimed: false,
            event_ctx: ctx,
        };
        if claim {
            // SAFETY: bdev and desc are open; module is our registered, 'static module.
            let rc = unsafe { sys::spdk_bdev_module_claim_bdev(bdev, desc, module) };
            if rc != 0 {
                let msg = match claimed_by(name) {
                    Some(holder) => format!("bdev '{name}' is already claimed by {holder}"),
                    None => format!("cannot claim bdev '{name}': {}", super::ffi::strerror(rc)),
                };
                base.close();
                return Err(BaseError { rc, msg });
            }
            base.claimed = true;
        }
        Ok(base)
    }

    /// Releases the claim and closes the descriptor; panics off the opening thread.
    pub fn close(mut self) {
        self.opener.assert_current("BaseDesc::close");
        // SAFETY: we opened desc on this thread and claimed bdev with it; after close no event
        // can arrive, so the event context can be freed.
        unsafe {
            if self.claimed {
                sys::spdk_bdev_module_release_bdev(self.bdev);
                self.claimed = false;
            }
            sys::spdk_bdev_close(self.desc);
            drop(Box::from_raw(self.event_ctx));
        }
    }
}

/// # Safety
/// `bdev` is open.
unsafe fn device_info(bdev: *mut sys::spdk_bdev) -> DeviceInfo {
    // SAFETY: bdev is open (contract); these are plain getters.
    let (blocklen, blocks, uuid) = unsafe {
        let u = sys::spdk_bdev_get_uuid(bdev);
        let uuid = if u.is_null() { [0u8; 16] } else { (*u).u.raw };
        (
            sys::spdk_bdev_get_block_size(bdev),
            sys::spdk_bdev_get_num_blocks(bdev),
            uuid,
        )
    };
    DeviceInfo {
        // SAFETY: bdev is open (contract).
        name: unsafe { bdev_name(bdev) },
        size_bytes: blocks * blocklen as u64,
        block_size_bytes: blocklen,
        uuid: (uuid != [0u8; 16]).then_some(uuid),
    }
}

/// One in-flight base operation and the buffer it owns (`()` for flush and unmap). Lives in an
/// `Rc` whose raw pointer is the callback argument: the bdev layer's reference keeps the buffer
/// alive (and in place) until the I/O completes, even when the engine dropped the operation's
/// future, so the device never reads or writes freed memory.
struct Slot<B> {
    result: Cell<Option<bool>>,
    retry: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    wait: UnsafeCell<sys::spdk_bdev_io_wait_entry>,
    buf: RefCell<Option<B>>,
}

impl<B> Slot<B> {
    fn new(buf: B) -> Rc<Slot<B>> {
        Rc::new(Slot {
            result: Cell::new(None),
            retry: Cell::new(false),
            waker: RefCell::new(None),
            wait: UnsafeCell::new(sys::spdk_bdev_io_wait_entry::default()),
            buf: RefCell::new(Some(buf)),
        })
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// The buffer back, once the operation completed (or was never submitted).
    fn take_buf(&self) -> B {
        self.buf
            .borrow_mut()
            .take()
            .expect("an operation's buffer is taken back once")
    }
}

unsafe extern "C" fn io_done<B>(bdev_io: *mut sys::spdk_bdev_io, success: bool, arg: *mut c_void) {
    // SAFETY: bdev_io is ours to free; arg is the Rc<Slot<B>> leaked at submission (one
    // reference per submission, reclaimed here exactly once).
    let slot = unsafe {
        sys::spdk_bdev_free_io(bdev_io);
        Rc::from_raw(arg as *const Slot<B>)
    };
    slot.result.set(Some(success));
    slot.wake();
}

unsafe extern "C" fn io_wait_done<B>(arg: *mut c_void) {
    // SAFETY: arg is the Rc<Slot<B>> leaked when queueing the wait entry, reclaimed once here.
    let slot = unsafe { Rc::from_raw(arg as *const Slot<B>) };
    slot.retry.set(true);
    slot.wake();
}

#[derive(Clone, Copy)]
enum Op {
    Read(*mut u8),
    Write(*const u8),
    Flush,
    Unmap,
}

/// The engine's view of a base bdev, on the volume thread.
pub struct SpdkDevice {
    desc: *mut sys::spdk_bdev_desc,
    bdev: *mut sys::spdk_bdev,
    ch: *mut sys::spdk_io_channel,
    info: DeviceInfo,
    supports_flush: bool,
    supports_unmap: bool,
    rt: SpdkRt,
    /// Operations in flight on both devices of the volume.
    inflight: Rc<Cell<u64>>,
    /// `-ENOMEM` answers from the bdev layer (logged once).
    nomem: Cell<u64>,
}

impl SpdkDevice {
    /// Gets an I/O channel for `base` on the calling (volume) thread.
    pub fn new(b: BaseHandle, rt: SpdkRt, inflight: Rc<Cell<u64>>) -> Option<SpdkDevice> {
        // SAFETY: desc is open (see BaseHandle); channels may be obtained from any thread.
        let ch = unsafe { sys::spdk_bdev_get_io_channel(b.desc) };
        if ch.is_null() {
            return None;
        }
        Some(SpdkDevice {
            desc: b.desc,
            bdev: b.bdev,
            ch,
            info: b.info,
            supports_flush: b.supports_flush,
            supports_unmap: b.supports_unmap,
            rt,
            inflight,
            nomem: Cell::new(0),
        })
    }

    fn issue<B>(&self, op: Op, offset: u64, len: u64, arg: *mut c_void) -> i32 {
        let io_done = Some(io_done::<B> as unsafe extern "C" fn(_, _, _));
        // SAFETY: desc/ch are open and belong to this thread; a buffer lives in the operation's
        // slot (arg), which the callback's reference keeps alive until the I/O completes.
        unsafe {
            match op {
                Op::Read(p) => sys::spdk_bdev_read(
                    self.desc,
                    self.ch,
                    p as *mut c_void,
                    offset,
                    len,
                    io_done,
                    arg,
                ),
                Op::Write(p) => sys::spdk_bdev_write(
                    self.desc,
                    self.ch,
                    p as *mut c_void,
                    offset,
                    len,
                    io_done,
                    arg,
                ),
                Op::Flush => sys::spdk_bdev_flush(self.desc, self.ch, offset, len, io_done, arg),
                Op::Unmap => sys::spdk_bdev_unmap(self.desc, self.ch, offset, len, io_done, arg),
            }
        }
    }

    async fn run<B>(
        &self,
        op: Op,
        dop: DeviceOp,
        offset_bytes: u64,
        len_bytes: u64,
        slot: &Rc<Slot<B>>,
    ) -> Result<(), DeviceError> {
        let err = DeviceError::Io {
            op: dop,
            offset_bytes,
            len_bytes,
        };
        self.inflight.set(self.inflight.get() + 1);
        let r = self
            .run_inner(op, dop, offset_bytes, len_bytes, err, slot)
            .await;
        self.inflight.set(self.inflight.get() - 1);
        r
    }

    async fn run_inner<B>(
        &self,
        op: Op,
        dop: DeviceOp,
        offset_bytes: u64,
        len_bytes: u64,
        err: DeviceError,
        slot: &Rc<Slot<B>>,
    ) -> Result<(), DeviceError> {
        loop {
            let arg = Rc::into_raw(slot.clone()) as *mut c_void;
            let rc = self.issue::<B>(op, offset_bytes, len_bytes, arg);
            if rc == 0 {
                break;
            }
            // SAFETY: the submission failed, so the callback will never reclaim arg.
            drop(unsafe { Rc::from_raw(arg as *const Slot<B>) });
            if rc != -libc::ENOMEM {
                return Err(match rc {
                    x if x == -libc::ENOTSUP => DeviceError::Unsupported { op: dop },
                    _ => err,
                });
            }
            // No spdk_bdev_io available: wait for one, then resubmit.
            self.nomem.set(self.nomem.get() + 1);
            if self.nomem.get() == 1 {
                wb_notice!(
                    "bdev {}: out of spdk_bdev_io; waiting with spdk_bdev_queue_io_wait (logged once)",
                    self.info.name
                );
            }
            slot.retry.set(false);
            let arg = Rc::into_raw(slot.clone()) as *mut c_void;
            // SAFETY: the entry lives in the Rc'd slot, kept alive by the leaked reference until
            // io_wait_done; it is only touched here and by the bdev layer.
            let rc = unsafe {
                let e = &mut *slot.wait.get();
                e.bdev = self.bdev;
                e.cb_fn = Some(io_wait_done::<B>);
                e.cb_arg = arg;
                e.dep_unblock = true;
                sys::spdk_bdev_queue_io_wait(self.bdev, self.ch, e)
            };
            if rc != 0 {
                // SAFETY: not queued, so io_wait_done will never reclaim arg.
                drop(unsafe { Rc::from_raw(arg as *const Slot<B>) });
                self.rt.sleep(100_000).await;
                continue;
            }
            std::future::poll_fn(|cx| {
                if slot.retry.get() {
                    return Poll::Ready(());
                }
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
        }
        let ok = std::future::poll_fn(|cx| match slot.result.get() {
            Some(ok) => Poll::Ready(ok),
            None => {
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if ok {
            Ok(())
        } else {
            Err(err)
        }
    }

    /// A read or write of `buf`: the buffer moves into the operation's slot first, so the
    /// pointer `op_of` gives the device stays valid for as long as the slot holds it, which is
    /// until the completion.
    async fn run_with_buf<B: IoBuf>(
        &self,
        dop: DeviceOp,
        offset_bytes: u64,
        buf: B,
        op_of: impl FnOnce(&mut B) -> Op,
    ) -> IoResult<B> {
        let len = buf.bytes().len() as u64;
        if let Err(e) = self.check(dop, offset_bytes, len) {
            return (buf, Err(e));
        }
        let slot = Slot::new(buf);
        let op = op_of(slot.buf.borrow_mut().as_mut().expect("in the slot"));
        let r = self.run(op, dop, offset_bytes, len, &slot).await;
        (slot.take_buf(), r)
    }

    fn check(&self, op: DeviceOp, offset_bytes: u64, len_bytes: u64) -> Result<(), DeviceError> {
        if offset_bytes
            .checked_add(len_bytes)
            .is_none_or(|e| e > self.info.size_bytes)
        {
            return Err(DeviceError::OutOfRange {
                op,
                offset_bytes,
                len_bytes,
            });
        }
        Ok(())
    }
}

impl Drop for SpdkDevice {
    fn drop(&mut self) {
        // SAFETY: the channel was obtained on this thread and no operation is in flight (the
        // volume is dropped only once the in-flight count is zero).
        unsafe { sys::spdk_put_io_channel(self.ch) };
    }
}

impl BlockDevice for SpdkDevice {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    async fn read<B: IoBufMut>(&self, offset_bytes: u64, buf: B) -> IoResult<B> {
        self.run_with_buf(DeviceOp::Read, offset_bytes, buf, |b| {
            Op::Read(b.bytes_mut().as_mut_ptr())
        })
        .await
    }

    async fn write<B: IoBuf>(&self, offset_bytes: u64, buf: B) -> IoResult<B> {
        self.run_with_buf(DeviceOp::Write, offset_bytes, buf, |b| {
            Op::Write(b.bytes().as_ptr())
        })
        .await
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        if !self.supports_flush {
            // No FLUSH support means no volatile write cache to flush.
            return Ok(());
        }
        let slot = Slot::new(());
        self.run(Op::Flush, DeviceOp::Flush, 0, self.info.size_bytes, &slot)
            .await
    }

    async fn discard(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), DeviceError> {
        self.check(DeviceOp::Discard, offset_bytes, len_bytes)?;
        if !self.supports_unmap {
            return Err(DeviceError::Unsupported {
                op: DeviceOp::Discard,
            });
        }
        let slot = Slot::new(());
        self.run(Op::Unmap, DeviceOp::Discard, offset_bytes, len_bytes, &slot)
            .await
    }
}
