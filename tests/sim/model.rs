//! The reference model (oracle). Every sector carries the id of the write that produced it (id 0:
//! never written, all zero; write-zeroes also writes id 0). Per sector the model keeps the ordered
//! history of writes with logical submit/complete times and the *floor*: the newest write made
//! durable by FUA or by a FLUSH issued after it completed.
//!
//! - A read may return, per sector, the value of the last write completed before the read began,
//!   or of any write overlapping the read in time. Never older data, never bytes nobody wrote.
//! - After a power cut a sector may hold its floor or anything written after it.
//! - A discard makes a sector undefined (any well-formed value) until it is written again.
//! - A write that failed is indeterminate: the value before it stays allowed too.

pub const UNDEF: u64 = u64::MAX;

#[derive(Clone, Debug)]
struct Rec {
    id: u64,
    submit: u64,
    complete: Option<u64>,
    failed: bool,
}

#[derive(Clone, Debug)]
struct Hist {
    recs: Vec<Rec>,
    floor: usize,
}

pub struct Model {
    tick: u64,
    sectors: Vec<Hist>,
    writing: Vec<bool>,
    /// Start ticks of reads in flight (for pruning).
    reads_in_flight: Vec<u64>,
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

impl Hist {
    /// Index of the newest write completed before `t`, walking back over failed writes.
    fn base_before(&self, t: u64) -> usize {
        let mut i = 0;
        for (k, r) in self.recs.iter().enumerate() {
            if matches!(r.complete, Some(c) if c < t) {
                i = k;
            }
        }
        i
    }
    fn walk_back(&self, mut i: usize) -> usize {
        while i > 0 && self.recs[i].failed {
            i -= 1;
        }
        i
    }
}

impl Model {
    pub fn new(nr_sectors: u64) -> Model {
        Model {
            tick: 1,
            sectors: vec![
                Hist {
                    recs: vec![Rec {
                        id: 0,
                        submit: 0,
                        complete: Some(0),
                        failed: false,
                    }],
                    floor: 0,
                };
                nr_sectors as usize
            ],
            writing: vec![false; nr_sectors as usize],
            reads_in_flight: Vec::new(),
        }
    }

    pub fn nr_sectors(&self) -> u64 {
        self.sectors.len() as u64
    }

    pub fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// True if no write is in flight on the range.
    pub fn can_write(&self, s: u64, n: u64) -> bool {
        (s..s + n).all(|x| !self.writing[x as usize])
    }

    pub fn begin_write(&mut self, s: u64, n: u64, id: u64) {
        let t = self.tick();
        for x in s..s + n {
            debug_assert!(!self.writing[x as usize]);
            self.writing[x as usize] = true;
            self.prune(x);
            self.sectors[x as usize].recs.push(Rec {
                id,
                submit: t,
                complete: None,
                failed: false,
            });
        }
    }

    pub fn end_write(&mut self, s: u64, n: u64, ok: bool, durable: bool) {
        let t = self.tick();
        for x in s..s + n {
            self.writing[x as usize] = false;
            let h = &mut self.sectors[x as usize];
            let k = h.recs.len() - 1;
            h.recs[k].complete = Some(t);
            h.recs[k].failed = !ok;
            if ok && durable {
                h.floor = k;
            }
        }
    }

    pub fn begin_flush(&mut self) -> u64 {
        self.tick()
    }

    pub fn end_flush(&mut self, started: u64) {
        for h in &mut self.sectors {
            let b = h.base_before(started);
            if b > h.floor {
                h.floor = b;
            }
        }
    }

    pub fn begin_read(&mut self) -> u64 {
        let t = self.tick();
        self.reads_in_flight.push(t);
        t
    }

    /// Ends a read begun at `started`; returns the allowed values per sector of the range.
    pub fn end_read(&mut self, started: u64, s: u64, n: u64) -> Vec<Allowed> {
        let end = self.tick();
        if let Some(p) = self.reads_in_flight.iter().position(|&t| t == started) {
            self.reads_in_flight.swap_remove(p);
        }
        (s..s + n)
            .map(|x| {
                let h = &self.sectors[x as usize];
                let base = h.walk_back(h.base_before(started));
                let mut ids = Vec::new();
                for (k, r) in h.recs.iter().enumerate() {
                    let overlaps = r.submit < end && r.complete.is_none_or(|c| c > started);
                    if k >= base && (k <= h.base_before(started) || overlaps) {
                        if r.id == UNDEF {
                            return Allowed::Any;
                        }
                        ids.push(r.id);
                    }
                }
                Allowed::Ids(ids)
            })
            .collect()
    }

    /// What a sector may hold after a power cut.
    pub fn after_crash(&self, x: u64) -> Allowed {
        let h = &self.sectors[x as usize];
        let from = h.walk_back(h.floor);
        let mut ids = Vec::new();
        for r in &h.recs[from..] {
            if r.id == UNDEF {
                return Allowed::Any;
            }
            ids.push(r.id);
        }
        Allowed::Ids(ids)
    }

    /// After recovery the value read is the new durable truth.
    pub fn collapse(&mut self, x: u64, id: u64) {
        let t = self.tick();
        let h = &mut self.sectors[x as usize];
        h.recs = vec![Rec {
            id,
            submit: t,
            complete: Some(t),
            failed: false,
        }];
        h.floor = 0;
        self.writing[x as usize] = false;
    }

    /// Discarded and not written since.
    pub fn is_undefined(&self, x: u64) -> bool {
        self.sectors[x as usize].recs.last().map(|r| r.id) == Some(UNDEF)
    }

    pub fn reset_in_flight(&mut self) {
        self.reads_in_flight.clear();
        for w in &mut self.writing {
            *w = false;
        }
    }

    /// Drops history no read or crash can ask for any more.
    fn prune(&mut self, x: u64) {
        let h = &self.sectors[x as usize];
        if h.recs.len() < 24 {
            return;
        }
        let oldest_read = self
            .reads_in_flight
            .iter()
            .copied()
            .min()
            .unwrap_or(u64::MAX);
        let keep_from = h
            .walk_back(h.floor)
            .min(h.walk_back(h.base_before(oldest_read)));
        if keep_from > 0 {
            let h = &mut self.sectors[x as usize];
            h.recs.drain(..keep_from);
            h.floor -= keep_from;
        }
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
}
