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

/// An asynchronous block device. Buffers are borrowed for the duration of the operation; the
/// engine never drops an operation's future before it completes.
#[allow(async_fn_in_trait)]
pub trait BlockDevice {
    fn info(&self) -> DeviceInfo;
    fn read(
        &self,
        offset_bytes: u64,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<(), DeviceError>>;
    /// A write is volatile until a later `flush` completes.
    fn write(&self, offset_bytes: u64, buf: &[u8])
        -> impl Future<Output = Result<(), DeviceError>>;
    /// Makes every write completed before this call durable.
    fn flush(&self) -> impl Future<Output = Result<(), DeviceError>>;
    /// Contents of the range become undefined.
    fn discard(
        &self,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> impl Future<Output = Result<(), DeviceError>>;
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

/// A heap buffer whose start is aligned to 4096 bytes (what O_DIRECT and DMA want), built from
/// safe code: an over-allocated `Vec` and an offset. Dropped buffers go to a small per-thread
/// pool so that hot paths (segment reads, writeback runs) do not fault in fresh pages each time.
pub struct AlignedBuf {
    vec: Vec<u8>,
    off: usize,
    len: usize,
}

pub const BUF_ALIGN: usize = 4096;
const POOL_MAX_BUFFERS: usize = 64;
const POOL_MAX_BYTES: usize = 8 << 20;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl AlignedBuf {
    fn from_vec(vec: Vec<u8>, len: usize) -> AlignedBuf {
        let addr = vec.as_ptr() as usize;
        let off = (BUF_ALIGN - addr % BUF_ALIGN) % BUF_ALIGN;
        AlignedBuf { vec, off, len }
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
        let need = len + BUF_ALIGN;
        let reused = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let i = p
                .iter()
                .position(|v| v.len() >= need && v.len() <= need * 2)?;
            Some(p.swap_remove(i))
        });
        AlignedBuf::from_vec(reused.unwrap_or_else(|| vec![0u8; need]), len)
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
        let v = std::mem::take(&mut self.vec);
        if v.len() <= POOL_MAX_BYTES + BUF_ALIGN && v.len() > BUF_ALIGN {
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX_BUFFERS {
                    p.push(v);
                }
            });
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.vec[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.off..self.off + self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}
