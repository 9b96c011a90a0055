//! The writeboost virtual bdev: the desired-configuration table, assembly (open and claim both
//! bases, replay on the volume thread, register), I/O forwarding to the volume thread, and
//! teardown (delete, hot-remove of a base, application shutdown).
//!
//! Threads. The table, descriptors, claims and `spdk_bdev` registration live on the app thread.
//! Each volume has one owner `spdk_thread` named `writeboost_<name>`; its engine `Volume`, base
//! I/O channels, executor and pollers live there only.
//!
//! I/O path (no allocation and no thread message per I/O): the submitting thread pushes the
//! bdev_io onto the volume's lock-free submission queue (linked through the bdev_io's
//! `driver_ctx`); the volume thread's `wb_exec` poller takes the whole queue each reactor
//! iteration, starts every I/O in the engine (each polled once at once) and then runs the
//! executor. A finished I/O goes onto the completion queue of the channel it came through, and
//! that channel's poller (`wb_complete_<name>`, on the submitting thread) completes the batch.
//! I/O submitted on the volume thread itself is completed directly.
//!
//! Lifecycle (reverse order on the way down):
//! app: open+claim cache, backing -> create thread -> volume thread: channels, executor, replay
//! (`Volume::create`), pollers -> app: io_device, `spdk_bdev_register`.
//! Down: `destruct` (or a failed create) -> volume thread: wait for user I/O and management
//! operations, clean `shutdown()`, drop the volume (puts channels), unregister pollers,
//! `spdk_thread_exit` -> app: release+close bases, unregister io_device, `destruct_done`, free.

use super::base::{BaseDesc, BaseHandle, SpdkDevice};
use super::exec::{Poller, SpdkRt};
use super::ffi::{
    app_thread, cstring, current_thread, guard, send_msg, wb_error, wb_notice, wb_warn, SendPtr,
};
use super::json;
use crate::device::AlignedBuf;
use crate::engine::{CreateError, CreateOptions, IoError, Options, Startup, Status, Volume};
use crate::runtime::Runtime;
use serde_json::{Map, Value};
use std::cell::{Cell, RefCell, UnsafeCell};
use std::ffi::{c_void, CStr, CString};
use std::rc::Rc;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use writeboost_spdk_sys as sys;

pub type Vol = Volume<SpdkDevice, SpdkRt>;

pub const MODULE_NAME: &CStr = c"writeboost";
/// Largest block size of our bdev (the engine's cache block).
const MAX_BLOCKLEN: u32 = 4096;
/// NVMe Write CDW12 bit 30: Force Unit Access (the NVMe-oF target passes CDW12 through).
const NVME_CDW12_FUA: u32 = 1 << 30;
const SNAPSHOT_INTERVAL_NS: u64 = 100_000_000;
const ERROR_LOG_INTERVAL_NS: u64 = 1_000_000_000;

static MODULE: AtomicPtr<sys::spdk_bdev_module> = AtomicPtr::new(std::ptr::null_mut());
static FN_TABLE: AtomicPtr<sys::spdk_bdev_fn_table> = AtomicPtr::new(std::ptr::null_mut());

pub fn module() -> *mut sys::spdk_bdev_module {
    MODULE.load(Ordering::Acquire)
}

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

#[derive(Clone, Copy)]
pub enum State {
    /// A base bdev is missing; examine assembles the volume when it appears.
    Waiting,
    Assembling {
        remove_pending: bool,
    },
    Running(SendPtr<Vbdev>),
    Stopping(SendPtr<Vbdev>),
}

pub struct Entry {
    pub cfg: Config,
    pub state: State,
    /// Set by delete: the entry goes away once the volume is down.
    pub deleting: bool,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// Runs `f` on the configuration table. Never call SPDK from inside `f` (callbacks re-enter).
pub fn with_reg<T>(f: impl FnOnce(&mut Vec<Entry>) -> T) -> T {
    let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut g)
}

pub fn find<'a>(reg: &'a mut [Entry], name: &str) -> Option<&'a mut Entry> {
    reg.iter_mut().find(|e| e.cfg.name == name)
}

/// What the app thread and dump_info_json may read from any thread.
pub struct Shared {
    pub name: String,
    pub cache_bdev: String,
    pub backing_bdev: String,
    pub snapshot: Mutex<Value>,
    /// The engine's I/O buffers translate for DMA (`spdk_vtophys`), checked at assembly.
    pub io_buffers_dma: std::sync::atomic::AtomicBool,
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
    /// The Vbdev this context belongs to; it outlives the context (freed after `vol_finish`).
    vb: SendPtr<Vbdev>,
    pub rt: SpdkRt,
    pub vol: RefCell<Option<Vol>>,
    pollers: RefCell<Vec<Poller>>,
    pub user_io: Rc<Gauge>,
    pub mgmt: Rc<Gauge>,
    dev_inflight: Rc<Cell<u64>>,
    shared: Arc<Shared>,
    last_snapshot_ns: Cell<u64>,
    last_error_log_ns: Cell<u64>,
    errors_not_logged: Cell<u64>,
}

impl VolCtx {
    fn refresh_snapshot(&self) {
        if let Some(v) = self.vol.borrow().as_ref() {
            let j = stats_json(&self.shared, &v.status());
            *self
                .shared
                .snapshot
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = j;
        }
    }

    /// Starts the I/O queued by submitting threads, runs the executor, refreshes the periodic
    /// snapshot for `bdev_get_bdevs`.
    fn exec_poll(self: &Rc<Self>) -> bool {
        // SAFETY: the Vbdev outlives this context (see `vb`); volume thread.
        let vb = unsafe { &*self.vb.0 };
        let started = self.start_batch(vb.subq.take());
        let now = self.rt.now_ns();
        let busy = self.rt.turn_at(now);
        if now.saturating_sub(self.last_snapshot_ns.get()) >= SNAPSHOT_INTERVAL_NS {
            self.last_snapshot_ns.set(now);
            self.refresh_snapshot();
        }
        started || busy
    }

    /// Starts every I/O of `batch` (oldest first); true if there was any.
    fn start_batch(self: &Rc<Self>, batch: IoBatch) -> bool {
        if batch.is_empty() {
            return false;
        }
        let vol = self.vol.borrow().clone();
        for io in batch {
            match &vol {
                Some(v) => start_io(self, v, io),
                None => complete(io, false),
            }
        }
        true
    }

    fn log_io_error(&self, what: &str, e: &IoError) {
        let now = self.rt.now_ns();
        if now.saturating_sub(self.last_error_log_ns.get()) < ERROR_LOG_INTERVAL_NS {
            self.errors_not_logged.set(self.errors_not_logged.get() + 1);
            return;
        }
        self.last_error_log_ns.set(now);
        let skipped = self.errors_not_logged.replace(0);
        let name = &self.shared.name;
        wb_error!("volume {name}: {what} failed: {e} ({skipped} more errors not logged)");
    }
}

/// One writeboost bdev. Allocated at assembly, freed after teardown. Fields other than the
/// `Cell`/`RefCell` ones are immutable after construction and may be read from any thread; the
/// cells are touched on the app thread only.
pub struct Vbdev {
    bdev: UnsafeCell<sys::spdk_bdev>,
    pub name: String,
    cname: CString,
    pub thread: *mut sys::spdk_thread,
    pub blocklen: u32,
    pub sectors_per_block: u64,
    align_log2: u8,
    volctx: AtomicPtr<VolCtx>,
    /// I/O submitted on other threads, started by the volume thread's `wb_exec` poller. Closed
    /// when the volume stops: later submissions fail at once.
    subq: IoQueue,
    pub shared: Arc<Shared>,
    cache: RefCell<Option<BaseDesc>>,
    backing: RefCell<Option<BaseDesc>>,
    handles: (BaseHandle, BaseHandle),
    io_device: Cell<bool>,
    destructing: Cell<bool>,
    /// Reply of the create that assembles this volume (app thread).
    assemble_done: RefCell<Option<AssembleDone>>,
    /// Why the assembly failed, reported once the teardown finished.
    failure: RefCell<Option<(i32, String)>>,
    /// The configuration this instance was assembled from.
    cfg: Config,
}

pub type AssembleDone = Box<dyn FnOnce(Result<String, (i32, String)>)>;

impl Vbdev {
    pub fn bdev_ptr(&self) -> *mut sys::spdk_bdev {
        self.bdev.get()
    }

    /// The volume-thread context. Only call on `self.thread`.
    pub fn ctx(&self) -> Option<Rc<VolCtx>> {
        let p = self.volctx.load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: p came from Rc::into_raw on this (volume) thread and is cleared (and its
        // reference dropped) only on this thread, so it is alive; we add a reference.
        unsafe {
            Rc::increment_strong_count(p);
            Some(Rc::from_raw(p))
        }
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
fn volume_uuid(format_uuid: &str, name: &str) -> sys::spdk_uuid {
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

/// Base event (app thread): a removed base unregisters the volume; its entry stays, so the
/// volume comes back (resuming the dirty data on its cache) when the base reappears.
fn on_base_event(volume: &str, base: &str, remove: bool) {
    if !remove {
        return;
    }
    enum Act {
        None,
        Unregister(SendPtr<Vbdev>),
    }
    let act = with_reg(|r| {
        let Some(e) = find(r, volume) else {
            return Act::None;
        };
        match e.state {
            State::Running(vb) => {
                e.state = State::Stopping(vb);
                Act::Unregister(vb)
            }
            State::Assembling { .. } => {
                e.state = State::Assembling {
                    remove_pending: true,
                };
                Act::None
            }
            _ => Act::None,
        }
    });
    if let Act::Unregister(vb) = act {
        wb_warn!("volume {volume}: base bdev {base} is being removed; unregistering the volume (dirty data stays on the cache for the next create)");
        // SAFETY: vb is registered and alive until its teardown completes (not started yet:
        // the state was Running); we are on the app thread.
        unsafe { sys::spdk_bdev_unregister((*vb.0).bdev_ptr(), None, std::ptr::null_mut()) };
    }
}

/// Assembles the configured volume `name` (state must be `Waiting`). `done` runs on the app
/// thread with the bdev name, or an errno and message once everything was undone.
pub fn assemble(name: &str, done: AssembleDone) {
    match prepare(name) {
        Ok(vbp) => launch(vbp, done),
        Err(e) => done(Err(e)),
    }
}

/// First, synchronous half of an assembly (app thread): opens and claims both bases and creates
/// the volume thread. Sets the state to `Assembling`; on failure, back to `Waiting`.
fn prepare(name: &str) -> Result<SendPtr<Vbdev>, (i32, String)> {
    let cfg = with_reg(|r| {
        let e = find(r, name).ok_or((
            -libc::ENODEV,
            format!("no writeboost volume named '{name}'"),
        ))?;
        if !matches!(e.state, State::Waiting) {
            return Err((
                -libc::EBUSY,
                format!("volume '{name}' is already being created or running"),
            ));
        }
        e.state = State::Assembling {
            remove_pending: false,
        };
        Ok(e.cfg.clone())
    })?;
    let fail = |e: (i32, String)| {
        with_reg(|r| {
            if let Some(en) = find(r, &cfg.name) {
                en.state = State::Waiting;
            }
        });
        Err(e)
    };
    let cache = match BaseDesc::open(&cfg.cache_bdev, &cfg.name, module(), on_base_event, true) {
        Ok(b) => b,
        Err(e) => return fail((e.errno, format!("cache_bdev: {}", e.msg))),
    };
    let backing = match BaseDesc::open(&cfg.backing_bdev, &cfg.name, module(), on_base_event, true)
    {
        Ok(b) => b,
        Err(e) => {
            cache.close();
            return fail((e.errno, format!("backing_bdev: {}", e.msg)));
        }
    };
    let blocklen = cache.blocklen.max(backing.blocklen).max(512);
    if blocklen > MAX_BLOCKLEN || !blocklen.is_power_of_two() {
        let msg = format!(
            "block size {blocklen} is not supported (cache_bdev {} has {}, backing_bdev {} has {}; at most {MAX_BLOCKLEN})",
            cache.name, cache.blocklen, backing.name, backing.blocklen
        );
        cache.close();
        backing.close();
        return fail((-libc::EINVAL, msg));
    }
    let mask = match super::cpumask::for_volume(cfg.cpumask.as_deref()) {
        Ok(m) => m,
        Err(msg) => {
            cache.close();
            backing.close();
            return fail((-libc::EINVAL, msg));
        }
    };
    let cache_durability = super::durability::probe(cache.bdev);
    let backing_durability = super::durability::probe(backing.bdev);
    cache_durability.log_at_create(&cfg.name, super::durability::Role::Cache);
    backing_durability.log_at_create(&cfg.name, super::durability::Role::Backing);
    let tname = cstring(&format!("writeboost_{}", cfg.name));
    // SAFETY: valid name and cpumask (both copied by SPDK). Never a NULL mask: the thread must
    // not land on a reactor the application may block (cpumask.rs).
    let thread = unsafe { sys::spdk_thread_create(tname.as_ptr(), mask.raw()) };
    if thread.is_null() {
        cache.close();
        backing.close();
        return fail((-libc::ENOMEM, "cannot create the volume thread".into()));
    }
    let shared = Arc::new(Shared {
        name: cfg.name.clone(),
        cache_bdev: cfg.cache_bdev.clone(),
        backing_bdev: cfg.backing_bdev.clone(),
        snapshot: Mutex::new(Value::Null),
        io_buffers_dma: std::sync::atomic::AtomicBool::new(false),
        cpumask: mask.to_hex(),
        cpumask_requested: cfg.cpumask.clone(),
        cache_durability,
        backing_durability,
    });
    let vb = Box::new(Vbdev {
        // SAFETY: spdk_bdev is plain C data for which all-zero is the documented initial state.
        bdev: UnsafeCell::new(unsafe { std::mem::zeroed() }),
        name: cfg.name.clone(),
        cname: cstring(&cfg.name),
        thread,
        blocklen,
        sectors_per_block: (blocklen / 512) as u64,
        align_log2: cache.align_log2.max(backing.align_log2),
        volctx: AtomicPtr::new(std::ptr::null_mut()),
        subq: IoQueue::new(),
        shared,
        handles: (cache.handle(), backing.handle()),
        cache: RefCell::new(Some(cache)),
        backing: RefCell::new(Some(backing)),
        io_device: Cell::new(false),
        destructing: Cell::new(false),
        assemble_done: RefCell::new(None),
        failure: RefCell::new(None),
        cfg,
    });
    Ok(SendPtr(Box::into_raw(vb)))
}

/// Second, asynchronous half (app thread): replay on the volume thread, then register.
fn launch(vbp: SendPtr<Vbdev>, done: AssembleDone) {
    // SAFETY: prepared and not yet launched: alive, app thread.
    let vb = unsafe { &*vbp.0 };
    *vb.assemble_done.borrow_mut() = Some(done);
    let opts = SendOpts(CreateOptions {
        options: vb.cfg.options.clone(),
        segment_size_kib: vb.cfg.segment_size_kib,
        force_format: vb.cfg.force_format,
        new_format_uuid: new_format_uuid(),
        ..CreateOptions::default()
    });
    send_msg(vb.thread, move || {
        let opts = opts;
        vol_start(vbp, opts.0)
    });
}

struct SendOpts(CreateOptions);

/// Volume thread: channels, executor, replay.
fn vol_start(vbp: SendPtr<Vbdev>, opts: CreateOptions) {
    // SAFETY: the Vbdev lives until app_finish, which runs after this thread exits.
    let vb = unsafe { &*vbp.0 };
    let rt = SpdkRt::new();
    let inflight = Rc::new(Cell::new(0u64));
    let ctx = Rc::new(VolCtx {
        vb: vbp,
        rt: rt.clone(),
        vol: RefCell::new(None),
        pollers: RefCell::new(Vec::new()),
        user_io: Rc::new(Gauge::default()),
        mgmt: Rc::new(Gauge::default()),
        dev_inflight: inflight.clone(),
        shared: vb.shared.clone(),
        last_snapshot_ns: Cell::new(0),
        last_error_log_ns: Cell::new(0),
        errors_not_logged: Cell::new(0),
    });
    vb.volctx
        .store(Rc::into_raw(ctx.clone()) as *mut VolCtx, Ordering::Release);
    let w = Rc::downgrade(&ctx);
    ctx.pollers
        .borrow_mut()
        .push(Poller::register("wb_exec", 0, move || {
            w.upgrade().map(|c| c.exec_poll()).unwrap_or(false)
        }));
    let cache = SpdkDevice::new(vb.handles.0.clone(), rt.clone(), inflight.clone());
    let backing = SpdkDevice::new(vb.handles.1.clone(), rt.clone(), inflight.clone());
    let (cache, backing) = match (cache, backing) {
        (Some(c), Some(b)) => (c, b),
        _ => {
            send_msg(app_thread(), move || {
                assembled(
                    vbp,
                    Err((
                        -libc::ENOMEM,
                        "cannot get I/O channels of the base bdevs".into(),
                    )),
                )
            });
            return;
        }
    };
    let c2 = ctx.clone();
    rt.spawn_then(
        Volume::create(cache, backing, rt.clone(), opts),
        move |r| match r {
            Ok((vol, startup)) => {
                let dma = super::dma::is_dma_memory(&AlignedBuf::for_overwrite(4096));
                c2.shared.io_buffers_dma.store(dma, Ordering::Relaxed);
                if !dma {
                    wb_warn!("I/O buffers are not DMA-able memory: bdevs that DMA from their buffers (local PCIe NVMe) will fail I/O");
                }
                start_pollers(&c2, &vol);
                let st = vol.status();
                let size_bytes = vol.size_sectors() * 512;
                *c2.vol.borrow_mut() = Some(vol);
                c2.refresh_snapshot();
                let info = Assembled {
                    startup,
                    format_uuid: st.format_uuid.clone(),
                    size_bytes,
                    segment_size_kib: st.segment_size_kib,
                    nr_dirty: st.nr_dirty_cache_blocks,
                };
                send_msg(app_thread(), move || assembled(vbp, Ok(info)));
            }
            Err(e) => {
                let errno = create_errno(&e);
                let msg = e.to_string();
                send_msg(app_thread(), move || assembled(vbp, Err((errno, msg))));
            }
        },
    );
    ctx.rt.turn();
}

/// The one place create errors become an errno.
pub fn create_errno(e: &CreateError) -> i32 {
    match e {
        CreateError::Device { .. } => -libc::EIO,
        _ => -libc::EINVAL,
    }
}

fn start_pollers(ctx: &Rc<VolCtx>, vol: &Vol) {
    let mut p = ctx.pollers.borrow_mut();
    type Step = fn(&Vol) -> bool;
    let steps: [(&str, u64, Step); 4] = [
        ("wb_flush", 100, |v| v.poll_flush()),
        ("wb_writeback", 1_000, |v| v.poll_writeback()),
        ("wb_sb_record", 100_000, |v| v.poll_sb_record()),
        ("wb_sync", 100_000, |v| v.poll_sync()),
    ];
    for (name, period_us, step) in steps {
        let w = Rc::downgrade(ctx);
        let vol = vol.clone();
        p.push(Poller::register(name, period_us, move || {
            let busy = step(&vol);
            if let Some(c) = w.upgrade() {
                c.rt.turn();
            }
            busy
        }));
    }
}

struct Assembled {
    startup: Startup,
    format_uuid: String,
    size_bytes: u64,
    segment_size_kib: u32,
    nr_dirty: u64,
}

/// App thread: the volume thread finished `Volume::create`.
fn assembled(vbp: SendPtr<Vbdev>, r: Result<Assembled, (i32, String)>) {
    // SAFETY: the Vbdev is alive until app_finish; app thread.
    let vb = unsafe { &*vbp.0 };
    let remove_pending = with_reg(|reg| {
        find(reg, &vb.name).map(|e| {
            matches!(
                e.state,
                State::Assembling {
                    remove_pending: true
                }
            ) || e.deleting
        })
    })
    .unwrap_or(true);
    let info = match r {
        Ok(_) if remove_pending => {
            *vb.failure.borrow_mut() = Some((
                -libc::ENODEV,
                "a base bdev was removed while the volume was being created".into(),
            ));
            return begin_teardown(vbp);
        }
        Ok(i) => i,
        Err(e) => {
            *vb.failure.borrow_mut() = Some(e);
            return begin_teardown(vbp);
        }
    };
    // SAFETY: the bdev struct is ours (not yet registered); the strings it points to live in
    // the Vbdev until it is freed after destruct_done.
    unsafe {
        let b = &mut *vb.bdev.get();
        b.name = vb.cname.as_ptr() as *mut _;
        b.product_name = MODULE_NAME.as_ptr() as *mut _;
        b.write_cache = 1;
        b.blocklen = vb.blocklen;
        b.blockcnt = info.size_bytes / vb.blocklen as u64;
        b.required_alignment = vb.align_log2;
        b.uuid = volume_uuid(&info.format_uuid, &vb.name);
        b.ctxt = vbp.0 as *mut c_void;
        b.fn_table = FN_TABLE.load(Ordering::Acquire);
        b.module = module();
    }
    // SAFETY: vb is a unique, stable address; the callbacks match the io_device contract.
    unsafe {
        sys::spdk_io_device_register(
            vbp.0 as *mut c_void,
            Some(channel_create),
            Some(channel_destroy),
            8,
            vb.cname.as_ptr(),
        );
    }
    vb.io_device.set(true);
    // SAFETY: fully initialised bdev, app thread.
    let rc = unsafe { sys::spdk_bdev_register(vb.bdev_ptr()) };
    if rc != 0 {
        *vb.failure.borrow_mut() = Some((
            rc,
            format!("spdk_bdev_register failed: {}", super::ffi::strerror(rc)),
        ));
        return begin_teardown(vbp);
    }
    with_reg(|reg| {
        if let Some(e) = find(reg, &vb.name) {
            e.state = State::Running(vbp);
            e.cfg.force_format = false;
            e.cfg.segment_size_kib = Some(info.segment_size_kib);
        }
    });
    wb_notice!(
        "volume {}: {} (format {}, {} dirty blocks), cache {} backing {}",
        vb.name,
        match info.startup {
            Startup::Formatted => "formatted a new cache",
            Startup::Resumed => "resumed",
        },
        info.format_uuid,
        info.nr_dirty,
        vb.shared.cache_bdev,
        vb.shared.backing_bdev
    );
    let done = vb.assemble_done.borrow_mut().take();
    if let Some(d) = done {
        d(Ok(vb.name.clone()));
    }
}

/// App thread: starts taking the volume down (after destruct, or a failed assembly).
fn begin_teardown(vbp: SendPtr<Vbdev>) {
    // SAFETY: alive until app_finish.
    let vb = unsafe { &*vbp.0 };
    send_msg(vb.thread, move || vol_stop(vbp));
}

/// Volume thread: let user I/O and management operations finish, then shut down cleanly.
fn vol_stop(vbp: SendPtr<Vbdev>) {
    // SAFETY: alive until app_finish, which runs after this thread's last message.
    let vb = unsafe { &*vbp.0 };
    let Some(ctx) = vb.ctx() else {
        return vol_finish(vbp);
    };
    let c2 = ctx.clone();
    let name = vb.name.clone();
    ctx.rt.spawn_then(
        async move {
            // User I/O: wait until none is in flight, then close the submission queue (later
            // submissions fail at once instead of racing with the shutdown). I/O found queued
            // at the close is started, and waited for, like any other.
            loop {
                c2.user_io.zero().await;
                // SAFETY: the Vbdev is alive until app_finish (see above); volume thread.
                let batch = unsafe { &*vbp.0 }.subq.close();
                if !c2.start_batch(batch) {
                    break;
                }
            }
            c2.mgmt.zero().await;
            let vol = c2.vol.borrow().clone();
            if let Some(v) = vol {
                match v.shutdown().await {
                    Ok(()) => wb_notice!(
                        "volume {name}: stopped cleanly; {} dirty blocks stay on the cache for the next create",
                        v.status().nr_dirty_cache_blocks
                    ),
                    Err(e) => wb_error!(
                        "volume {name}: clean shutdown failed: {e}; the next create replays the log"
                    ),
                }
            }
        },
        move |()| send_msg(current_thread(), move || vol_finish(vbp)),
    );
    ctx.rt.turn();
}

/// Volume thread, in a message (not inside a poller): drop everything and exit the thread.
fn vol_finish(vbp: SendPtr<Vbdev>) {
    // SAFETY: alive until app_finish.
    let vb = unsafe { &*vbp.0 };
    // Normally closed and empty already (vol_stop); without a volume context (failed assembly)
    // this is the close. Nothing may stay queued once this thread exits.
    for io in vb.subq.close() {
        complete(io, false);
    }
    if let Some(ctx) = vb.ctx() {
        if ctx.dev_inflight.get() > 0 {
            // A base operation is still in flight: its buffer must outlive it. Try again.
            ctx.rt.turn();
            return send_msg(current_thread(), move || vol_finish(vbp));
        }
        ctx.vol.borrow_mut().take();
        let pollers: Vec<Poller> = ctx.pollers.borrow_mut().drain(..).collect();
        drop(pollers);
        ctx.rt.clear();
        let p = vb.volctx.swap(std::ptr::null_mut(), Ordering::AcqRel);
        drop(ctx);
        if !p.is_null() {
            // SAFETY: the reference stored by vol_start, released exactly once here.
            drop(unsafe { Rc::from_raw(p) });
        }
    }
    // SAFETY: called on the volume thread itself, once.
    unsafe { sys::spdk_thread_exit(current_thread()) };
    send_msg(app_thread(), move || app_finish(vbp));
}

unsafe extern "C" fn io_device_unregistered(io_device: *mut c_void) {
    guard("io_device unregister", || {
        finish_free(SendPtr(io_device as *mut Vbdev))
    });
}

/// App thread: close the bases, then unregister the io_device.
fn app_finish(vbp: SendPtr<Vbdev>) {
    // SAFETY: alive until finish_free; app thread.
    let vb = unsafe { &*vbp.0 };
    if let Some(b) = vb.cache.borrow_mut().take() {
        b.close();
    }
    if let Some(b) = vb.backing.borrow_mut().take() {
        b.close();
    }
    if vb.io_device.get() {
        // SAFETY: registered by us with this pointer; the callback frees it afterwards.
        unsafe {
            sys::spdk_io_device_unregister(vbp.0 as *mut c_void, Some(io_device_unregistered))
        };
    } else {
        finish_free(vbp);
    }
}

fn finish_free(vbp: SendPtr<Vbdev>) {
    // SAFETY: the last use of the Vbdev; app thread. Reclaimed at the end.
    let vb = unsafe { &*vbp.0 };
    let name = vb.name.clone();
    with_reg(|reg| {
        if let Some(pos) = reg.iter().position(|e| e.cfg.name == name) {
            let same = match reg[pos].state {
                State::Running(p) | State::Stopping(p) => p.0 == vbp.0,
                State::Assembling { .. } => true,
                State::Waiting => false,
            };
            if same {
                if reg[pos].deleting {
                    reg.remove(pos);
                } else {
                    reg[pos].state = State::Waiting;
                }
            }
        }
    });
    if vb.destructing.get() {
        // SAFETY: our registered bdev finishing its asynchronous destruct.
        unsafe { sys::spdk_bdev_destruct_done(vb.bdev_ptr(), 0) };
    }
    let failure = vb.failure.borrow_mut().take();
    let done = vb.assemble_done.borrow_mut().take();
    // SAFETY: allocated with Box::into_raw in assemble; nothing refers to it any more (thread
    // exited, bases closed, io_device unregistered, bdev destructed).
    drop(unsafe { Box::from_raw(vbp.0) });
    if let Some(d) = done {
        d(Err(failure.unwrap_or((
            -libc::ECANCELED,
            format!("volume '{name}' was stopped"),
        ))));
    }
}

/// A thread gets our channel: its completion queue and the poller that drains it.
unsafe extern "C" fn channel_create(io_device: *mut c_void, ctx: *mut c_void) -> i32 {
    guard("channel_create", || {
        let chan = Box::into_raw(Box::new(ChanCtx {
            done: IoQueue::new(),
            poller: Cell::new(None),
        }));
        // SAFETY: io_device is our registered Vbdev (alive until its io_device is unregistered,
        // after every channel is destroyed); only its immutable name is read.
        let name = unsafe { &(*(io_device as *const Vbdev)).name };
        let cp = chan as *const ChanCtx;
        let poller = Poller::register(&format!("wb_complete_{name}"), 0, move || {
            // SAFETY: the ChanCtx is freed in channel_destroy only after this poller is
            // unregistered, on this same thread.
            complete_queued(unsafe { &*cp })
        });
        // SAFETY: chan is the fresh box; ctx is our 8-byte channel context, owned by this channel
        // until channel_destroy.
        unsafe {
            (*chan).poller.set(Some(poller));
            *(ctx as *mut *mut ChanCtx) = chan;
        }
        0
    })
}

unsafe extern "C" fn channel_destroy(_io_device: *mut c_void, ctx: *mut c_void) {
    guard("channel_destroy", || {
        // SAFETY: the pointer channel_create stored; destroy runs on the channel's thread, once.
        let chan = unsafe { Box::from_raw(*(ctx as *mut *mut ChanCtx)) };
        drop(chan.poller.take());
        // SPDK destroys a channel only once no I/O submitted through it is outstanding, so the
        // queue is empty. Completing a straggler now would touch the already destroyed bdev
        // channel; it is reported instead.
        let left = chan.done.take();
        if !left.is_empty() {
            let n = left.count();
            wb_error!("{n} finished I/O left on a destroyed channel; not completed");
        }
    });
}

unsafe extern "C" fn vbdev_destruct(ctx: *mut c_void) -> i32 {
    guard("destruct", || {
        let vbp = SendPtr(ctx as *mut Vbdev);
        // SAFETY: ctx is the Vbdev we registered; app thread.
        let vb = unsafe { &*vbp.0 };
        vb.destructing.set(true);
        with_reg(|reg| {
            if let Some(e) = find(reg, &vb.name) {
                if matches!(e.state, State::Running(p) if p.0 == vbp.0) {
                    e.state = State::Stopping(vbp);
                }
            }
        });
        begin_teardown(vbp);
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
        // SAFETY: ctx is our registered Vbdev; only its immutable shared part is read.
        let vb = unsafe { &*(ctx as *const Vbdev) };
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

/// Our part of every bdev_io, in its `driver_ctx` (`module_get_ctx_size`). Written by
/// `vbdev_submit_request` on the submitting thread before the I/O goes anywhere.
#[repr(C)]
struct IoCtx {
    /// Link of the [`IoQueue`] the bdev_io sits in (submission or completion queue).
    next: *mut sys::spdk_bdev_io,
    /// Completion queue of the submitting thread's channel; null when the I/O was submitted on
    /// the volume thread itself (then it is completed directly).
    chan: *const ChanCtx,
    /// The result, while the I/O sits in a completion queue.
    ok: bool,
}

/// The module context of `io`.
///
/// # Safety
/// `io` must be a live bdev_io of our bdev (its driver_ctx holds `module_get_ctx_size` bytes).
unsafe fn io_ctx(io: *mut sys::spdk_bdev_io) -> *mut IoCtx {
    // SAFETY: per the contract; driver_ctx is cache-line aligned, enough for IoCtx.
    unsafe { (&raw mut (*io).driver_ctx) as *mut IoCtx }
}

/// The "closed" mark of an [`IoQueue`]: an aligned, non-null address no bdev_io can have.
fn closed_mark() -> *mut sys::spdk_bdev_io {
    std::ptr::dangling_mut()
}

/// A lock-free queue of bdev_ios linked through [`IoCtx::next`]: any thread pushes (a CAS on the
/// head, no allocation), one consumer thread takes everything at once, oldest first. Once closed
/// (by the consumer), pushes fail.
struct IoQueue {
    head: AtomicPtr<sys::spdk_bdev_io>,
}

impl IoQueue {
    const fn new() -> IoQueue {
        IoQueue {
            head: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Queues `io`; false (and `io` untouched) if the queue is closed.
    ///
    /// # Safety
    /// `io` is a live bdev_io of our bdev, owned by the caller and in no queue; once queued it
    /// belongs to the consumer.
    unsafe fn push(&self, io: *mut sys::spdk_bdev_io) -> bool {
        let mut h = self.head.load(Ordering::Relaxed);
        loop {
            if h == closed_mark() {
                return false;
            }
            // SAFETY: per the contract, io is ours until the CAS publishes it (Release).
            unsafe { (*io_ctx(io)).next = h };
            match self
                .head
                .compare_exchange_weak(h, io, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(cur) => h = cur,
            }
        }
    }

    /// Takes what is queued (nothing once closed). Consumer thread only.
    fn take(&self) -> IoBatch {
        let h = self.head.load(Ordering::Relaxed);
        if h.is_null() || h == closed_mark() {
            return IoBatch::EMPTY;
        }
        // Only the consumer stores null or the closed mark, so the head is still a list here.
        let h = self.head.swap(std::ptr::null_mut(), Ordering::Acquire);
        // SAFETY: a list of queued bdev_ios, now ours (the Acquire pairs with their pushes).
        unsafe { IoBatch::from_lifo(h) }
    }

    /// Closes the queue and takes what was queued. Consumer thread only; idempotent.
    fn close(&self) -> IoBatch {
        let h = self.head.swap(closed_mark(), Ordering::Acquire);
        if h == closed_mark() {
            return IoBatch::EMPTY;
        }
        // SAFETY: as in `take`.
        unsafe { IoBatch::from_lifo(h) }
    }
}

/// bdev_ios taken from an [`IoQueue`], oldest first. Each is yielded exactly once; one left when
/// the batch is dropped (only on a panic, which aborts anyway) is completed as failed.
struct IoBatch {
    head: *mut sys::spdk_bdev_io,
}

impl IoBatch {
    const EMPTY: IoBatch = IoBatch {
        head: std::ptr::null_mut(),
    };

    /// # Safety
    /// `p` is null or a list of bdev_ios (newest first) owned by the caller.
    unsafe fn from_lifo(mut p: *mut sys::spdk_bdev_io) -> IoBatch {
        let mut out = std::ptr::null_mut();
        while !p.is_null() {
            // SAFETY: every element is a live bdev_io of ours (contract).
            unsafe {
                let c = io_ctx(p);
                let next = (*c).next;
                (*c).next = out;
                out = p;
                p = next;
            }
        }
        IoBatch { head: out }
    }

    fn is_empty(&self) -> bool {
        self.head.is_null()
    }
}

impl Iterator for IoBatch {
    type Item = *mut sys::spdk_bdev_io;
    fn next(&mut self) -> Option<*mut sys::spdk_bdev_io> {
        let io = self.head;
        if io.is_null() {
            return None;
        }
        // SAFETY: io is in this batch, so still ours: the link is read before it is handed out
        // (whoever gets it may complete it).
        self.head = unsafe { (*io_ctx(io)).next };
        Some(io)
    }
}

impl Drop for IoBatch {
    fn drop(&mut self) {
        for io in self.by_ref() {
            complete(io, false);
        }
    }
}

/// Per-channel context (one per submitting thread): the completion queue the volume thread
/// fills and the poller of the channel's thread that completes what it holds. Lives in a Box
/// whose pointer is the 8-byte context of our `spdk_io_channel`.
struct ChanCtx {
    done: IoQueue,
    /// Owning thread only.
    poller: Cell<Option<Poller>>,
}

fn io_status(ok: bool) -> sys::spdk_bdev_io_status {
    if ok {
        sys::SPDK_BDEV_IO_STATUS_SUCCESS
    } else {
        sys::SPDK_BDEV_IO_STATUS_FAILED
    }
}

/// Completes an I/O that reached the volume thread (or one of its batches): directly when it
/// was submitted on this thread, else through the submitting channel's completion queue.
fn complete(io: *mut sys::spdk_bdev_io, ok: bool) {
    // SAFETY: io is a bdev_io submitted to us and not completed yet; its IoCtx was written at
    // submission.
    let chan = unsafe {
        let c = io_ctx(io);
        (*c).ok = ok;
        (*c).chan
    };
    if chan.is_null() {
        // SAFETY: submitted on this very thread: complete it here, once.
        unsafe { sys::spdk_bdev_io_complete(io, io_status(ok)) };
        return;
    }
    // SAFETY: the channel the I/O came through outlives it: SPDK destroys a channel only once
    // no I/O submitted through it is outstanding, and this one is outstanding until its thread
    // completes it from the queue. After the push neither io nor chan is touched here. The
    // completion queue is never closed.
    let queued = unsafe { (*chan).done.push(io) };
    debug_assert!(queued);
}

/// The channel's thread: completes every I/O the volume thread finished. True if any.
fn complete_queued(chan: &ChanCtx) -> bool {
    let batch = chan.done.take();
    if batch.is_empty() {
        return false;
    }
    for io in batch {
        // SAFETY: a finished I/O submitted on this thread, taken from its completion queue: it
        // is completed here, once, with the result the volume thread stored.
        unsafe { sys::spdk_bdev_io_complete(io, io_status((*io_ctx(io)).ok)) };
    }
    true
}

/// Submitting thread: hands `io` (its IoCtx written) to the volume thread, or fails it at once
/// when the volume is stopping.
fn submit(io: *mut sys::spdk_bdev_io) {
    // SAFETY: the bdev_io's bdev is ours; ctxt is the Vbdev, alive while I/O is possible.
    let vb = unsafe { &*((*(*io).bdev).ctxt as *const Vbdev) };
    // SAFETY: io is live, ours, in no queue.
    if !unsafe { vb.subq.push(io) } {
        // SAFETY: on the submitting thread, not completed yet.
        unsafe { sys::spdk_bdev_io_complete(io, sys::SPDK_BDEV_IO_STATUS_FAILED) };
    }
}

unsafe extern "C" fn get_buf_done(
    _ch: *mut sys::spdk_io_channel,
    io: *mut sys::spdk_bdev_io,
    success: bool,
) {
    guard("get_buf", || {
        if success {
            submit(io);
        } else {
            // SAFETY: on the submitting thread, not completed yet.
            unsafe { sys::spdk_bdev_io_complete(io, sys::SPDK_BDEV_IO_STATUS_FAILED) };
        }
    });
}

unsafe extern "C" fn vbdev_submit_request(
    ch: *mut sys::spdk_io_channel,
    io: *mut sys::spdk_bdev_io,
) {
    guard("submit_request", || {
        // SAFETY: io is a live bdev_io for our bdev (ctxt is the Vbdev, alive while I/O is
        // possible); reading its request fields.
        let (needs_buf, len, thread) = unsafe {
            let b = &(*io).u.bdev;
            let needs_buf = (*io).type_ as u32 == sys::SPDK_BDEV_IO_TYPE_READ
                && (b.iovcnt == 0 || (*b.iovs).iov_base.is_null());
            let vb = &*((*(*io).bdev).ctxt as *const Vbdev);
            (
                needs_buf,
                b.num_blocks * (*(*io).bdev).blocklen as u64,
                vb.thread,
            )
        };
        let chan = if current_thread() == thread {
            std::ptr::null()
        } else {
            // SAFETY: ch is our channel on this thread; channel_create stored a ChanCtx pointer
            // in its context.
            unsafe { *(sys::wb_shim_io_channel_get_ctx(ch) as *const *const ChanCtx) }
        };
        // SAFETY: our driver_ctx, not in use before this point.
        unsafe {
            io_ctx(io).write(IoCtx {
                next: std::ptr::null_mut(),
                chan,
                ok: false,
            })
        };
        if needs_buf {
            // SAFETY: on the submitting thread, as required.
            unsafe { sys::spdk_bdev_io_get_buf(io, Some(get_buf_done), len) };
        } else {
            submit(io);
        }
    });
}

/// The iovecs of a read/write bdev_io.
///
/// # Safety
/// `io` must be a live READ/WRITE bdev_io.
unsafe fn iovs<'a>(io: *mut sys::spdk_bdev_io) -> &'a [sys::iovec] {
    // SAFETY: per the contract, iovs/iovcnt describe the request's buffers.
    unsafe {
        let b = &(*io).u.bdev;
        std::slice::from_raw_parts(b.iovs, b.iovcnt.max(0) as usize)
    }
}

async fn do_read(
    vol: &Vol,
    io: SendPtr<sys::spdk_bdev_io>,
    off_sectors: u64,
    len: usize,
) -> Result<(), IoError> {
    // SAFETY: the bdev_io stays live until we complete it, after this function.
    let v = unsafe { iovs(io.0) };
    if v.len() == 1 && v[0].iov_len >= len {
        // SAFETY: the single buffer holds at least len bytes, owned by the request until its
        // completion, and nothing else touches it meanwhile.
        let out = unsafe { std::slice::from_raw_parts_mut(v[0].iov_base as *mut u8, len) };
        return vol.read(off_sectors, out).await;
    }
    let mut bounce = AlignedBuf::zeroed(len);
    vol.read(off_sectors, &mut bounce).await?;
    let mut pos = 0;
    for iov in v {
        let n = iov.iov_len.min(len - pos);
        // SAFETY: each iovec is a buffer of iov_len bytes owned by the request.
        unsafe {
            std::ptr::copy_nonoverlapping(bounce[pos..].as_ptr(), iov.iov_base as *mut u8, n)
        };
        pos += n;
        if pos == len {
            break;
        }
    }
    Ok(())
}

async fn do_write(
    vol: &Vol,
    io: SendPtr<sys::spdk_bdev_io>,
    off_sectors: u64,
    len: usize,
    fua: bool,
) -> Result<(), IoError> {
    // SAFETY: the bdev_io stays live until we complete it, after this function.
    let v = unsafe { iovs(io.0) };
    if v.len() == 1 && v[0].iov_len >= len {
        // SAFETY: the single buffer holds len bytes of the request's data.
        let data = unsafe { std::slice::from_raw_parts(v[0].iov_base as *const u8, len) };
        return vol.write(off_sectors, data, fua).await;
    }
    let mut bounce = AlignedBuf::zeroed(len);
    let mut pos = 0;
    for iov in v {
        let n = iov.iov_len.min(len - pos);
        // SAFETY: each iovec is a buffer of iov_len bytes owned by the request.
        unsafe {
            std::ptr::copy_nonoverlapping(iov.iov_base as *const u8, bounce[pos..].as_mut_ptr(), n)
        };
        pos += n;
        if pos == len {
            break;
        }
    }
    vol.write(off_sectors, &bounce, fua).await
}

/// Volume thread: starts one bdev_io in the engine (polled once at once; most I/O completes in
/// that poll).
fn start_io(ctx: &Rc<VolCtx>, vol: &Vol, io: *mut sys::spdk_bdev_io) {
    // SAFETY: the Vbdev outlives its context; volume thread.
    let spb = unsafe { (*ctx.vb.0).sectors_per_block };
    // SAFETY: live bdev_io; plain field reads.
    let (ty, off_sectors, nr_sectors, fua) = unsafe {
        let b = &(*io).u.bdev;
        (
            (*io).type_ as u32,
            b.offset_blocks * spb,
            b.num_blocks * spb,
            b.nvme_cdw12.raw & NVME_CDW12_FUA != 0,
        )
    };
    let io = SendPtr(io);
    if ty == sys::SPDK_BDEV_IO_TYPE_RESET {
        // Nothing is queued outside the engine once started: a reset completes once every I/O
        // submitted before it (started before it, in queue order) has finished.
        let c = ctx.clone();
        ctx.rt.spawn_now(Box::pin(async move {
            c.user_io.zero().await;
            complete(io.0, true);
        }));
        return;
    }
    ctx.user_io.inc();
    let len = (nr_sectors * 512) as usize;
    let vol = vol.clone();
    // A strong reference: the cycle (context -> executor -> task -> context) is cut by
    // `SpdkRt::clear` in vol_finish, and user I/O always finishes before that.
    let c = ctx.clone();
    ctx.rt.spawn_now(Box::pin(async move {
        let (what, r) = match ty {
            sys::SPDK_BDEV_IO_TYPE_READ => ("read", do_read(&vol, io, off_sectors, len).await),
            sys::SPDK_BDEV_IO_TYPE_WRITE => {
                ("write", do_write(&vol, io, off_sectors, len, fua).await)
            }
            sys::SPDK_BDEV_IO_TYPE_FLUSH => ("flush", vol.flush().await),
            sys::SPDK_BDEV_IO_TYPE_UNMAP => ("unmap", vol.discard(off_sectors, nr_sectors).await),
            sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES => (
                "write_zeroes",
                vol.write_zeroes(off_sectors, nr_sectors, false).await,
            ),
            _ => ("unsupported I/O", Err(IoError::NotDurable)),
        };
        if let Err(e) = &r {
            c.log_io_error(what, e);
        }
        c.user_io.dec();
        complete(io.0, r.is_ok());
    }));
}

/// Runs `f` with the volume context on the volume's thread. `f` must not block.
pub fn on_volume(vbp: SendPtr<Vbdev>, f: impl FnOnce(Option<Rc<VolCtx>>) + Send + 'static) {
    // SAFETY: callers only pass Running volumes (state checked on the app thread), whose thread
    // processes this message before any teardown message sent later.
    let thread = unsafe { (*vbp.0).thread };
    send_msg(thread, move || {
        let vbp = vbp;
        // SAFETY: as above; we are on the volume thread now.
        let vb = unsafe { &*vbp.0 };
        f(vb.ctx())
    });
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
        with_reg(|r| r.clear());
        super::dma::stop_freeing();
    });
}

unsafe extern "C" fn module_get_ctx_size() -> i32 {
    std::mem::size_of::<IoCtx>() as i32
}

/// `save_config`: one `bdev_writeboost_create` per configured volume (a resume: never
/// `force_format`), with every tunable. Written before the base bdevs' own create calls, so
/// each create is deferred until examine sees its bases.
unsafe extern "C" fn module_config_json(w: *mut sys::spdk_json_write_ctx) -> i32 {
    guard("config_json", || {
        let cfgs: Vec<Config> = with_reg(|r| {
            r.iter()
                .filter(|e| !e.deleting)
                .map(|e| e.cfg.clone())
                .collect()
        });
        for c in cfgs {
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
static PENDING: Mutex<Vec<(String, SendPtr<Vbdev>)>> = Mutex::new(Vec::new());

/// examine_config: a bdev appeared. If it completes a waiting volume, open and claim both bases
/// now (synchronously, no I/O), so no other module probes or claims them.
unsafe extern "C" fn module_examine_config(bdev: *mut sys::spdk_bdev) {
    guard("examine_config", || {
        let name = super::base::bdev_name(bdev);
        let candidates: Vec<(String, String, String)> = with_reg(|r| {
            r.iter()
                .filter(|e| matches!(e.state, State::Waiting) && !e.deleting)
                .filter(|e| e.cfg.cache_bdev == name || e.cfg.backing_bdev == name)
                .map(|e| {
                    (
                        e.cfg.name.clone(),
                        e.cfg.cache_bdev.clone(),
                        e.cfg.backing_bdev.clone(),
                    )
                })
                .collect()
        });
        for (vname, c, b) in candidates {
            if !(super::base::bdev_exists(&c) && super::base::bdev_exists(&b)) {
                continue;
            }
            match prepare(&vname) {
                Ok(vbp) => PENDING
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((name.clone(), vbp)),
                Err((_, msg)) => wb_error!("volume {vname}: create failed: {msg}"),
            }
        }
        // SAFETY: our registered module, once per examine_config call.
        unsafe { sys::spdk_bdev_module_examine_done(module()) };
    });
}

/// examine_disk: replay and register what examine_config prepared for this bdev; examine is
/// done once the volumes are registered (so `bdev_wait_for_examine` waits for them).
unsafe extern "C" fn module_examine_disk(bdev: *mut sys::spdk_bdev) {
    guard("examine_disk", || {
        let name = super::base::bdev_name(bdev);
        let mine: Vec<SendPtr<Vbdev>> = {
            let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
            let (mine, rest): (Vec<_>, Vec<_>) = p.drain(..).partition(|(b, _)| *b == name);
            *p = rest;
            mine.into_iter().map(|(_, v)| v).collect()
        };
        if mine.is_empty() {
            // SAFETY: our registered module, once per examine_disk call.
            unsafe { sys::spdk_bdev_module_examine_done(module()) };
            return;
        }
        let pending = Rc::new(Cell::new(mine.len()));
        for vbp in mine {
            // SAFETY: prepared, not launched: alive; app thread.
            let vname = unsafe { (*vbp.0).name.clone() };
            let pending = pending.clone();
            launch(
                vbp,
                Box::new(move |r| {
                    if let Err((_, msg)) = r {
                        wb_error!("volume {vname}: create failed: {msg}");
                    }
                    pending.set(pending.get() - 1);
                    if pending.get() == 0 {
                        // SAFETY: our registered module; once, after the last assembly.
                        unsafe { sys::spdk_bdev_module_examine_done(module()) };
                    }
                }),
            );
        }
    });
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
    t.submit_request = Some(vbdev_submit_request);
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
