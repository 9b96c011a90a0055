//! A simulated block device with a volatile write cache. Completed writes are visible at once but
//! become durable only when a later FLUSH completes; a power cut loses, applies or tears (at
//! sector granularity, in any order) every write not yet durable, in flight ones included.
//! Discard does what a real device may do, chosen by the seed: nothing, zeroes, zeroes in whole
//! 4 KiB granules only, or zeroes in some sectors; like a write it is volatile until a FLUSH.
//! Faults: injected read/write/flush/discard errors, at a rate (`faults_enabled`, plus a boost
//! for bursts) or aimed at given byte ranges (`fail_reads`, `fail_writes`, whatever `faults_enabled` says).
//! Every I/O and its completion goes into the world's execution trace.
//! Latency: uniform, or an HDD model with seek cost.

use crate::executor::World;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use writeboost::device::{
    BlockDevice, DeviceError, DeviceInfo, DeviceOp, IoBuf, IoBufMut, IoResult,
};

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
    /// The device failed for good (whatever `faults_enabled` says): `WritesFail` fails every
    /// write and discard (reads and flushes still work); `Gone` fails every operation.
    pub dead: Option<Dead>,
    /// Operations refused because the device is dead, and when the first write was.
    pub dead_refusals: u64,
    pub first_refusal_ns: Option<u64>,
    /// Added to the read and write error rates while faults are enabled (bursts, e.g. during
    /// create).
    pub fault_boost_per_10k: u64,
    /// Aimed read errors: a read overlapping [start, end) bytes fails; `count` times each.
    pub fail_reads: Vec<AimedFault>,
    /// Read errors the aimed faults caused.
    pub aimed_read_errors: u64,
    /// Aimed write errors, as `fail_reads` for writes.
    pub fail_writes: Vec<AimedFault>,
    /// Write errors the aimed faults caused.
    pub aimed_write_errors: u64,
    /// Extra latency of writes overlapping [start, end) bytes: (start, end, ns).
    pub slow_writes: Vec<(u64, u64, u64)>,
    /// Read errors returned (aimed or not).
    pub read_errors: u64,
    /// A power cut loses every write not yet durable (scripted scenarios; the swarm keeps the
    /// random lose/apply/tear).
    pub power_cut_loses_all: bool,
    /// A read returns the data as it was when the read was issued, not when it completed (a
    /// device may return either for a read that overlaps a write; scripted scenarios).
    pub read_at_issue: bool,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub discards: u64,
    /// Tag of this disk in the execution trace.
    trace_tag: u64,
}

/// How a device failed for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dead {
    WritesFail,
    Gone,
}

/// Consumes one firing of the first fault in `faults` that overlaps [off, off+len).
fn aimed_hit(faults: &mut [AimedFault], off: u64, len: u64) -> bool {
    match faults
        .iter_mut()
        .find(|f| f.count > 0 && off < f.end && f.start < off + len)
    {
        Some(f) => {
            f.count -= 1;
            true
        }
        None => false,
    }
}

/// A read or write error aimed at a byte range.
#[derive(Clone, Debug)]
pub struct AimedFault {
    pub start: u64,
    pub end: u64,
    pub count: u32,
}

#[derive(Clone)]
pub struct SimDisk {
    pub world: World,
    pub st: Rc<RefCell<DiskState>>,
}

impl SimDisk {
    pub fn new(world: &World, cfg: DiskConfig) -> SimDisk {
        let n = cfg.size_bytes as usize;
        let trace_tag = cfg
            .name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
            << 8;
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
                dead: None,
                dead_refusals: 0,
                first_refusal_ns: None,
                fault_boost_per_10k: 0,
                fail_reads: Vec::new(),
                aimed_read_errors: 0,
                fail_writes: Vec::new(),
                aimed_write_errors: 0,
                slow_writes: Vec::new(),
                read_errors: 0,
                power_cut_loses_all: false,
                read_at_issue: false,
                bytes_read: 0,
                bytes_written: 0,
                discards: 0,
                trace_tag,
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

    /// True (and counted) if the device is dead for this kind of operation.
    fn refused(&self, is_read: bool) -> bool {
        let mut st = self.st.borrow_mut();
        let refused = match st.dead {
            None => false,
            Some(Dead::WritesFail) => !is_read,
            Some(Dead::Gone) => true,
        };
        st.dead_refusals += refused as u64;
        if refused && !is_read && st.first_refusal_ns.is_none() {
            st.first_refusal_ns = Some(self.world.now_ns());
        }
        refused
    }

    fn fault(&self, per_10k: u64) -> bool {
        self.st.borrow().faults_enabled && per_10k > 0 && self.world.rng().below(10_000) < per_10k
    }

    /// A read or write error: the configured rate plus the boost.
    fn io_fault(&self, per_10k: u64) -> bool {
        let boost = self.st.borrow().fault_boost_per_10k;
        self.fault(per_10k + boost)
    }

    /// An aimed read error for [off, off+len), consumed if it fires.
    fn aimed_read_fault(&self, off: u64, len: u64) -> bool {
        let mut st = self.st.borrow_mut();
        let hit = aimed_hit(&mut st.fail_reads, off, len);
        st.aimed_read_errors += hit as u64;
        hit
    }

    /// An aimed write error for [off, off+len), consumed if it fires.
    fn aimed_write_fault(&self, off: u64, len: u64) -> bool {
        let mut st = self.st.borrow_mut();
        let hit = aimed_hit(&mut st.fail_writes, off, len);
        st.aimed_write_errors += hit as u64;
        hit
    }

    fn trace(&self, op: u64, a: u64, b: u64) {
        let tag = self.st.borrow().trace_tag;
        self.world.trace(tag | op, a, b);
    }

    /// Power cut: what was not durable is lost, applied, or torn per sector, in random order.
    pub fn power_cut(&self) {
        self.trace(9, 0, 0);
        if TRACE_SECTOR.with(|t| t.is_some()) {
            let st = self.st.borrow();
            let pending: Vec<(u64, Vec<u8>)> = st
                .unflushed
                .iter()
                .cloned()
                .chain(st.inflight.values().cloned())
                .collect();
            drop(st);
            for (off, d) in pending {
                trace_io(self, "not durable at power cut:", off, &d);
            }
        }
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
            if st.power_cut_loses_all {
                continue;
            }
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

thread_local! {
    /// `WB_TRACE_SECTOR`: device I/O that carries that volume sector's data is printed.
    static TRACE_SECTOR: Option<u64> =
        std::env::var("WB_TRACE_SECTOR").ok().and_then(|v| v.parse().ok());
}

/// The write id in a sector of simulation data (the model's layout: id, then sector number), or
/// 0 for zeroes; None for anything else. (Tracing only: bench/engine.rs has no model.)
fn traced_id(c: &[u8], sector: u64) -> Option<u64> {
    if c.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let at = |o: usize| u64::from_le_bytes(c[o..o + 8].try_into().unwrap());
    (at(8) == sector).then(|| at(0))
}

/// Prints the I/O if it carries the traced sector (backing: by offset; cache: by content).
fn trace_io(disk: &SimDisk, what: &str, off: u64, data: &[u8]) {
    let Some(x) = TRACE_SECTOR.with(|t| *t) else {
        return;
    };
    let name = disk.st.borrow().cfg.name;
    let now = disk.world.now_ns();
    if name.contains("backing") {
        if off <= x * 512 && x * 512 < off + data.len() as u64 {
            let o = (x * 512 - off) as usize;
            let id = traced_id(&data[o..o + 512], x);
            eprintln!(
                "t={now}   {name} {what} off={off} len={} sector {x} = {id:?}",
                data.len()
            );
        }
    } else {
        for (i, c) in data.chunks(512).enumerate() {
            if let Some(id) = traced_id(c, x).filter(|&id| id != 0) {
                eprintln!(
                    "t={now}   {name} {what} off={} holds sector {x} = {id}",
                    off + i as u64 * 512
                );
            }
        }
    }
}

fn io_error(op: DeviceOp, off: u64, len: u64) -> DeviceError {
    DeviceError::Io {
        op,
        offset_bytes: off,
        len_bytes: len,
    }
}

impl SimDisk {
    async fn read_into(&self, off: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.range_ok(DeviceOp::Read, off, buf.len() as u64)?;
        self.trace(1, off, buf.len() as u64);
        let at_issue = {
            let st = self.st.borrow();
            st.read_at_issue
                .then(|| st.view[off as usize..off as usize + buf.len()].to_vec())
        };
        let lat = self.latency_ns(off, buf.len() as u64);
        self.world.after(lat).await;
        if self.refused(true)
            || self.aimed_read_fault(off, buf.len() as u64)
            || self.io_fault(self.st.borrow().cfg.read_error_per_10k)
        {
            self.trace(2, off, u64::MAX);
            self.st.borrow_mut().read_errors += 1;
            return Err(io_error(DeviceOp::Read, off, buf.len() as u64));
        }
        let mut st = self.st.borrow_mut();
        match at_issue {
            Some(d) => buf.copy_from_slice(&d),
            None => buf.copy_from_slice(&st.view[off as usize..off as usize + buf.len()]),
        }
        st.bytes_read += buf.len() as u64;
        drop(st);
        trace_io(self, "read", off, buf);
        self.trace(2, off, crc32c::crc32c(buf) as u64);
        Ok(())
    }

    async fn write_from(&self, off: u64, buf: &[u8]) -> Result<(), DeviceError> {
        self.range_ok(DeviceOp::Write, off, buf.len() as u64)?;
        self.trace(
            3,
            off,
            crc32c::crc32c(buf) as u64 | (buf.len() as u64) << 32,
        );
        let id = {
            let mut st = self.st.borrow_mut();
            let id = st.next_io;
            st.next_io += 1;
            st.inflight.insert(id, (off, buf.to_vec()));
            id
        };
        let slow: u64 = {
            let end = off + buf.len() as u64;
            let st = self.st.borrow();
            st.slow_writes
                .iter()
                .filter(|&&(a, b, _)| off < b && a < end)
                .map(|&(_, _, ns)| ns)
                .sum()
        };
        let lat = self.latency_ns(off, buf.len() as u64) + slow;
        self.world.after(lat).await;
        let refused = self.refused(false);
        let failed = refused
            || self.aimed_write_fault(off, buf.len() as u64)
            || self.io_fault(self.st.borrow().cfg.write_error_per_10k);
        self.trace(4, off, failed as u64);
        trace_io(
            self,
            if failed { "write FAILED" } else { "write" },
            off,
            buf,
        );
        let mut st = self.st.borrow_mut();
        let Some((off, data)) = st.inflight.remove(&id) else {
            return Err(io_error(DeviceOp::Write, off, buf.len() as u64));
        };
        if refused {
            return Err(io_error(DeviceOp::Write, off, data.len() as u64));
        }
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

    async fn read<B: IoBufMut>(&self, off: u64, mut buf: B) -> IoResult<B> {
        let r = self.read_into(off, buf.bytes_mut()).await;
        (buf, r)
    }

    async fn write<B: IoBuf>(&self, off: u64, buf: B) -> IoResult<B> {
        let r = self.write_from(off, buf.bytes()).await;
        (buf, r)
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        let covered = self.st.borrow().unflushed.len();
        self.trace(5, covered as u64, 0);
        let lat = self.world.rng().range(1_000, 20_000);
        self.world.after(lat).await;
        // A device whose writes fail still completes FLUSH (as SPDK's bdev_error does with write
        // errors injected): it has nothing new to make durable. A gone device fails it.
        if self.refused(true) || self.fault(self.st.borrow().cfg.flush_error_per_10k) {
            self.trace(6, 1, 0);
            return Err(io_error(DeviceOp::Flush, 0, 0));
        }
        self.trace(6, 0, 0);
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
        self.trace(7, off, len);
        let lat = self.world.rng().range(1_000, 5_000);
        self.world.after(lat).await;
        if self.refused(false) {
            return Err(io_error(DeviceOp::Discard, off, len));
        }
        let failed = self.fault(self.st.borrow().cfg.write_error_per_10k);
        // What the device does with the range: nothing, zeroes everywhere, zeroes in whole 4 KiB
        // granules only, or zeroes in some sectors. A failed discard may have done part of it.
        let how = self.world.rng().below(4);
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            st.discards += 1;
            let (o, n) = (off as usize, len as usize);
            let mut data = st.view[o..o + n].to_vec();
            let mut rng = self.world.rng();
            for s in 0..n / 512 {
                let abs = o + s * 512;
                let granule = abs / 4096 * 4096;
                let zero = match how {
                    0 => false,
                    1 => true,
                    2 => granule >= o && granule + 4096 <= o + n,
                    _ => rng.chance(50),
                };
                if zero && !(failed && rng.chance(50)) {
                    data[s * 512..(s + 1) * 512].fill(0);
                }
            }
            if how != 0 {
                st.view[o..o + n].copy_from_slice(&data);
                st.unflushed.push((off, data));
            }
        }
        self.trace(8, how, failed as u64);
        if TRACE_SECTOR.with(|t| t.is_some()) {
            let d = self.st.borrow().view[off as usize..(off + len) as usize].to_vec();
            trace_io(self, &format!("discard how={how} now"), off, &d);
        }
        if failed {
            return Err(io_error(DeviceOp::Discard, off, len));
        }
        Ok(())
    }
}
