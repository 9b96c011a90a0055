//! Small safe wrappers over the raw SPDK bindings: logging, thread messages with closures,
//! pointers that may cross SPDK threads, and a panic guard for every callback from C.

use std::ffi::{c_void, CString};
use writeboost_spdk_sys as sys;

pub use sys::spdk_thread;

/// A raw pointer that may be moved to another SPDK thread. Whoever dereferences it states, in
/// a `SAFETY:` comment, why the pointee is alive and accessed by one thread at a time.
pub struct SendPtr<T>(pub *mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: the pointer is only an address while it travels; every dereference is justified at
// the use site (the pointee lives until its owner tears it down, on the thread that owns it).
unsafe impl<T> Send for SendPtr<T> {}

// SAFETY: a BaseHandle holds only addresses (descriptor, bdev) and plain data; the descriptor may
// be used from any thread to get an I/O channel, and the BaseDesc is closed only after the volume
// thread released its channels.
unsafe impl Send for super::base::BaseHandle {}

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

unsafe extern "C" fn msg_trampoline<F: FnOnce() + Send + 'static>(ctx: *mut c_void) {
    // SAFETY: ctx is the Box<F> leaked by `send_msg::<F>`, delivered exactly once.
    let f: Box<F> = unsafe { Box::from_raw(ctx as *mut F) };
    guard("thread message", *f);
}

/// Runs `f` on `thread` (asynchronously, even when it is the current thread). One allocation
/// (none for a closure capturing nothing): the trampoline is monomorphised for `F`.
pub fn send_msg<F: FnOnce() + Send + 'static>(thread: *mut spdk_thread, f: F) {
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
