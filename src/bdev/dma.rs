//! DMA-able memory for the engine's I/O buffers: `spdk_dma_malloc`, so bdevs that DMA straight
//! from their buffers (local PCIe NVMe) can take the segments, writeback and header buffers the
//! engine hands them. Installed as the process's [`IoMemoryAllocator`] at module init.

use crate::device::{set_io_memory_allocator, IoMemory, BUF_ALIGN};
use std::sync::atomic::{AtomicBool, Ordering};
use writeboost_spdk_sys as sys;

/// Cleared at module fini: SPDK's environment may be gone by the time the last buffers (pooled
/// per thread, freed at thread exit) are dropped, so those are left to the process exit.
static FREE_ALLOWED: AtomicBool = AtomicBool::new(true);

struct DmaMem {
    ptr: *mut u8,
    len: usize,
}

impl IoMemory for DmaMem {
    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr is a live spdk_dma_malloc allocation of len bytes owned by this value
        // (mapped memory of SPDK's environment, whose bytes hold whatever was last written:
        // never uninitialized in the sense of Rust's allocator, which never sees it); shared
        // access follows &self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; exclusive access follows &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for DmaMem {
    fn drop(&mut self) {
        if FREE_ALLOWED.load(Ordering::Acquire) {
            // SAFETY: allocated by spdk_dma_malloc, freed once; the environment is up (module
            // fini has not run).
            unsafe { sys::spdk_dma_free(self.ptr as *mut std::ffi::c_void) };
        }
    }
}

fn alloc(len: usize) -> Option<Box<dyn IoMemory>> {
    if !FREE_ALLOWED.load(Ordering::Acquire) {
        return None;
    }
    // Powers of two, so that the per-thread pool of freed buffers serves the varying sizes of
    // writeback runs (a pool miss costs an allocation from SPDK's heap).
    let len = len.next_power_of_two().max(BUF_ALIGN);
    // SAFETY: plain allocation call; NULL phys_addr pointer is allowed. The result is checked.
    let p = unsafe { sys::spdk_dma_malloc(len, BUF_ALIGN, std::ptr::null_mut()) };
    if p.is_null() {
        return None;
    }
    Some(Box::new(DmaMem {
        ptr: p as *mut u8,
        len,
    }))
}

/// Module init: engine buffers come from DMA-able memory from now on.
pub fn install() {
    set_io_memory_allocator(alloc);
}

/// Module fini: stop freeing into an environment that is being torn down.
pub fn stop_freeing() {
    FREE_ALLOWED.store(false, Ordering::Release);
}

/// Whether `buf` is memory SPDK can translate for DMA (a `spdk_vtophys` check, for tests and
/// the startup notice).
pub fn is_dma_memory(buf: &[u8]) -> bool {
    let mut size = buf.len() as u64;
    // SAFETY: a plain address translation query on memory we hold a reference to.
    let pa = unsafe { sys::spdk_vtophys(buf.as_ptr() as *const std::ffi::c_void, &mut size) };
    pa != sys::SPDK_VTOPHYS_ERROR as u64
}
