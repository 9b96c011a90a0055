//! One volume's in-memory parts and which thread owns each: [`Vbdev`] (shared by every thread
//! that touches the bdev), its app-thread part ([`AppPart`]), [`VolCtx`] (its volume thread's
//! state: engine, executor, pollers) and [`Shared`] (what any thread may read: identity and
//! the stats snapshot). [`on_volume`] is the one way to run code on a volume's thread.
//!
//! Threads. The registry, descriptors, claims and `spdk_bdev` registration live on the app
//! thread. Each volume has one owner `spdk_thread` named `writeboost_<name>`; its engine
//! `Volume`, base I/O channels, executor and pollers live there only. Thread-only parts are
//! behind accessors that assert the thread.

use super::base::{BaseDesc, BaseHandle, SpdkDevice};
use super::error::Error;
use super::exec::{Poller, SpdkRt};
use super::ffi::{assert_app_thread, wb_error, BdevCell, SpdkThread, ThreadCell};
use super::io::{dispatch, BdevIoBatch, BdevIoQueue};
use super::registry::Config;
use crate::engine::{IoError, Status, Volume};
use crate::runtime::Runtime;
use serde_json::{Map, Value};
use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use writeboost_spdk_sys as sys;

pub type Vol = Volume<SpdkDevice, SpdkRt>;

const SNAPSHOT_INTERVAL_NS: u64 = 100_000_000;
const ERROR_LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// The reply of the create that assembles a volume (app thread).
pub type AssembleDone = Box<dyn FnOnce(Result<String, Error>)>;

/// One writeboost bdev, shared (`Arc`) by the registry, the assembly and teardown steps and the
/// volume thread; SPDK holds its address (`ctxt`, io_device) while the bdev is registered.
/// `Send + Sync` by construction: the fields are immutable, atomic, or owned by one thread.
pub struct Vbdev {
    bdev: BdevCell,
    pub name: String,
    pub cname: CString,
    pub thread: SpdkThread,
    pub blocklen: u32,
    pub sectors_per_block: u64,
    pub align_log2: u8,
    /// The volume-thread context (an `Rc` turned raw); volume thread only (`ctx`).
    volctx: AtomicPtr<VolCtx>,
    /// I/O submitted on other threads, started by the volume thread's `wb_exec` poller. Closed
    /// when the volume stops: later submissions fail at once.
    pub subq: BdevIoQueue,
    pub shared: Arc<Shared>,
    /// App thread only.
    pub app: ThreadCell<AppPart>,
    /// The configuration this instance was assembled from.
    pub cfg: Config,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Vbdev>();
};

/// What of a volume only the app thread touches: its open bases, whether SPDK knows it, and the
/// assembly's reply.
pub struct AppPart {
    pub cache: RefCell<Option<BaseDesc>>,
    pub backing: RefCell<Option<BaseDesc>>,
    pub handles: (BaseHandle, BaseHandle),
    pub io_device: Cell<bool>,
    pub destructing: Cell<bool>,
    /// Set when the teardown's first message went to the volume thread: from then on nothing
    /// else may be sent there (it exits after the teardown).
    pub teardown_started: Cell<bool>,
    pub assemble_done: RefCell<Option<AssembleDone>>,
    /// Why the assembly failed, reported once the teardown finished.
    pub failure: RefCell<Option<Error>>,
}

/// The immutable parts of a new Vbdev (assembly.rs).
pub struct VbdevParts {
    pub cfg: Config,
    pub thread: SpdkThread,
    pub blocklen: u32,
    pub align_log2: u8,
    pub shared: Arc<Shared>,
    pub cache: BaseDesc,
    pub backing: BaseDesc,
}

impl Vbdev {
    /// A new volume, owned by the calling (app) thread's part.
    pub fn new(p: VbdevParts) -> Arc<Vbdev> {
        let handles = (p.cache.handle(), p.backing.handle());
        Arc::new(Vbdev {
            bdev: BdevCell::zeroed(),
            name: p.cfg.name.clone(),
            cname: super::ffi::cstring(&p.cfg.name),
            thread: p.thread,
            blocklen: p.blocklen,
            sectors_per_block: (p.blocklen / 512) as u64,
            align_log2: p.align_log2,
            volctx: AtomicPtr::new(std::ptr::null_mut()),
            subq: BdevIoQueue::new(),
            shared: p.shared,
            app: ThreadCell::new(
                SpdkThread::app(),
                AppPart {
                    cache: RefCell::new(Some(p.cache)),
                    backing: RefCell::new(Some(p.backing)),
                    handles,
                    io_device: Cell::new(false),
                    destructing: Cell::new(false),
                    teardown_started: Cell::new(false),
                    assemble_done: RefCell::new(None),
                    failure: RefCell::new(None),
                },
            ),
            cfg: p.cfg,
        })
    }

    pub fn bdev_ptr(&self) -> *mut sys::spdk_bdev {
        self.bdev.as_ptr()
    }

    pub fn bdev(&self) -> &BdevCell {
        &self.bdev
    }

    /// The volume-thread context; panics off the volume thread.
    pub fn ctx(&self) -> Option<Rc<VolCtx>> {
        self.thread.assert_current("Vbdev::ctx");
        let p = self.volctx.load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: p came from Rc::into_raw in `set_ctx` and is released only by `take_ctx`, both
        // on this (volume) thread, so it is alive; we add a reference.
        unsafe {
            Rc::increment_strong_count(p);
            Some(Rc::from_raw(p))
        }
    }

    /// Installs the context (volume thread, once).
    pub fn set_ctx(&self, ctx: &Rc<VolCtx>) {
        self.thread.assert_current("Vbdev::set_ctx");
        let old = self
            .volctx
            .swap(Rc::into_raw(ctx.clone()) as *mut VolCtx, Ordering::AcqRel);
        assert!(old.is_null(), "volume context installed twice");
    }

    /// Removes the context (volume thread, teardown): the reference `set_ctx` stored.
    pub fn take_ctx(&self) -> Option<Rc<VolCtx>> {
        self.thread.assert_current("Vbdev::take_ctx");
        let p = self.volctx.swap(std::ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: the reference stored by set_ctx on this thread, released exactly once here.
        (!p.is_null()).then(|| unsafe { Rc::from_raw(p) })
    }
}

/// Runs `f` on the volume thread of `vb` with its context (`None` once the volume is gone).
/// App thread. Once the teardown has started, `f` runs at once, here, with `None`: the volume
/// thread exits after the teardown and must get no further message.
pub fn on_volume(vb: &Arc<Vbdev>, f: impl FnOnce(Option<Rc<VolCtx>>) + Send + 'static) {
    assert_app_thread("on_volume");
    if vb.app.get().teardown_started.get() {
        return f(None);
    }
    let v = vb.clone();
    vb.thread.send(move || f(v.ctx()));
}

/// What the app thread and dump_info_json may read from any thread.
pub struct Shared {
    pub name: String,
    pub cache_bdev: String,
    pub backing_bdev: String,
    pub snapshot: Mutex<Value>,
    /// The engine's I/O buffers translate for DMA (`spdk_vtophys`), checked at assembly.
    pub io_buffers_dma: AtomicBool,
    /// The volume thread's cpumask (`0x...`), and the `cpumask` it was created with (`None`:
    /// the default, the creating thread's core).
    pub cpumask: String,
    pub cpumask_requested: Option<String>,
    /// What a FLUSH of each base does (`cache_flush` / `backing_flush` in get_stats).
    pub cache_durability: super::durability::BaseDurability,
    pub backing_durability: super::durability::BaseDurability,
}

/// Count of operations in progress, with waiters for zero.
#[derive(Default)]
pub struct Gauge {
    n: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Gauge {
    pub fn inc(&self) {
        self.n.set(self.n.get() + 1);
    }
    pub fn dec(&self) {
        self.n.set(self.n.get() - 1);
        if self.n.get() == 0 {
            for w in self.waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }
    pub async fn zero(&self) {
        std::future::poll_fn(|cx| {
            if self.n.get() == 0 {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Everything of a volume that lives on its thread.
pub struct VolCtx {
    pub vb: Arc<Vbdev>,
    pub sectors_per_block: u64,
    pub rt: SpdkRt,
    pub vol: RefCell<Option<Vol>>,
    pub pollers: RefCell<Vec<Poller>>,
    pub user_io: Rc<Gauge>,
    pub mgmt: Rc<Gauge>,
    pub dev_inflight: Rc<Cell<u64>>,
    last_snapshot_ns: Cell<u64>,
    last_error_log_ns: Cell<u64>,
    errors_not_logged: Cell<u64>,
}

impl VolCtx {
    pub fn new(vb: Arc<Vbdev>, rt: SpdkRt, dev_inflight: Rc<Cell<u64>>) -> VolCtx {
        VolCtx {
            sectors_per_block: vb.sectors_per_block,
            vb,
            rt,
            vol: RefCell::new(None),
            pollers: RefCell::new(Vec::new()),
            user_io: Rc::new(Gauge::default()),
            mgmt: Rc::new(Gauge::default()),
            dev_inflight,
            last_snapshot_ns: Cell::new(0),
            last_error_log_ns: Cell::new(0),
            errors_not_logged: Cell::new(0),
        }
    }

    pub fn refresh_snapshot(&self) {
        if let Some(v) = self.vol.borrow().as_ref() {
            let j = stats_json(&self.vb.shared, &v.status());
            *self
                .vb
                .shared
                .snapshot
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = j;
        }
    }

    /// Starts the I/O queued by submitting threads, runs the executor, refreshes the periodic
    /// snapshot for `bdev_get_bdevs`.
    pub fn exec_poll(self: &Rc<Self>) -> bool {
        let started = self.start_batch(self.vb.subq.take());
        let now = self.rt.now_ns();
        let busy = self.rt.turn_at(now);
        if now.saturating_sub(self.last_snapshot_ns.get()) >= SNAPSHOT_INTERVAL_NS {
            self.last_snapshot_ns.set(now);
            self.refresh_snapshot();
        }
        started || busy
    }

    /// Starts every I/O of `batch` (oldest first); true if there was any.
    pub fn start_batch(self: &Rc<Self>, batch: BdevIoBatch) -> bool {
        if batch.is_empty() {
            return false;
        }
        let vol = self.vol.borrow().clone();
        for io in batch {
            match &vol {
                Some(v) => dispatch::start_io(self, v, io),
                None => super::io::complete(io, false),
            }
        }
        true
    }

    pub fn log_io_error(&self, what: &str, e: &IoError) {
        let now = self.rt.now_ns();
        if now.saturating_sub(self.last_error_log_ns.get()) < ERROR_LOG_INTERVAL_NS {
            self.errors_not_logged.set(self.errors_not_logged.get() + 1);
            return;
        }
        self.last_error_log_ns.set(now);
        let skipped = self.errors_not_logged.replace(0);
        let name = &self.vb.name;
        wb_error!("volume {name}: {what} failed: {e} ({skipped} more errors not logged)");
    }
}

/// Stats object of one volume: identity, `Status` fields, `stat` (the 16 named counters) and the
/// remaining counters at top level.
pub fn stats_json(shared: &Shared, st: &Status) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), shared.name.clone().into());
    m.insert("cache_bdev".into(), shared.cache_bdev.clone().into());
    m.insert("backing_bdev".into(), shared.backing_bdev.clone().into());
    m.insert(
        "io_buffers_dma".into(),
        shared.io_buffers_dma.load(Ordering::Relaxed).into(),
    );
    m.insert("cpumask".into(), shared.cpumask.clone().into());
    super::durability::insert_stats(&mut m, &shared.cache_durability, &shared.backing_durability);
    if let Ok(Value::Object(o)) = serde_json::to_value(st) {
        for (k, mut v) in o {
            if k == "counters" {
                continue;
            }
            if k == "options" {
                if let Value::Object(opts) = &mut v {
                    opts.insert(
                        "cpumask".into(),
                        shared
                            .cpumask_requested
                            .clone()
                            .map_or(Value::Null, Value::from),
                    );
                }
            }
            m.insert(k, v);
        }
    }
    m.insert("stat".into(), Value::Object(st.counters.stat_map()));
    if let Ok(Value::Object(c)) = serde_json::to_value(&st.counters) {
        for (k, v) in c {
            if k != "stat" && k != "nr_partial_flushed" {
                m.insert(k, v);
            }
        }
    }
    Value::Object(m)
}

pub(crate) fn new_format_uuid() -> [u8; 16] {
    let mut u = sys::spdk_uuid::default();
    // SAFETY: u is a valid out-parameter.
    unsafe { sys::spdk_uuid_generate(&mut u) };
    // SAFETY: spdk_uuid is a 16-byte union; `raw` is always a valid view.
    unsafe { u.u.raw }
}

/// The bdev UUID: SHA-1 name-based over our namespace, the format UUID and the volume name, so
/// it is stable across restarts and differs between formats.
pub fn volume_uuid(format_uuid: &str, name: &str) -> sys::spdk_uuid {
    let mut ns = sys::spdk_uuid::default();
    let mut out = sys::spdk_uuid::default();
    let ns_str = c"2a9b4c57-6f0e-4d7c-9a43-77726974656b";
    let data = format!("{format_uuid}/{name}");
    // SAFETY: valid C string and out-parameters; data outlives the call.
    unsafe {
        sys::spdk_uuid_parse(&mut ns, ns_str.as_ptr());
        sys::spdk_uuid_generate_sha1(
            &mut out,
            &mut ns,
            data.as_ptr() as *const std::ffi::c_char,
            data.len(),
        );
    }
    out
}
