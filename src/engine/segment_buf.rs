//! A RAM segment buffer: written in place while its segment is open, shared read-only with the
//! segment write once sealed.
//!
//! The segment write holds its own reference to the buffer for as long as the device may read
//! it, so no borrow of the engine's state is held across that `.await`, and the buffer cannot be
//! freed or rewritten under the device: `bytes_mut` requires the only reference (it panics while
//! a write holds the buffer, where a `RefCell` borrowed across the await would have panicked too).

use crate::device::AlignedBuf;
use std::rc::Rc;

pub(super) struct SegmentBuf(Rc<AlignedBuf>);

impl SegmentBuf {
    pub(super) fn zeroed(len: usize) -> Self {
        SegmentBuf(Rc::new(AlignedBuf::zeroed(len)))
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The open segment's bytes. Panics if a segment write still holds the buffer: a sealed
    /// segment is never written.
    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        Rc::get_mut(&mut self.0)
            .expect("a sealed segment buffer is written while its segment write holds it")
    }

    /// A reference for the segment write (or a copy out of a sealed buffer): the buffer is
    /// read-only until every such reference is dropped.
    pub(super) fn share(&self) -> Rc<AlignedBuf> {
        Rc::clone(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_buffer_is_read_only_until_the_write_drops_it() {
        let mut b = SegmentBuf::zeroed(4096);
        b.bytes_mut()[0] = 7;
        let w = b.share();
        assert_eq!(w[0], 7);
        assert_eq!(b.bytes()[0], 7);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.bytes_mut()[0] = 8;
        }));
        assert!(r.is_err(), "a shared segment buffer was written");
        drop(w);
        b.bytes_mut()[0] = 9;
        assert_eq!(b.bytes()[0], 9);
    }
}
