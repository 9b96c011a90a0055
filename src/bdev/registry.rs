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

enum State<V> {
    /// A base bdev is missing; examine assembles the volume when it appears.
    Waiting,
    Assembling {
        remove_pending: bool,
    },
    Running(V),
    Stopping(V),
}

struct Entry<V> {
    cfg: Config,
    state: State<V>,
    /// Set by delete: the entry goes away once the volume is down.
    deleting: bool,
}

/// What the table keeps of a volume that is up: `Arc<Vbdev>` (plain values in the tests).
pub trait Volume: Clone {
    fn name(&self) -> &str;
    /// The same instance (not merely the same name).
    fn same(&self, other: &Self) -> bool;
}

impl Volume for Arc<Vbdev> {
    fn name(&self) -> &str {
        &self.name
    }
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

/// The table and its transitions, generic so that they are unit-tested over plain values.
pub struct Table<V>(Vec<Entry<V>>);

static REGISTRY: Mutex<Table<Arc<Vbdev>>> = Mutex::new(Table(Vec::new()));

fn with<T>(f: impl FnOnce(&mut Table<Arc<Vbdev>>) -> T) -> T {
    let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut g)
}

fn find<'a, V>(reg: &'a mut [Entry<V>], name: &str) -> Result<&'a mut Entry<V>, LifecycleError> {
    reg.iter_mut()
        .find(|e| e.cfg.name == name)
        .ok_or_else(|| LifecycleError::NoVolume { name: name.into() })
}

/// The transitions and queries, as functions over the process-wide table: each takes the lock
/// for one call of the [`Table`] method of the same name (documented there).
macro_rules! on_registry {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {$(
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            with(|t| t.$name($($arg),*))
        }
    )*};
}

on_registry! {
    fn add(cfg: Config, bdev_name_taken: bool) -> Result<(), LifecycleError>;
    fn forget_failed_create(name: &str);
    fn begin_assembly(name: &str) -> Result<Config, LifecycleError>;
    fn assembly_failed(name: &str);
    fn may_register(name: &str) -> bool;
    fn running(vb: &Arc<Vbdev>, segment_size_kib: u32);
    fn hot_remove(name: &str) -> Option<Arc<Vbdev>>;
    fn destructing(vb: &Arc<Vbdev>);
    fn finished(vb: &Arc<Vbdev>);
    fn begin_delete(name: &str, writeback: bool) -> Result<Delete, LifecycleError>;
    fn after_writeback(name: &str, ok: bool) -> AfterWriteback;
    fn options(name: &str) -> Result<Options, LifecycleError>;
    fn set_options(name: &str, options: Options) -> Result<Option<Arc<Vbdev>>, LifecycleError>;
    fn running_volume(name: &str) -> Result<Arc<Vbdev>, LifecycleError>;
    fn running_names() -> Vec<String>;
    fn saved_configs() -> Vec<Config>;
    fn waiting_for(bdev: &str) -> Vec<Config>;
    fn check_unused(bdev: &str) -> Result<(), LifecycleError>;
    fn clear();
}

/// What a delete does next.
pub enum Delete<V = Arc<Vbdev>> {
    /// The volume was not running: its entry is gone.
    Removed,
    /// Unregister the volume (now `Stopping`); the entry goes when it is down.
    Unregister(V),
    /// Write back every dirty block first (the volume stays `Running`), then
    /// [`after_writeback`].
    WritebackFirst(V),
}

/// What a delete does once its writeback finished.
pub enum AfterWriteback<V = Arc<Vbdev>> {
    /// It succeeded and the volume still runs: unregister it (now `Stopping`).
    Unregister(V),
    /// It failed and the volume still runs: the delete is called off.
    Kept,
    /// A base was hot-removed meanwhile: the volume is already going away, and the entry with
    /// it (`deleting` is set).
    Removing,
    /// The entry is already gone.
    Gone,
}

impl<V: Volume> Table<V> {
    /// Adds a new volume, `Waiting` for its assembly. Refused when the name or a base bdev is
    /// already used by a volume, or (`bdev_name_taken`) the name is already a bdev's.
    pub fn add(&mut self, cfg: Config, bdev_name_taken: bool) -> Result<(), LifecycleError> {
        if self.0.iter().any(|e| e.cfg.name == cfg.name) {
            return Err(LifecycleError::Exists { name: cfg.name });
        }
        let user = self.0.iter().find(|e| {
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
        self.0.push(Entry {
            cfg,
            state: State::Waiting,
            deleting: false,
        });
        Ok(())
    }

    /// A create whose assembly failed changes nothing: its entry (back to `Waiting`) goes.
    pub fn forget_failed_create(&mut self, name: &str) {
        self.0
            .retain(|e| !(e.cfg.name == name && matches!(e.state, State::Waiting)));
    }

    /// `Waiting` -> `Assembling`; the configuration to assemble.
    pub fn begin_assembly(&mut self, name: &str) -> Result<Config, LifecycleError> {
        let e = find(&mut self.0, name)?;
        if !matches!(e.state, State::Waiting) {
            return Err(LifecycleError::AlreadyStarted { name: name.into() });
        }
        e.state = State::Assembling {
            remove_pending: false,
        };
        Ok(e.cfg.clone())
    }

    /// `Assembling` -> `Waiting`: the first half of an assembly failed (nothing was built).
    pub fn assembly_failed(&mut self, name: &str) {
        if let Ok(e) = find(&mut self.0, name) {
            e.state = State::Waiting;
        }
    }

    /// Whether an assembly that replayed its volume may register it: no base was removed and no
    /// delete arrived meanwhile.
    pub fn may_register(&mut self, name: &str) -> bool {
        match find(&mut self.0, name) {
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
        }
    }

    /// `Assembling` -> `Running` (the bdev is registered). The next assembly resumes with the
    /// segment size found and never formats again unasked.
    pub fn running(&mut self, vb: &V, segment_size_kib: u32) {
        if let Ok(e) = find(&mut self.0, vb.name()) {
            e.state = State::Running(vb.clone());
            e.cfg.force_format = false;
            e.cfg.segment_size_kib = Some(segment_size_kib);
        }
    }

    /// A base bdev of `name` is being removed. `Running` -> `Stopping`, returning the volume for the
    /// caller to unregister; during an assembly the removal is noted (the assembly then undoes
    /// itself); otherwise nothing happens (the entry stays: the volume comes back with its base).
    pub fn hot_remove(&mut self, name: &str) -> Option<V> {
        let e = find(&mut self.0, name).ok()?;
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
    }

    /// SPDK destructs `vb` (unregister, hot-remove, shutdown): `Running(vb)` -> `Stopping(vb)`.
    pub fn destructing(&mut self, vb: &V) {
        if let Ok(e) = find(&mut self.0, vb.name()) {
            if matches!(&e.state, State::Running(p) if p.same(vb)) {
                e.state = State::Stopping(vb.clone());
            }
        }
    }

    /// The teardown of `vb` (or of the assembly that built it) finished: the entry goes if it is
    /// being deleted, else it waits for its bases again.
    pub fn finished(&mut self, vb: &V) {
        let Some(pos) = self.0.iter().position(|e| e.cfg.name == vb.name()) else {
            return;
        };
        let same = match &self.0[pos].state {
            State::Running(p) | State::Stopping(p) => p.same(vb),
            State::Assembling { .. } => true,
            State::Waiting => false,
        };
        if same {
            if self.0[pos].deleting {
                self.0.remove(pos);
            } else {
                self.0[pos].state = State::Waiting;
            }
        }
    }

    /// Starts deleting `name` (`writeback`: write back first).
    pub fn begin_delete(
        &mut self,
        name: &str,
        writeback: bool,
    ) -> Result<Delete<V>, LifecycleError> {
        let pos = self
            .0
            .iter()
            .position(|e| e.cfg.name == name)
            .ok_or_else(|| LifecycleError::NoVolume { name: name.into() })?;
        let e = &mut self.0[pos];
        match &e.state {
            State::Waiting => {
                self.0.remove(pos);
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
    }

    pub fn after_writeback(&mut self, name: &str, ok: bool) -> AfterWriteback<V> {
        let Ok(e) = find(&mut self.0, name) else {
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
    }

    /// The configured options of `name`.
    pub fn options(&mut self, name: &str) -> Result<Options, LifecycleError> {
        find(&mut self.0, name).map(|e| e.cfg.options.clone())
    }

    /// Stores new options for `name` (used from its next assembly on); the volume if it is running,
    /// for the caller to apply them now.
    pub fn set_options(
        &mut self,
        name: &str,
        options: Options,
    ) -> Result<Option<V>, LifecycleError> {
        let e = find(&mut self.0, name)?;
        e.cfg.options = options;
        Ok(match &e.state {
            State::Running(vb) if !e.deleting => Some(vb.clone()),
            _ => None,
        })
    }

    /// The running volume `name`, or why it is not running.
    pub fn running_volume(&mut self, name: &str) -> Result<V, LifecycleError> {
        let e = find(&mut self.0, name)?;
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
    }

    /// Names of the running volumes (not being deleted), in creation order.
    pub fn running_names(&mut self) -> Vec<String> {
        self.0
            .iter()
            .filter(|e| matches!(e.state, State::Running(_)) && !e.deleting)
            .map(|e| e.cfg.name.clone())
            .collect()
    }

    /// The configurations `save_config` writes (volumes not being deleted).
    pub fn saved_configs(&mut self) -> Vec<Config> {
        self.0
            .iter()
            .filter(|e| !e.deleting)
            .map(|e| e.cfg.clone())
            .collect()
    }

    /// Waiting volumes (not being deleted) that use bdev `bdev`.
    pub fn waiting_for(&mut self, bdev: &str) -> Vec<Config> {
        self.0
            .iter()
            .filter(|e| matches!(e.state, State::Waiting) && !e.deleting)
            .filter(|e| e.cfg.cache_bdev == bdev || e.cfg.backing_bdev == bdev)
            .map(|e| e.cfg.clone())
            .collect()
    }

    /// Refuses `bdev` if a configured volume uses it.
    pub fn check_unused(&mut self, bdev: &str) -> Result<(), LifecycleError> {
        match self
            .0
            .iter()
            .find(|e| e.cfg.cache_bdev == bdev || e.cfg.backing_bdev == bdev)
        {
            Some(e) => Err(LifecycleError::BdevOfVolume {
                bdev: bdev.into(),
                volume: e.cfg.name.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Module fini: every volume is down; forget them all.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A stand-in for a Vbdev: a name and an identity.
    #[derive(Clone, Debug)]
    struct Vol(Rc<String>);

    impl Volume for Vol {
        fn name(&self) -> &str {
            &self.0
        }
        fn same(&self, other: &Self) -> bool {
            Rc::ptr_eq(&self.0, &other.0)
        }
    }

    fn cfg(name: &str, cache: &str, backing: &str) -> Config {
        Config {
            name: name.into(),
            cache_bdev: cache.into(),
            backing_bdev: backing.into(),
            options: Options::default(),
            segment_size_kib: None,
            cpumask: None,
            force_format: true,
        }
    }

    /// A table with `wb0` (C0, B0) running as the returned volume.
    fn running_wb0() -> (Table<Vol>, Vol) {
        let mut t = Table(Vec::new());
        t.add(cfg("wb0", "C0", "B0"), false).unwrap();
        t.begin_assembly("wb0").unwrap();
        let v = Vol(Rc::new("wb0".into()));
        assert!(t.may_register("wb0"));
        t.running(&v, 512);
        (t, v)
    }

    #[test]
    fn add_refuses_duplicates_and_shared_bases() {
        let (mut t, _) = running_wb0();
        let e = |r: Result<(), LifecycleError>| r.unwrap_err();
        assert!(matches!(
            e(t.add(cfg("wb0", "C9", "B9"), false)),
            LifecycleError::Exists { .. }
        ));
        assert!(matches!(
            e(t.add(cfg("wb1", "B0", "B9"), false)),
            LifecycleError::BaseInUse { volume, .. } if volume == "wb0"
        ));
        assert!(matches!(
            e(t.add(cfg("wb1", "C1", "B1"), true)),
            LifecycleError::BdevNameTaken { .. }
        ));
        assert_eq!(t.running_names(), vec!["wb0".to_string()]);
    }

    #[test]
    fn a_running_volume_resumes_and_is_stopped_once() {
        let (mut t, v) = running_wb0();
        assert!(t.running_volume("wb0").unwrap().same(&v));
        let saved = t.saved_configs();
        assert!(
            !saved[0].force_format,
            "a running volume never formats again"
        );
        assert_eq!(saved[0].segment_size_kib, Some(512));
        assert!(t.hot_remove("wb0").unwrap().same(&v));
        assert!(t.hot_remove("wb0").is_none(), "one unregister per removal");
        t.finished(&Vol(Rc::new("wb0".into())));
        assert!(
            matches!(
                t.running_volume("wb0"),
                Err(LifecycleError::BeingStopped { .. })
            ),
            "another instance of the same name finishing changes nothing"
        );
        t.finished(&v);
        assert!(matches!(
            t.running_volume("wb0"),
            Err(LifecycleError::Waiting { .. })
        ));
        assert_eq!(t.waiting_for("B0").len(), 1, "waits for its base again");
    }

    #[test]
    fn delete_of_a_running_volume_removes_it_once_down() {
        let (mut t, v) = running_wb0();
        let Ok(Delete::Unregister(u)) = t.begin_delete("wb0", false) else {
            panic!("expected an unregister");
        };
        assert!(u.same(&v));
        assert!(matches!(
            t.begin_delete("wb0", false),
            Err(LifecycleError::AlreadyStopping { .. })
        ));
        assert!(t.hot_remove("wb0").is_none());
        assert!(
            t.saved_configs().is_empty(),
            "save_config skips a deleted volume"
        );
        t.finished(&v);
        assert!(matches!(
            t.options("wb0"),
            Err(LifecycleError::NoVolume { .. })
        ));
    }

    #[test]
    fn delete_with_writeback_keeps_the_volume_when_the_writeback_fails() {
        let (mut t, v) = running_wb0();
        assert!(matches!(
            t.begin_delete("wb0", true),
            Ok(Delete::WritebackFirst(_))
        ));
        assert!(t.running_names().is_empty(), "being deleted: not listed");
        assert!(matches!(
            t.after_writeback("wb0", false),
            AfterWriteback::Kept
        ));
        assert!(t.running_volume("wb0").unwrap().same(&v));
        assert!(matches!(
            t.begin_delete("wb0", true),
            Ok(Delete::WritebackFirst(_))
        ));
        assert!(matches!(
            t.after_writeback("wb0", true),
            AfterWriteback::Unregister(_)
        ));
    }

    #[test]
    fn a_removal_during_assembly_cancels_the_registration() {
        let mut t: Table<Vol> = Table(Vec::new());
        t.add(cfg("wb0", "C0", "B0"), false).unwrap();
        t.begin_assembly("wb0").unwrap();
        assert!(matches!(
            t.begin_assembly("wb0"),
            Err(LifecycleError::AlreadyStarted { .. })
        ));
        assert!(matches!(
            t.begin_delete("wb0", false),
            Err(LifecycleError::DeleteWhileCreating { .. })
        ));
        assert!(t.hot_remove("wb0").is_none());
        assert!(!t.may_register("wb0"));
        let v = Vol(Rc::new("wb0".into()));
        t.finished(&v);
        assert!(matches!(
            t.running_volume("wb0"),
            Err(LifecycleError::Waiting { .. })
        ));
        t.forget_failed_create("wb0");
        assert!(t.saved_configs().is_empty());
    }

    #[test]
    fn options_are_kept_for_the_next_assembly_and_applied_when_running() {
        let mut t: Table<Vol> = Table(Vec::new());
        t.add(cfg("wb0", "C0", "B0"), false).unwrap();
        let mut o = t.options("wb0").unwrap();
        o.set("writeback_threshold", 50, false).unwrap();
        assert!(
            t.set_options("wb0", o.clone()).unwrap().is_none(),
            "not running"
        );
        assert_eq!(
            t.saved_configs()[0].options.writeback_threshold,
            o.writeback_threshold
        );
        assert!(matches!(
            t.check_unused("C0"),
            Err(LifecycleError::BdevOfVolume { volume, .. }) if volume == "wb0"
        ));
        assert!(t.check_unused("C1").is_ok());
        let Ok(Delete::Removed) = t.begin_delete("wb0", false) else {
            panic!("a waiting volume is removed at once");
        };
        assert!(t.check_unused("C0").is_ok());
    }
}
