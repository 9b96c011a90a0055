//! One seeded run: a swarm of options from the seed, concurrent clients issuing reads, writes
//! (full, partial, FUA), flushes, discards, write-zeroes, option changes and drop_caches against
//! the model; epochs end with a power cut at a random instant, a clean restart or a crash after
//! quiescing; recovery is checked sector by sector; finally faults stop and writeback must drain.

use crate::disk::{DiskConfig, Latency, SimDisk};
use crate::executor::{RunEnd, SimRuntime, World};
use crate::model::{decode, sector_bytes, Allowed, Model};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use writeboost::engine::{CreateOptions, Options, Volume};

pub type Vol = Volume<SimDisk, SimRuntime>;

#[derive(Debug, Clone)]
pub struct Swarm {
    pub segment_size_kib: u32,
    pub nr_segments: u64,
    pub nr_ram_buffers: usize,
    pub backing_sectors: u64,
    pub clients: u64,
    pub ops_per_epoch: u64,
    pub epochs: u64,
    pub cache_faults_per_10k: u64,
    pub backing_faults_per_10k: u64,
    pub write_around: bool,
    pub fua_pct: u64,
    pub discard_pct: u64,
    /// `sequential_cutoff_kib` of the volumes (0: off).
    pub seq_cutoff_kib: u64,
    /// Share of writes that continue where the previous write ended (sequential streams).
    pub seq_pct: u64,
    /// Plant the canary bug (FLUSH without a cache flush) in every volume.
    pub canary: bool,
}

impl Swarm {
    pub fn describe_seed(seed: u64) -> Swarm {
        Swarm::from_seed(&World::new(seed))
    }

    pub fn from_seed(world: &World) -> Swarm {
        let mut r = world.rng();
        let faulty = r.chance(30);
        Swarm {
            segment_size_kib: [16, 32, 64][r.below(3) as usize],
            nr_segments: r.range(3, 40),
            nr_ram_buffers: r.range(2, 8) as usize,
            backing_sectors: r.range(64, 4096) * 8,
            clients: r.range(1, 16),
            ops_per_epoch: r.range(30, 250),
            epochs: r.range(1, 4),
            cache_faults_per_10k: if faulty { r.range(0, 80) } else { 0 },
            backing_faults_per_10k: if faulty { r.range(0, 80) } else { 0 },
            write_around: r.chance(8),
            fua_pct: r.range(0, 20),
            discard_pct: r.range(0, 6),
            seq_cutoff_kib: if r.chance(50) { r.range(1, 32) } else { 0 },
            seq_pct: r.range(0, 70),
            canary: false,
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    pub property: String,
    pub detail: String,
}

fn fail<T>(property: &str, detail: String) -> Result<T, Failure> {
    Err(Failure {
        property: property.into(),
        detail,
    })
}

struct Ctx {
    world: World,
    model: RefCell<Model>,
    next_id: Cell<u64>,
    failure: RefCell<Option<Failure>>,
    ops_left: Cell<u64>,
    clients_running: Cell<u64>,
    /// Where the last write ended: the next sequential write starts here.
    seq_next: Cell<u64>,
}

impl Ctx {
    fn record_failure(&self, property: &str, detail: String) {
        let mut f = self.failure.borrow_mut();
        if f.is_none() {
            *f = Some(Failure {
                property: property.into(),
                detail,
            });
        }
    }
}

fn check_read(ctx: &Ctx, start_sector: u64, buf: &[u8], allowed: &[Allowed], what: &str) {
    for (i, a) in allowed.iter().enumerate() {
        let sector = start_sector + i as u64;
        let got = decode(&buf[i * 512..(i + 1) * 512], sector);
        match got {
            None => {
                ctx.record_failure(what, format!("sector {sector}: bytes no write produced"));
                return;
            }
            Some(id) if !a.permits(id) => {
                ctx.record_failure(
                    what,
                    format!("sector {sector}: read write id {id}, allowed {a:?}"),
                );
                return;
            }
            _ => {}
        }
    }
}

fn trace(ctx: &Ctx, what: &str, s: u64, len: u64) {
    if let Some(x) = std::env::var("WB_TRACE_SECTOR")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        if x >= s && x < s + len {
            eprintln!("t={} {what} [{s}, +{len})", ctx.world.now_ns());
        }
    }
}

/// A random range of 1..=max_len sectors inside a volume of `n` sectors.
fn random_range(ctx: &Ctx, n: u64, max_len: u64) -> (u64, u64) {
    let mut r = ctx.world.rng();
    let len = r.range(1, max_len).min(n);
    (r.below(n - len + 1), len)
}

fn fill(buf: &mut [u8], start_sector: u64, id: u64) {
    for (i, chunk) in buf.chunks_mut(512).enumerate() {
        sector_bytes(id, start_sector + i as u64, chunk);
    }
}

async fn client(ctx: Rc<Ctx>, vol: Vol, swarm: Swarm) {
    let n = ctx.model.borrow().nr_sectors();
    loop {
        if ctx.ops_left.get() == 0 || ctx.failure.borrow().is_some() {
            break;
        }
        ctx.ops_left.set(ctx.ops_left.get() - 1);
        let pick = ctx.world.rng().below(100);
        if pick < 40 {
            // Write: whole blocks or any sectors.
            let (s, len) = {
                let mut r = ctx.world.rng();
                let (s, len) = if r.chance(50) {
                    let blocks = r.range(1, 16).min(n / 8);
                    ((r.below(n / 8 - blocks + 1)) * 8, blocks * 8)
                } else {
                    let len = r.range(1, 64).min(n);
                    (r.below(n - len + 1), len)
                };
                if r.chance(swarm.seq_pct) {
                    let next = ctx.seq_next.get();
                    (if next + len <= n { next } else { 0 }, len)
                } else {
                    (s, len)
                }
            };
            ctx.seq_next.set(s + len);
            if !ctx.model.borrow().can_write(s, len) {
                continue;
            }
            let fua = ctx.world.rng().chance(swarm.fua_pct);
            let id = ctx.next_id.get();
            ctx.next_id.set(id + 1);
            let mut buf = vec![0u8; len as usize * 512];
            fill(&mut buf, s, id);
            ctx.model.borrow_mut().begin_write(s, len, id);
            trace(&ctx, &format!("write id={id} fua={fua} begin"), s, len);
            let r = vol.write(s, &buf, fua).await;
            trace(&ctx, &format!("write id={id} end {r:?}"), s, len);
            ctx.model.borrow_mut().end_write(s, len, r.is_ok(), fua);
        } else if pick < 75 {
            let (s, len) = random_range(&ctx, n, 128);
            let mut buf = vec![0u8; len as usize * 512];
            let started = ctx.model.borrow_mut().begin_read();
            let r = vol.read(s, &mut buf).await;
            let allowed = ctx.model.borrow_mut().end_read(started, s, len);
            if r.is_ok() {
                check_read(
                    &ctx,
                    s,
                    &buf,
                    &allowed,
                    "read returned stale or foreign data",
                );
            }
        } else if pick < 83 {
            let started = ctx.model.borrow_mut().begin_flush();
            trace(&ctx, "flush begin", 0, u64::MAX);
            let r = vol.flush().await;
            trace(&ctx, &format!("flush end {r:?}"), 0, u64::MAX);
            if r.is_ok() {
                ctx.model.borrow_mut().end_flush(started);
            }
        } else if pick < 83 + swarm.discard_pct {
            let (s, len) = random_range(&ctx, n, 64);
            if !ctx.model.borrow().can_write(s, len) {
                continue;
            }
            // Fully covered blocks become undefined; the others keep their data.
            let (a, b) = (s.div_ceil(8) * 8, (s + len) / 8 * 8);
            if a < b {
                ctx.model
                    .borrow_mut()
                    .begin_write(a, b - a, crate::model::UNDEF);
                if ctx.world.rng().chance(50) {
                    // Let a sequential stream run over what was discarded (the sequential
                    // cutoff must not bypass blocks whose old copy replay could map again).
                    ctx.seq_next.set(a);
                }
                trace(&ctx, "discard begin", s, len);
                let r = vol.discard(s, len).await;
                trace(&ctx, "discard end", s, len);
                ctx.model.borrow_mut().end_write(a, b - a, r.is_ok(), false);
            } else {
                let _ = vol.discard(s, len).await;
            }
        } else if pick < 92 {
            let (s, len) = random_range(&ctx, n, 64);
            if !ctx.model.borrow().can_write(s, len) {
                continue;
            }
            let fua = ctx.world.rng().chance(swarm.fua_pct);
            ctx.model.borrow_mut().begin_write(s, len, 0);
            trace(&ctx, &format!("write_zeroes fua={fua} begin"), s, len);
            let r = vol.write_zeroes(s, len, fua).await;
            trace(&ctx, &format!("write_zeroes end {r:?}"), s, len);
            ctx.model.borrow_mut().end_write(s, len, r.is_ok(), fua);
        } else if pick < 96 {
            let (key, v) = {
                let mut r = ctx.world.rng();
                match r.below(6) {
                    0 => ("writeback_threshold", r.range(0, 100)),
                    5 => ("sequential_cutoff_kib", r.range(0, 32)),
                    1 => ("nr_max_batched_writeback", r.range(1, 8)),
                    2 => ("read_cache_threshold", r.range(0, 16)),
                    3 => ("sync_data_interval", r.range(0, 1)),
                    _ => ("update_sb_record_interval", r.range(0, 1)),
                }
            };
            vol.set_option(key, v).expect("valid option");
        } else if pick < 97 {
            let _ = vol.drop_caches().await;
        } else {
            let d = ctx.world.rng().range(1_000, 200_000);
            ctx.world.after(d).await;
        }
    }
    ctx.clients_running.set(ctx.clients_running.get() - 1);
}

async fn poller(vol: Vol, world: World, stop: Rc<Cell<bool>>) {
    while !stop.get() {
        vol.poll_all();
        vol.check_invariants();
        let d = world.rng().range(5_000, 300_000);
        world.after(d).await;
    }
}

fn set_faults(disks: &[&SimDisk], on: bool) {
    for d in disks {
        d.st.borrow_mut().faults_enabled = on;
    }
}

fn create(
    world: &World,
    cache: &SimDisk,
    backing: &SimDisk,
    swarm: &Swarm,
    uuid_seed: u64,
) -> Result<Vol, Failure> {
    let writeback_threshold = world.rng().range(0, 100);
    let read_cache_threshold = world.rng().range(0, 8);
    let options = Options {
        write_around_mode: swarm.write_around,
        writeback_threshold,
        read_cache_threshold,
        sequential_cutoff_kib: swarm.seq_cutoff_kib,
        ..Options::default()
    };
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&uuid_seed.to_le_bytes());
    let opts = CreateOptions {
        options,
        segment_size_kib: Some(swarm.segment_size_kib),
        force_format: false,
        new_format_uuid: uuid,
        nr_ram_buffers: swarm.nr_ram_buffers,
        accept_damaged_log: false,
    };
    let (c, b, rt) = (cache.clone(), backing.clone(), SimRuntime(world.clone()));
    match world.block_on(async move { Volume::create(c, b, rt, opts).await }) {
        Some(Ok((v, _))) => {
            if swarm.canary {
                v.plant_bug_skip_cache_flush();
            }
            Ok(v)
        }
        Some(Err(e)) => fail("create failed", e.to_string()),
        None => fail("create stalled", String::new()),
    }
}

/// Reads the whole volume and checks each sector with `allowed`; then collapses the model.
fn verify_all(
    world: &World,
    vol: &Vol,
    model: &RefCell<Model>,
    crashed: bool,
    what: &str,
) -> Result<Vec<u8>, Failure> {
    let n = model.borrow().nr_sectors();
    let v = vol.clone();
    let data = world
        .block_on(async move {
            let mut buf = vec![0u8; n as usize * 512];
            let mut s = 0;
            while s < n {
                let len = 256.min(n - s);
                v.read(s, &mut buf[s as usize * 512..(s + len) as usize * 512])
                    .await?;
                s += len;
            }
            Ok::<_, writeboost::engine::IoError>(buf)
        })
        .ok_or_else(|| Failure {
            property: "verify stalled".into(),
            detail: String::new(),
        })?
        .map_err(|e| Failure {
            property: "verify read failed".into(),
            detail: e.to_string(),
        })?;
    let mut m = model.borrow_mut();
    for x in 0..n {
        let got = decode(&data[x as usize * 512..(x as usize + 1) * 512], x);
        let allowed = if crashed {
            m.after_crash(x)
        } else {
            let t = m.begin_read();
            m.end_read(t, x, 1).pop().unwrap()
        };
        match got {
            // Discarded and not written since: stays undefined (it may change on its own).
            Some(_) if matches!(allowed, Allowed::Any) => m.collapse(x, crate::model::UNDEF),
            Some(id) if allowed.permits(id) => m.collapse(x, id),
            Some(id) => {
                return fail(
                    what,
                    format!("sector {x}: found write id {id}, allowed {allowed:?}"),
                )
            }
            None => return fail(what, format!("sector {x}: bytes no write produced")),
        }
    }
    Ok(data)
}

#[allow(clippy::result_large_err)]
pub fn run(seed: u64) -> Result<Swarm, (Swarm, Failure)> {
    run_with(seed, false)
}

#[allow(clippy::result_large_err)]
pub fn run_with(seed: u64, canary: bool) -> Result<Swarm, (Swarm, Failure)> {
    let world = World::new(seed);
    let mut swarm = Swarm::from_seed(&world);
    swarm.canary = canary;
    let r = run_swarm(&world, &swarm);
    // Tasks hold the world (and the disks): break the cycle.
    world.kill_all();
    r.map(|_| swarm.clone()).map_err(|f| (swarm, f))
}

fn run_swarm(world: &World, swarm: &Swarm) -> Result<(), Failure> {
    let cache = SimDisk::new(
        world,
        DiskConfig {
            name: "sim-cache",
            size_bytes: (1 << 20) + swarm.nr_segments * swarm.segment_size_kib as u64 * 1024,
            read_error_per_10k: swarm.cache_faults_per_10k,
            write_error_per_10k: swarm.cache_faults_per_10k,
            flush_error_per_10k: swarm.cache_faults_per_10k / 4,
            latency: Latency::Uniform {
                min_ns: 2_000,
                max_ns: 40_000,
            },
        },
    );
    let backing = SimDisk::new(
        world,
        DiskConfig {
            name: "sim-backing",
            size_bytes: swarm.backing_sectors * 512,
            read_error_per_10k: swarm.backing_faults_per_10k,
            write_error_per_10k: swarm.backing_faults_per_10k,
            flush_error_per_10k: swarm.backing_faults_per_10k / 4,
            latency: Latency::Uniform {
                min_ns: 20_000,
                max_ns: 400_000,
            },
        },
    );
    let ctx = Rc::new(Ctx {
        world: world.clone(),
        model: RefCell::new(Model::new(swarm.backing_sectors)),
        next_id: Cell::new(1),
        failure: RefCell::new(None),
        ops_left: Cell::new(0),
        clients_running: Cell::new(0),
        seq_next: Cell::new(0),
    });
    set_faults(&[&cache, &backing], false);
    let mut vol = create(world, &cache, &backing, swarm, 1)?;
    for epoch in 0..swarm.epochs {
        set_faults(&[&cache, &backing], true);
        ctx.ops_left.set(swarm.ops_per_epoch);
        ctx.clients_running.set(swarm.clients);
        let stop = Rc::new(Cell::new(false));
        world.spawn_task(poller(vol.clone(), world.clone(), stop.clone()));
        for _ in 0..swarm.clients {
            world.spawn_task(client(ctx.clone(), vol.clone(), swarm.clone()));
        }
        let mode = world.rng().below(3);
        let cut_at = world.now_ns() + world.rng().range(100_000, 20_000_000);
        let deadline = world.now_ns() + 600_000_000_000;
        let c2 = ctx.clone();
        let w2 = world.clone();
        let end = world.run_until(|| {
            c2.failure.borrow().is_some()
                || c2.clients_running.get() == 0
                || (mode == 0 && w2.now_ns() >= cut_at)
                || w2.now_ns() > deadline
        });
        if let Some(f) = ctx.failure.borrow_mut().take() {
            return Err(f);
        }
        if end == RunEnd::Stalled {
            return fail("deadlock: nothing can run", format!("epoch {epoch}"));
        }
        if world.now_ns() > deadline {
            return fail(
                "liveness: epoch did not finish in 600 s of virtual time",
                format!("epoch {epoch}"),
            );
        }
        let crashed = match mode {
            0 => {
                world.kill_all();
                cache.power_cut();
                backing.power_cut();
                true
            }
            1 => {
                // Quiesce, clean shutdown, restart without power loss.
                set_faults(&[&cache, &backing], false);
                let v = vol.clone();
                let r = world.block_on(async move { v.shutdown().await });
                match r {
                    Some(Ok(())) => {}
                    Some(Err(e)) => return fail("clean shutdown failed", e.to_string()),
                    None => return fail("shutdown stalled", String::new()),
                }
                stop.set(true);
                world.kill_all();
                false
            }
            _ => {
                world.kill_all();
                cache.power_cut();
                backing.power_cut();
                true
            }
        };
        drop(vol);
        ctx.model.borrow_mut().reset_in_flight();
        set_faults(&[&cache, &backing], false);
        vol = create(world, &cache, &backing, swarm, epoch + 2)?;
        vol.check_invariants();
        verify_all(
            world,
            &vol,
            &ctx.model,
            crashed,
            "recovery lost or resurrected data",
        )?;
    }
    // Liveness: faults stop, writeback drains everything to the backing device.
    set_faults(&[&cache, &backing], false);
    let stop = Rc::new(Cell::new(false));
    world.spawn_task(poller(vol.clone(), world.clone(), stop.clone()));
    let v = vol.clone();
    match world.block_on(async move { v.drop_caches().await }) {
        Some(Ok(())) => {}
        Some(Err(e)) => return fail("drop_caches failed without faults", e.to_string()),
        None => return fail("drop_caches stalled", String::new()),
    }
    if vol.status().nr_dirty_cache_blocks != 0 {
        return fail(
            "drop_caches left dirty blocks",
            format!("{}", vol.status().nr_dirty_cache_blocks),
        );
    }
    vol.check_invariants();
    let data = verify_all(
        world,
        &vol,
        &ctx.model,
        false,
        "data wrong after drop_caches",
    )?;
    let view = backing.st.borrow().view.clone();
    let model = ctx.model.borrow();
    if let Some(x) = (0..swarm.backing_sectors as usize).find(|&x| {
        !model.is_undefined(x as u64)
            && view[x * 512..(x + 1) * 512] != data[x * 512..(x + 1) * 512]
    }) {
        return fail(
            "backing device does not hold the data after drop_caches",
            format!(
                "sector {x}: backing has {:?}, volume reads {:?}",
                decode(&view[x * 512..(x + 1) * 512], x as u64),
                decode(&data[x * 512..(x + 1) * 512], x as u64)
            ),
        );
    }
    stop.set(true);
    Ok(())
}
