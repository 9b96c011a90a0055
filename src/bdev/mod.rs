//! The SPDK bdev module `writeboost` (cargo feature `spdk`): the only home of `unsafe` and C
//! callbacks in this crate.
//!
//! - `module`: the module and fn-table structs, their callbacks, registration.
//! - `registry`: the configured volumes and their lifecycle state (its only writer).
//! - `volume`: one volume's parts and the thread that owns each (`Vbdev`, `VolCtx`).
//! - `assembly`, `teardown`: bringing a volume up and down across the app and volume threads.
//! - `io/`: the I/O path (per-I/O context, channels, lock-free queues, dispatch into the engine).
//! - `ops`: what the RPC methods ask of volumes; `format`: `bdev_writeboost_format`'s worker.
//! - `rpc/`: the `bdev_writeboost_*` JSON-RPC methods (decode, call, reply); `json`: serde
//!   values <-> SPDK JSON.
//! - `error`: typed errors and the one errno / JSON-RPC code mapping.
//! - `base`: opening and claiming the base bdevs; the engine's `BlockDevice` over them.
//! - `exec`: the engine's `Runtime` on an SPDK thread (executor, timers, named pollers).
//! - `cpumask`: where volume threads run; `durability`: what a base's FLUSH does; `dma`: DMA
//!   buffers; `log`: engine events into SPDK's log.
//! - `ffi`: logging, thread messages and handles, the types that cross threads, the panic guard.
//!
//! Every trampoline recovers its pointer (with a `// SAFETY:` line), calls safe code inside
//! [`ffi::guard`] and returns an int: no panic unwinds into C.

#![allow(unsafe_code)]

pub(crate) mod ffi;

mod assembly;
mod base;
mod cpumask;
mod dma;
mod durability;
mod error;
mod exec;
mod format;
mod io;
mod json;
mod log;
mod module;
mod ops;
mod registry;
mod rpc;
mod teardown;
mod volume;

pub use module::register;

use std::ffi::{c_char, c_void, CString};

/// Runs an SPDK application named `app_name` (the options of `spdk_tgt`, plus `-f <pidfile>`)
/// with the writeboost module registered. Returns the process exit code.
pub fn app_main(app_name: &str) -> i32 {
    register();
    let args: Vec<CString> = std::env::args_os()
        .map(|a| {
            use std::os::unix::ffi::OsStrExt;
            CString::new(a.as_bytes()).unwrap_or_else(|_| CString::from(c"?"))
        })
        .collect();
    let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr() as *mut c_char).collect();
    argv.push(std::ptr::null_mut());
    let name = ffi::cstring(app_name);
    // SAFETY: argv is a NULL-terminated array of C strings that outlive the call (getopt may
    // permute the pointers, never the strings); the name outlives the application.
    unsafe {
        writeboost_spdk_sys::wb_shim_app_main(
            (argv.len() - 1) as i32,
            argv.as_mut_ptr(),
            name.as_ptr(),
            None,
            std::ptr::null_mut::<c_void>(),
        )
    }
}
