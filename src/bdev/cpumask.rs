//! Where a volume thread runs: the `cpumask` create parameter (an SPDK cpumask string, as
//! `bdev_ftl_create --core-mask` takes: hex `0x3` or a list `[0,2-3]`), checked against the
//! application's reactors, and the default.
//!
//! Default (no `cpumask`): the core of the thread that runs the create (the app thread for an RPC
//! or a JSON config, whatever thread registered the base bdev for an examine-deferred create).
//! This follows FTL, which runs its core thread on the creating thread unless a mask is given,
//! and never puts the volume on a reactor the application did not pick: an application may
//! block one of its reactors (bdevio's unit-test reactor waits on a condition variable while
//! another reactor does the I/O), and a volume thread placed there would never run again.

use writeboost_spdk_sys as sys;

/// An SPDK CPU set (`struct spdk_cpuset`, plain data).
pub struct CpuSet(sys::spdk_cpuset);

impl CpuSet {
    fn empty() -> CpuSet {
        CpuSet(sys::spdk_cpuset::default())
    }

    pub fn raw(&self) -> *const sys::spdk_cpuset {
        &self.0
    }

    pub fn count(&self) -> u32 {
        // SAFETY: a valid cpuset, read only.
        unsafe { sys::spdk_cpuset_count(&self.0) }
    }

    /// `0x` followed by SPDK's hexadecimal form (`spdk_cpuset_fmt`).
    pub fn to_hex(&self) -> String {
        let mut copy = sys::spdk_cpuset::default();
        // SAFETY: valid cpusets; spdk_cpuset_fmt writes into the copy's own string buffer and
        // returns a pointer to it, read before the copy goes away.
        unsafe {
            sys::spdk_cpuset_copy(&mut copy, &self.0);
            let p = sys::spdk_cpuset_fmt(&mut copy);
            format!("0x{}", std::ffi::CStr::from_ptr(p).to_string_lossy())
        }
    }

    fn and(&mut self, other: &CpuSet) {
        // SAFETY: valid cpusets.
        unsafe { sys::spdk_cpuset_and(&mut self.0, &other.0) };
    }

    fn single(core: u32) -> CpuSet {
        let mut s = CpuSet::empty();
        // SAFETY: a valid cpuset; out-of-range cores are ignored by SPDK.
        unsafe { sys::spdk_cpuset_set_cpu(&mut s.0, core, true) };
        s
    }
}

/// The cores of the application's reactors (`spdk_app_get_core_mask`, or every core of the
/// environment when the event framework has none).
pub fn app_core_mask() -> CpuSet {
    // SAFETY: plain query; the returned set lives as long as the application and is only read.
    let p = unsafe { sys::spdk_app_get_core_mask() };
    if !p.is_null() {
        let mut s = CpuSet::empty();
        // SAFETY: p points to a valid cpuset (see above).
        unsafe { sys::spdk_cpuset_copy(&mut s.0, p) };
        if s.count() > 0 {
            return s;
        }
    }
    let mut s = CpuSet::empty();
    // SAFETY: plain environment queries (SPDK_ENV_FOREACH_CORE).
    unsafe {
        let mut c = sys::spdk_env_get_first_core();
        while c != u32::MAX {
            sys::spdk_cpuset_set_cpu(&mut s.0, c, true);
            c = sys::spdk_env_get_next_core(c);
        }
    }
    s
}

/// Parses a requested mask and keeps the cores the application has. The error names the
/// parameter and the application's core mask.
pub fn parse(requested: &str) -> Result<CpuSet, String> {
    let app = app_core_mask();
    let bad = |why: &str| {
        format!(
            "parameter 'cpumask' '{requested}' {why}; the application's core mask is {} (an SPDK cpumask: hexadecimal such as 0x1, or a list such as [0,1])",
            app.to_hex()
        )
    };
    let c = super::ffi::cstring(requested);
    let mut s = CpuSet::empty();
    // SAFETY: a valid out-parameter and C string.
    if requested.trim().is_empty() || unsafe { sys::spdk_cpuset_parse(&mut s.0, c.as_ptr()) } != 0 {
        return Err(bad("is not a valid cpumask"));
    }
    s.and(&app);
    if s.count() == 0 {
        return Err(bad("selects no core of the application"));
    }
    Ok(s)
}

/// The mask of a new volume thread: `requested` (checked again: the application is the same,
/// but a config may come from elsewhere), or the calling thread's core.
pub fn for_volume(requested: Option<&str>) -> Result<CpuSet, String> {
    match requested {
        Some(r) => parse(r),
        None => Ok(current_core()),
    }
}

/// Just the core of the calling thread (the main core when called off a reactor).
pub fn current_core() -> CpuSet {
    // SAFETY: plain environment queries.
    let core = unsafe {
        let c = sys::spdk_env_get_current_core();
        if c == u32::MAX {
            sys::spdk_env_get_main_core()
        } else {
            c
        }
    };
    CpuSet::single(core)
}
