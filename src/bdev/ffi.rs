//! Small safe wrappers over the raw SPDK bindings: logging, thread messages with closures, the
//! types that may cross SPDK threads (each `unsafe impl Send`/`Sync` of the crate lives here,
//! with its reason), and a panic guard for every callback from C.

use std::ffi::{c_void, CString};
use std::ptr::NonNull;
use writeboost_spdk_sys as sys;

pub use sys::spdk_thread;

/// An SPDK thread, as an address: any thread may message it or compare it with its own; only
/// SPDK dereferences it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SpdkThread(NonNull<spdk_thread>);

// SAFETY: the handle is an address that is never dereferenced in Rust; SPDK allows messaging a
// thread (`spdk_thread_send_msg`) from any thread.
unsafe impl Send for SpdkThread {}
// SAFETY: as above (no interior state).
unsafe impl Sync for SpdkThread {}

impl SpdkThread {
    /// The calling thread's SPDK thread (`None` outside SPDK threads).
    pub fn current() -> Option<SpdkThread> {
        NonNull::new(current_thread()).map(SpdkThread)
    }

    /// The application thread.
    pub fn app() -> SpdkThread {
        SpdkThread(NonNull::new(app_thread()).expect("the SPDK application thread exists"))
    }

    pub fn from_raw(t: *mut spdk_thread) -> Option<SpdkThread> {
        NonNull::new(t).map(SpdkThread)
    }

    pub fn as_ptr(self) -> *mut spdk_thread {
        self.0.as_ptr()
    }

    pub fn is_current(self) -> bool {
        current_thread() == self.as_ptr()
    }

    /// Panics (an abort, inside [`guard`]) unless called on this thread: the check every
    /// thread-only function makes.
    #[track_caller]
    pub fn assert_current(self, what: &str) {
        assert!(
            self.is_current(),
            "{what} called off its SPDK thread {:?} (on {:?})",
            self.0,
            current_thread()
        );
    }

    /// Runs `f` on this thread (asynchronously, even when it is the current thread).
    pub fn send<F: FnOnce() + Send + 'static>(self, f: F) {
        send_msg(self.as_ptr(), f)
    }
}

/// Panics unless called on the application thread.
#[track_caller]
pub fn assert_app_thread(what: &str) {
    SpdkThread::app().assert_current(what);
}

/// A value owned by one SPDK thread: reachable from a structure other threads share, but only
/// used on its owner (every access asserts it). An SPDK thread runs on one reactor at a time and
/// is handed between reactors with the synchronisation SPDK does, so `T` needs neither `Send`
/// nor `Sync` (the same rule that lets a volume keep `Rc`s on its thread).
pub struct ThreadCell<T> {
    owner: SpdkThread,
    value: std::mem::ManuallyDrop<T>,
}

// SAFETY: `value` is only reached through `get`, which asserts the owner thread, and dropped
// only on the owner (off it, it is leaked): no two threads ever touch it.
unsafe impl<T> Send for ThreadCell<T> {}
// SAFETY: as above; `&ThreadCell<T>` on another thread gives no access to `T`.
unsafe impl<T> Sync for ThreadCell<T> {}

impl<T> ThreadCell<T> {
    /// A value owned by `owner`.
    pub fn new(owner: SpdkThread, value: T) -> ThreadCell<T> {
        ThreadCell {
            owner,
            value: std::mem::ManuallyDrop::new(value),
        }
    }

    /// The value; panics off the owner thread.
    #[track_caller]
    pub fn get(&self) -> &T {
        self.owner.assert_current("ThreadCell::get");
        &self.value
    }
}

impl<T> Drop for ThreadCell<T> {
    fn drop(&mut self) {
        if self.owner.is_current() {
            // SAFETY: dropped once, here, on the owner thread.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.value) };
        } else {
            log(
                Level::Error,
                file!(),
                line!(),
                "thread-owned value dropped off its thread; leaked",
            );
        }
    }
}

/// A JSON-RPC request being answered: SPDK's handle, answered once, on the app thread.
#[derive(Clone, Copy)]
pub struct RpcRequest(NonNull<sys::spdk_jsonrpc_request>);

// SAFETY: an address that travels with the work done for the request (to a volume thread and
// back); it is only passed to SPDK's reply functions on the app thread (`RpcRequest::ptr`
// asserts it).
unsafe impl Send for RpcRequest {}

impl RpcRequest {
    pub fn new(p: *mut sys::spdk_jsonrpc_request) -> Option<RpcRequest> {
        NonNull::new(p).map(RpcRequest)
    }

    /// The request, for SPDK's reply functions. App thread only.
    #[track_caller]
    pub fn ptr(self) -> *mut sys::spdk_jsonrpc_request {
        assert_app_thread("RpcRequest::ptr");
        self.0.as_ptr()
    }
}

// SAFETY: a BaseHandle holds only addresses (descriptor, bdev) and plain data; the descriptor may
// be used from any thread to get an I/O channel, and the BaseDesc is closed only after the volume
// thread released its channels.
unsafe impl Send for super::base::BaseHandle {}

// SAFETY: a BaseDesc is plain data plus addresses; what must happen on the opening thread
// (events, release and close) does: events are delivered there by SPDK, and `BaseDesc::close`
// asserts it.
unsafe impl Send for super::base::BaseDesc {}

/// The `spdk_bdev` of a volume, embedded in its `Vbdev`: written in Rust only before
/// `spdk_bdev_register` (on the app thread), then SPDK's; Rust only hands out its address.
#[repr(transparent)]
pub struct BdevCell(std::cell::UnsafeCell<sys::spdk_bdev>);

// SAFETY: Rust writes the struct only through `BdevCell::init`, on the app thread before the bdev
// is registered (no other thread knows it yet); afterwards only its address is used, and SPDK
// synchronises its own accesses.
unsafe impl Sync for BdevCell {}
// SAFETY: as above (the pointers inside are SPDK's or point into the owning Vbdev).
unsafe impl Send for BdevCell {}

impl BdevCell {
    pub fn zeroed() -> BdevCell {
        // SAFETY: spdk_bdev is plain C data for which all-zero is the documented initial state.
        BdevCell(std::cell::UnsafeCell::new(unsafe { std::mem::zeroed() }))
    }

    pub fn as_ptr(&self) -> *mut sys::spdk_bdev {
        self.0.get()
    }

    /// Fills in the struct before `spdk_bdev_register`.
    ///
    /// # Safety
    /// The bdev is not registered yet (nobody else reads it) and `f` stores only pointers that
    /// stay valid until the bdev is destructed.
    pub unsafe fn init(&self, f: impl FnOnce(&mut sys::spdk_bdev)) {
        assert_app_thread("BdevCell::init");
        // SAFETY: unregistered, so this is the only access (contract).
        f(unsafe { &mut *self.0.get() })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Notice,
}

pub fn log(level: Level, file: &str, line: u32, msg: &str) {
    let lvl = match level {
        Level::Error => sys::SPDK_LOG_ERROR,
        Level::Warn => sys::SPDK_LOG_WARN,
        Level::Notice => sys::SPDK_LOG_NOTICE,
    };
    let file = cstring(file);
    let func = c"writeboost";
    let msg = cstring(msg);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; spdk_log
    // copies what it prints.
    unsafe { sys::wb_shim_log(lvl, file.as_ptr(), line as i32, func.as_ptr(), msg.as_ptr()) };
}

macro_rules! wb_error {
    ($($t:tt)*) => { $crate::bdev::ffi::log($crate::bdev::ffi::Level::Error, file!(), line!(), &format!($($t)*)) };
}
macro_rules! wb_warn {
    ($($t:tt)*) => { $crate::bdev::ffi::log($crate::bdev::ffi::Level::Warn, file!(), line!(), &format!($($t)*)) };
}
macro_rules! wb_notice {
    ($($t:tt)*) => { $crate::bdev::ffi::log($crate::bdev::ffi::Level::Notice, file!(), line!(), &format!($($t)*)) };
}
pub(crate) use {wb_error, wb_notice, wb_warn};

/// A C string from Rust text; interior NULs (never produced by our callers) become '?'.
pub fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "?")).expect("no interior NUL after replace")
}

/// Runs `f`, turning a panic into a logged abort instead of unwinding into C.
pub fn guard<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            let msg = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log(
                Level::Error,
                file!(),
                line!(),
                &format!("internal error in {what}: {msg}; aborting"),
            );
            std::process::abort();
        }
    }
}

unsafe extern "C" fn msg_trampoline<F: FnOnce() + 'static>(ctx: *mut c_void) {
    // SAFETY: ctx is the Box<F> leaked by `send_msg::<F>`, delivered exactly once.
    let f: Box<F> = unsafe { Box::from_raw(ctx as *mut F) };
    guard("thread message", *f);
}

/// Runs `f` on `thread` (asynchronously, even when it is the current thread). One allocation
/// (none for a closure capturing nothing): the trampoline is monomorphised for `F`.
pub fn send_msg<F: FnOnce() + Send + 'static>(thread: *mut spdk_thread, f: F) {
    post(thread, f)
}

/// Runs `f` on the calling SPDK thread, later (from a message, not inside the current poller
/// or callback). `f` need not be `Send`: it is created and run on the same SPDK thread.
pub fn defer<F: FnOnce() + 'static>(f: F) {
    post(current_thread(), f)
}

fn post<F: FnOnce() + 'static>(thread: *mut spdk_thread, f: F) {
    let ctx = Box::into_raw(Box::new(f)) as *mut c_void;
    // SAFETY: `thread` is a live SPDK thread (callers only message threads they keep alive until
    // their work is done); the trampoline takes ownership of ctx.
    let rc = unsafe { sys::spdk_thread_send_msg(thread, Some(msg_trampoline::<F>), ctx) };
    if rc != 0 {
        // SAFETY: the message was not queued, so ctx is still ours.
        drop(unsafe { Box::from_raw(ctx as *mut F) });
        log(
            Level::Error,
            file!(),
            line!(),
            &format!("spdk_thread_send_msg failed: {rc}"),
        );
    }
}

pub fn current_thread() -> *mut spdk_thread {
    // SAFETY: plain query of the calling thread's SPDK thread (NULL outside SPDK threads).
    unsafe { sys::spdk_get_thread() }
}

pub fn app_thread() -> *mut spdk_thread {
    // SAFETY: plain query; the app thread lives as long as the application.
    unsafe { sys::spdk_thread_get_app_thread() }
}

pub fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno.abs()).to_string()
}
