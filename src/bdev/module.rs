//! The module's face to SPDK: the `spdk_bdev_module` and `spdk_bdev_fn_table` structs, their
//! callbacks (init/fini, `save_config`, examine, destruct, I/O types, channels, `dump_info_json`)
//! and registration. Each callback recovers its pointer, calls the module's safe code
//! (registry, assembly, teardown, io) and returns.

use super::assembly;
use super::ffi::{guard, wb_error};
use super::json;
use super::registry::{self, Config};
use super::volume::Vbdev;
use serde_json::{Map, Value};
use std::cell::Cell;
use std::ffi::{c_void, CStr};
use std::rc::Rc;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};
use writeboost_spdk_sys as sys;

pub const MODULE_NAME: &CStr = c"writeboost";

static MODULE: AtomicPtr<sys::spdk_bdev_module> = AtomicPtr::new(std::ptr::null_mut());
static FN_TABLE: AtomicPtr<sys::spdk_bdev_fn_table> = AtomicPtr::new(std::ptr::null_mut());

/// Our registered module.
pub fn get() -> *mut sys::spdk_bdev_module {
    MODULE.load(Ordering::Acquire)
}

/// The function table of our bdevs.
pub fn fn_table() -> *mut sys::spdk_bdev_fn_table {
    FN_TABLE.load(Ordering::Acquire)
}

unsafe extern "C" fn module_init() -> i32 {
    guard("module_init", || {
        super::log::install();
        super::dma::install();
    });
    0
}

unsafe extern "C" fn module_fini() {
    guard("module_fini", || {
        registry::clear();
        super::dma::stop_freeing();
    });
}

unsafe extern "C" fn module_get_ctx_size() -> i32 {
    super::io::ctx_size() as i32
}

/// `save_config`: one `bdev_writeboost_create` per configured volume (a resume: never
/// `force_format`), with every tunable. Written before the base bdevs' own create calls, so
/// each create is deferred until examine sees its bases.
unsafe extern "C" fn module_config_json(w: *mut sys::spdk_json_write_ctx) -> i32 {
    guard("config_json", || {
        for c in registry::saved_configs() {
            let v = serde_json::json!({
                "method": "bdev_writeboost_create",
                "params": create_params_json(&c),
            });
            // SAFETY: w is SPDK's writer positioned inside the config array.
            unsafe { json::write_value(w, &v) };
        }
        0
    })
}

pub fn create_params_json(c: &Config) -> Value {
    let mut p = Map::new();
    p.insert("name".into(), c.name.clone().into());
    p.insert("cache_bdev".into(), c.cache_bdev.clone().into());
    p.insert("backing_bdev".into(), c.backing_bdev.clone().into());
    if let Some(k) = c.segment_size_kib {
        p.insert("segment_size_kib".into(), k.into());
    }
    if let Some(m) = &c.cpumask {
        p.insert("cpumask".into(), m.clone().into());
    }
    if let Ok(Value::Object(o)) = serde_json::to_value(&c.options) {
        p.extend(o);
    }
    Value::Object(p)
}

/// Assemblies prepared (bases claimed) by examine_config, launched by examine_disk of the same
/// bdev: (bdev name, volume).
static PENDING: Mutex<Vec<(String, Arc<Vbdev>)>> = Mutex::new(Vec::new());

/// examine_config: a bdev appeared. If it completes a waiting volume, open and claim both bases
/// now (synchronously, no I/O), so no other module probes or claims them.
unsafe extern "C" fn module_examine_config(bdev: *mut sys::spdk_bdev) {
    guard("examine_config", || {
        // SAFETY: SPDK's new bdev, registered during the callback.
        let name = unsafe { super::base::bdev_name(bdev) };
        for cfg in registry::waiting_for(&name) {
            if !(super::base::bdev_exists(&cfg.cache_bdev)
                && super::base::bdev_exists(&cfg.backing_bdev))
            {
                continue;
            }
            match assembly::prepare(&cfg.name) {
                Ok(vb) => PENDING
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((name.clone(), vb)),
                Err(e) => wb_error!("volume {}: create failed: {e}", cfg.name),
            }
        }
        // SAFETY: our registered module, once per examine_config call.
        unsafe { sys::spdk_bdev_module_examine_done(get()) };
    });
}

/// examine_disk: replay and register what examine_config prepared for this bdev; examine is
/// done once the volumes are registered (so `bdev_wait_for_examine` waits for them).
unsafe extern "C" fn module_examine_disk(bdev: *mut sys::spdk_bdev) {
    guard("examine_disk", || {
        // SAFETY: SPDK's new bdev, registered during the callback.
        let name = unsafe { super::base::bdev_name(bdev) };
        let mine: Vec<Arc<Vbdev>> = {
            let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
            let (mine, rest): (Vec<_>, Vec<_>) = p.drain(..).partition(|(b, _)| *b == name);
            *p = rest;
            mine.into_iter().map(|(_, v)| v).collect()
        };
        if mine.is_empty() {
            // SAFETY: our registered module, once per examine_disk call.
            unsafe { sys::spdk_bdev_module_examine_done(get()) };
            return;
        }
        let pending = Rc::new(Cell::new(mine.len()));
        for vb in mine {
            let vname = vb.name.clone();
            let pending = pending.clone();
            assembly::launch(
                vb,
                Box::new(move |r| {
                    if let Err(e) = r {
                        wb_error!("volume {vname}: create failed: {e}");
                    }
                    pending.set(pending.get() - 1);
                    if pending.get() == 0 {
                        // SAFETY: our registered module; once, after the last assembly.
                        unsafe { sys::spdk_bdev_module_examine_done(get()) };
                    }
                }),
            );
        }
    });
}

/// The Vbdev behind one of our bdevs' `ctxt` (or our io_device).
///
/// # Safety
/// `ctx` is the `ctxt` of a registered bdev of ours: SPDK's reference keeps the Vbdev alive.
unsafe fn vbdev<'a>(ctx: *mut c_void) -> &'a Vbdev {
    // SAFETY: per the contract.
    unsafe { &*(ctx as *const Vbdev) }
}

unsafe extern "C" fn vbdev_destruct(ctx: *mut c_void) -> i32 {
    guard("destruct", || {
        // SAFETY: ctx is SPDK's reference to our Vbdev (Arc::into_raw in the assembly), alive
        // until its io_device is unregistered, which the teardown started here does last; we
        // take a reference of our own.
        let vb = unsafe {
            Arc::increment_strong_count(ctx as *const Vbdev);
            Arc::from_raw(ctx as *const Vbdev)
        };
        super::teardown::destruct(vb);
        1
    })
}

unsafe extern "C" fn vbdev_io_type_supported(
    _ctx: *mut c_void,
    ty: sys::spdk_bdev_io_type,
) -> bool {
    matches!(
        ty,
        sys::SPDK_BDEV_IO_TYPE_READ
            | sys::SPDK_BDEV_IO_TYPE_WRITE
            | sys::SPDK_BDEV_IO_TYPE_FLUSH
            | sys::SPDK_BDEV_IO_TYPE_UNMAP
            | sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES
            | sys::SPDK_BDEV_IO_TYPE_RESET
    )
}

unsafe extern "C" fn vbdev_get_io_channel(ctx: *mut c_void) -> *mut sys::spdk_io_channel {
    // SAFETY: ctx is our registered io_device.
    unsafe { sys::spdk_get_io_channel(ctx) }
}

unsafe extern "C" fn vbdev_dump_info_json(
    ctx: *mut c_void,
    w: *mut sys::spdk_json_write_ctx,
) -> i32 {
    guard("dump_info_json", || {
        // SAFETY: ctx is our registered bdev's ctxt; only its immutable shared part is read.
        let vb = unsafe { vbdev(ctx) };
        let snap = vb
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let v = match snap {
            Value::Object(_) => snap,
            _ => serde_json::json!({
                "name": vb.name,
                "cache_bdev": vb.shared.cache_bdev,
                "backing_bdev": vb.shared.backing_bdev,
            }),
        };
        // SAFETY: w is SPDK's writer with an open object.
        unsafe { json::write_named(w, "writeboost", &v) };
        0
    })
}

/// Registers the module and its RPC methods with SPDK. Idempotent; call before
/// `spdk_app_start` (writeboost_tgt) or from a library constructor (the preload library).
pub fn register() {
    if !MODULE.load(Ordering::Acquire).is_null() {
        return;
    }
    // SAFETY: both structs are plain C data; all-zero is their documented initial state
    // (`internal` must be zero for spdk_bdev_module_list_add).
    let mut m: Box<sys::spdk_bdev_module> = Box::new(unsafe { std::mem::zeroed() });
    m.name = MODULE_NAME.as_ptr();
    m.module_init = Some(module_init);
    m.module_fini = Some(module_fini);
    m.config_json = Some(module_config_json);
    m.get_ctx_size = Some(module_get_ctx_size);
    m.examine_config = Some(module_examine_config);
    m.examine_disk = Some(module_examine_disk);
    // SAFETY: as above.
    let mut t: Box<sys::spdk_bdev_fn_table> = Box::new(unsafe { std::mem::zeroed() });
    t.destruct = Some(vbdev_destruct);
    t.submit_request = Some(super::io::submit_request);
    t.io_type_supported = Some(vbdev_io_type_supported);
    t.get_io_channel = Some(vbdev_get_io_channel);
    t.dump_info_json = Some(vbdev_dump_info_json);
    FN_TABLE.store(Box::into_raw(t), Ordering::Release);
    let mp = Box::into_raw(m);
    if MODULE
        .compare_exchange(
            std::ptr::null_mut(),
            mp,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        return;
    }
    // SAFETY: the module struct is leaked ('static) and initialised as SPDK requires.
    unsafe { sys::spdk_bdev_module_list_add(mp) };
    super::rpc::register_methods();
}
