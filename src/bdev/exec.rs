//! The engine's runtime on an SPDK thread: a single-threaded executor, a timer list, time from
//! `spdk_get_ticks`, and named pollers that call Rust closures.
//!
//! Nothing here blocks. Tasks are polled by the `wb_exec` poller of the owning thread (every
//! reactor iteration) and right after each message that spawns work; wakers only queue the task,
//! so a waker may fire from inside a base I/O completion without re-entering a poll.

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
    fn pop(&self) -> Option<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }
}

struct TaskWaker {
    id: usize,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.push(self.id);
        }
    }
}

struct Task {
    fut: LocalFuture,
    waker: Arc<TaskWaker>,
}

/// A single-threaded executor. A stale wake (of a finished task whose slot was reused) only
/// causes a spurious poll, which futures tolerate.
#[derive(Default)]
pub struct Exec {
    tasks: RefCell<Vec<Option<Task>>>,
    free: RefCell<Vec<usize>>,
    ready: Arc<ReadyQueue>,
    running: Cell<bool>,
}

impl Default for ReadyQueue {
    fn default() -> Self {
        ReadyQueue(Mutex::new(VecDeque::new()))
    }
}

impl Exec {
    pub fn spawn(&self, fut: LocalFuture) {
        let id = match self.free.borrow_mut().pop() {
            Some(id) => id,
            None => {
                let mut t = self.tasks.borrow_mut();
                t.push(None);
                t.len() - 1
            }
        };
        let waker = Arc::new(TaskWaker {
            id,
            queued: AtomicBool::new(true),
            ready: self.ready.clone(),
        });
        self.tasks.borrow_mut()[id] = Some(Task { fut, waker });
        self.ready.push(id);
    }

    /// Polls ready tasks until none is ready. Returns the number of polls (0 when re-entered).
    pub fn run(&self) -> usize {
        if self.running.replace(true) {
            return 0;
        }
        let mut polls = 0;
        while let Some(id) = self.ready.pop() {
            let task = self.tasks.borrow_mut().get_mut(id).and_then(Option::take);
            let Some(mut task) = task else { continue };
            task.waker.queued.store(false, Ordering::Release);
            let waker = Waker::from(task.waker.clone());
            polls += 1;
            match task.fut.as_mut().poll(&mut Context::from_waker(&waker)) {
                Poll::Pending => self.tasks.borrow_mut()[id] = Some(task),
                Poll::Ready(()) => self.free.borrow_mut().push(id),
            }
        }
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
        let now = self.now_ns();
        let due: Vec<Waker> = {
            let mut t = self.inner.timers.borrow_mut();
            let rest = t.split_off(&(now.saturating_add(1), 0));
            std::mem::replace(&mut *t, rest).into_values().collect()
        };
        let fired = !due.is_empty();
        due.into_iter().for_each(Waker::wake);
        let polls = self.inner.exec.run();
        fired || polls > 0
    }

    /// Drops every task and timer (teardown, once no I/O is in flight): tasks hold the engine,
    /// which holds this runtime, so the cycle is cut here.
    pub fn clear(&self) {
        let tasks: Vec<Option<Task>> = std::mem::take(&mut *self.inner.exec.tasks.borrow_mut());
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
