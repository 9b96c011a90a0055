//! The volume registry: every configured volume (its desired configuration, what `save_config`
//! writes back) and its lifecycle state. This file is the only writer of that state; each
//! transition is one function here, refused with a typed [`LifecycleError`].
//!
//! ```text
//!            add                begin_assembly              running
//!  (none) --------> Waiting ---------------------> Assembling --------> Running
//!                    ^  ^   assembly_failed            |                 |  hot_remove,
//!                    |  +-------------------------------+                 |  destructing,
//!                    |        finished (not deleting)                     v  begin_delete
//!                    +------------------------------------------------ Stopping
//!  finished while deleting, begin_delete of a Waiting volume, forget_failed_create: (none)
//! ```
//!
//! Runs on the app thread (RPCs, examine, base events, teardown); the lock only makes the table
//! a plain `static`. Never call SPDK while holding it (its callbacks re-enter).

use super::error::LifecycleError;
use super::volume::Vbdev;
use crate::engine::Options;
use std::sync::{Arc, Mutex};

/// The desired configuration of one volume (what `save_config` writes back).
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub cache_bdev: String,
    pub backing_bdev: String,
    pub options: Options,
    pub segment_size_kib: Option<u32>,
    /// Where the volume thread runs (an SPDK cpumask string, checked at create); `None`: the
    /// core of the thread that runs the create (`cpumask.rs`).
    pub cpumask: Option<String>,
    /// Only for the first assembly after the RPC asked for it; never saved.
    pub force_format: bool,
}

enum State {
    /// A base bdev is missing; examine assembles the volume when it appears.
    Waiting,
    Assembling {
        remove_pending: bool,
    },
    Running(Arc<Vbdev>),
    Stopping(Arc<Vbdev>),
}

struct Entry {
    cfg: Config,
    state: State,
    /// Set by delete: the entry goes away once the volume is down.
    deleting: bool,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn with<T>(f: impl FnOnce(&mut Vec<Entry>) -> T) -> T {
    let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut g)
}

fn find<'a>(reg: &'a mut [Entry], name: &str) -> Result<&'a mut Entry, LifecycleError> {
    reg.iter_mut()
        .find(|e| e.cfg.name == name)
        .ok_or_else(|| LifecycleError::NoVolume { name: name.into() })
}

/// Adds a new volume, `Waiting` for its assembly. Refused when the name or a base bdev is
/// already used by a volume, or (`bdev_name_taken`) the name is already a bdev's.
pub fn add(cfg: Config, bdev_name_taken: bool) -> Result<(), LifecycleError> {
    with(|r| {
        if r.iter().any(|e| e.cfg.name == cfg.name) {
            return Err(LifecycleError::Exists { name: cfg.name });
        }
        let user = r.iter().find(|e| {
            [&e.cfg.cache_bdev, &e.cfg.backing_bdev]
                .iter()
                .any(|b| **b == cfg.cache_bdev || **b == cfg.backing_bdev)
        });
        if let Some(e) = user {
            return Err(LifecycleError::BaseInUse {
                volume: e.cfg.name.clone(),
                cache_bdev: cfg.cache_bdev,
                backing_bdev: cfg.backing_bdev,
            });
        }
        if bdev_name_taken {
            return Err(LifecycleError::BdevNameTaken { name: cfg.name });
        }
        r.push(Entry {
            cfg,
            state: State::Waiting,
            deleting: false,
        });
        Ok(())
    })
}

/// A create whose assembly failed changes nothing: its entry (back to `Waiting`) goes.
pub fn forget_failed_create(name: &str) {
    with(|r| r.retain(|e| !(e.cfg.name == name && matches!(e.state, State::Waiting))));
}

/// `Waiting` -> `Assembling`; the configuration to assemble.
pub fn begin_assembly(name: &str) -> Result<Config, LifecycleError> {
    with(|r| {
        let e = find(r, name)?;
        if !matches!(e.state, State::Waiting) {
            return Err(LifecycleError::AlreadyStarted { name: name.into() });
        }
        e.state = State::Assembling {
            remove_pending: false,
        };
        Ok(e.cfg.clone())
    })
}

/// `Assembling` -> `Waiting`: the first half of an assembly failed (nothing was built).
pub fn assembly_failed(name: &str) {
    with(|r| {
        if let Ok(e) = find(r, name) {
            e.state = State::Waiting;
        }
    });
}

/// Whether an assembly that replayed its volume may register it: no base was removed and no
/// delete arrived meanwhile.
pub fn may_register(name: &str) -> bool {
    with(|r| match find(r, name) {
        Ok(e) => {
            !e.deleting
                && !matches!(
                    e.state,
                    State::Assembling {
                        remove_pending: true
                    }
                )
        }
        Err(_) => false,
    })
}

/// `Assembling` -> `Running` (the bdev is registered). The next assembly resumes with the
/// segment size found and never formats again unasked.
pub fn running(vb: &Arc<Vbdev>, segment_size_kib: u32) {
    with(|r| {
        if let Ok(e) = find(r, &vb.name) {
            e.state = State::Running(vb.clone());
            e.cfg.force_format = false;
            e.cfg.segment_size_kib = Some(segment_size_kib);
        }
    });
}

/// A base bdev of `name` is being removed. `Running` -> `Stopping`, returning the volume for the
/// caller to unregister; during an assembly the removal is noted (the assembly then undoes
/// itself); otherwise nothing happens (the entry stays: the volume comes back with its base).
pub fn hot_remove(name: &str) -> Option<Arc<Vbdev>> {
    with(|r| {
        let e = find(r, name).ok()?;
        match &e.state {
            State::Running(vb) => {
                let vb = vb.clone();
                e.state = State::Stopping(vb.clone());
                Some(vb)
            }
            State::Assembling { .. } => {
                e.state = State::Assembling {
                    remove_pending: true,
                };
                None
            }
            _ => None,
        }
    })
}

/// SPDK destructs `vb` (unregister, hot-remove, shutdown): `Running(vb)` -> `Stopping(vb)`.
pub fn destructing(vb: &Arc<Vbdev>) {
    with(|r| {
        if let Ok(e) = find(r, &vb.name) {
            if matches!(&e.state, State::Running(p) if Arc::ptr_eq(p, vb)) {
                e.state = State::Stopping(vb.clone());
            }
        }
    });
}

/// The teardown of `vb` (or of the assembly that built it) finished: the entry goes if it is
/// being deleted, else it waits for its bases again.
pub fn finished(vb: &Vbdev) {
    with(|r| {
        let Some(pos) = r.iter().position(|e| e.cfg.name == vb.name) else {
            return;
        };
        let same = match &r[pos].state {
            State::Running(p) | State::Stopping(p) => std::ptr::eq(Arc::as_ptr(p), vb),
            State::Assembling { .. } => true,
            State::Waiting => false,
        };
        if same {
            if r[pos].deleting {
                r.remove(pos);
            } else {
                r[pos].state = State::Waiting;
            }
        }
    });
}

/// What a delete does next.
pub enum Delete {
    /// The volume was not running: its entry is gone.
    Removed,
    /// Unregister the volume (now `Stopping`); the entry goes when it is down.
    Unregister(Arc<Vbdev>),
    /// Write back every dirty block first (the volume stays `Running`), then
    /// [`after_writeback`].
    WritebackFirst(Arc<Vbdev>),
}

/// Starts deleting `name` (`writeback`: write back first).
pub fn begin_delete(name: &str, writeback: bool) -> Result<Delete, LifecycleError> {
    with(|r| {
        let pos = r
            .iter()
            .position(|e| e.cfg.name == name)
            .ok_or_else(|| LifecycleError::NoVolume { name: name.into() })?;
        let e = &mut r[pos];
        match &e.state {
            State::Waiting => {
                r.remove(pos);
                Ok(Delete::Removed)
            }
            State::Running(vb) if !e.deleting => {
                let vb = vb.clone();
                e.deleting = true;
                if writeback {
                    return Ok(Delete::WritebackFirst(vb));
                }
                // The unregister starts now: a hot-remove must not start another.
                e.state = State::Stopping(vb.clone());
                Ok(Delete::Unregister(vb))
            }
            State::Assembling { .. } => {
                Err(LifecycleError::DeleteWhileCreating { name: name.into() })
            }
            _ => Err(LifecycleError::AlreadyStopping { name: name.into() }),
        }
    })
}

/// What a delete does once its writeback finished.
pub enum AfterWriteback {
    /// It succeeded and the volume still runs: unregister it (now `Stopping`).
    Unregister(Arc<Vbdev>),
    /// It failed and the volume still runs: the delete is called off.
    Kept,
    /// A base was hot-removed meanwhile: the volume is already going away, and the entry with
    /// it (`deleting` is set).
    Removing,
    /// The entry is already gone.
    Gone,
}

pub fn after_writeback(name: &str, ok: bool) -> AfterWriteback {
    with(|r| {
        let Ok(e) = find(r, name) else {
            return AfterWriteback::Gone;
        };
        match (&e.state, ok) {
            (State::Running(vb), true) => {
                let vb = vb.clone();
                e.state = State::Stopping(vb.clone());
                AfterWriteback::Unregister(vb)
            }
            (State::Running(_), false) => {
                e.deleting = false;
                AfterWriteback::Kept
            }
            _ => AfterWriteback::Removing,
        }
    })
}

/// The configured options of `name`.
pub fn options(name: &str) -> Result<Options, LifecycleError> {
    with(|r| find(r, name).map(|e| e.cfg.options.clone()))
}

/// Stores new options for `name` (used from its next assembly on); the volume if it is running,
/// for the caller to apply them now.
pub fn set_options(name: &str, options: Options) -> Result<Option<Arc<Vbdev>>, LifecycleError> {
    with(|r| {
        let e = find(r, name)?;
        e.cfg.options = options;
        Ok(match &e.state {
            State::Running(vb) if !e.deleting => Some(vb.clone()),
            _ => None,
        })
    })
}

/// The running volume `name`, or why it is not running.
pub fn running_volume(name: &str) -> Result<Arc<Vbdev>, LifecycleError> {
    with(|r| {
        let e = find(r, name)?;
        let name = name.to_string();
        match &e.state {
            State::Running(vb) if !e.deleting => Ok(vb.clone()),
            State::Running(_) | State::Stopping(_) => Err(LifecycleError::BeingStopped { name }),
            State::Assembling { .. } => Err(LifecycleError::BeingCreated { name }),
            State::Waiting => Err(LifecycleError::Waiting {
                name,
                cache_bdev: e.cfg.cache_bdev.clone(),
                backing_bdev: e.cfg.backing_bdev.clone(),
            }),
        }
    })
}

/// Names of the running volumes (not being deleted), in creation order.
pub fn running_names() -> Vec<String> {
    with(|r| {
        r.iter()
            .filter(|e| matches!(e.state, State::Running(_)) && !e.deleting)
            .map(|e| e.cfg.name.clone())
            .collect()
    })
}

/// The configurations `save_config` writes (volumes not being deleted).
pub fn saved_configs() -> Vec<Config> {
    with(|r| {
        r.iter()
            .filter(|e| !e.deleting)
            .map(|e| e.cfg.clone())
            .collect()
    })
}

/// Waiting volumes (not being deleted) that use bdev `bdev`.
pub fn waiting_for(bdev: &str) -> Vec<Config> {
    with(|r| {
        r.iter()
            .filter(|e| matches!(e.state, State::Waiting) && !e.deleting)
            .filter(|e| e.cfg.cache_bdev == bdev || e.cfg.backing_bdev == bdev)
            .map(|e| e.cfg.clone())
            .collect()
    })
}

/// Refuses `bdev` if a configured volume uses it.
pub fn check_unused(bdev: &str) -> Result<(), LifecycleError> {
    with(|r| {
        match r
            .iter()
            .find(|e| e.cfg.cache_bdev == bdev || e.cfg.backing_bdev == bdev)
        {
            Some(e) => Err(LifecycleError::BdevOfVolume {
                bdev: bdev.into(),
                volume: e.cfg.name.clone(),
            }),
            None => Ok(()),
        }
    })
}

/// Module fini: every volume is down; forget them all.
pub fn clear() {
    with(|r| r.clear());
}
