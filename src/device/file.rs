//! A file or block device opened with std I/O (the offline `writeboost` command). Operations run
//! synchronously inside the future; `flush` is `fsync`.

use super::*;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub struct FileDevice {
    name: String,
    file: File,
    size_bytes: u64,
}

impl FileDevice {
    pub fn open(path: &Path, writable: bool) -> std::io::Result<FileDevice> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        // Block devices report 0 in metadata; seeking to the end works for both.
        let size_bytes = {
            use std::io::{Seek, SeekFrom};
            let mut f = &file;
            f.seek(SeekFrom::End(0))?
        };
        Ok(FileDevice {
            name: path.display().to_string(),
            file,
            size_bytes,
        })
    }

    fn io_err(op: DeviceOp, offset_bytes: u64, len: usize) -> DeviceError {
        DeviceError::Io {
            op,
            offset_bytes,
            len_bytes: len as u64,
        }
    }
}

impl FileDevice {
    fn read_into(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_range(
            DeviceOp::Read,
            self.size_bytes,
            offset_bytes,
            buf.len() as u64,
        )?;
        let len = buf.len();
        self.file
            .read_exact_at(buf, offset_bytes)
            .map_err(|_| Self::io_err(DeviceOp::Read, offset_bytes, len))
    }

    fn write_from(&self, offset_bytes: u64, buf: &[u8]) -> Result<(), DeviceError> {
        check_range(
            DeviceOp::Write,
            self.size_bytes,
            offset_bytes,
            buf.len() as u64,
        )?;
        self.file
            .write_all_at(buf, offset_bytes)
            .map_err(|_| Self::io_err(DeviceOp::Write, offset_bytes, buf.len()))
    }
}

impl BlockDevice for FileDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: self.name.clone(),
            size_bytes: self.size_bytes,
            block_size_bytes: 512,
            uuid: None,
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
        self.file
            .sync_data()
            .map_err(|_| Self::io_err(DeviceOp::Flush, 0, 0))
    }

    async fn discard(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), DeviceError> {
        check_range(DeviceOp::Discard, self.size_bytes, offset_bytes, len_bytes)?;
        Ok(())
    }
}
