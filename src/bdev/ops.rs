//! What the RPC methods ask of volumes (SPDK passthru's `create_disk`/`delete_disk`): create,
//! delete (optionally after a writeback), stats, options, drop caches, clear stats. Each
//! function runs on the app thread, moves the volume's state only through the registry, does
//! its work on the volume thread when there is any, and answers `done` on the app thread with a
//! typed error.

use super::assembly;
use super::base::bdev_exists;
use super::error::{Error, LifecycleError};
use super::ffi::{guard, wb_notice, SpdkThread};
use super::registry::{self, AfterWriteback, Config, Delete};
use super::volume::{on_volume, stats_json, Vbdev, VolCtx};
use crate::engine::{IoError, Options};
use serde_json::Value;
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::Arc;
use writeboost_spdk_sys as sys;

/// The answer to an operation, called once on the app thread.
pub trait Done<T>: FnOnce(Result<T, Error>) + Send + 'static {}
impl<T, F: FnOnce(Result<T, Error>) + Send + 'static> Done<T> for F {}

/// Delivers a volume thread's result to `done` on the app thread.
type Back<T> = Box<dyn FnOnce(Result<T, Error>)>;

/// Runs `f` on the volume thread of `vb`; what it passes to its `Back` reaches `done` on the
/// app thread. A volume found stopped answers [`LifecycleError::Stopped`].
fn call_volume<T: Send + 'static>(
    vb: &Arc<Vbdev>,
    done: impl Done<T>,
    f: impl FnOnce(&Rc<VolCtx>, Back<T>) + Send + 'static,
) {
    on_volume(vb, move |ctx| {
        let back: Back<T> = Box::new(move |r| SpdkThread::app().send(move || done(r)));
        match ctx {
            Some(c) => f(&c, back),
            None => back(Err(LifecycleError::Stopped.into())),
        }
    });
}

/// Adds the volume and assembles it when both bases exist (else examine does, later).
pub fn create(cfg: Config, done: impl FnOnce(Result<String, Error>) + 'static) {
    let name = cfg.name.clone();
    let bases = [cfg.cache_bdev.clone(), cfg.backing_bdev.clone()];
    if let Err(e) = registry::add(cfg, bdev_exists(&name)) {
        return done(Err(e.into()));
    }
    let missing: Vec<String> = bases.into_iter().filter(|b| !bdev_exists(b)).collect();
    if !missing.is_empty() {
        wb_notice!(
            "volume {name}: waiting for base bdev(s) {}; created when they appear",
            missing.join(", ")
        );
        return done(Ok(name));
    }
    let n2 = name.clone();
    assembly::assemble(
        &name,
        Box::new(move |r| {
            if r.is_err() {
                // A create that fails changes nothing: forget the configuration.
                registry::forget_failed_create(&n2);
            }
            done(r)
        }),
    );
}

/// Deletes `name`: a clean shutdown and unregistration (dirty data stays on the cache), after
/// writing every dirty block back when `writeback` (on failure the volume stays as it was).
pub fn delete(name: String, writeback: bool, done: impl Done<()>) {
    let vb = match registry::begin_delete(&name, writeback) {
        Ok(Delete::Removed) => return done(Ok(())),
        Ok(Delete::Unregister(vb)) => return unregister(&vb, done),
        Ok(Delete::WritebackFirst(vb)) => vb,
        Err(e) => return done(Err(e.into())),
    };
    on_volume(&vb, move |ctx| {
        let vol = ctx.as_ref().and_then(|c| c.vol.borrow().clone());
        let (Some(ctx), Some(vol)) = (ctx, vol) else {
            return SpdkThread::app().send(move || done(Err(LifecycleError::Stopped.into())));
        };
        let g = ctx.mgmt.clone();
        g.inc();
        ctx.rt.spawn_then(
            async move {
                let r = vol.drop_caches().await;
                g.dec();
                r
            },
            move |r| SpdkThread::app().send(move || after_writeback(&name, r, done)),
        );
        ctx.rt.turn();
    });
}

/// App thread: the writeback of a `delete` with `writeback` finished.
fn after_writeback(name: &str, r: Result<(), IoError>, done: impl Done<()>) {
    match (registry::after_writeback(name, r.is_ok()), r) {
        (AfterWriteback::Unregister(vb), _) => unregister(&vb, done),
        (AfterWriteback::Kept, Err(e)) => done(Err(Error::WritebackBeforeDelete(e))),
        (AfterWriteback::Removing, Err(e)) => done(Err(Error::RemovedDuringWriteback(e))),
        _ => done(Ok(())),
    }
}

unsafe extern "C" fn unregistered<F: Done<()>>(arg: *mut c_void, rc: i32) {
    guard("delete", || {
        // SAFETY: the Box<F> `unregister` leaked for this callback, which SPDK calls once.
        let done = unsafe { Box::from_raw(arg as *mut F) };
        done(if rc == 0 {
            Ok(())
        } else {
            Err(Error::Unregister { rc })
        })
    })
}

/// Unregisters `vb` (now `Stopping`); `done` runs once SPDK destructed it.
fn unregister<F: Done<()>>(vb: &Arc<Vbdev>, done: F) {
    let arg = Box::into_raw(Box::new(done)) as *mut c_void;
    // SAFETY: vb is registered (the registry just moved it from Running to Stopping, on this app
    // thread); the callback reclaims arg once.
    unsafe { sys::spdk_bdev_unregister(vb.bdev_ptr(), Some(unregistered::<F>), arg) };
}

/// The stats of `name`, or of every running volume: one object each, collected volume by volume
/// on each volume's thread.
pub fn stats(name: Option<String>, done: impl Done<Vec<Value>>) {
    let names = match name {
        Some(n) => match registry::running_volume(&n) {
            Ok(_) => vec![n],
            Err(e) => return done(Err(e.into())),
        },
        None => registry::running_names(),
    };
    gather_stats(names, Vec::new(), done);
}

/// Collects stats volume by volume (re-checking that each still runs).
fn gather_stats(mut names: Vec<String>, mut acc: Vec<Value>, done: impl Done<Vec<Value>>) {
    if names.is_empty() {
        return done(Ok(acc));
    }
    let name = names.remove(0);
    let Ok(vb) = registry::running_volume(&name) else {
        return gather_stats(names, acc, done);
    };
    let shared = vb.shared.clone();
    on_volume(&vb, move |ctx| {
        let one = ctx
            .and_then(|c| c.vol.borrow().as_ref().map(|v| v.status()))
            .map(|st| stats_json(&shared, &st));
        SpdkThread::app().send(move || {
            acc.extend(one);
            gather_stats(names, acc, done)
        });
    });
}

/// Changes options of `name`: `apply` decodes them into its configured options (returning the
/// keys and values it set), which are stored for the next assembly and applied to the volume if
/// it runs.
pub fn set_options(
    name: String,
    apply: impl FnOnce(&mut Options) -> Result<Vec<(String, u64)>, Error>,
    done: impl Done<()>,
) {
    let r = registry::options(&name)
        .map_err(Error::from)
        .and_then(|mut opts| apply(&mut opts).map(|set| (opts, set)));
    let (opts, set) = match r {
        Ok(x) => x,
        Err(e) => return done(Err(e)),
    };
    let vb = match registry::set_options(&name, opts) {
        Ok(Some(vb)) => vb,
        // Not running: the configuration (used at the next assembly) was updated.
        Ok(None) => return done(Ok(())),
        Err(e) => return done(Err(e.into())),
    };
    call_volume(&vb, done, move |ctx, back| {
        let r = match ctx.vol.borrow().as_ref() {
            Some(v) => set
                .iter()
                .try_for_each(|(k, val)| v.set_option(k, *val))
                .map_err(Error::from),
            None => Err(LifecycleError::Stopped.into()),
        };
        back(r)
    });
}

/// Writes back every dirty block of `name`.
pub fn drop_caches(name: &str, done: impl Done<()>) {
    let vb = match registry::running_volume(name) {
        Ok(vb) => vb,
        Err(e) => return done(Err(e.into())),
    };
    call_volume(&vb, done, move |ctx, back| {
        let Some(vol) = ctx.vol.borrow().clone() else {
            return back(Err(LifecycleError::Stopped.into()));
        };
        let g = ctx.mgmt.clone();
        g.inc();
        ctx.rt.spawn_then(
            async move {
                let r = vol.drop_caches().await;
                g.dec();
                r
            },
            move |r| back(r.map_err(Error::Writeback)),
        );
        ctx.rt.turn();
    });
}

/// Zeroes the counters of `name`.
pub fn clear_stats(name: &str, done: impl Done<()>) {
    let vb = match registry::running_volume(name) {
        Ok(vb) => vb,
        Err(e) => return done(Err(e.into())),
    };
    call_volume(&vb, done, move |ctx, back| {
        if let Some(v) = ctx.vol.borrow().as_ref() {
            v.clear_stats();
        }
        back(Ok(()))
    });
}
