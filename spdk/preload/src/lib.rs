//! `libwriteboost_preload.so`: registers the writeboost bdev module and its RPC methods in a
//! stock SPDK application (`spdk_tgt`, `bdevperf`, `bdevio`, `spdk_dd`, ...):
//!
//! ```text
//! LD_PRELOAD=target/release/libwriteboost_preload.so /opt/spdk/build/bin/spdk_tgt ...
//! ```
//!
//! It links no SPDK: every SPDK symbol resolves from the application, which SPDK links with
//! `-rdynamic`. Preload the SPDK application itself, never a wrapper (`timeout`, `env`), which
//! has no SPDK symbols.

#![allow(unsafe_code)]

extern "C" fn writeboost_preload_init() {
    writeboost::bdev::register();
}

/// Runs at load time, before the application's `main` (and before SPDK's own constructors,
/// which is fine: the module and RPC lists SPDK keeps are statically initialised).
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = writeboost_preload_init;
