//! JSON-RPC methods (DESIGN.md's table): decode -> validate against the tunables table -> act on
//! the app thread or the volume thread -> reply on the app thread. Every error names the bad
//! parameter and its allowed range; validation happens before anything changes.

use super::base::{bdev_exists, BaseDesc, SpdkDevice};
use super::exec::{Poller, SpdkRt};
use super::ffi::{app_thread, cstring, current_thread, guard, send_msg, wb_notice, SendPtr};
use super::json;
use super::vbdev::{
    assemble, find, module, on_volume, stats_json, with_reg, Config, Entry, State, Vbdev, VolCtx,
};
use crate::device::BlockDevice;
use crate::engine::config::TUNABLES;
use crate::engine::{format_cache, read_superblock, scan_log, Options};
use crate::format::{DecodeError, Geometry, SEGMENT_SIZE_KIB_MAX, SEGMENT_SIZE_KIB_MIN};
use serde_json::{Map, Value};
use std::cell::Cell;
use std::ffi::CStr;
use std::rc::Rc;
use writeboost_spdk_sys as sys;

type Req = SendPtr<sys::spdk_jsonrpc_request>;

const INVALID_PARAMS: i32 = sys::SPDK_JSONRPC_ERROR_INVALID_PARAMS;

/// An RPC failure: JSON-RPC code (negative errno or -32602) and message.
struct RpcError(i32, String);

fn invalid(msg: String) -> RpcError {
    RpcError(INVALID_PARAMS, msg)
}

fn reply_value(req: Req, v: &Value) {
    // SAFETY: req is a pending request answered exactly once, on the app thread.
    unsafe {
        let w = sys::spdk_jsonrpc_begin_result(req.0);
        if w.is_null() {
            return;
        }
        json::write_value(w, v);
        sys::spdk_jsonrpc_end_result(req.0, w);
    }
}

fn reply_error(req: Req, method: &str, e: RpcError) {
    let msg = cstring(&format!("{method}: {}", e.1));
    // SAFETY: as in reply_value.
    unsafe { sys::spdk_jsonrpc_send_error_response(req.0, e.0, msg.as_ptr()) };
}

fn reply(req: Req, method: &str, r: Result<Value, RpcError>) {
    match r {
        Ok(v) => reply_value(req, &v),
        Err(e) => reply_error(req, method, e),
    }
}

/// The params object; `allowed` lists every accepted key (tunables are checked separately).
fn params_object(params: *const sys::spdk_json_val) -> Result<Map<String, Value>, RpcError> {
    match json::params_to_value(params).map_err(invalid)? {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(invalid("parameters must be a JSON object".into())),
    }
}

fn known_list(fixed: &[&str], with_tunables: bool) -> String {
    let mut v: Vec<&str> = fixed.to_vec();
    if with_tunables {
        v.extend(TUNABLES.iter().map(|t| t.name));
    }
    v.join(", ")
}

fn check_keys(p: &Map<String, Value>, fixed: &[&str], with_tunables: bool) -> Result<(), RpcError> {
    for k in p.keys() {
        let ok =
            fixed.contains(&k.as_str()) || (with_tunables && TUNABLES.iter().any(|t| t.name == k));
        if !ok {
            return Err(invalid(format!(
                "unknown parameter '{k}'; known parameters: {}",
                known_list(fixed, with_tunables)
            )));
        }
    }
    Ok(())
}

fn req_str(p: &Map<String, Value>, key: &str) -> Result<String, RpcError> {
    match p.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(invalid(format!(
            "parameter '{key}' must be a non-empty string"
        ))),
        None => Err(invalid(format!("missing required parameter '{key}'"))),
    }
}

fn opt_str(p: &Map<String, Value>, key: &str) -> Result<Option<String>, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => req_str(p, key).map(Some),
    }
}

fn opt_bool(p: &Map<String, Value>, key: &str) -> Result<bool, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(format!("parameter '{key}' must be true or false"))),
    }
}

fn opt_segment_size(p: &Map<String, Value>) -> Result<Option<u32>, RpcError> {
    let range = || {
        format!(
            "parameter 'segment_size_kib' must be a power of two in {SEGMENT_SIZE_KIB_MIN}..={SEGMENT_SIZE_KIB_MAX}"
        )
    };
    match p.get("segment_size_kib") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let k = v.as_u64().ok_or_else(|| invalid(range()))?;
            if !(SEGMENT_SIZE_KIB_MIN as u64..=SEGMENT_SIZE_KIB_MAX as u64).contains(&k)
                || !k.is_power_of_two()
            {
                return Err(invalid(format!("{} (got {k})", range())));
            }
            Ok(Some(k as u32))
        }
    }
}

/// Applies every tunable present in `p` to `opts`, validating type, range and (unless
/// `at_create`) that it is dynamic. Returns the keys and values set.
fn apply_tunables(
    p: &Map<String, Value>,
    opts: &mut Options,
    at_create: bool,
) -> Result<Vec<(String, u64)>, RpcError> {
    let mut set = Vec::new();
    for t in TUNABLES {
        let Some(v) = p.get(t.name) else { continue };
        // A JSON boolean only for flags (range 0..=1): `true` is no number of seconds or %.
        let flag = t.min == 0 && t.max == 1;
        let value = match v {
            Value::Bool(b) if flag => *b as u64,
            Value::Number(n) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
            _ => {
                let kind = if flag {
                    "true, false, 0 or 1"
                } else {
                    "an integer"
                };
                return Err(invalid(format!(
                    "option '{}' must be {kind} in {}..={} (got {v})",
                    t.name, t.min, t.max
                )));
            }
        };
        opts.set(t.name, value, at_create)
            .map_err(|e| invalid(e.to_string()))?;
        set.push((t.name.to_string(), value));
    }
    Ok(set)
}

fn no_volume(name: &str) -> RpcError {
    RpcError(
        -libc::ENODEV,
        format!("no writeboost volume named '{name}'"),
    )
}

/// The running volume `name`, or why it is not running.
fn running(name: &str) -> Result<SendPtr<Vbdev>, RpcError> {
    with_reg(|r| {
        let e = find(r, name).ok_or_else(|| no_volume(name))?;
        match e.state {
            State::Running(vb) if !e.deleting => Ok(vb),
            State::Running(_) | State::Stopping(_) => Err(RpcError(-libc::EBUSY, format!("volume '{name}' is being stopped"))),
            State::Assembling { .. } => Err(RpcError(-libc::EBUSY, format!("volume '{name}' is being created"))),
            State::Waiting => Err(RpcError(
                -libc::EAGAIN,
                format!(
                    "volume '{name}' is not running: waiting for its base bdevs (cache_bdev '{}', backing_bdev '{}')",
                    e.cfg.cache_bdev, e.cfg.backing_bdev
                ),
            )),
        }
    })
}

/// Runs `f` on the volume thread of `vb` and replies with its result on the app thread.
fn call_volume(
    req: Req,
    method: &'static str,
    vb: SendPtr<Vbdev>,
    f: impl FnOnce(&Rc<VolCtx>, Box<dyn FnOnce(Result<Value, RpcError>)>) + Send + 'static,
) {
    on_volume(vb, move |ctx| {
        let back = move |r: Result<Value, RpcError>| {
            let r = SendResult(r);
            send_msg(app_thread(), move || {
                let r = r;
                reply(req, method, r.0)
            });
        };
        match ctx {
            Some(c) => f(&c, Box::new(back)),
            None => back(Err(RpcError(-libc::ENODEV, "volume is stopped".into()))),
        }
    });
}

struct SendResult(Result<Value, RpcError>);

macro_rules! handler {
    ($fn_name:ident, $method:literal, $body:ident) => {
        unsafe extern "C" fn $fn_name(
            request: *mut sys::spdk_jsonrpc_request,
            params: *const sys::spdk_json_val,
        ) {
            guard($method, || {
                let req = SendPtr(request);
                match params_object(params) {
                    Ok(p) => $body(req, p),
                    Err(e) => reply_error(req, $method, e),
                }
            })
        }
    };
}

const CREATE_KEYS: &[&str] = &[
    "name",
    "cache_bdev",
    "backing_bdev",
    "force_format",
    "segment_size_kib",
    "cpumask",
];

fn create(req: Req, p: Map<String, Value>) {
    const M: &str = "bdev_writeboost_create";
    let r = (|| -> Result<Config, RpcError> {
        check_keys(&p, CREATE_KEYS, true)?;
        let name = req_str(&p, "name")?;
        let cache_bdev = req_str(&p, "cache_bdev")?;
        let backing_bdev = req_str(&p, "backing_bdev")?;
        let force_format = opt_bool(&p, "force_format")?;
        let segment_size_kib = opt_segment_size(&p)?;
        let cpumask = match p.get("cpumask") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) => {
                super::cpumask::parse(m).map_err(invalid)?;
                Some(m.clone())
            }
            Some(v) => {
                return Err(invalid(format!(
                    "parameter 'cpumask' must be a string (an SPDK cpumask such as \"0x1\" or \"[0,1]\"; the application's core mask is {}), got {v}",
                    super::cpumask::app_core_mask().to_hex()
                )))
            }
        };
        let mut options = Options::default();
        apply_tunables(&p, &mut options, true)?;
        if cache_bdev == backing_bdev {
            return Err(invalid(format!(
                "cache_bdev and backing_bdev are the same bdev '{cache_bdev}'"
            )));
        }
        if name == cache_bdev || name == backing_bdev {
            return Err(invalid(format!(
                "name '{name}' must differ from the base bdevs"
            )));
        }
        Ok(Config {
            name,
            cache_bdev,
            backing_bdev,
            options,
            segment_size_kib,
            cpumask,
            force_format,
        })
    })();
    let cfg = match r {
        Ok(c) => c,
        Err(e) => return reply_error(req, M, e),
    };
    let name = cfg.name.clone();
    let conflict = with_reg(|r| {
        if find(r, &name).is_some() {
            return Some(format!("volume '{name}' already exists"));
        }
        r.iter()
            .find(|e| {
                [&e.cfg.cache_bdev, &e.cfg.backing_bdev]
                    .iter()
                    .any(|b| **b == cfg.cache_bdev || **b == cfg.backing_bdev)
            })
            .map(|e| {
                format!(
                    "volume '{}' already uses bdev '{}' or '{}'",
                    e.cfg.name, cfg.cache_bdev, cfg.backing_bdev
                )
            })
    });
    if let Some(msg) = conflict {
        return reply_error(req, M, RpcError(-libc::EEXIST, msg));
    }
    if bdev_exists(&name) {
        return reply_error(
            req,
            M,
            RpcError(
                -libc::EEXIST,
                format!("a bdev named '{name}' already exists"),
            ),
        );
    }
    let (cache_bdev, backing_bdev) = (cfg.cache_bdev.clone(), cfg.backing_bdev.clone());
    with_reg(|r| {
        r.push(Entry {
            cfg,
            state: State::Waiting,
            deleting: false,
        })
    });
    let missing: Vec<String> = [&cache_bdev, &backing_bdev]
        .into_iter()
        .filter(|b| !bdev_exists(b))
        .cloned()
        .collect();
    if !missing.is_empty() {
        wb_notice!(
            "volume {name}: waiting for base bdev(s) {}; created when they appear",
            missing.join(", ")
        );
        return reply_value(req, &Value::String(name));
    }
    let n2 = name.clone();
    assemble(
        &name,
        Box::new(move |r| match r {
            Ok(n) => reply_value(req, &Value::String(n)),
            Err((errno, msg)) => {
                // A create that fails changes nothing: forget the configuration.
                with_reg(|r| {
                    if let Some(pos) = r
                        .iter()
                        .position(|e| e.cfg.name == n2 && matches!(e.state, State::Waiting))
                    {
                        r.remove(pos);
                    }
                });
                reply_error(req, M, RpcError(errno, msg))
            }
        }),
    );
}
handler!(rpc_create, "bdev_writeboost_create", create);

unsafe extern "C" fn delete_done(arg: *mut std::ffi::c_void, rc: i32) {
    guard("delete", || {
        let req = SendPtr(arg as *mut sys::spdk_jsonrpc_request);
        if rc == 0 {
            reply_value(req, &Value::Bool(true));
        } else {
            reply_error(
                req,
                "bdev_writeboost_delete",
                RpcError(
                    rc,
                    format!("unregister failed: {}", super::ffi::strerror(rc)),
                ),
            );
        }
    })
}

fn unregister_for_delete(req: Req, vb: SendPtr<Vbdev>) {
    // SAFETY: vb is Running (checked by the caller on this app thread), so it is registered.
    unsafe {
        sys::spdk_bdev_unregister(
            (*vb.0).bdev_ptr(),
            Some(delete_done),
            req.0 as *mut std::ffi::c_void,
        )
    };
}

fn delete(req: Req, p: Map<String, Value>) {
    const M: &str = "bdev_writeboost_delete";
    let r = (|| {
        check_keys(&p, &["name", "writeback"], false)?;
        Ok((req_str(&p, "name")?, opt_bool(&p, "writeback")?))
    })();
    let (name, writeback) = match r {
        Ok(x) => x,
        Err(e) => return reply_error(req, M, e),
    };
    enum Act {
        Done,
        Unregister(SendPtr<Vbdev>),
    }
    let act = with_reg(|r| {
        let pos = r
            .iter()
            .position(|e| e.cfg.name == name)
            .ok_or_else(|| no_volume(&name))?;
        let e = &mut r[pos];
        match e.state {
            State::Waiting => {
                r.remove(pos);
                Ok(Act::Done)
            }
            State::Running(vb) if !e.deleting => {
                e.deleting = true;
                if !writeback {
                    // The unregister starts now: a hot-remove must not start another.
                    e.state = State::Stopping(vb);
                }
                Ok(Act::Unregister(vb))
            }
            State::Assembling { .. } => Err(RpcError(
                -libc::EBUSY,
                format!("volume '{name}' is being created; retry"),
            )),
            _ => Err(RpcError(
                -libc::EBUSY,
                format!("volume '{name}' is already being stopped"),
            )),
        }
    });
    let vb = match act {
        Ok(Act::Done) => return reply_value(req, &Value::Bool(true)),
        Ok(Act::Unregister(vb)) => vb,
        Err(e) => return reply_error(req, M, e),
    };
    if !writeback {
        return unregister_for_delete(req, vb);
    }
    // Write back every dirty block first; on failure the volume stays as it was.
    let stopped = || RpcError(-libc::ENODEV, "volume is stopped".into());
    on_volume(vb, move |ctx| {
        let vol = ctx.as_ref().and_then(|c| c.vol.borrow().clone());
        let (Some(ctx), Some(vol)) = (ctx, vol) else {
            return send_msg(app_thread(), move || reply_error(req, M, stopped()));
        };
        let g = ctx.mgmt.clone();
        g.inc();
        ctx.rt.spawn_then(
            async move {
                let r = vol.drop_caches().await;
                g.dec();
                r.map_err(|e| e.to_string())
            },
            move |r| send_msg(app_thread(), move || delete_after_writeback(req, &name, r)),
        );
        ctx.rt.turn();
    });
}

/// App thread: the writeback of a `delete --writeback` finished.
fn delete_after_writeback(req: Req, name: &str, r: Result<(), String>) {
    const M: &str = "bdev_writeboost_delete";
    enum Next {
        Unregister(SendPtr<Vbdev>),
        Reply(Result<Value, RpcError>),
    }
    let next = with_reg(|reg| {
        let e = find(reg, name)?;
        Some(match (e.state, &r) {
            (State::Running(vb), Ok(())) => {
                e.state = State::Stopping(vb);
                Next::Unregister(vb)
            }
            (State::Running(_), Err(msg)) => {
                e.deleting = false;
                Next::Reply(Err(RpcError(
                    -libc::EIO,
                    format!("writeback before delete failed: {msg}; the volume stays"),
                )))
            }
            // A base was hot-removed meanwhile: the volume is already going away, and the
            // entry goes with it (deleting is set).
            (_, Ok(())) => Next::Reply(Ok(Value::Bool(true))),
            (_, Err(msg)) => Next::Reply(Err(RpcError(
                -libc::ENODEV,
                format!("a base bdev was removed during the writeback ({msg}); the volume is deleted, dirty data stays on the cache"),
            ))),
        })
    });
    match next {
        Some(Next::Unregister(vb)) => unregister_for_delete(req, vb),
        Some(Next::Reply(r)) => reply(req, M, r),
        None => reply_value(req, &Value::Bool(true)),
    }
}
handler!(rpc_delete, "bdev_writeboost_delete", delete);

fn get_stats(req: Req, p: Map<String, Value>) {
    const M: &str = "bdev_writeboost_get_stats";
    let r = (|| {
        check_keys(&p, &["name"], false)?;
        opt_str(&p, "name")
    })();
    let names: Vec<String> = match r {
        Ok(Some(n)) => {
            if let Err(e) = running(&n) {
                return reply_error(req, M, e);
            }
            vec![n]
        }
        Ok(None) => with_reg(|r| {
            r.iter()
                .filter(|e| matches!(e.state, State::Running(_)) && !e.deleting)
                .map(|e| e.cfg.name.clone())
                .collect()
        }),
        Err(e) => return reply_error(req, M, e),
    };
    gather_stats(req, names, Vec::new());
}
handler!(rpc_get_stats, "bdev_writeboost_get_stats", get_stats);

/// Collects stats volume by volume, each on its own thread (re-checking each is still running).
fn gather_stats(req: Req, mut names: Vec<String>, acc: Vec<Value>) {
    if names.is_empty() {
        return reply_value(req, &Value::Array(acc));
    }
    let name = names.remove(0);
    let Ok(vb) = running(&name) else {
        return gather_stats(req, names, acc);
    };
    let acc = SendResult(Ok(Value::Array(acc)));
    on_volume(vb, move |ctx| {
        let (acc, vb) = (acc, vb);
        let one = ctx
            .and_then(|c| c.vol.borrow().as_ref().map(|v| v.status()))
            .map(|st| {
                // SAFETY: the Vbdev is alive (Running) and shared is immutable.
                let shared = unsafe { &(*vb.0).shared };
                stats_json(shared, &st)
            });
        let back = SendResult(Ok(one.unwrap_or(Value::Null)));
        send_msg(app_thread(), move || {
            let (acc, back) = (acc, back);
            let mut acc = match acc.0 {
                Ok(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            if let Ok(v @ Value::Object(_)) = back.0 {
                acc.push(v);
            }
            gather_stats(req, names, acc)
        });
    });
}

fn set_options(req: Req, p: Map<String, Value>) {
    const M: &str = "bdev_writeboost_set_options";
    let r = (|| {
        if p.contains_key("cpumask") {
            return Err(invalid(
                "parameter 'cpumask' can only be set at create (delete the volume and create it again with the new cpumask)".into(),
            ));
        }
        check_keys(&p, &["name"], true)?;
        let name = req_str(&p, "name")?;
        let mut opts = with_reg(|r| find(r, &name).map(|e| e.cfg.options.clone()))
            .ok_or_else(|| no_volume(&name))?;
        let set = apply_tunables(&p, &mut opts, false)?;
        if set.is_empty() {
            let dynamic: Vec<&str> = TUNABLES
                .iter()
                .filter(|t| t.dynamic)
                .map(|t| t.name)
                .collect();
            return Err(invalid(format!(
                "no option given; dynamic options: {}",
                dynamic.join(", ")
            )));
        }
        Ok((name, opts, set))
    })();
    let (name, opts, set) = match r {
        Ok(x) => x,
        Err(e) => return reply_error(req, M, e),
    };
    let state = with_reg(|r| {
        let e = find(r, &name)?;
        e.cfg.options = opts;
        Some(match e.state {
            State::Running(vb) if !e.deleting => Some(vb),
            _ => None,
        })
    });
    let Some(Some(vb)) = state else {
        // Not running: the configuration (used at the next assembly) was updated.
        return reply_value(req, &Value::Bool(true));
    };
    call_volume(req, M, vb, move |ctx, back| {
        let r = match ctx.vol.borrow().as_ref() {
            Some(v) => set
                .iter()
                .try_for_each(|(k, val)| v.set_option(k, *val))
                .map(|()| Value::Bool(true))
                .map_err(|e| invalid(e.to_string())),
            None => Err(RpcError(-libc::ENODEV, "volume is stopped".into())),
        };
        back(r)
    });
}
handler!(rpc_set_options, "bdev_writeboost_set_options", set_options);

fn name_only(p: &Map<String, Value>) -> Result<(String, SendPtr<Vbdev>), RpcError> {
    check_keys(p, &["name"], false)?;
    let name = req_str(p, "name")?;
    let vb = running(&name)?;
    Ok((name, vb))
}

fn drop_caches(req: Req, p: Map<String, Value>) {
    const M: &str = "bdev_writeboost_drop_caches";
    let (_, vb) = match name_only(&p) {
        Ok(x) => x,
        Err(e) => return reply_error(req, M, e),
    };
    call_volume(req, M, vb, move |ctx, back| {
        let Some(vol) = ctx.vol.borrow().clone() else {
            return back(Err(RpcError(-libc::ENODEV, "volume is stopped".into())));
        };
        let g = ctx.mgmt.clone();
        g.inc();
        ctx.rt.spawn_then(
            async move {
                let r = vol.drop_caches().await;
                g.dec();
                r
            },
            move |r| {
                back(
                    r.map(|()| Value::Bool(true))
                        .map_err(|e| RpcError(-libc::EIO, format!("writeback failed: {e}"))),
                )
            },
        );
        ctx.rt.turn();
    });
}
handler!(rpc_drop_caches, "bdev_writeboost_drop_caches", drop_caches);

fn clear_stats(req: Req, p: Map<String, Value>) {
    const M: &str = "bdev_writeboost_clear_stats";
    let (_, vb) = match name_only(&p) {
        Ok(x) => x,
        Err(e) => return reply_error(req, M, e),
    };
    call_volume(req, M, vb, move |ctx, back| {
        if let Some(v) = ctx.vol.borrow().as_ref() {
            v.clear_stats();
        }
        back(Ok(Value::Bool(true)))
    });
}
handler!(rpc_clear_stats, "bdev_writeboost_clear_stats", clear_stats);

/// What the format worker thread keeps between its start and its finish.
struct FormatWorker {
    rt: SpdkRt,
    poller: Option<Poller>,
}

fn format(req: Req, p: Map<String, Value>) {
    const M: &str = "bdev_writeboost_format";
    let r = (|| {
        check_keys(&p, &["cache_bdev", "segment_size_kib", "force"], false)?;
        Ok((
            req_str(&p, "cache_bdev")?,
            opt_segment_size(&p)?,
            opt_bool(&p, "force")?,
        ))
    })();
    let (cache, seg_kib, force) = match r {
        Ok(x) => x,
        Err(e) => return reply_error(req, M, e),
    };
    let user = with_reg(|r| {
        r.iter()
            .find(|e| e.cfg.cache_bdev == cache || e.cfg.backing_bdev == cache)
            .map(|e| e.cfg.name.clone())
    });
    if let Some(v) = user {
        return reply_error(
            req,
            M,
            RpcError(
                -libc::EBUSY,
                format!(
                    "bdev '{cache}' belongs to writeboost volume '{v}'; delete the volume first"
                ),
            ),
        );
    }
    let base = match BaseDesc::open(&cache, "(format)", module(), |_, _, _| {}, true) {
        Ok(b) => b,
        Err(e) => return reply_error(req, M, RpcError(e.errno, format!("cache_bdev: {}", e.msg))),
    };
    let size_bytes = base.info.size_bytes;
    if let Err(e) = Geometry::for_device(
        size_bytes,
        seg_kib.unwrap_or(crate::format::SEGMENT_SIZE_KIB_DEFAULT),
    ) {
        base.close();
        return reply_error(
            req,
            M,
            invalid(format!(
                "cache_bdev '{cache}' ({size_bytes} bytes) cannot hold a writeboost cache: {e}"
            )),
        );
    }
    let tname = cstring("writeboost_format");
    // The worker runs on this (app) thread's core, never on a reactor the application may block
    // (cpumask.rs).
    let mask = super::cpumask::current_core();
    // SAFETY: valid name and cpumask (both copied by SPDK).
    let thread = unsafe { sys::spdk_thread_create(tname.as_ptr(), mask.raw()) };
    if thread.is_null() {
        base.close();
        return reply_error(
            req,
            M,
            RpcError(-libc::ENOMEM, "cannot create a worker thread".into()),
        );
    }
    let handle = base.handle();
    let base = SendPtr(Box::into_raw(Box::new(base)));
    send_msg(thread, move || {
        let handle = handle;
        let rt = SpdkRt::new();
        let r2 = rt.clone();
        let poller = Poller::register("wb_exec", 0, move || r2.turn());
        let worker = SendPtr(Box::into_raw(Box::new(FormatWorker {
            rt: rt.clone(),
            poller: Some(poller),
        })));
        let inflight = Rc::new(Cell::new(0));
        let Some(dev) = SpdkDevice::new(handle, rt.clone(), inflight) else {
            return format_finish(
                worker,
                base,
                req,
                Err(RpcError(-libc::ENOMEM, "cannot get an I/O channel".into())),
            );
        };
        let job = async move {
            let name = dev.info().name;
            if !force {
                refuse_unless_safe(&dev, &name).await?;
            }
            // An unbound format: the geometry and a new format UUID now, the backing device's
            // identity at the next create.
            let seg = seg_kib.unwrap_or(crate::format::SEGMENT_SIZE_KIB_DEFAULT);
            let uuid = super::vbdev::new_format_uuid();
            format_cache(&dev, None, seg, uuid)
                .await
                .map_err(|e| RpcError(-libc::EIO, format!("formatting '{name}': {e}")))?;
            wb_notice!(
                "bdev {name} formatted ({seg} KiB segments, format {}): its next bdev_writeboost_create starts an empty cache",
                crate::format::uuid_to_string(&uuid)
            );
            Ok(Value::Bool(true))
        };
        rt.spawn_then(job, move |r| {
            let r = SendResult(r);
            send_msg(current_thread(), move || {
                let r = r;
                format_finish(worker, base, req, r.0)
            })
        });
        rt.turn();
    });
}
handler!(rpc_format, "bdev_writeboost_format", format);

/// Without `force`, the offline `writeboost format`'s rule: an all-zero cache or a writeboost
/// cache without dirty data may be formatted. Refused: content that is not a writeboost
/// superblock, a superblock this build cannot decode (newer version, bad checksum: it may hold
/// dirty data), a log whose scan reports damage (durable segments no replay reaches, a hole:
/// dirty data the chain does not count), and dirty blocks. Reads only.
async fn refuse_unless_safe(dev: &SpdkDevice, name: &str) -> Result<(), RpcError> {
    let sb = match read_superblock(dev).await {
        Err(e) => {
            return Err(RpcError(
                -libc::EIO,
                format!("reading the superblock of '{name}': {e}; pass force to format anyway"),
            ))
        }
        Ok(Err(DecodeError::Zero)) => return Ok(()),
        Ok(Err(e @ (DecodeError::BadMagic { .. } | DecodeError::TooShort { .. }))) => {
            return Err(RpcError(
                -libc::EINVAL,
                format!(
                    "cache_bdev '{name}' holds data that is not a writeboost superblock ({e}); pass force to overwrite it"
                ),
            ))
        }
        Ok(Err(e)) => {
            return Err(RpcError(
                -libc::EINVAL,
                format!(
                    "cache_bdev '{name}' holds a writeboost superblock this build cannot read ({e}); it may hold dirty data: write it back first (with a build that reads it, or the offline `writeboost writeback`), or pass force"
                ),
            ))
        }
        Ok(Ok(sb)) => sb,
    };
    let uuid = crate::format::uuid_to_string(&sb.format_uuid);
    let scan = scan_log(dev, &sb).await.map_err(|e| {
        RpcError(
            -libc::EIO,
            format!("scanning the log of '{name}': {e}; pass force to format anyway"),
        )
    })?;
    if let Some(d) = &scan.damage {
        return Err(RpcError(
            -libc::EBUSY,
            format!(
                "the log of cache_bdev '{name}' (writeboost format {uuid}) is damaged ({d}) and may hold dirty data that cannot be counted; rescue it first (offline `writeboost writeback --accept-damaged-log`) or pass force"
            ),
        ));
    }
    let (blocks, bytes) = scan.dirty_summary();
    if blocks > 0 {
        return Err(RpcError(
            -libc::EBUSY,
            format!(
                "cache_bdev '{name}' holds {blocks} dirty blocks ({bytes} bytes) of writeboost format {uuid}; write them back first (create the volume, then bdev_writeboost_drop_caches) or pass force"
            ),
        ));
    }
    Ok(())
}

/// Worker thread, in a message: drop the executor and poller, exit, then close on the app thread.
fn format_finish(
    worker: SendPtr<FormatWorker>,
    base: SendPtr<BaseDesc>,
    req: Req,
    r: Result<Value, RpcError>,
) {
    // SAFETY: allocated on this thread in `format`, reclaimed exactly once here.
    let mut w = unsafe { Box::from_raw(worker.0) };
    w.rt.clear();
    w.poller.take();
    drop(w);
    // SAFETY: called on the worker thread itself, once.
    unsafe { sys::spdk_thread_exit(current_thread()) };
    let r = SendResult(r);
    send_msg(app_thread(), move || {
        let (r, base) = (r, base);
        // SAFETY: leaked in `format` on this app thread; closed and freed exactly once here.
        let b = unsafe { Box::from_raw(base.0) };
        b.close();
        reply(req, "bdev_writeboost_format", r.0)
    });
}

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
