//! The volume thread's side of an I/O: one bdev_io into the engine (`Volume::read`, `write`,
//! `flush`, `discard`, `write_zeroes`, or a RESET that waits for what came before it), through
//! a bounce buffer when the request's iovecs are not one buffer.

use super::complete;
use crate::bdev::volume::{Vol, VolCtx};
use crate::device::{AlignedBuf, IoMemory};
use crate::engine::IoError;
use std::rc::Rc;
use writeboost_spdk_sys as sys;

/// NVMe Write CDW12 bit 30: Force Unit Access (the NVMe-oF target passes CDW12 through).
const NVME_CDW12_FUA: u32 = 1 << 30;

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

/// A read request's own data buffer, lent to the engine for the request's read
/// ([`AlignedBuf::lent`]), so that a read served by one device read lands in it directly.
///
/// The memory stays valid for as long as a device may write it: the request is completed only
/// by its own task, after `Volume::read_buf` has given the lent buffer back, which a device
/// read does only once it has completed; and a volume's tasks are dropped (`vol_finish`) only
/// when no base operation is in flight. A lent buffer never goes to the buffer pool.
struct RequestBuf {
    ptr: *mut u8,
    len: usize,
}

impl IoMemory for RequestBuf {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is the request's buffer of at least `len` bytes (`do_read`), valid until
        // the request completes, which is after every use of this lent buffer (type doc).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; nothing else touches the request's buffer meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

async fn do_read(
    vol: &Vol,
    io: *mut sys::spdk_bdev_io,
    off_sectors: u64,
    len: usize,
) -> Result<(), IoError> {
    // SAFETY: the bdev_io stays live until we complete it, after this function.
    let v = unsafe { iovs(io) };
    if v.len() == 1 && v[0].iov_len >= len {
        let lent = AlignedBuf::lent(Box::new(RequestBuf {
            ptr: v[0].iov_base as *mut u8,
            len,
        }));
        // The engine gives the buffer back; it is dropped here, before the completion.
        return vol.read_buf(off_sectors, lent).await.1;
    }
    let (bounce, r) = vol
        .read_buf(off_sectors, AlignedBuf::for_overwrite(len))
        .await;
    r?;
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
    io: *mut sys::spdk_bdev_io,
    off_sectors: u64,
    len: usize,
    fua: bool,
) -> Result<(), IoError> {
    // SAFETY: the bdev_io stays live until we complete it, after this function.
    let v = unsafe { iovs(io) };
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
pub fn start_io(ctx: &Rc<VolCtx>, vol: &Vol, io: *mut sys::spdk_bdev_io) {
    let spb = ctx.sectors_per_block;
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
    if ty == sys::SPDK_BDEV_IO_TYPE_RESET {
        // Nothing is queued outside the engine once started: a reset completes once every I/O
        // submitted before it (started before it, in queue order) has finished.
        let c = ctx.clone();
        ctx.rt.spawn_now(Box::pin(async move {
            c.user_io.zero().await;
            complete(io, true);
        }));
        return;
    }
    if ty == sys::SPDK_BDEV_IO_TYPE_WRITE || ty == sys::SPDK_BDEV_IO_TYPE_READ {
        prefetch(vol.index_home_addr(off_sectors));
    }
    ctx.user_io.inc();
    let len = (nr_sectors * 512) as usize;
    let vol = vol.clone();
    // A strong reference: the cycle (context -> executor -> task -> context) is cut by
    // `SpdkRt::clear` in the teardown, and user I/O always finishes before that.
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
        complete(io, r.is_ok());
    }));
}

/// Starts loading the cache line at `addr` (the I/O's index slot) while the I/O's task is set up.
#[inline]
fn prefetch(addr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and changes nothing the program can see,
    // whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}
