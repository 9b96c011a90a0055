//! Honest durability: what a FLUSH sent to a base bdev really does (DESIGN.md, "Failure
//! semantics"; issue 13, item 4).
//!
//! The engine's promises (FUA and FLUSH complete once the data is durable; writeback reuses a
//! cache slot once the backing device has been flushed) are only as good as the FLUSH of the
//! base bdevs. SPDK cannot tell us whether a FLUSH reaches stable media, but some of it can be
//! detected, on the app thread, from the bdev itself:
//!
//! - its `write_cache` flag (`spdk_bdev_has_write_cache`: the bdev says it has a volatile write
//!   cache, so a write is durable only after a FLUSH),
//! - whether it supports FLUSH (`spdk_bdev_io_type_supported(FLUSH)`; without it the engine's
//!   flush of that base is a no-op, see `base.rs`),
//! - its module (`spdk_bdev_get_module_name`): `malloc` is RAM; `nvme` completes FLUSH without
//!   sending it unless `bdev_nvme_set_options --enable-flush` (`enable_flush`, default off
//!   since v25.09; `bdev_nvme_submit_request`: `if (!bdev->write_cache || !g_opts.enable_flush)`
//!   completes the FLUSH at once). `enable_flush` is global, read with
//!   `spdk_bdev_nvme_get_opts` (which returns the current options), and cannot change while a
//!   controller is attached (`spdk_bdev_nvme_set_opts` answers `-EPERM`), so what is read at
//!   create stays true as long as the NVMe bdev exists.
//! - stacking, one level deep: a bdev of a pass-through module (passthru, delay, error, crypto,
//!   zone_block, ocf, raid, ...) forwards FLUSH to its base. When an NVMe bdev with a volatile
//!   write cache and FLUSH not sent is claimed (v1 claim) by the same module as the probed bdev,
//!   the probed bdev is possibly stacked over it: `possibly_not_sent`. Deeper stacks and v2
//!   claims (lvol's blobstore) are not followed.
//!
//! `spdk_bdev_nvme_get_opts` is looked up with `dlsym` at run time, never linked: the preload
//! library must load into SPDK applications without the NVMe bdev module (and links with
//! `-z now`, so an unresolved symbol would refuse the whole library). `writeboost_tgt` exports
//! its SPDK symbols (`-rdynamic`), stock SPDK apps too.

use super::base::bdev_name;
use serde::Serialize;
use serde_json::{json, Value};
use std::ffi::{c_void, CStr};
use writeboost_spdk_sys as sys;

/// What a FLUSH sent to a base bdev does, as far as SPDK lets us know. Serialised in snake case
/// (`honoured`, `not_sent`, ...), the value of `cache_flush` / `backing_flush` in `get_stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlushDurability {
    /// The bdev has a volatile write cache and supports FLUSH, and nothing known drops it: the
    /// FLUSH is sent and data is durable when it completes (as far as the bdev's module tells
    /// the truth: aio `fsync`s its file, NVMe with `enable_flush` sends the NVMe Flush command).
    Honoured,
    /// SPDK's NVMe bdev, whose namespace has a volatile write cache, with `enable_flush` off:
    /// FLUSH completes at once without being sent. Data acknowledged by FLUSH/FUA may be lost
    /// on power loss (controller cache). Fix: `bdev_nvme_set_options --enable-flush` before any
    /// controller is attached.
    NotSent,
    /// The bdev is of a module that also claims an NVMe bdev whose FLUSH is `not_sent` (see
    /// `suspect`): it is probably stacked over it and forwards its FLUSH there, where it is
    /// dropped. Same fix as `not_sent`.
    PossiblyNotSent,
    /// The bdev says it has no volatile write cache (`write_cache` false): a write is durable
    /// when it completes; FLUSH is not needed (sent anyway when supported). This is the bdev's
    /// own claim: uring, lvol, raid and virtio bdevs report it whatever lies below them.
    NoVolatileCache,
    /// A `malloc` bdev: RAM. Everything on it is lost when the application exits, FLUSH or not.
    /// For tests only.
    VolatileMedia,
    /// The bdev says it has a volatile write cache but does not support FLUSH: nothing can make
    /// its data durable, and the engine's flush of it completes without doing anything.
    Unsupported,
    /// An NVMe bdev with a volatile write cache whose `enable_flush` could not be read
    /// (`spdk_bdev_nvme_get_opts` not found in this application).
    Unknown,
}

impl FlushDurability {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushDurability::Honoured => "honoured",
            FlushDurability::NotSent => "not_sent",
            FlushDurability::PossiblyNotSent => "possibly_not_sent",
            FlushDurability::NoVolatileCache => "no_volatile_cache",
            FlushDurability::VolatileMedia => "volatile_media",
            FlushDurability::Unsupported => "unsupported",
            FlushDurability::Unknown => "unknown",
        }
    }
}

/// Which base a probe is about (the wording of the warning differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Cache,
    Backing,
}

impl Role {
    fn key(self) -> &'static str {
        match self {
            Role::Cache => "cache_bdev",
            Role::Backing => "backing_bdev",
        }
    }
}

/// The facts the classification uses, read from SPDK by [`probe`] (plain data, so that the
/// decision itself is testable without SPDK).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// `spdk_bdev_get_module_name`.
    pub module: String,
    /// `spdk_bdev_has_write_cache`.
    pub write_cache: bool,
    /// `spdk_bdev_io_type_supported(FLUSH)`.
    pub flush_supported: bool,
    /// bdev_nvme's global `enable_flush`; `None` when the application has no bdev_nvme.
    pub nvme_enable_flush: Option<bool>,
    /// An NVMe bdev with a volatile write cache and FLUSH not sent, claimed by this bdev's
    /// module (the bdev is possibly stacked over it).
    pub suspect: Option<String>,
}

/// What [`probe`] found about one base bdev.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseDurability {
    pub bdev: String,
    pub flush: FlushDurability,
    pub facts: Facts,
}

/// The decision, from the facts alone.
pub fn classify(f: &Facts) -> FlushDurability {
    match f.module.as_str() {
        "nvme" if !f.write_cache => FlushDurability::NoVolatileCache,
        "nvme" => match f.nvme_enable_flush {
            Some(true) => FlushDurability::Honoured,
            Some(false) => FlushDurability::NotSent,
            None => FlushDurability::Unknown,
        },
        "malloc" => FlushDurability::VolatileMedia,
        _ if f.suspect.is_some() => FlushDurability::PossiblyNotSent,
        _ if !f.write_cache => FlushDurability::NoVolatileCache,
        _ if f.flush_supported => FlushDurability::Honoured,
        _ => FlushDurability::Unsupported,
    }
}

/// `struct spdk_bdev_nvme_opts` of SPDK v26.05 (`include/spdk/module/bdev/nvme.h`), field by
/// field. The header is not bound (it would pull `spdk/nvme.h` into the bindings for one bool).
/// The struct is ABI-versioned by its leading `opts_size`: SPDK only appends fields, so the
/// offsets below stay valid for later versions; the size and the `enable_flush` offset are the
/// C compiler's (`sizeof` 136, `offsetof(enable_flush)` 128, asserted below).
#[repr(C)]
#[derive(Default)]
struct NvmeOpts {
    opts_size: usize,
    action_on_timeout: u32,
    keep_alive_timeout_ms: u32,
    timeout_us: u64,
    timeout_admin_us: u64,
    transport_retry_count: u32,
    arbitration_burst: u32,
    low_priority_weight: u32,
    medium_priority_weight: u32,
    high_priority_weight: u32,
    io_queue_requests: u32,
    nvme_adminq_poll_period_us: u64,
    nvme_ioq_poll_period_us: u64,
    delay_cmd_submit: u8,
    reserved73: [u8; 3],
    bdev_retry_count: i32,
    ctrlr_loss_timeout_sec: i32,
    reconnect_delay_sec: u32,
    fast_io_fail_timeout_sec: u32,
    transport_ack_timeout: u8,
    disable_auto_failback: u8,
    generate_uuids: u8,
    transport_tos: u8,
    nvme_error_stat: u8,
    io_path_stat: u8,
    allow_accel_sequence: u8,
    reserved99: [u8; 1],
    rdma_srq_size: u32,
    rdma_max_cq_size: u32,
    rdma_cm_event_timeout_ms: u16,
    reserved110: [u8; 2],
    dhchap_digests: u32,
    dhchap_dhgroups: u32,
    rdma_umr_per_io: u8,
    reserved121: [u8; 3],
    tcp_connect_timeout_ms: u32,
    /// C `bool`, read as a byte (any non-zero value is true).
    enable_flush: u8,
    multipath_policy: u8,
    multipath_selector: u8,
    reserved131: [u8; 1],
    multipath_min_io: u32,
}

const _: () = assert!(std::mem::size_of::<NvmeOpts>() == 136);
const _: () = assert!(std::mem::offset_of!(NvmeOpts, enable_flush) == 128);

type NvmeGetOpts = unsafe extern "C" fn(opts: *mut c_void, opts_size: usize);

/// bdev_nvme's current `enable_flush`, or `None` when this application has no bdev_nvme.
pub fn nvme_enable_flush() -> Option<bool> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks a symbol up.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"spdk_bdev_nvme_get_opts".as_ptr()) };
    if sym.is_null() {
        return None;
    }
    // SAFETY: the symbol is SPDK's `void spdk_bdev_nvme_get_opts(struct spdk_bdev_nvme_opts *,
    // size_t)` (include/spdk/module/bdev/nvme.h), whose C signature NvmeGetOpts matches.
    let get_opts: NvmeGetOpts = unsafe { std::mem::transmute::<*mut c_void, NvmeGetOpts>(sym) };
    let mut opts = NvmeOpts::default();
    let size = std::mem::size_of::<NvmeOpts>();
    // SAFETY: opts is a writable, aligned struct laid out like the C one (asserted above);
    // SPDK fills at most `size` bytes of it (`opts_size`).
    unsafe { get_opts(&mut opts as *mut NvmeOpts as *mut c_void, size) };
    Some(opts.enable_flush != 0)
}

/// # Safety
/// `bdev` is a registered bdev.
unsafe fn module_name(bdev: *const sys::spdk_bdev) -> String {
    // SAFETY: bdev is a registered bdev (contract); its module name is a static NUL-terminated
    // string (or NULL, handled).
    unsafe {
        let p = sys::spdk_bdev_get_module_name(bdev);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// The module holding a v1 (exclusive write) claim on `bdev`, if any.
///
/// # Safety
/// `bdev` is a registered bdev; app thread.
unsafe fn v1_claimer(bdev: *const sys::spdk_bdev) -> Option<String> {
    // SAFETY: bdev is a registered bdev read on the app thread, which owns claims; a v1 claim's
    // module is a registered, static module with a static name.
    unsafe {
        if (*bdev).internal.claim_type != sys::SPDK_BDEV_CLAIM_EXCL_WRITE {
            return None;
        }
        let m = (*bdev).internal.claim.v1.module;
        if m.is_null() || (*m).name.is_null() {
            return None;
        }
        Some(CStr::from_ptr((*m).name).to_string_lossy().into_owned())
    }
}

/// An NVMe bdev with a volatile write cache (FLUSH not sent, `enable_flush` being off) claimed
/// by `module`: what a bdev of `module` is possibly stacked over.
fn nvme_suspect_below(bdev: *const sys::spdk_bdev, module: &str) -> Option<String> {
    // Only compared with the other bdevs' addresses, never dereferenced here.
    if module.is_empty() || module == "nvme" || module == "writeboost" {
        return None;
    }
    // SAFETY: iterating the registered bdevs on the app thread (which registers and
    // unregisters them); each pointer is only read while we are in this loop.
    let mut b = unsafe { sys::spdk_bdev_first() };
    while !b.is_null() {
        let is_suspect = !std::ptr::eq(b, bdev)
            // SAFETY: b is a registered bdev (above).
            && unsafe { module_name(b) } == "nvme"
            // SAFETY: b is a registered bdev (above); a plain getter.
            && unsafe { sys::spdk_bdev_has_write_cache(b) }
            // SAFETY: b is a registered bdev (above), on the app thread.
            && unsafe { v1_claimer(b) }.as_deref() == Some(module);
        if is_suspect {
            // SAFETY: b is a registered bdev (above).
            return Some(unsafe { bdev_name(b) });
        }
        // SAFETY: b is a registered bdev (above).
        b = unsafe { sys::spdk_bdev_next(b) };
    }
    None
}

/// Reads what can be known about the FLUSH of an open base. App thread (bdev_nvme's
/// `io_type_supported` asserts it; claims and the bdev list belong to it).
pub fn probe(base: &super::base::BaseDesc) -> BaseDurability {
    super::ffi::assert_app_thread("durability::probe");
    let bdev = base.bdev;
    // SAFETY: bdev is open (a BaseDesc), so registered.
    let module = unsafe { module_name(bdev) };
    // SAFETY: bdev is open (caller); plain getters.
    let (write_cache, flush_supported) = unsafe {
        (
            sys::spdk_bdev_has_write_cache(bdev),
            sys::spdk_bdev_io_type_supported(bdev, sys::SPDK_BDEV_IO_TYPE_FLUSH),
        )
    };
    let nvme_enable_flush = nvme_enable_flush();
    let suspect = match nvme_enable_flush {
        Some(false) => nvme_suspect_below(bdev, &module),
        _ => None,
    };
    let facts = Facts {
        module,
        write_cache,
        flush_supported,
        nvme_enable_flush,
        suspect,
    };
    BaseDurability {
        // SAFETY: bdev is open (a BaseDesc).
        bdev: unsafe { bdev_name(bdev) },
        flush: classify(&facts),
        facts,
    }
}

/// How loud the create-time message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Warn,
    Notice,
}

const ENABLE_FLUSH_HINT: &str = "set `bdev_nvme_set_options --enable-flush` (JSON config: \
     \"enable_flush\": true in bdev_nvme_set_options) before any bdev_nvme_attach_controller";

impl BaseDurability {
    /// The message to log once at create (`volume`: the volume name), `None` when FLUSH is
    /// honoured or not needed.
    pub fn create_warning(&self, volume: &str, role: Role) -> Option<(Severity, String)> {
        let who = format!(
            "volume {volume}: {} {} (module {})",
            role.key(),
            self.bdev,
            self.facts.module
        );
        let consequence = match role {
            Role::Cache => {
                "writes acknowledged after FLUSH or with FUA are NOT durable: a power loss can lose them"
            }
            Role::Backing => {
                "written-back data is NOT durable when writeboost reuses its cache slot: a power loss can lose it"
            }
        };
        let msg = match self.flush {
            FlushDurability::Honoured | FlushDurability::NoVolatileCache => return None,
            FlushDurability::NotSent => format!(
                "{who} has a volatile write cache, but bdev_nvme completes FLUSH without sending \
                 it (enable_flush is off): {consequence}; {ENABLE_FLUSH_HINT}"
            ),
            FlushDurability::PossiblyNotSent => format!(
                "{who} is possibly stacked over NVMe bdev {}, which has a volatile write cache and \
                 whose FLUSH bdev_nvme completes without sending it (enable_flush is off): if so, \
                 {consequence}; {ENABLE_FLUSH_HINT}",
                self.facts.suspect.as_deref().unwrap_or("?")
            ),
            FlushDurability::Unsupported => format!(
                "{who} reports a volatile write cache but does not support FLUSH: nothing makes \
                 its writes durable, {consequence}"
            ),
            FlushDurability::Unknown => format!(
                "{who} has a volatile write cache and whether bdev_nvme sends FLUSH cannot be \
                 read (spdk_bdev_nvme_get_opts not found): unless enable_flush is on, \
                 {consequence}; {ENABLE_FLUSH_HINT}"
            ),
            FlushDurability::VolatileMedia => {
                return Some((
                    Severity::Notice,
                    format!(
                        "{who} is RAM: everything on it is lost when the application exits \
                         (use it for tests only)"
                    ),
                ))
            }
        };
        Some((Severity::Warn, msg))
    }

    /// Logs [`Self::create_warning`], if any.
    pub fn log_at_create(&self, volume: &str, role: Role) {
        match self.create_warning(volume, role) {
            Some((Severity::Warn, m)) => super::ffi::wb_warn!("{m}"),
            Some((Severity::Notice, m)) => super::ffi::wb_notice!("{m}"),
            None => {}
        }
    }

    /// The detail object (`durability.cache` / `durability.backing` in get_stats).
    pub fn to_json(&self) -> Value {
        json!({
            "bdev": self.bdev,
            "flush": self.flush.as_str(),
            "module": self.facts.module,
            "write_cache": self.facts.write_cache,
            "flush_supported": self.facts.flush_supported,
            "nvme_enable_flush": self.facts.nvme_enable_flush,
            "suspect": self.facts.suspect,
        })
    }
}

/// Adds `cache_flush`, `backing_flush` (the [`FlushDurability`] names) and `durability` (both
/// detail objects) to a stats object.
pub fn insert_stats(
    m: &mut serde_json::Map<String, Value>,
    cache: &BaseDurability,
    backing: &BaseDurability,
) {
    m.insert("cache_flush".into(), cache.flush.as_str().into());
    m.insert("backing_flush".into(), backing.flush.as_str().into());
    m.insert(
        "durability".into(),
        json!({ "cache": cache.to_json(), "backing": backing.to_json() }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(module: &str, wc: bool, fl: bool, ef: Option<bool>) -> Facts {
        Facts {
            module: module.into(),
            write_cache: wc,
            flush_supported: fl,
            nvme_enable_flush: ef,
            suspect: None,
        }
    }

    #[test]
    fn classification() {
        use FlushDurability::*;
        assert_eq!(classify(&facts("nvme", true, true, Some(false))), NotSent);
        assert_eq!(classify(&facts("nvme", true, true, Some(true))), Honoured);
        assert_eq!(classify(&facts("nvme", true, true, None)), Unknown);
        assert_eq!(
            classify(&facts("nvme", false, true, Some(false))),
            NoVolatileCache
        );
        assert_eq!(classify(&facts("aio", true, true, Some(false))), Honoured);
        assert_eq!(classify(&facts("malloc", true, true, None)), VolatileMedia);
        assert_eq!(
            classify(&facts("uring", false, false, None)),
            NoVolatileCache
        );
        assert_eq!(classify(&facts("foo", true, false, None)), Unsupported);
        let mut f = facts("passthru", true, true, Some(false));
        f.suspect = Some("Nvme0n1".into());
        assert_eq!(classify(&f), PossiblyNotSent);
    }

    #[test]
    fn serialised_names() {
        for (v, s) in [
            (FlushDurability::Honoured, "honoured"),
            (FlushDurability::NotSent, "not_sent"),
            (FlushDurability::PossiblyNotSent, "possibly_not_sent"),
            (FlushDurability::NoVolatileCache, "no_volatile_cache"),
            (FlushDurability::VolatileMedia, "volatile_media"),
            (FlushDurability::Unsupported, "unsupported"),
            (FlushDurability::Unknown, "unknown"),
        ] {
            assert_eq!(v.as_str(), s);
            assert_eq!(serde_json::to_value(v).unwrap(), Value::from(s));
        }
    }

    #[test]
    fn warnings() {
        let d = BaseDurability {
            bdev: "Nvme0n1".into(),
            flush: FlushDurability::NotSent,
            facts: facts("nvme", true, true, Some(false)),
        };
        let (sev, m) = d.create_warning("wb0", Role::Cache).unwrap();
        assert_eq!(sev, Severity::Warn);
        assert!(
            m.contains("--enable-flush") && m.contains("cache_bdev Nvme0n1"),
            "{m}"
        );
        let ok = BaseDurability {
            flush: FlushDurability::Honoured,
            ..d.clone()
        };
        assert!(ok.create_warning("wb0", Role::Backing).is_none());
    }
}
