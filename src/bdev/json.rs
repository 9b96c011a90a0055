//! serde_json values to and from SPDK's JSON: RPC parameters are re-serialised from the decoded
//! `spdk_json_val` tree (never re-parsed from the request text, which SPDK decodes in place), and
//! replies, config and `driver_specific` objects are written through `spdk_json_write_*`.

use super::ffi::cstring;
use serde_json::Value;
use std::ffi::c_void;
use writeboost_spdk_sys as sys;

unsafe extern "C" fn collect(ctx: *mut c_void, data: *const c_void, size: usize) -> i32 {
    // SAFETY: ctx is the Vec<u8> passed to spdk_json_write_begin below, alive for the whole
    // write; data/size describe bytes SPDK hands us for the duration of the call.
    unsafe {
        let out = &mut *(ctx as *mut Vec<u8>);
        out.extend_from_slice(std::slice::from_raw_parts(data as *const u8, size));
    }
    0
}

/// The RPC's `params` as a serde value (`Null` when absent).
pub fn params_to_value(params: *const sys::spdk_json_val) -> Result<Value, String> {
    if params.is_null() {
        return Ok(Value::Null);
    }
    let mut out: Vec<u8> = Vec::new();
    // SAFETY: the writer only calls `collect` with &mut out, which outlives it; params is the
    // decoded value tree SPDK passed to the handler, valid during the handler.
    let rc = unsafe {
        let w =
            sys::spdk_json_write_begin(Some(collect), &mut out as *mut Vec<u8> as *mut c_void, 0);
        if w.is_null() {
            return Err("out of memory".into());
        }
        let rc = sys::spdk_json_write_val(w, params);
        let rc2 = sys::spdk_json_write_end(w);
        rc | rc2
    };
    if rc != 0 {
        return Err("malformed parameters".into());
    }
    serde_json::from_slice(&out).map_err(|e| format!("malformed parameters: {e}"))
}

/// Writes `v` as the next value of `w` (an open SPDK JSON writer).
///
/// # Safety
/// `w` must be a live writer positioned where a value may be written.
pub unsafe fn write_value(w: *mut sys::spdk_json_write_ctx, v: &Value) {
    // SAFETY: w is live per the contract; every string pointer/length pair outlives its call.
    unsafe {
        match v {
            Value::Null => {
                sys::spdk_json_write_null(w);
            }
            Value::Bool(b) => {
                sys::spdk_json_write_bool(w, *b);
            }
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    sys::spdk_json_write_uint64(w, u);
                } else if let Some(i) = n.as_i64() {
                    sys::spdk_json_write_int64(w, i);
                } else {
                    let s = n.to_string();
                    sys::spdk_json_write_val_raw(w, s.as_ptr() as *const c_void, s.len());
                }
            }
            Value::String(s) => {
                sys::spdk_json_write_string_raw(w, s.as_ptr().cast::<std::ffi::c_char>(), s.len());
            }
            Value::Array(a) => {
                sys::spdk_json_write_array_begin(w);
                for x in a {
                    write_value(w, x);
                }
                sys::spdk_json_write_array_end(w);
            }
            Value::Object(o) => {
                sys::spdk_json_write_object_begin(w);
                for (k, x) in o {
                    sys::spdk_json_write_name_raw(
                        w,
                        k.as_ptr().cast::<std::ffi::c_char>(),
                        k.len(),
                    );
                    write_value(w, x);
                }
                sys::spdk_json_write_object_end(w);
            }
        }
    }
}

/// Writes `"name": v` into the open object of `w`.
///
/// # Safety
/// `w` must be a live writer inside an object.
pub unsafe fn write_named(w: *mut sys::spdk_json_write_ctx, name: &str, v: &Value) {
    let n = cstring(name);
    // SAFETY: w is live per the contract; n outlives the call.
    unsafe {
        sys::spdk_json_write_name(w, n.as_ptr());
        write_value(w, v);
    }
}
