//! The reference model (oracle). Every sector carries the id of the write that produced it (id 0:
//! never written, all zero; write-zeroes also writes id 0). Per sector the model keeps the history
//! of writes with logical submit/complete times. Writes and discards may overlap in time and in
//! space at any queue depth; the engine picks an order per sector, and the model checks that
//! every observation fits one such order:
//!
//! - Real-time order: a write that completed before another began is ordered before it. A read
//!   may return, per sector, any write that is not ordered before a (successful) write completed
//!   before the read began, and that began before the read ended. Never older data, never a mix
//!   within a sector, never bytes nobody wrote.
//! - The engine's order, as reads reveal it: once a read returned write `w`, the writes that had
//!   completed before that read began and are not `w` come before `w`; a read that begins after
//!   it ended may not return them. So once overlapping writes have all completed, every read
//!   returns the same one of them until the next write.
//! - Durability: a write is durable once it completed with FUA, or completed before a FLUSH that
//!   completed was issued. After a power cut a sector may hold any write not ordered before a
//!   durable one (in-flight writes included).
//! - A discard makes a sector undefined (any well-formed value) until a write orders after it.
//! - A write that failed is indeterminate: it orders nothing before itself.

pub const UNDEF: u64 = u64::MAX;
const NEVER: u64 = u64::MAX;

#[derive(Clone, Debug)]
struct Rec {
    /// Unique per operation (ids repeat: 0 for zeroes, UNDEF for discards).
    op: u64,
    id: u64,
    submit: u64,
    /// `NEVER` while in flight.
    complete: u64,
    failed: bool,
    /// Durable on its own: completed with FUA, or found after a power cut.
    fua: bool,
    /// A read that begins after this tick may not return this write: a read that ended then
    /// returned a write the engine ordered after this one.
    dead_after: u64,
}

/// Allowed values for one sector: `Any` or a list of ids.
#[derive(Debug)]
pub enum Allowed {
    Any,
    Ids(Vec<u64>),
}

impl Allowed {
    pub fn permits(&self, id: u64) -> bool {
        match self {
            Allowed::Any => true,
            Allowed::Ids(v) => v.contains(&id),
        }
    }
}

/// An operation on a range of sectors, from `begin_write` to `end_write`.
#[derive(Debug)]
pub struct WriteTicket {
    op: u64,
    s: u64,
    n: u64,
}

pub struct Model {
    tick: u64,
    next_op: u64,
    sectors: Vec<Vec<Rec>>,
    /// Every successful write completed before this tick is durable: the newest issue time of a
    /// FLUSH that completed.
    flushed_before: u64,
    /// Start ticks of reads in flight (for pruning).
    reads_in_flight: Vec<u64>,
    /// Writes in flight per sector.
    in_flight: Vec<u16>,
    /// Writes or discards that began while another was in flight on one of their sectors.
    pub overlapping_writes: u64,
}

fn hash(id: u64, sector: u64) -> u64 {
    let mut z = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sector.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 29)
}

/// The 512 bytes write `id` puts at `sector`.
pub fn sector_bytes(id: u64, sector: u64, out: &mut [u8]) {
    if id == 0 {
        out.fill(0);
        return;
    }
    out[0..8].copy_from_slice(&id.to_le_bytes());
    out[8..16].copy_from_slice(&sector.to_le_bytes());
    let h = hash(id, sector);
    for (i, b) in out[16..512].iter_mut().enumerate() {
        *b = (h >> ((i % 8) * 8)) as u8 ^ i as u8;
    }
}

/// Which write produced these bytes, or None for bytes no write of this sector produced.
pub fn decode(buf: &[u8], sector: u64) -> Option<u64> {
    if buf.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let id = u64::from_le_bytes(buf[0..8].try_into().unwrap());
    let mut want = [0u8; 512];
    sector_bytes(id, sector, &mut want);
    (buf == want).then_some(id)
}

impl Rec {
    fn durable(&self, flushed_before: u64) -> bool {
        !self.failed && (self.fua || self.complete < flushed_before)
    }
}

impl Model {
    pub fn new(nr_sectors: u64) -> Model {
        Model {
            tick: 1,
            next_op: 1,
            sectors: vec![
                vec![Rec {
                    op: 0,
                    id: 0,
                    submit: 0,
                    complete: 0,
                    failed: false,
                    fua: true,
                    dead_after: NEVER,
                }];
                nr_sectors as usize
            ],
            flushed_before: 0,
            reads_in_flight: Vec::new(),
            in_flight: vec![0; nr_sectors as usize],
            overlapping_writes: 0,
        }
    }

    pub fn nr_sectors(&self) -> u64 {
        self.sectors.len() as u64
    }

    pub fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// True if a write or discard is in flight on a sector of the range.
    pub fn writing(&self, s: u64, n: u64) -> bool {
        (s..s + n).any(|x| self.in_flight[x as usize] > 0)
    }

    pub fn begin_write(&mut self, s: u64, n: u64, id: u64) -> WriteTicket {
        let t = self.tick();
        let op = self.next_op;
        self.next_op += 1;
        if self.writing(s, n) {
            self.overlapping_writes += 1;
        }
        for x in s..s + n {
            self.prune(x);
            self.in_flight[x as usize] += 1;
            self.sectors[x as usize].push(Rec {
                op,
                id,
                submit: t,
                complete: NEVER,
                failed: false,
                fua: false,
                dead_after: NEVER,
            });
        }
        WriteTicket { op, s, n }
    }

    /// `durable`: the write completed with FUA.
    pub fn end_write(&mut self, w: &WriteTicket, ok: bool, durable: bool) {
        let t = self.tick();
        for x in w.s..w.s + w.n {
            self.in_flight[x as usize] -= 1;
            let h = &mut self.sectors[x as usize];
            let r = h
                .iter_mut()
                .rev()
                .find(|r| r.op == w.op)
                .expect("write in the history");
            r.complete = t;
            r.failed = !ok;
            r.fua = ok && durable;
        }
    }

    pub fn begin_flush(&mut self) -> u64 {
        self.tick()
    }

    /// A FLUSH issued at `started` completed: every write completed before it is durable.
    pub fn end_flush(&mut self, started: u64) {
        self.flushed_before = self.flushed_before.max(started);
    }

    /// Everything completed so far is durable (a clean shutdown succeeded).
    pub fn all_durable(&mut self) {
        let t = self.tick();
        self.end_flush(t);
    }

    pub fn begin_read(&mut self) -> u64 {
        let t = self.tick();
        self.reads_in_flight.push(t);
        t
    }

    /// Ends a read begun at `started` (also one that failed); returns its end tick.
    pub fn end_read(&mut self, started: u64) -> u64 {
        let end = self.tick();
        if let Some(p) = self.reads_in_flight.iter().position(|&t| t == started) {
            self.reads_in_flight.swap_remove(p);
        }
        end
    }

    /// What a read of sector `x` that ran from `start` to `end` may return.
    pub fn read_allowed(&self, x: u64, start: u64, end: u64) -> Allowed {
        let h = &self.sectors[x as usize];
        // Writes that completed before the newest successful write completed before `start`
        // was issued are ordered before it.
        let m = h
            .iter()
            .filter(|r| !r.failed && r.complete < start)
            .map(|r| r.submit)
            .max()
            .unwrap_or(0);
        let mut ids = Vec::new();
        for r in h {
            if r.submit < end && r.complete >= m && r.dead_after >= start {
                if r.id == UNDEF {
                    return Allowed::Any;
                }
                ids.push(r.id);
            }
        }
        Allowed::Ids(ids)
    }

    /// A read from `start` to `end` returned write `id` at sector `x` (allowed): the writes
    /// completed before `start` that are not `id` are ordered before it.
    fn observe(&mut self, x: u64, id: u64, start: u64, end: u64) {
        for r in &mut self.sectors[x as usize] {
            if r.id != id && r.complete < start {
                r.dead_after = r.dead_after.min(end);
            }
        }
    }

    /// Checks a read of `buf` at sector `s` begun at `started` (and ends it). On success the
    /// values read are observations that later reads must be consistent with.
    pub fn check_read(&mut self, started: u64, s: u64, buf: &[u8]) -> Result<(), String> {
        let end = self.end_read(started);
        for (i, chunk) in buf.chunks(512).enumerate() {
            let x = s + i as u64;
            let allowed = self.read_allowed(x, started, end);
            match decode(chunk, x) {
                None => return Err(format!("sector {x}: bytes no write produced")),
                Some(id) if !allowed.permits(id) => {
                    return Err(format!(
                        "sector {x}: read write id {id}, allowed {allowed:?}"
                    ))
                }
                Some(id) => {
                    if matches!(allowed, Allowed::Ids(_)) {
                        self.observe(x, id, started, end);
                    }
                }
            }
        }
        Ok(())
    }

    /// What a sector may hold after a power cut.
    pub fn after_crash(&self, x: u64) -> Allowed {
        let h = &self.sectors[x as usize];
        let m = h
            .iter()
            .filter(|r| r.durable(self.flushed_before))
            .map(|r| r.submit)
            .max()
            .unwrap_or(0);
        let mut ids = Vec::new();
        for r in h {
            if r.complete >= m {
                if r.id == UNDEF {
                    return Allowed::Any;
                }
                ids.push(r.id);
            }
        }
        Allowed::Ids(ids)
    }

    /// After recovery from a power cut the value read is the new durable truth.
    pub fn collapse(&mut self, x: u64, id: u64) {
        let t = self.tick();
        let op = self.next_op;
        self.next_op += 1;
        self.sectors[x as usize] = vec![Rec {
            op,
            id,
            submit: t,
            complete: t,
            failed: false,
            fua: true,
            dead_after: NEVER,
        }];
        self.in_flight[x as usize] = 0;
    }

    /// Undefined now (discarded and not written since, as far as a read could tell).
    pub fn is_undefined(&mut self, x: u64) -> bool {
        let t = self.tick();
        matches!(self.read_allowed(x, t, t), Allowed::Any)
    }

    /// A power cut: reads and writes in flight are gone (their writes stay possible).
    pub fn reset_in_flight(&mut self) {
        self.reads_in_flight.clear();
    }

    /// Drops writes no read or power cut can return any more: those ordered before a durable
    /// write that completed before every read in flight began.
    fn prune(&mut self, x: u64) {
        let h = &self.sectors[x as usize];
        if h.len() < 16 {
            return;
        }
        let oldest_read = self.reads_in_flight.iter().copied().min().unwrap_or(NEVER);
        let fb = self.flushed_before;
        let p = h
            .iter()
            .filter(|r| r.durable(fb) && r.complete < oldest_read)
            .map(|r| r.submit)
            .max()
            .unwrap_or(0);
        self.sectors[x as usize].retain(|r| r.complete >= p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sector_bytes_decode() {
        let mut b = [0u8; 512];
        sector_bytes(77, 5, &mut b);
        assert_eq!(decode(&b, 5), Some(77));
        assert_eq!(decode(&b, 6), None);
        b[100] ^= 1;
        assert_eq!(decode(&b, 5), None);
    }

    fn read_ids(m: &mut Model, x: u64) -> Vec<u64> {
        let t = m.begin_read();
        let end = m.end_read(t);
        match m.read_allowed(x, t, end) {
            Allowed::Ids(v) => v,
            Allowed::Any => vec![UNDEF],
        }
    }

    fn read_returns(m: &mut Model, x: u64, id: u64) -> Result<(), String> {
        let mut b = [0u8; 512];
        sector_bytes(id, x, &mut b);
        let t = m.begin_read();
        m.check_read(t, x, &b)
    }

    #[test]
    fn overlapping_writes_settle_on_the_order_a_read_revealed() {
        let mut m = Model::new(1);
        let a = m.begin_write(0, 1, 1);
        let b = m.begin_write(0, 1, 2);
        m.end_write(&b, true, false);
        m.end_write(&a, true, false);
        // Either order is possible until a read tells.
        assert_eq!(read_ids(&mut m, 0), vec![1, 2]);
        read_returns(&mut m, 0, 2).unwrap();
        assert_eq!(read_ids(&mut m, 0), vec![2]);
        assert!(read_returns(&mut m, 0, 1).is_err());
        // A later write orders after both.
        let c = m.begin_write(0, 1, 3);
        m.end_write(&c, true, false);
        assert_eq!(read_ids(&mut m, 0), vec![3]);
    }

    #[test]
    fn a_read_during_a_write_may_see_either_but_not_older() {
        let mut m = Model::new(1);
        let a = m.begin_write(0, 1, 1);
        m.end_write(&a, true, false);
        let t = m.begin_read();
        let b = m.begin_write(0, 1, 2);
        let end = m.end_read(t);
        assert!(matches!(m.read_allowed(0, t, end), Allowed::Ids(v) if v == vec![1, 2]));
        m.end_write(&b, false, false);
        // Failed: the old value stays possible, and the failed write too.
        assert_eq!(read_ids(&mut m, 0), vec![1, 2]);
    }

    #[test]
    fn power_cut_keeps_writes_not_ordered_before_a_durable_one() {
        let mut m = Model::new(1);
        let a = m.begin_write(0, 1, 1);
        m.end_write(&a, true, true);
        let b = m.begin_write(0, 1, 2);
        let c = m.begin_write(0, 1, 3);
        m.end_write(&c, true, true);
        m.end_write(&b, true, false);
        // 2 overlapped 3, so the engine may have ordered it after the durable 3.
        assert!(matches!(m.after_crash(0), Allowed::Ids(v) if v == vec![2, 3]));
        let f = m.begin_flush();
        m.end_flush(f);
        let d = m.begin_write(0, 1, 4);
        assert!(matches!(m.after_crash(0), Allowed::Ids(v) if v == vec![2, 3, 4]));
        m.end_write(&d, true, false);
        let f = m.begin_flush();
        m.end_flush(f);
        assert!(matches!(m.after_crash(0), Allowed::Ids(v) if v == vec![4]));
    }
}
