//! Engine behaviours over in-memory devices (dm-writeboost section 8 where it applies).

use std::rc::Rc;
use writeboost::device::mem::MemDevice;
use writeboost::device::BlockDevice;
use writeboost::engine::stats::stat_index;
use writeboost::engine::{CreateOptions, Startup, Volume};
use writeboost::runtime::LocalRuntime;

struct Shared(Rc<MemDevice>);
impl BlockDevice for Shared {
    fn info(&self) -> writeboost::device::DeviceInfo {
        self.0.info()
    }
    async fn read(&self, o: u64, b: &mut [u8]) -> Result<(), writeboost::device::DeviceError> {
        self.0.read(o, b).await
    }
    async fn write(&self, o: u64, b: &[u8]) -> Result<(), writeboost::device::DeviceError> {
        self.0.write(o, b).await
    }
    async fn flush(&self) -> Result<(), writeboost::device::DeviceError> {
        self.0.flush().await
    }
    async fn discard(&self, o: u64, l: u64) -> Result<(), writeboost::device::DeviceError> {
        self.0.discard(o, l).await
    }
}

fn devs(cache_mib: u64, backing_mib: u64) -> (Rc<MemDevice>, Rc<MemDevice>) {
    (
        Rc::new(MemDevice::new("cache", cache_mib << 20)),
        Rc::new(MemDevice::new("backing", backing_mib << 20)),
    )
}

type Vol = Volume<Shared, LocalRuntime>;

fn create(
    rt: &LocalRuntime,
    c: &Rc<MemDevice>,
    b: &Rc<MemDevice>,
    opts: CreateOptions,
) -> (Vol, Startup) {
    let (c, b, r) = (Shared(c.clone()), Shared(b.clone()), rt.clone());
    rt.block_on(async move { Volume::create(c, b, r, opts).await.expect("create") })
}

#[test]
fn stat_purity_one_write_then_read_moves_two_counters() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(8, 32);
    let (vol, startup) = create(&rt, &c, &b, CreateOptions::default());
    assert_eq!(startup, Startup::Formatted);
    vol.clear_stats();
    let v = vol.clone();
    let data = vec![0xabu8; 4096];
    let got = rt.block_on(async move {
        v.write(0, &data, false).await.unwrap();
        let mut out = vec![0u8; 4096];
        v.read(0, &mut out).await.unwrap();
        out
    });
    assert!(got.iter().all(|&x| x == 0xab));
    let st = vol.status().counters.stat;
    for (i, n) in st.iter().enumerate() {
        let expect = if i == stat_index(true, false, false, true)
            || i == stat_index(false, true, true, true)
        {
            1
        } else {
            0
        };
        assert_eq!(*n, expect, "counter {i}");
    }
}

#[test]
fn data_survives_clean_restart_and_drop_caches_drains_to_backing() {
    let rt = LocalRuntime::new();
    let (c, b) = devs(8, 32);
    let (vol, _) = create(&rt, &c, &b, CreateOptions::default());
    let v = vol.clone();
    rt.block_on(async move {
        for i in 0..3000u64 {
            let data = vec![(i % 251) as u8; 4096];
            v.write((i * 7919 % 8000) * 8, &data, false).await.unwrap();
        }
        v.shutdown().await.unwrap();
    });
    drop(vol);
    let (vol, startup) = create(&rt, &c, &b, CreateOptions::default());
    assert_eq!(startup, Startup::Resumed);
    vol.check_invariants();
    let v = vol.clone();
    rt.block_on(async move {
        let mut out = vec![0u8; 4096];
        for i in 2000..3000u64 {
            v.read((i * 7919 % 8000) * 8, &mut out).await.unwrap();
            assert!(out.iter().all(|&x| x == (i % 251) as u8), "block {i}");
        }
        v.drop_caches().await.unwrap();
    });
    assert_eq!(vol.status().nr_dirty_cache_blocks, 0);
    let snap = b.snapshot();
    for i in 2000..3000u64 {
        let off = ((i * 7919 % 8000) * 4096) as usize;
        assert!(
            snap[off..off + 4096].iter().all(|&x| x == (i % 251) as u8),
            "backing block {i}"
        );
    }
    vol.check_invariants();
}
