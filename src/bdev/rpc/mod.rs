//! The `bdev_writeboost_*` JSON-RPC methods (SPDK's vbdev_passthru_rpc.c shape): each handler
//! decodes its parameters (`params.rs`), calls one operation (`ops.rs`, `format.rs`) and
//! replies from that operation's answer, on the app thread. Errors reach the caller as
//! `<method>: <message>` with [`Error::rpc_code`] as the code.

mod params;

use super::error::{Error, JSONRPC_INVALID_PARAMS};
use super::ffi::{cstring, guard, RpcRequest};
use super::{json, ops};
use params::Params;
use serde_json::Value;
use std::ffi::CStr;
use writeboost_spdk_sys as sys;

const _: () = assert!(sys::SPDK_JSONRPC_ERROR_INVALID_PARAMS == JSONRPC_INVALID_PARAMS);

fn reply_value(req: RpcRequest, v: &Value) {
    let req = req.ptr();
    // SAFETY: req is a pending request answered exactly once, on the app thread.
    unsafe {
        let w = sys::spdk_jsonrpc_begin_result(req);
        if w.is_null() {
            return;
        }
        json::write_value(w, v);
        sys::spdk_jsonrpc_end_result(req, w);
    }
}

fn reply_error(req: RpcRequest, method: &str, e: &Error) {
    let msg = cstring(&format!("{method}: {e}"));
    // SAFETY: as in reply_value.
    unsafe { sys::spdk_jsonrpc_send_error_response(req.ptr(), e.rpc_code(), msg.as_ptr()) };
}

fn reply(req: RpcRequest, method: &str, r: Result<Value, Error>) {
    match r {
        Ok(v) => reply_value(req, &v),
        Err(e) => reply_error(req, method, &e),
    }
}

/// The answer `true` for an operation that returns nothing.
fn reply_true(req: RpcRequest, method: &'static str) -> impl ops::Done<()> {
    move |r: Result<(), Error>| reply(req, method, r.map(|()| Value::Bool(true)))
}

macro_rules! handler {
    ($fn_name:ident, $method:literal, $body:ident) => {
        unsafe extern "C" fn $fn_name(
            request: *mut sys::spdk_jsonrpc_request,
            params: *const sys::spdk_json_val,
        ) {
            guard($method, || {
                let Some(req) = RpcRequest::new(request) else {
                    return;
                };
                match params::object(json::params_to_value(params)) {
                    Ok(p) => $body(req, $method, p),
                    Err(e) => reply_error(req, $method, &e),
                }
            })
        }
    };
}

fn create(req: RpcRequest, m: &'static str, p: Params) {
    match params::create(&p) {
        Ok(cfg) => ops::create(cfg, move |r| reply(req, m, r.map(Value::String))),
        Err(e) => reply_error(req, m, &e),
    }
}
handler!(rpc_create, "bdev_writeboost_create", create);

fn delete(req: RpcRequest, m: &'static str, p: Params) {
    let r = params::check_keys(&p, &["name", "writeback"], false).and_then(|()| {
        Ok((
            params::req_str(&p, "name")?,
            params::opt_bool(&p, "writeback")?,
        ))
    });
    match r {
        Ok((name, writeback)) => ops::delete(name, writeback, reply_true(req, m)),
        Err(e) => reply_error(req, m, &e),
    }
}
handler!(rpc_delete, "bdev_writeboost_delete", delete);

fn get_stats(req: RpcRequest, m: &'static str, p: Params) {
    match params::check_keys(&p, &["name"], false).and_then(|()| params::opt_str(&p, "name")) {
        Ok(name) => ops::stats(name, move |r| reply(req, m, r.map(Value::Array))),
        Err(e) => reply_error(req, m, &e),
    }
}
handler!(rpc_get_stats, "bdev_writeboost_get_stats", get_stats);

fn set_options(req: RpcRequest, m: &'static str, p: Params) {
    match params::set_options(&p) {
        Ok(name) => ops::set_options(
            name,
            move |opts| params::dynamic_tunables(&p, opts),
            reply_true(req, m),
        ),
        Err(e) => reply_error(req, m, &e),
    }
}
handler!(rpc_set_options, "bdev_writeboost_set_options", set_options);

/// The `name` of a method that takes only it.
fn name_only(p: &Params) -> Result<String, Error> {
    params::check_keys(p, &["name"], false)?;
    params::req_str(p, "name")
}

fn drop_caches(req: RpcRequest, m: &'static str, p: Params) {
    match name_only(&p) {
        Ok(name) => ops::drop_caches(&name, reply_true(req, m)),
        Err(e) => reply_error(req, m, &e),
    }
}
handler!(rpc_drop_caches, "bdev_writeboost_drop_caches", drop_caches);

fn clear_stats(req: RpcRequest, m: &'static str, p: Params) {
    match name_only(&p) {
        Ok(name) => ops::clear_stats(&name, reply_true(req, m)),
        Err(e) => reply_error(req, m, &e),
    }
}
handler!(rpc_clear_stats, "bdev_writeboost_clear_stats", clear_stats);

fn format(req: RpcRequest, m: &'static str, p: Params) {
    let r = params::check_keys(&p, &["cache_bdev", "segment_size_kib", "force"], false).and_then(
        |()| {
            Ok((
                params::req_str(&p, "cache_bdev")?,
                params::opt_segment_size(&p)?,
                params::opt_bool(&p, "force")?,
            ))
        },
    );
    match r {
        Ok((cache, seg_kib, force)) => {
            super::format::format(cache, seg_kib, force, reply_true(req, m))
        }
        Err(e) => reply_error(req, m, &e),
    }
}
handler!(rpc_format, "bdev_writeboost_format", format);

pub fn register_methods() {
    type H = unsafe extern "C" fn(*mut sys::spdk_jsonrpc_request, *const sys::spdk_json_val);
    let methods: [(&CStr, H); 7] = [
        (c"bdev_writeboost_create", rpc_create),
        (c"bdev_writeboost_delete", rpc_delete),
        (c"bdev_writeboost_format", rpc_format),
        (c"bdev_writeboost_get_stats", rpc_get_stats),
        (c"bdev_writeboost_set_options", rpc_set_options),
        (c"bdev_writeboost_drop_caches", rpc_drop_caches),
        (c"bdev_writeboost_clear_stats", rpc_clear_stats),
    ];
    for (name, h) in methods {
        // SAFETY: SPDK copies the name; the handler matches spdk_rpc_method_handler.
        unsafe { sys::spdk_rpc_register_method(name.as_ptr(), Some(h), sys::SPDK_RPC_RUNTIME) };
    }
}
