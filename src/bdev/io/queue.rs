//! The lock-free queues that carry bdev_ios between threads, over any intrusively linked node
//! (pure Rust: the atomics are unit-tested below with plain nodes and std threads).
//!
//! [`IoQueue`]: any thread pushes (a CAS on the head, no allocation), one consumer thread takes
//! everything at once, oldest first ([`IoBatch`]). Once closed (by the consumer), pushes fail.
//! A node is owned by whoever holds it: the pusher until its push succeeds, then the queue,
//! then the consumer that took the batch, then whoever the batch yields it to.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicPtr, Ordering};

/// A node that carries its own link (for a bdev_io, a field of its `driver_ctx`).
///
/// # Safety
/// `link` must return a pointer to a field of `node` that nothing but the queue code uses while
/// the node is queued or in a batch, valid as long as the node is.
pub unsafe trait Node {
    /// The node's link field.
    ///
    /// # Safety
    /// `node` is a live node.
    unsafe fn link(node: *mut Self) -> *mut *mut Self;

    /// Called for each node still in an [`IoBatch`] when the batch is dropped (only on a panic,
    /// which aborts anyway): the node must be disposed of (a bdev_io is completed as failed).
    ///
    /// # Safety
    /// `node` is a live node, now owned by the callee.
    unsafe fn abandoned(node: *mut Self);
}

/// The "closed" mark: an aligned, non-null address no node can have (nothing is allocated at
/// the first aligned address above zero).
fn closed_mark<N>() -> *mut N {
    std::ptr::dangling_mut()
}

/// A multi-producer, single-consumer lock-free queue of nodes.
pub struct IoQueue<N: Node> {
    head: AtomicPtr<N>,
}

impl<N: Node> Default for IoQueue<N> {
    fn default() -> Self {
        IoQueue::new()
    }
}

impl<N: Node> IoQueue<N> {
    pub const fn new() -> IoQueue<N> {
        IoQueue {
            head: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Queues `node`; false (and `node` untouched, still the caller's) if the queue is closed.
    ///
    /// # Safety
    /// `node` is live, owned by the caller and in no queue; once queued it belongs to the
    /// consumer.
    pub unsafe fn push(&self, node: *mut N) -> bool {
        let mut h = self.head.load(Ordering::Relaxed);
        loop {
            if h == closed_mark() {
                return false;
            }
            // SAFETY: per the contract, node is ours until the CAS publishes it (Release).
            unsafe { *N::link(node) = h };
            match self
                .head
                .compare_exchange_weak(h, node, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(cur) => h = cur,
            }
        }
    }

    /// Takes what is queued (nothing once closed). One consumer thread only.
    pub fn take(&self) -> IoBatch<N> {
        let h = self.head.load(Ordering::Relaxed);
        if h.is_null() || h == closed_mark() {
            return IoBatch::empty();
        }
        // Only the consumer stores null or the closed mark, so the head is still a list here.
        let h = self.head.swap(std::ptr::null_mut(), Ordering::Acquire);
        // SAFETY: a list of queued nodes, now ours (the Acquire pairs with their pushes).
        unsafe { IoBatch::from_lifo(h) }
    }

    /// Closes the queue and takes what was queued. One consumer thread only; idempotent.
    pub fn close(&self) -> IoBatch<N> {
        let h = self.head.swap(closed_mark(), Ordering::Acquire);
        if h == closed_mark() {
            return IoBatch::empty();
        }
        // SAFETY: as in `take`.
        unsafe { IoBatch::from_lifo(h) }
    }
}

/// Nodes taken from an [`IoQueue`], oldest first. Each is yielded exactly once; those left when
/// the batch is dropped are [`Node::abandoned`].
pub struct IoBatch<N: Node> {
    head: *mut N,
}

impl<N: Node> IoBatch<N> {
    pub const fn empty() -> IoBatch<N> {
        IoBatch {
            head: std::ptr::null_mut(),
        }
    }

    /// # Safety
    /// `p` is null or a list of live nodes (newest first) owned by the caller.
    unsafe fn from_lifo(mut p: *mut N) -> IoBatch<N> {
        let mut out = std::ptr::null_mut();
        while !p.is_null() {
            // SAFETY: every element is a live node of ours (contract).
            unsafe {
                let link = N::link(p);
                let next = *link;
                *link = out;
                out = p;
                p = next;
            }
        }
        IoBatch { head: out }
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }
}

impl<N: Node> Iterator for IoBatch<N> {
    type Item = *mut N;
    fn next(&mut self) -> Option<*mut N> {
        let node = self.head;
        if node.is_null() {
            return None;
        }
        // SAFETY: node is in this batch, so still ours: the link is read before it is handed
        // out (whoever gets it may free or complete it).
        self.head = unsafe { *N::link(node) };
        Some(node)
    }
}

impl<N: Node> Drop for IoBatch<N> {
    fn drop(&mut self) {
        for node in self.by_ref() {
            // SAFETY: yielded by the batch, so ours, and handed over exactly once.
            unsafe { N::abandoned(node) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    static ABANDONED: AtomicUsize = AtomicUsize::new(0);

    struct TestNode {
        next: *mut TestNode,
        value: u64,
    }

    // SAFETY: `next` is used by the queue only.
    unsafe impl Node for TestNode {
        unsafe fn link(node: *mut Self) -> *mut *mut Self {
            // SAFETY: node is live (contract).
            unsafe { &raw mut (*node).next }
        }
        unsafe fn abandoned(node: *mut Self) {
            ABANDONED.fetch_add(1, Ordering::Relaxed);
            // SAFETY: made by `node()` with Box::into_raw and owned by the callee now.
            drop(unsafe { Box::from_raw(node) });
        }
    }

    fn node(value: u64) -> *mut TestNode {
        Box::into_raw(Box::new(TestNode {
            next: std::ptr::null_mut(),
            value,
        }))
    }

    /// Frees the batch's nodes, returning their values in batch order.
    fn values(b: IoBatch<TestNode>) -> Vec<u64> {
        b.map(|n| {
            // SAFETY: yielded by the batch: ours, made by `node()`.
            let n = unsafe { Box::from_raw(n) };
            n.value
        })
        .collect()
    }

    #[test]
    fn take_yields_oldest_first() {
        let q = IoQueue::new();
        assert!(q.take().is_empty());
        for v in 0..5 {
            // SAFETY: a fresh node, ours, in no queue.
            assert!(unsafe { q.push(node(v)) });
        }
        assert_eq!(values(q.take()), vec![0, 1, 2, 3, 4]);
        assert!(q.take().is_empty());
    }

    #[test]
    fn close_returns_queued_and_refuses_later_pushes() {
        let q = IoQueue::new();
        // SAFETY: fresh nodes, ours, in no queue.
        unsafe {
            assert!(q.push(node(1)));
            assert!(q.push(node(2)));
        }
        assert_eq!(values(q.close()), vec![1, 2]);
        let n = node(3);
        // SAFETY: as above; refused, so still ours.
        assert!(!unsafe { q.push(n) });
        // SAFETY: refused by the closed queue: still ours.
        drop(unsafe { Box::from_raw(n) });
        assert!(q.take().is_empty(), "a closed queue yields nothing");
        assert!(q.close().is_empty(), "close is idempotent");
    }

    #[test]
    fn dropped_batch_abandons_what_it_still_holds() {
        let q = IoQueue::new();
        for v in 0..3 {
            // SAFETY: fresh nodes, ours, in no queue.
            unsafe { q.push(node(v)) };
        }
        let before = ABANDONED.load(Ordering::Relaxed);
        let mut b = q.take();
        let first = b.next().unwrap();
        // SAFETY: yielded by the batch: ours.
        assert_eq!(unsafe { Box::from_raw(first) }.value, 0);
        drop(b);
        assert!(ABANDONED.load(Ordering::Relaxed) - before >= 2);
    }

    /// Several producers push concurrently while the consumer takes: every node arrives exactly
    /// once, and each producer's nodes arrive in the order it pushed them.
    #[test]
    fn concurrent_pushes_arrive_once_in_producer_order() {
        const PRODUCERS: u64 = 4;
        const PER_PRODUCER: u64 = 20_000;
        let q: Arc<IoQueue<TestNode>> = Arc::new(IoQueue::new());
        let handles: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_PRODUCER {
                        // SAFETY: a fresh node, ours, in no queue.
                        assert!(unsafe { q.push(node(p << 32 | i)) });
                    }
                })
            })
            .collect();
        let mut next = vec![0u64; PRODUCERS as usize];
        let mut seen = 0;
        while seen < PRODUCERS * PER_PRODUCER {
            for v in values(q.take()) {
                let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
                assert_eq!(i, next[p], "producer {p} out of order");
                next[p] += 1;
                seen += 1;
            }
            std::hint::spin_loop();
        }
        for h in handles {
            h.join().unwrap();
        }
        assert!(q.take().is_empty());
        assert!(next.iter().all(|&n| n == PER_PRODUCER));
    }

    /// A close racing with pushes: each push either lands in the closing batch (or an earlier
    /// one) or is refused; none is lost.
    #[test]
    fn close_racing_with_pushes_loses_nothing() {
        let q: Arc<IoQueue<TestNode>> = Arc::new(IoQueue::new());
        let refused = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (q, refused) = (q.clone(), refused.clone());
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        let n = node(i);
                        // SAFETY: a fresh node, ours, in no queue.
                        if !unsafe { q.push(n) } {
                            // SAFETY: refused: still ours.
                            drop(unsafe { Box::from_raw(n) });
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let mut got = 0;
        for _ in 0..100 {
            got += values(q.take()).len();
        }
        got += values(q.close()).len();
        for h in handles {
            h.join().unwrap();
        }
        assert!(q.take().is_empty());
        assert_eq!(got + refused.load(Ordering::Relaxed), 30_000);
    }
}
