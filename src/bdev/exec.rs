//! The engine's runtime on an SPDK thread: a single-threaded executor, a timer list, time from
//! `spdk_get_ticks`, and named pollers that call Rust closures.
//!
//! Nothing here blocks. Tasks are polled by the `wb_exec` poller of the owning thread (every
//! reactor iteration) and right after each message that spawns work; user I/O is polled once as
//! it is spawned (`spawn_now`). Wakers only queue the task, so a waker may fire from inside a
//! base I/O completion without re-entering a poll. Task slots and their wakers are reused.

use super::ffi::{cstring, guard};
use crate::runtime::{LocalFuture, Runtime};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use writeboost_spdk_sys as sys;

struct ReadyQueue(Mutex<VecDeque<usize>>);

impl ReadyQueue {
    fn push(&self, id: usize) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(id);
    }
    /// Moves every queued id into `out` (empty on entry), oldest first: one lock per batch.
    fn take_all(&self, out: &mut VecDeque<usize>) {
        std::mem::swap(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()), out);
    }
}

thread_local! {
    /// The task being polled on this thread (`usize::MAX`: none).
    static POLLING: Cell<usize> = const { Cell::new(usize::MAX) };
}

struct TaskWaker {
    id: usize,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
    /// Where a task that wakes itself while being polled (it yields) waits for the next `run`,
    /// so a long loop that yields lets the reactor run messages and pollers in between.
    yielded: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            if POLLING.with(Cell::get) == self.id {
                self.yielded.push(self.id);
            } else {
                self.ready.push(self.id);
            }
        }
    }
}

/// One task slot. The waker belongs to the slot and is reused by every task the slot holds; a
/// slot whose `fut` is `None` is free (listed in `Exec::free`).
struct Task {
    fut: Option<LocalFuture>,
    tw: Arc<TaskWaker>,
    waker: Waker,
}

impl Task {
    /// Polls the task's future once, dropping it when finished.
    fn poll(&mut self) {
        if let Some(f) = self.fut.as_mut() {
            POLLING.with(|p| p.set(self.tw.id));
            let done = f
                .as_mut()
                .poll(&mut Context::from_waker(&self.waker))
                .is_ready();
            POLLING.with(|p| p.set(usize::MAX));
            if done {
                self.fut = None;
            }
        }
    }
}

/// A single-threaded executor. A stale wake (of a finished task whose slot was reused) only
/// causes a spurious poll, which futures tolerate.
#[derive(Default)]
pub struct Exec {
    /// `None` only while the slot's task is being polled (taken out of the vector so that the
    /// poll may spawn).
    tasks: RefCell<Vec<Option<Task>>>,
    free: RefCell<Vec<usize>>,
    ready: Arc<ReadyQueue>,
    /// Tasks that yielded during the previous `run`.
    yielded: Arc<ReadyQueue>,
    /// The batch of ready ids being run (kept to reuse its allocation).
    batch: RefCell<VecDeque<usize>>,
    running: Cell<bool>,
}

impl Default for ReadyQueue {
    fn default() -> Self {
        ReadyQueue(Mutex::new(VecDeque::new()))
    }
}

impl Exec {
    /// A slot for `fut`, taken out of the vector (the caller puts it back): a free one, whose
    /// waker is reused, or a new one.
    fn take_slot(&self, fut: LocalFuture) -> (usize, Task) {
        if let Some(id) = self.free.borrow_mut().pop() {
            if let Some(mut t) = self.tasks.borrow_mut().get_mut(id).and_then(Option::take) {
                t.fut = Some(fut);
                return (id, t);
            }
        }
        let id = {
            let mut t = self.tasks.borrow_mut();
            t.push(None);
            t.len() - 1
        };
        let tw = Arc::new(TaskWaker {
            id,
            queued: AtomicBool::new(false),
            ready: self.ready.clone(),
            yielded: self.yielded.clone(),
        });
        let waker = Waker::from(tw.clone());
        let task = Task {
            fut: Some(fut),
            tw,
            waker,
        };
        (id, task)
    }

    fn put_slot(&self, id: usize, task: Task) {
        let idle = task.fut.is_none();
        if let Some(s) = self.tasks.borrow_mut().get_mut(id) {
            *s = Some(task);
        } else {
            // Cleared meanwhile (teardown): drop the task.
            return;
        }
        if idle {
            self.free.borrow_mut().push(id);
        }
    }

    pub fn spawn(&self, fut: LocalFuture) {
        let (id, task) = self.take_slot(fut);
        // An id still queued from a stale wake polls the new task; otherwise queue it.
        if !task.tw.queued.swap(true, Ordering::AcqRel) {
            self.ready.push(id);
        }
        self.put_slot(id, task);
    }

    /// Spawns `fut` and polls it once right away (most I/O completes in its first poll, without
    /// a trip through the ready queue). Outside `run` only; inside, the same as `spawn`.
    pub fn spawn_now(&self, fut: LocalFuture) {
        if self.running.get() {
            return self.spawn(fut);
        }
        self.running.set(true);
        let (id, mut task) = self.take_slot(fut);
        // A wake during this poll queues the id again (a stale queued id only polls spuriously).
        task.tw.queued.store(false, Ordering::Release);
        task.poll();
        self.put_slot(id, task);
        self.running.set(false);
    }

    /// Polls ready tasks until none is ready; the tasks that yielded during the previous run are
    /// ready again, those that yield now wait for the next run. Returns the number of polls (0
    /// when re-entered).
    pub fn run(&self) -> usize {
        if self.running.replace(true) {
            return 0;
        }
        let mut polls = 0;
        let mut batch = std::mem::take(&mut *self.batch.borrow_mut());
        // First the tasks that yielded during the previous run, then whatever is ready.
        self.yielded.take_all(&mut batch);
        loop {
            if batch.is_empty() {
                self.ready.take_all(&mut batch);
                if batch.is_empty() {
                    break;
                }
            }
            while let Some(id) = batch.pop_front() {
                let task = self.tasks.borrow_mut().get_mut(id).and_then(Option::take);
                let Some(mut task) = task else { continue };
                task.tw.queued.store(false, Ordering::Release);
                if task.fut.is_none() {
                    // A free slot woken by a stale waker: back in place, already in `free`.
                    if let Some(s) = self.tasks.borrow_mut().get_mut(id) {
                        *s = Some(task);
                    }
                    continue;
                }
                polls += 1;
                task.poll();
                self.put_slot(id, task);
            }
        }
        *self.batch.borrow_mut() = batch;
        self.running.set(false);
        polls
    }
}

struct RtInner {
    exec: Exec,
    timers: RefCell<BTreeMap<(u64, u64), Waker>>,
    timer_seq: Cell<u64>,
    /// Nanoseconds per tick, times 2^32.
    ns_per_tick_q32: u64,
}

/// The engine's [`Runtime`] on one SPDK thread. Must only be used on that thread.
#[derive(Clone)]
pub struct SpdkRt {
    inner: Rc<RtInner>,
}

impl SpdkRt {
    pub fn new() -> SpdkRt {
        // SAFETY: plain query of the TSC rate.
        let ticks_hz = unsafe { sys::spdk_get_ticks_hz() }.max(1);
        SpdkRt {
            inner: Rc::new(RtInner {
                exec: Exec::default(),
                timers: RefCell::new(BTreeMap::new()),
                timer_seq: Cell::new(0),
                ns_per_tick_q32: ((1_000_000_000u128 << 32) / ticks_hz as u128) as u64,
            }),
        }
    }

    /// Wakes due timers and runs ready tasks; true if anything happened.
    pub fn turn(&self) -> bool {
        self.turn_at(self.now_ns())
    }

    /// [`Self::turn`] with the current time already read.
    pub fn turn_at(&self, now: u64) -> bool {
        let fired = self.fire_timers(now);
        let polls = self.inner.exec.run();
        fired || polls > 0
    }

    /// Wakes the timers due at `now`; true if there were any. No allocation when none is due.
    fn fire_timers(&self, now: u64) -> bool {
        let mut due: Vec<Waker> = Vec::new();
        {
            let mut t = self.inner.timers.borrow_mut();
            while let Some(e) = t.first_entry() {
                if e.key().0 > now {
                    break;
                }
                due.push(e.remove());
            }
        }
        let fired = !due.is_empty();
        due.into_iter().for_each(Waker::wake);
        fired
    }

    /// Spawns `fut` and polls it once at once (see [`Exec::spawn_now`]).
    pub fn spawn_now(&self, fut: LocalFuture) {
        self.inner.exec.spawn_now(fut);
    }

    /// Drops every task and timer (teardown, once no I/O is in flight): tasks hold the engine,
    /// which holds this runtime, so the cycle is cut here.
    pub fn clear(&self) {
        let tasks: Vec<Option<Task>> = std::mem::take(&mut *self.inner.exec.tasks.borrow_mut());
        self.inner.exec.batch.borrow_mut().clear();
        self.inner.exec.free.borrow_mut().clear();
        let timers = std::mem::take(&mut *self.inner.timers.borrow_mut());
        drop(tasks);
        drop(timers);
    }

    /// Spawns a future that yields a value, and calls `done` with it on this thread.
    pub fn spawn_then<T: 'static>(
        &self,
        fut: impl Future<Output = T> + 'static,
        done: impl FnOnce(T) + 'static,
    ) {
        self.spawn(Box::pin(async move { done(fut.await) }));
    }
}

struct Sleep {
    rt: SpdkRt,
    deadline_ns: u64,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.rt.now_ns() >= self.deadline_ns {
            return Poll::Ready(());
        }
        let seq = self.rt.inner.timer_seq.get();
        self.rt.inner.timer_seq.set(seq + 1);
        self.rt
            .inner
            .timers
            .borrow_mut()
            .insert((self.deadline_ns, seq), cx.waker().clone());
        Poll::Pending
    }
}

impl Runtime for SpdkRt {
    fn now_ns(&self) -> u64 {
        // SAFETY: plain read of the TSC.
        let ticks = unsafe { sys::spdk_get_ticks() };
        // Fixed point (32 fractional bits): a multiply instead of a 128-bit division per call.
        ((ticks as u128 * self.inner.ns_per_tick_q32 as u128) >> 32) as u64
    }

    fn sleep(&self, ns: u64) -> LocalFuture {
        Box::pin(Sleep {
            rt: self.clone(),
            deadline_ns: self.now_ns().saturating_add(ns),
        })
    }

    fn spawn(&self, fut: LocalFuture) {
        self.inner.exec.spawn(fut);
    }
}

type PollFn = Box<dyn FnMut() -> bool>;

/// A named SPDK poller calling a Rust closure that reports whether it did work. Registered and
/// unregistered on the same SPDK thread.
pub struct Poller {
    ptr: *mut sys::spdk_poller,
    cb: *mut PollFn,
}

unsafe extern "C" fn poller_trampoline(arg: *mut c_void) -> i32 {
    // SAFETY: arg is the PollFn box owned by the Poller, freed only after unregistering, and
    // pollers run on the thread that registered them, one call at a time.
    let f = unsafe { &mut *(arg as *mut PollFn) };
    let busy = guard("poller", f);
    if busy {
        sys::SPDK_POLLER_BUSY as i32
    } else {
        sys::SPDK_POLLER_IDLE as i32
    }
}

impl Poller {
    pub fn register(name: &str, period_us: u64, f: impl FnMut() -> bool + 'static) -> Poller {
        let cb: *mut PollFn = Box::into_raw(Box::new(Box::new(f)));
        let cname = cstring(name);
        // SAFETY: the trampoline matches spdk_poller_fn; cb stays valid until `unregister`; the
        // name is copied by SPDK.
        let ptr = unsafe {
            sys::spdk_poller_register_named(
                Some(poller_trampoline),
                cb as *mut c_void,
                period_us,
                cname.as_ptr(),
            )
        };
        Poller { ptr, cb }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: called on the registering thread (pollers live in thread-owned state); after
        // unregistering, SPDK never calls the trampoline again, so the closure can be freed.
        unsafe {
            sys::spdk_poller_unregister(&mut self.ptr);
            drop(Box::from_raw(self.cb));
        }
    }
}
