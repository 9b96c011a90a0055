//! The block-device boundary the engine runs on: SPDK bdevs, files (the offline tool), in-memory
//! and simulated devices (tests, benchmarks) all implement [`BlockDevice`].

pub mod file;
pub mod mem;

use std::future::Future;

/// Static facts about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub size_bytes: u64,
    /// The device's logical block size; every I/O offset and length is a multiple of 512.
    pub block_size_bytes: u32,
    /// The device's UUID, when it has one.
    pub uuid: Option<[u8; 16]>,
}

/// What a device operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("I/O error on {op} at byte {offset_bytes} (+{len_bytes})")]
    Io {
        op: DeviceOp,
        offset_bytes: u64,
        len_bytes: u64,
    },
    #[error("{op} beyond the end of the device: byte {offset_bytes} (+{len_bytes})")]
    OutOfRange {
        op: DeviceOp,
        offset_bytes: u64,
        len_bytes: u64,
    },
    #[error("operation {op} not supported")]
    Unsupported { op: DeviceOp },
    #[error("out of memory")]
    NoMemory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DeviceOp {
    Read,
    Write,
    Flush,
    Discard,
}

impl std::fmt::Display for DeviceOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceOp::Read => "read",
            DeviceOp::Write => "write",
            DeviceOp::Flush => "flush",
            DeviceOp::Discard => "discard",
        })
    }
}

/// A buffer that a device operation owns until it completes: [`BlockDevice::read`] and
/// [`BlockDevice::write`] take it by value and hand it back with the result. A device whose
/// hardware reads or writes the memory after the call returns (DMA: the SPDK glue) keeps the
/// buffer alive until the hardware is done, so an operation's future dropped early can never
/// leave a device writing into, or reading from, freed memory.
pub trait IoBuf: 'static {
    fn bytes(&self) -> &[u8];
}

/// An [`IoBuf`] a device may read into.
pub trait IoBufMut: IoBuf {
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl IoBuf for AlignedBuf {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl IoBufMut for AlignedBuf {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl IoBuf for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl IoBufMut for Vec<u8> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// `len` bytes of a shared buffer from `start` (a sealed segment's image, which its segment
/// write shares with the RAM buffer it stays in; a range of a writeback read buffer).
#[derive(Clone)]
pub struct SharedSlice {
    pub buf: std::rc::Rc<AlignedBuf>,
    pub start: usize,
    pub len: usize,
}

impl IoBuf for SharedSlice {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// What a read or write gives back: the caller's buffer and the outcome.
pub type IoResult<B> = (B, Result<(), DeviceError>);

/// An asynchronous block device. Reads and writes own their buffer until they complete (see
/// [`IoBuf`]).
#[allow(async_fn_in_trait)]
pub trait BlockDevice {
    fn info(&self) -> DeviceInfo;
    fn read<B: IoBufMut>(&self, offset_bytes: u64, buf: B) -> impl Future<Output = IoResult<B>>;
    /// A write is volatile until a later `flush` completes.
    fn write<B: IoBuf>(&self, offset_bytes: u64, buf: B) -> impl Future<Output = IoResult<B>>;
    /// Makes every write completed before this call durable.
    fn flush(&self) -> impl Future<Output = Result<(), DeviceError>>;
    /// Contents of the range become undefined.
    fn discard(
        &self,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> impl Future<Output = Result<(), DeviceError>>;
}

/// A shared device is the device (tests and benchmarks keep a handle to inspect it).
impl<T: BlockDevice> BlockDevice for std::rc::Rc<T> {
    fn info(&self) -> DeviceInfo {
        (**self).info()
    }
    fn read<B: IoBufMut>(&self, offset_bytes: u64, buf: B) -> impl Future<Output = IoResult<B>> {
        (**self).read(offset_bytes, buf)
    }
    fn write<B: IoBuf>(&self, offset_bytes: u64, buf: B) -> impl Future<Output = IoResult<B>> {
        (**self).write(offset_bytes, buf)
    }
    fn flush(&self) -> impl Future<Output = Result<(), DeviceError>> {
        (**self).flush()
    }
    fn discard(
        &self,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> impl Future<Output = Result<(), DeviceError>> {
        (**self).discard(offset_bytes, len_bytes)
    }
}

pub(crate) fn check_range(
    op: DeviceOp,
    size_bytes: u64,
    offset_bytes: u64,
    len_bytes: u64,
) -> Result<(), DeviceError> {
    if offset_bytes % 512 != 0
        || len_bytes % 512 != 0
        || offset_bytes
            .checked_add(len_bytes)
            .is_none_or(|end| end > size_bytes)
    {
        return Err(DeviceError::OutOfRange {
            op,
            offset_bytes,
            len_bytes,
        });
    }
    Ok(())
}

/// I/O memory that is not the Rust heap: the SPDK glue supplies DMA-able memory
/// (`spdk_dma_malloc`), which bdevs that DMA from their buffers (local PCIe NVMe) require.
/// Its start is aligned to [`BUF_ALIGN`]; its contents are unspecified (callers of
/// [`AlignedBuf::for_overwrite`] overwrite them; [`AlignedBuf::zeroed`] zeroes them).
pub trait IoMemory {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
}

/// Allocates at least `len` bytes of [`IoMemory`], or `None` (then the heap is used).
pub type IoMemoryAllocator = fn(usize) -> Option<Box<dyn IoMemory>>;

static IO_MEMORY_ALLOCATOR: std::sync::OnceLock<IoMemoryAllocator> = std::sync::OnceLock::new();

/// Makes every [`AlignedBuf`] of this process come from `alloc` (set once, before any I/O; later
/// calls are ignored). The engine's own buffers (segments, writeback, headers, records) then
/// live in that memory.
pub fn set_io_memory_allocator(alloc: IoMemoryAllocator) {
    let _ = IO_MEMORY_ALLOCATOR.set(alloc);
}

enum Storage {
    /// An over-allocated `Vec` (aligned by an offset).
    Heap(Vec<u8>),
    External(Box<dyn IoMemory>),
    /// Memory lent for one I/O by its owner ([`AlignedBuf::lent`]): never pooled.
    Lent(Box<dyn IoMemory>),
}

impl Storage {
    fn capacity(&self) -> usize {
        match self {
            Storage::Heap(v) => v.len(),
            Storage::External(m) | Storage::Lent(m) => m.bytes().len(),
        }
    }
}

/// A buffer whose start is aligned to 4096 bytes (what O_DIRECT and DMA want): from the
/// [`IoMemoryAllocator`] when one is set, else an over-allocated `Vec` and an offset (safe code
/// either way). Dropped buffers go to a small per-thread pool so that hot paths (segment reads,
/// writeback runs) do not allocate and fault in fresh pages each time.
pub struct AlignedBuf {
    storage: Storage,
    off: usize,
    len: usize,
}

pub const BUF_ALIGN: usize = 4096;
/// The per-thread pool keeps at most this many buffers, of at most `POOL_MAX_BYTES` each and
/// `POOL_MAX_TOTAL_BYTES` in all (a writeback batch has up to a thousand buffers in flight; a
/// pool miss with SPDK's DMA heap costs an allocation and shows in the tail latency).
const POOL_MAX_BUFFERS: usize = 1024;
const POOL_MAX_BYTES: usize = 8 << 20;
const POOL_MAX_TOTAL_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Pool {
    bufs: Vec<Storage>,
    bytes: usize,
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = std::cell::RefCell::new(Pool::default());
}

impl AlignedBuf {
    fn from_storage(storage: Storage, len: usize) -> AlignedBuf {
        let off = match &storage {
            Storage::Heap(v) => {
                let addr = v.as_ptr() as usize;
                (BUF_ALIGN - addr % BUF_ALIGN) % BUF_ALIGN
            }
            Storage::External(m) => {
                debug_assert_eq!(m.bytes().as_ptr() as usize % BUF_ALIGN, 0);
                0
            }
            Storage::Lent(_) => 0,
        };
        AlignedBuf { storage, off, len }
    }

    /// All of `mem`, lent by its owner for one I/O (the SPDK glue lends a read request's own
    /// buffer, so that the device reads straight into it). Unlike every other buffer it is
    /// aligned only as `mem` is, so it suits devices that take any alignment (an SPDK bdev:
    /// the bdev layer bounces what its bdev cannot take), and it never goes to the pool: the
    /// owner's memory is released with it.
    pub fn lent(mem: Box<dyn IoMemory>) -> AlignedBuf {
        let len = mem.bytes().len();
        AlignedBuf::from_storage(Storage::Lent(mem), len)
    }

    /// A buffer of no bytes, without allocating (a placeholder while a buffer is lent out).
    pub fn empty() -> AlignedBuf {
        AlignedBuf {
            storage: Storage::Heap(Vec::new()),
            off: 0,
            len: 0,
        }
    }

    /// Fresh storage for `len` bytes: external memory when an allocator is set and has some.
    fn new_storage(len: usize) -> Storage {
        if let Some(alloc) = IO_MEMORY_ALLOCATOR.get() {
            if let Some(m) = alloc(len.max(1)) {
                if m.bytes().len() >= len {
                    return Storage::External(m);
                }
            }
        }
        Storage::Heap(vec![0u8; len + BUF_ALIGN])
    }

    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        let mut b = AlignedBuf::for_overwrite(len);
        b.fill(0);
        b
    }

    /// A buffer of `len` bytes with unspecified (but initialized) contents, for callers that
    /// overwrite all of it (device reads).
    pub fn for_overwrite(len: usize) -> AlignedBuf {
        let external = IO_MEMORY_ALLOCATOR.get().is_some();
        let reused = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let i = p.bufs.iter().position(|s| {
                let need = match s {
                    Storage::Heap(_) if external => return false,
                    Storage::Heap(_) => len + BUF_ALIGN,
                    Storage::External(_) => len,
                    Storage::Lent(_) => return false,
                };
                s.capacity() >= need && s.capacity() <= need * 2
            })?;
            let s = p.bufs.swap_remove(i);
            p.bytes -= s.capacity();
            Some(s)
        });
        AlignedBuf::from_storage(reused.unwrap_or_else(|| Self::new_storage(len)), len)
    }

    /// A buffer holding a copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::for_overwrite(bytes.len());
        b.copy_from_slice(bytes);
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let s = std::mem::replace(&mut self.storage, Storage::Heap(Vec::new()));
        if matches!(s, Storage::Lent(_)) {
            return;
        }
        let cap = s.capacity();
        if cap <= POOL_MAX_BYTES + BUF_ALIGN && cap > 0 {
            // A pool is per OS thread; several SPDK threads may share it, which is fine.
            let _ = POOL.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.bufs.len() < POOL_MAX_BUFFERS && p.bytes + cap <= POOL_MAX_TOTAL_BYTES {
                    p.bytes += cap;
                    p.bufs.push(s);
                }
            });
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let b = match &self.storage {
            Storage::Heap(v) => &v[..],
            Storage::External(m) | Storage::Lent(m) => m.bytes(),
        };
        &b[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let b = match &mut self.storage {
            Storage::Heap(v) => &mut v[..],
            Storage::External(m) | Storage::Lent(m) => m.bytes_mut(),
        };
        &mut b[self.off..self.off + self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Memory that records when it is released.
    struct Tracked {
        bytes: Vec<u8>,
        released: Rc<Cell<bool>>,
    }

    impl IoMemory for Tracked {
        fn bytes(&self) -> &[u8] {
            &self.bytes
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut self.bytes
        }
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.released.set(true);
        }
    }

    #[test]
    fn lent_memory_is_released_with_its_buffer_never_pooled() {
        let released = Rc::new(Cell::new(false));
        let mut b = AlignedBuf::lent(Box::new(Tracked {
            bytes: vec![7u8; 4096],
            released: released.clone(),
        }));
        assert_eq!(b.len(), 4096);
        assert!(b.iter().all(|&x| x == 7));
        b.fill(1);
        assert!(b.iter().all(|&x| x == 1));
        drop(b);
        // Pooled, it would outlive the I/O it was lent for (a request's buffer, reused by its
        // owner once the request completes).
        assert!(
            released.get(),
            "lent memory kept after its buffer was dropped"
        );
        assert_eq!(AlignedBuf::empty().len(), 0);
    }
}
