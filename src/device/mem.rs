//! An in-memory device whose operations complete immediately (benchmarks, unit tests).

use super::*;
use std::cell::{Cell, RefCell};

pub struct MemDevice {
    name: String,
    data: RefCell<Vec<u8>>,
    uuid: Option<[u8; 16]>,
    /// Bytes read and written, for measurements.
    pub bytes_read: Cell<u64>,
    pub bytes_written: Cell<u64>,
}

impl MemDevice {
    pub fn new(name: &str, size_bytes: u64) -> MemDevice {
        MemDevice {
            name: name.to_string(),
            data: RefCell::new(vec![0u8; size_bytes as usize]),
            uuid: None,
            bytes_read: Cell::new(0),
            bytes_written: Cell::new(0),
        }
    }

    pub fn with_uuid(mut self, uuid: [u8; 16]) -> MemDevice {
        self.uuid = Some(uuid);
        self
    }

    /// Touches every page so that benchmarks do not measure first-touch page faults.
    pub fn prefault(&self) {
        for page in self.data.borrow_mut().chunks_mut(4096) {
            page[0] = std::hint::black_box(1);
            page[0] = 0;
        }
    }

    /// A copy of the whole device content.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.borrow().clone()
    }
}

impl MemDevice {
    fn read_into(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let d = self.data.borrow();
        check_range(
            DeviceOp::Read,
            d.len() as u64,
            offset_bytes,
            buf.len() as u64,
        )?;
        let o = offset_bytes as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        self.bytes_read
            .set(self.bytes_read.get() + buf.len() as u64);
        Ok(())
    }

    fn write_from(&self, offset_bytes: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let mut d = self.data.borrow_mut();
        check_range(
            DeviceOp::Write,
            d.len() as u64,
            offset_bytes,
            buf.len() as u64,
        )?;
        let o = offset_bytes as usize;
        d[o..o + buf.len()].copy_from_slice(buf);
        self.bytes_written
            .set(self.bytes_written.get() + buf.len() as u64);
        Ok(())
    }
}

impl BlockDevice for MemDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: self.name.clone(),
            size_bytes: self.data.borrow().len() as u64,
            block_size_bytes: 512,
            uuid: self.uuid,
        }
    }

    async fn read<B: IoBufMut>(&self, offset_bytes: u64, mut buf: B) -> IoResult<B> {
        let r = self.read_into(offset_bytes, buf.bytes_mut());
        (buf, r)
    }

    async fn write<B: IoBuf>(&self, offset_bytes: u64, buf: B) -> IoResult<B> {
        let r = self.write_from(offset_bytes, buf.bytes());
        (buf, r)
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    async fn discard(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), DeviceError> {
        let mut d = self.data.borrow_mut();
        check_range(DeviceOp::Discard, d.len() as u64, offset_bytes, len_bytes)?;
        let o = offset_bytes as usize;
        d[o..o + len_bytes as usize].fill(0);
        Ok(())
    }
}
