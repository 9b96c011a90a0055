//! Link flags for the SPDK parts (cargo feature `spdk`); a no-op without it.
//!
//! `writeboost_tgt` links SPDK and DPDK statically with `--whole-archive` (their module, RPC and
//! subsystem constructors must survive), like `spdk_tgt`, and exports its symbols (`-rdynamic`)
//! so shared plugins can resolve SPDK from it. Other binaries and tests of a `spdk` build link
//! the same archives without whole-archive (only what they reference). The preload library
//! (`spdk/preload`) links no SPDK at all: it resolves SPDK from the host application.
//!
//! The library list comes from SPDK's pkg-config files. With OCF, `spdk_bdev_modules.pc`
//! requires an `spdk_ocfenv.pc` that SPDK does not install; a stub is written to OUT_DIR.

use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGES: &[&str] = &[
    "spdk_event",
    "spdk_event_bdev",
    "spdk_event_nvmf",
    "spdk_event_iscsi",
    "spdk_event_nbd",
    "spdk_env_dpdk_rpc",
    "spdk_sock_modules",
    "spdk_accel_modules",
    "spdk_scheduler_modules",
    "spdk_keyring_modules",
    "spdk_bdev_modules",
    "spdk_syslibs",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    if std::env::var_os("CARGO_FEATURE_SPDK").is_none() {
        return;
    }
    // Check-only build against the bindings' hand-written declarations (WRITEBOOST_SPDK_STUB=1,
    // see spdk/build.rs): nothing links, so there is nothing to link with.
    if std::env::var_os("DEP_SPDK_STUB").is_some() {
        return;
    }
    // Set by writeboost-spdk-sys, which already checked that SPDK is there.
    let spdk = PathBuf::from(
        std::env::var("DEP_SPDK_ROOT").expect("DEP_SPDK_ROOT from writeboost-spdk-sys"),
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let libs = pkg_config_libs(&spdk, &out);
    let (archives, syslibs) = classify(&libs);

    let tgt = |arg: &str| println!("cargo:rustc-link-arg-bin=writeboost_tgt={arg}");
    tgt("-rdynamic");
    tgt("-Wl,--whole-archive");
    archives.iter().for_each(|a| tgt(&a.display().to_string()));
    tgt("-Wl,--no-whole-archive");
    syslibs.iter().for_each(|s| tgt(s));

    // Everything else of a `spdk` build that may reference the module code.
    let others: &[&str] = &["rustc-link-arg-tests", "rustc-link-arg-bin=writeboost"];
    for kind in others {
        let emit = |arg: &str| println!("cargo:{kind}={arg}");
        emit("-Wl,--start-group");
        archives.iter().for_each(|a| emit(&a.display().to_string()));
        emit("-Wl,--end-group");
        syslibs.iter().for_each(|s| emit(s));
    }
}

fn pkg_config_libs(spdk: &Path, out: &Path) -> Vec<String> {
    let pc_stub = out.join("pkgconfig");
    std::fs::create_dir_all(&pc_stub).expect("create OUT_DIR/pkgconfig");
    let lib = spdk.join("build/lib");
    if lib.join("libspdk_ocfenv.a").is_file() && !lib.join("pkgconfig/spdk_ocfenv.pc").is_file() {
        let stub = format!(
            "Name: spdk_ocfenv\nDescription: SPDK OCF environment (stub written by writeboost's build.rs)\nVersion: 1.0\nLibs: -L{} -lspdk_ocfenv\n",
            lib.display()
        );
        std::fs::write(pc_stub.join("spdk_ocfenv.pc"), stub).expect("write spdk_ocfenv.pc");
    }
    let path = [
        lib.join("pkgconfig"),
        spdk.join("dpdk/build/lib/pkgconfig"),
        pc_stub,
    ]
    .iter()
    .map(|p| p.display().to_string())
    .collect::<Vec<_>>()
    .join(":");
    let o = Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", &path)
        .args(["--static", "--libs"])
        .args(PACKAGES)
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run pkg-config: {e}")));
    if !o.status.success() {
        fail(&format!(
            "pkg-config --static --libs {} (PKG_CONFIG_PATH={path}) failed: {}",
            PACKAGES.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// SPDK/DPDK libraries become archive paths (static); everything else stays a system library.
fn classify(libs: &[String]) -> (Vec<PathBuf>, Vec<String>) {
    let dirs: Vec<PathBuf> = libs
        .iter()
        .filter_map(|a| a.strip_prefix("-L"))
        .map(PathBuf::from)
        .collect();
    let mut archives = Vec::new();
    let mut sys = Vec::new();
    for a in libs {
        if a.starts_with("-L") {
            continue;
        }
        if let Some(name) = a
            .strip_prefix("-l")
            .filter(|n| n.starts_with("spdk_") || n.starts_with("rte_"))
        {
            let file = format!("lib{name}.a");
            match dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file()) {
                Some(p) => archives.push(p),
                None => fail(&format!("{file} not found in {dirs:?}")),
            }
        } else {
            sys.push(a.clone());
        }
    }
    (archives, sys)
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(1);
}
