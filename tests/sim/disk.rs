//! A simulated block device with a volatile write cache. Completed writes are visible at once but
//! become durable only when a later FLUSH completes; a power cut loses, applies or tears (at
//! sector granularity, in any order) every write not yet durable, in flight ones included.
//! Faults: injected read/write/flush errors. Latency: uniform, or an HDD model with seek cost.

use crate::executor::World;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use writeboost::device::{BlockDevice, DeviceError, DeviceInfo, DeviceOp};

#[derive(Clone, Debug)]
pub struct DiskConfig {
    pub name: &'static str,
    pub size_bytes: u64,
    /// Error probability per operation, in 1/10000.
    pub read_error_per_10k: u64,
    pub write_error_per_10k: u64,
    pub flush_error_per_10k: u64,
    pub latency: Latency,
}

#[derive(Clone, Debug)]
pub enum Latency {
    /// Uniform in [min, max] ns.
    Uniform { min_ns: u64, max_ns: u64 },
    /// A disk head: seek cost proportional to distance, plus transfer at `bytes_per_us`.
    /// Seek time `settle + full_stroke * sqrt(distance / size)` (the classic short-seek model),
    /// requests served one at a time, transfer at `bytes_per_us`. No rotational latency.
    Hdd {
        settle_ns: u64,
        full_stroke_ns: u64,
        bytes_per_us: u64,
    },
}

pub struct DiskState {
    pub cfg: DiskConfig,
    /// What survives a power cut.
    pub durable: Vec<u8>,
    /// What reads see.
    pub view: Vec<u8>,
    /// Completed, not yet durable writes, oldest first.
    unflushed: Vec<(u64, Vec<u8>)>,
    /// Issued, not completed writes.
    inflight: BTreeMap<u64, (u64, Vec<u8>)>,
    next_io: u64,
    head_pos: u64,
    /// The HDD is busy until this time (requests are served one at a time).
    busy_until_ns: u64,
    pub faults_enabled: bool,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

#[derive(Clone)]
pub struct SimDisk {
    pub world: World,
    pub st: Rc<RefCell<DiskState>>,
}

impl SimDisk {
    pub fn new(world: &World, cfg: DiskConfig) -> SimDisk {
        let n = cfg.size_bytes as usize;
        SimDisk {
            world: world.clone(),
            st: Rc::new(RefCell::new(DiskState {
                cfg,
                durable: vec![0; n],
                view: vec![0; n],
                unflushed: Vec::new(),
                inflight: BTreeMap::new(),
                next_io: 0,
                head_pos: 0,
                busy_until_ns: 0,
                faults_enabled: true,
                bytes_read: 0,
                bytes_written: 0,
            })),
        }
    }

    fn latency_ns(&self, offset: u64, len: u64) -> u64 {
        let mut st = self.st.borrow_mut();
        match st.cfg.latency.clone() {
            Latency::Uniform { min_ns, max_ns } => self.world.rng().range(min_ns, max_ns),
            Latency::Hdd {
                settle_ns,
                full_stroke_ns,
                bytes_per_us,
            } => {
                let dist = offset.abs_diff(st.head_pos);
                let seek = if dist == 0 {
                    0
                } else {
                    settle_ns
                        + (full_stroke_ns as f64 * (dist as f64 / st.cfg.size_bytes as f64).sqrt())
                            as u64
                };
                let xfer = len * 1000 / bytes_per_us;
                st.head_pos = offset + len;
                let now = self.world.now_ns();
                let start = st.busy_until_ns.max(now);
                st.busy_until_ns = start + seek + xfer;
                st.busy_until_ns - now
            }
        }
    }

    fn fault(&self, per_10k: u64) -> bool {
        self.st.borrow().faults_enabled && per_10k > 0 && self.world.rng().below(10_000) < per_10k
    }

    /// Power cut: what was not durable is lost, applied, or torn per sector, in random order.
    pub fn power_cut(&self) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let mut pending: Vec<(u64, Vec<u8>)> = std::mem::take(&mut st.unflushed);
        pending.extend(std::mem::take(&mut st.inflight).into_values());
        let mut rng = self.world.rng();
        // Random order.
        for i in (1..pending.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            pending.swap(i, j);
        }
        for (off, data) in pending {
            match rng.below(3) {
                0 => {}
                1 => st.durable[off as usize..off as usize + data.len()].copy_from_slice(&data),
                _ => {
                    for s in 0..data.len() / 512 {
                        if rng.chance(50) {
                            let o = off as usize + s * 512;
                            st.durable[o..o + 512].copy_from_slice(&data[s * 512..(s + 1) * 512]);
                        }
                    }
                }
            }
        }
        st.view = st.durable.clone();
        st.busy_until_ns = 0;
    }

    fn range_ok(&self, op: DeviceOp, off: u64, len: u64) -> Result<(), DeviceError> {
        let size = self.st.borrow().cfg.size_bytes;
        if off % 512 != 0 || len % 512 != 0 || off + len > size {
            return Err(DeviceError::OutOfRange {
                op,
                offset_bytes: off,
                len_bytes: len,
            });
        }
        Ok(())
    }
}

fn io_error(op: DeviceOp, off: u64, len: u64) -> DeviceError {
    DeviceError::Io {
        op,
        offset_bytes: off,
        len_bytes: len,
    }
}

impl BlockDevice for SimDisk {
    fn info(&self) -> DeviceInfo {
        let st = self.st.borrow();
        DeviceInfo {
            name: st.cfg.name.to_string(),
            size_bytes: st.cfg.size_bytes,
            block_size_bytes: 512,
            uuid: None,
        }
    }

    async fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.range_ok(DeviceOp::Read, off, buf.len() as u64)?;
        let lat = self.latency_ns(off, buf.len() as u64);
        self.world.after(lat).await;
        if self.fault(self.st.borrow().cfg.read_error_per_10k) {
            return Err(io_error(DeviceOp::Read, off, buf.len() as u64));
        }
        let mut st = self.st.borrow_mut();
        buf.copy_from_slice(&st.view[off as usize..off as usize + buf.len()]);
        st.bytes_read += buf.len() as u64;
        Ok(())
    }

    async fn write(&self, off: u64, buf: &[u8]) -> Result<(), DeviceError> {
        self.range_ok(DeviceOp::Write, off, buf.len() as u64)?;
        let id = {
            let mut st = self.st.borrow_mut();
            let id = st.next_io;
            st.next_io += 1;
            st.inflight.insert(id, (off, buf.to_vec()));
            id
        };
        let lat = self.latency_ns(off, buf.len() as u64);
        self.world.after(lat).await;
        let failed = self.fault(self.st.borrow().cfg.write_error_per_10k);
        let mut st = self.st.borrow_mut();
        let Some((off, data)) = st.inflight.remove(&id) else {
            return Err(io_error(DeviceOp::Write, off, buf.len() as u64));
        };
        if failed {
            // A failed write may still have landed partially: tear it into the view.
            let mut rng = self.world.rng();
            for s in 0..data.len() / 512 {
                if rng.chance(30) {
                    let o = off as usize + s * 512;
                    st.view[o..o + 512].copy_from_slice(&data[s * 512..(s + 1) * 512]);
                }
            }
            drop(rng);
            let o = off as usize;
            let landed = st.view[o..o + data.len()].to_vec();
            st.unflushed.push((off, landed));
            return Err(io_error(DeviceOp::Write, off, data.len() as u64));
        }
        st.view[off as usize..off as usize + data.len()].copy_from_slice(&data);
        st.bytes_written += data.len() as u64;
        st.unflushed.push((off, data));
        Ok(())
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        let covered = self.st.borrow().unflushed.len();
        let lat = self.world.rng().range(1_000, 20_000);
        self.world.after(lat).await;
        if self.fault(self.st.borrow().cfg.flush_error_per_10k) {
            return Err(io_error(DeviceOp::Flush, 0, 0));
        }
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        // The writes completed before the flush was issued are durable now (in their order).
        let n = covered.min(st.unflushed.len());
        for (off, data) in st.unflushed.drain(..n) {
            st.durable[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    async fn discard(&self, off: u64, len: u64) -> Result<(), DeviceError> {
        self.range_ok(DeviceOp::Discard, off, len)?;
        let lat = self.world.rng().range(1_000, 5_000);
        self.world.after(lat).await;
        Ok(())
    }
}
