//! A RAM segment buffer: written in place while its segment is open, shared read-only with the
//! segment write once sealed.
//!
//! The segment write holds its own reference to the buffer for as long as the device may read
//! it, so no borrow of the engine's state is held across that `.await`, and the buffer cannot be
//! freed or rewritten under the device: `bytes_mut` requires the only reference (it panics while
//! a write holds the buffer, where a `RefCell` borrowed across the await would have panicked too).
//!
//! It also keeps the CRC-32C of each 4 KiB block, computed when the block was last written
//! ([`SegmentBuf::block_mut`] forgets it, [`SegmentBuf::update_crc`] computes it), so that
//! sealing a segment does not compute a segment's worth of CRCs at once (a stall every segment,
//! seen in the write path's tail latency); a block whose CRC is not known is computed at seal.

use super::BLOCK;
use crate::device::AlignedBuf;
use crate::format::segment::data_block_crc;
use std::rc::Rc;

pub(super) struct SegmentBuf {
    buf: Rc<AlignedBuf>,
    /// Per 4 KiB block of the buffer: its CRC-32C, when known.
    crcs: Vec<Option<u32>>,
}

impl SegmentBuf {
    pub(super) fn zeroed(len: usize) -> Self {
        SegmentBuf {
            buf: Rc::new(AlignedBuf::zeroed(len)),
            crcs: vec![None; len / BLOCK],
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The open segment's bytes (the header; data blocks go through [`Self::block_mut`]). Panics
    /// if a segment write still holds the buffer: a sealed segment is never written.
    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        Rc::get_mut(&mut self.buf)
            .expect("a sealed segment buffer is written while its segment write holds it")
    }

    /// The 4 KiB block at byte `off`, to write; its CRC is unknown until [`Self::update_crc`].
    pub(super) fn block_mut(&mut self, off: usize) -> &mut [u8] {
        self.crcs[off / BLOCK] = None;
        &mut self.bytes_mut()[off..off + BLOCK]
    }

    /// Computes the CRC of the block at byte `off` as it is now.
    pub(super) fn update_crc(&mut self, off: usize) {
        self.crcs[off / BLOCK] = Some(data_block_crc(&self.buf[off..off + BLOCK]));
    }

    /// Records `crc` as the CRC of the block at byte `off`, which the caller copied from a
    /// block logged with that CRC.
    pub(super) fn set_crc(&mut self, off: usize, crc: u32) {
        self.crcs[off / BLOCK] = Some(crc);
    }

    /// The CRC of the block at byte `off`: known, or computed now.
    pub(super) fn crc_of(&self, off: usize) -> u32 {
        match self.crcs[off / BLOCK] {
            Some(c) => c,
            None => data_block_crc(&self.buf[off..off + BLOCK]),
        }
    }

    /// A reference for the segment write (or a copy out of a sealed buffer): the buffer is
    /// read-only until every such reference is dropped.
    pub(super) fn share(&self) -> Rc<AlignedBuf> {
        Rc::clone(&self.buf)
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

    #[test]
    fn a_block_crc_is_the_one_of_its_bytes_after_every_write() {
        let mut b = SegmentBuf::zeroed(3 * BLOCK);
        b.block_mut(BLOCK)[5] = 1;
        assert_eq!(
            b.crc_of(BLOCK),
            data_block_crc(&b.bytes()[BLOCK..2 * BLOCK])
        );
        b.update_crc(BLOCK);
        let first = b.crc_of(BLOCK);
        assert_eq!(first, data_block_crc(&b.bytes()[BLOCK..2 * BLOCK]));
        // Written again: the remembered CRC is forgotten, never served stale.
        b.block_mut(BLOCK)[6] = 2;
        assert_ne!(b.crc_of(BLOCK), first);
        assert_eq!(
            b.crc_of(BLOCK),
            data_block_crc(&b.bytes()[BLOCK..2 * BLOCK])
        );
    }
}
