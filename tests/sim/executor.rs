//! A seeded single-threaded executor on virtual time. One seed drives every choice: which ready
//! task runs next, device latencies, faults. Time only moves when no task is ready.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use writeboost::runtime::{LocalFuture, Runtime};

/// SplitMix64: small, fast, good enough for simulation choices.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

#[derive(Default)]
pub struct CompletionState {
    done: bool,
    waker: Option<Waker>,
}

/// A one-shot event completed by the world at a scheduled time.
#[derive(Clone, Default)]
pub struct Completion(Rc<RefCell<CompletionState>>);

impl Future for Completion {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.borrow_mut();
        if s.done {
            Poll::Ready(())
        } else {
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

impl Completion {
    fn fire(&self) {
        let w = {
            let mut s = self.0.borrow_mut();
            s.done = true;
            s.waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

struct TaskWaker {
    id: usize,
    ready: Arc<Mutex<Vec<usize>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        let mut r = self.ready.lock().unwrap();
        if !r.contains(&self.id) {
            r.push(self.id);
        }
    }
}

pub struct WorldInner {
    now_ns: Cell<u64>,
    pub rng: RefCell<Rng>,
    seq: Cell<u64>,
    timers: RefCell<BinaryHeap<Reverse<(u64, u64)>>>,
    timer_events: RefCell<std::collections::HashMap<u64, Completion>>,
    tasks: RefCell<Vec<Option<LocalFuture>>>,
    spawned: RefCell<Vec<LocalFuture>>,
    ready: Arc<Mutex<Vec<usize>>>,
    pub polls: Cell<u64>,
    /// Running hash of the execution: every poll, timer and device I/O (see [`World::trace`]).
    trace_hash: Cell<u64>,
    trace_events: Cell<u64>,
    /// The seed the world was made from (choices that must not draw from its stream).
    seed: u64,
}

/// The simulated world: clock, randomness, tasks. Cloning shares it.
#[derive(Clone)]
pub struct World(pub Rc<WorldInner>);

#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    Stopped,
    /// Nothing ready and no timer pending: a deadlock.
    Stalled,
}

impl World {
    /// A hash of the seed (SplitMix64's first output from it), for choices that must not draw
    /// from the world's random stream (so that every other choice of the seed stays the same).
    pub fn seed_hash(&self) -> u64 {
        Rng(self.0.seed).next_u64()
    }

    pub fn new(seed: u64) -> World {
        World(Rc::new(WorldInner {
            now_ns: Cell::new(0),
            rng: RefCell::new(Rng::new(seed)),
            seq: Cell::new(0),
            timers: RefCell::new(BinaryHeap::new()),
            timer_events: RefCell::new(Default::default()),
            tasks: RefCell::new(Vec::new()),
            spawned: RefCell::new(Vec::new()),
            ready: Arc::new(Mutex::new(Vec::new())),
            polls: Cell::new(0),
            trace_hash: Cell::new(0xcbf2_9ce4_8422_2325),
            trace_events: Cell::new(0),
            seed,
        }))
    }

    /// Mixes one event (a tag and two values) into the execution trace. Two runs of a seed are
    /// the same execution only if every event matches, in order.
    pub fn trace(&self, tag: u64, a: u64, b: u64) {
        let mut h = self.0.trace_hash.get();
        for v in [tag, a, b, self.now_ns()] {
            h = (h ^ v).wrapping_mul(0x0000_0100_0000_01B3);
            h ^= h >> 29;
        }
        self.0.trace_hash.set(h);
        self.0.trace_events.set(self.0.trace_events.get() + 1);
    }

    /// (hash, number of events) of the execution so far.
    pub fn trace_summary(&self) -> (u64, u64) {
        (self.0.trace_hash.get(), self.0.trace_events.get())
    }

    pub fn now_ns(&self) -> u64 {
        self.0.now_ns.get()
    }

    pub fn rng(&self) -> std::cell::RefMut<'_, Rng> {
        self.0.rng.borrow_mut()
    }

    /// A completion that fires `delay_ns` from now.
    pub fn after(&self, delay_ns: u64) -> Completion {
        let c = Completion::default();
        let seq = self.0.seq.get();
        self.0.seq.set(seq + 1);
        self.0
            .timers
            .borrow_mut()
            .push(Reverse((self.now_ns() + delay_ns, seq)));
        self.0.timer_events.borrow_mut().insert(seq, c.clone());
        c
    }

    pub fn spawn_task(&self, f: impl Future<Output = ()> + 'static) {
        self.0.spawned.borrow_mut().push(Box::pin(f));
    }

    fn adopt(&self) {
        let new: Vec<LocalFuture> = self.0.spawned.borrow_mut().drain(..).collect();
        for f in new {
            let mut tasks = self.0.tasks.borrow_mut();
            let id = tasks.len();
            tasks.push(Some(f));
            self.0.ready.lock().unwrap().push(id);
        }
    }

    /// Runs until `stop()` holds (checked between polls) or nothing can run.
    pub fn run_until(&self, mut stop: impl FnMut() -> bool) -> RunEnd {
        loop {
            self.adopt();
            if stop() {
                return RunEnd::Stopped;
            }
            let next = {
                let mut r = self.0.ready.lock().unwrap();
                if r.is_empty() {
                    None
                } else {
                    let i = self.rng().below(r.len() as u64) as usize;
                    Some(r.swap_remove(i))
                }
            };
            match next {
                Some(id) => {
                    let fut = self.0.tasks.borrow_mut()[id].take();
                    let Some(mut fut) = fut else { continue };
                    let waker = Waker::from(Arc::new(TaskWaker {
                        id,
                        ready: self.0.ready.clone(),
                    }));
                    self.0.polls.set(self.0.polls.get() + 1);
                    self.trace(1, id as u64, 0);
                    if fut
                        .as_mut()
                        .poll(&mut Context::from_waker(&waker))
                        .is_pending()
                    {
                        self.0.tasks.borrow_mut()[id] = Some(fut);
                    }
                }
                None => {
                    let t = self.0.timers.borrow_mut().pop();
                    let Some(Reverse((at, seq))) = t else {
                        return RunEnd::Stalled;
                    };
                    if at > self.now_ns() {
                        self.0.now_ns.set(at);
                    }
                    let c = self.0.timer_events.borrow_mut().remove(&seq);
                    self.trace(2, seq, at);
                    if let Some(c) = c {
                        c.fire();
                    }
                }
            }
        }
    }

    /// Runs `fut` to completion (other tasks run too). None if the world stalls first.
    pub fn block_on<T: 'static>(&self, fut: impl Future<Output = T> + 'static) -> Option<T> {
        let out: Rc<RefCell<Option<T>>> = Rc::new(RefCell::new(None));
        let o = out.clone();
        self.spawn_task(async move {
            let v = fut.await;
            *o.borrow_mut() = Some(v);
        });
        match self.run_until(|| out.borrow().is_some()) {
            RunEnd::Stopped => out.borrow_mut().take(),
            RunEnd::Stalled => None,
        }
    }

    /// Power cut: every task and timer vanishes.
    pub fn kill_all(&self) {
        let tasks: Vec<_> = self.0.tasks.borrow_mut().drain(..).collect();
        drop(tasks);
        let spawned: Vec<_> = self.0.spawned.borrow_mut().drain(..).collect();
        drop(spawned);
        self.0.ready.lock().unwrap().clear();
        self.0.timers.borrow_mut().clear();
        self.0.timer_events.borrow_mut().clear();
    }
}

/// The engine's view of the world.
#[derive(Clone)]
pub struct SimRuntime(pub World);

impl Runtime for SimRuntime {
    fn now_ns(&self) -> u64 {
        self.0.now_ns()
    }
    fn sleep(&self, ns: u64) -> LocalFuture {
        Box::pin(self.0.after(ns))
    }
    fn spawn(&self, fut: LocalFuture) {
        self.0 .0.spawned.borrow_mut().push(fut);
    }
}
