//! What the engine needs from its environment: time, timers and task spawning. The engine never
//! reads wall time itself; SPDK, the offline tool and the simulation each provide a [`Runtime`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pub type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

pub trait Runtime: Clone + 'static {
    /// Monotonic time in nanoseconds.
    fn now_ns(&self) -> u64;
    /// A future that completes `ns` nanoseconds from now.
    fn sleep(&self, ns: u64) -> LocalFuture;
    /// Runs `fut` to completion in the background on the engine's thread.
    fn spawn(&self, fut: LocalFuture);
}

/// Gives the thread back to its runtime once: completes on the second poll. Every runtime polls
/// a task that woke itself only after the other work ready at that point (SPDK: on a later
/// reactor iteration), so a long loop that yields keeps the thread responsive.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// A small single-threaded executor on real time: the offline command and the benchmarks.
#[derive(Clone, Default)]
pub struct LocalRuntime {
    inner: Rc<LocalInner>,
}

#[derive(Default)]
struct LocalInner {
    tasks: RefCell<Vec<Option<LocalFuture>>>,
    /// Slots of finished tasks, reused by new ones.
    free_slots: RefCell<Vec<usize>>,
    spawned: RefCell<Vec<LocalFuture>>,
    ready: Arc<Mutex<VecDeque<usize>>>,
    timers: RefCell<Vec<(u64, Waker)>>,
}

struct TaskWaker {
    id: usize,
    ready: Arc<Mutex<VecDeque<usize>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.ready.lock().expect("ready queue").push_back(self.id);
    }
}

fn monotonic_ns() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

struct Sleep {
    rt: LocalRuntime,
    deadline_ns: u64,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if monotonic_ns() >= self.deadline_ns {
            return Poll::Ready(());
        }
        self.rt
            .inner
            .timers
            .borrow_mut()
            .push((self.deadline_ns, cx.waker().clone()));
        Poll::Pending
    }
}

impl Runtime for LocalRuntime {
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }
    fn sleep(&self, ns: u64) -> LocalFuture {
        Box::pin(Sleep {
            rt: self.clone(),
            deadline_ns: monotonic_ns() + ns,
        })
    }
    fn spawn(&self, fut: LocalFuture) {
        self.inner.spawned.borrow_mut().push(fut);
    }
}

impl LocalRuntime {
    pub fn new() -> LocalRuntime {
        LocalRuntime::default()
    }

    fn adopt_spawned(&self) {
        let new: Vec<LocalFuture> = self.inner.spawned.borrow_mut().drain(..).collect();
        for f in new {
            let mut tasks = self.inner.tasks.borrow_mut();
            let id = match self.inner.free_slots.borrow_mut().pop() {
                Some(id) => {
                    tasks[id] = Some(f);
                    id
                }
                None => {
                    tasks.push(Some(f));
                    tasks.len() - 1
                }
            };
            self.inner.ready.lock().expect("ready queue").push_back(id);
        }
    }

    /// Polls every ready task until none is ready; returns the number of polls done.
    pub fn run_until_stalled(&self) -> usize {
        let mut polls = 0;
        loop {
            self.adopt_spawned();
            let now = monotonic_ns();
            let due: Vec<Waker> = {
                let mut t = self.inner.timers.borrow_mut();
                let (due, rest): (Vec<_>, Vec<_>) = t.drain(..).partition(|(d, _)| *d <= now);
                *t = rest;
                due.into_iter().map(|(_, w)| w).collect()
            };
            due.into_iter().for_each(Waker::wake);
            let next = self.inner.ready.lock().expect("ready queue").pop_front();
            let Some(id) = next else {
                if self.inner.spawned.borrow().is_empty() {
                    return polls;
                }
                continue;
            };
            let fut = self.inner.tasks.borrow_mut()[id].take();
            let Some(mut fut) = fut else { continue };
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                ready: self.inner.ready.clone(),
            }));
            polls += 1;
            if fut
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
            {
                self.inner.tasks.borrow_mut()[id] = Some(fut);
            } else {
                self.inner.free_slots.borrow_mut().push(id);
            }
        }
    }

    /// Runs `fut` (and every spawned task) until `fut` completes.
    pub fn block_on<T: 'static>(&self, fut: impl Future<Output = T> + 'static) -> T {
        let out: Rc<RefCell<Option<T>>> = Rc::new(RefCell::new(None));
        let o = out.clone();
        self.spawn(Box::pin(async move {
            let v = fut.await;
            *o.borrow_mut() = Some(v);
        }));
        loop {
            self.run_until_stalled();
            if let Some(v) = out.borrow_mut().take() {
                return v;
            }
            // Nothing ready: wait for the next timer.
            let next = self.inner.timers.borrow().iter().map(|(d, _)| *d).min();
            match next {
                Some(d) => {
                    let now = monotonic_ns();
                    if d > now {
                        std::thread::sleep(std::time::Duration::from_nanos(d - now));
                    }
                }
                None => panic!("block_on: the future can never complete (no task ready, no timer)"),
            }
        }
    }
}
