//! Builds the SPDK bindings: bindgen over the installed SPDK headers (`$SPDK_DIR/include`) and a
//! small C shim compiled with `cc`. It links no SPDK library itself: the final artifact decides
//! how SPDK is linked (statically into `writeboost_tgt`, or resolved at load time from the host
//! application for the preload library). The root package's build.rs emits those link flags.

use std::path::{Path, PathBuf};

const SPDK_VERSION_WANTED: &str = "26.05";

/// Set to `1` to build against the hand-written declarations of `src/stub.rs` instead of SPDK's
/// headers (cfg `writeboost_spdk_stub`): for `cargo check`/`clippy` where SPDK is absent.
const STUB_ENV: &str = "WRITEBOOST_SPDK_STUB";

fn spdk_dir() -> PathBuf {
    PathBuf::from(std::env::var("SPDK_DIR").unwrap_or_else(|_| "/opt/spdk".to_string()))
}

fn fail_not_found(dir: &Path) -> ! {
    eprintln!(
        "SPDK not found at {}: install SPDK v{SPDK_VERSION_WANTED} there or set SPDK_DIR \
         (or, to type-check and lint only, set {STUB_ENV}=1: hand-written declarations, \
         nothing links)",
        dir.display()
    );
    std::process::exit(1);
}

/// "26.05" from include/spdk/version.h.
fn spdk_version(include: &Path) -> Option<String> {
    let text = std::fs::read_to_string(include.join("spdk/version.h")).ok()?;
    let field = |name: &str| -> Option<u32> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("#define SPDK_VERSION_{name}")))
            .and_then(|rest| rest.trim().parse().ok())
    };
    Some(format!("{}.{:02}", field("MAJOR")?, field("MINOR")?))
}

fn main() {
    println!("cargo:rustc-check-cfg=cfg(writeboost_spdk_stub)");
    println!("cargo:rerun-if-env-changed={STUB_ENV}");
    println!("cargo:rerun-if-changed=src/stub.rs");
    if std::env::var(STUB_ENV).is_ok_and(|v| v == "1") {
        // Type checking only: no bindgen, no shim. DEP_SPDK_STUB tells dependents' build
        // scripts that there is nothing to link; DEP_SPDK_ROOT is still set (to $SPDK_DIR, which
        // may not exist) for those that do not look at it yet.
        println!("cargo:rustc-cfg=writeboost_spdk_stub");
        println!("cargo:rerun-if-env-changed=SPDK_DIR");
        println!("cargo:root={}", spdk_dir().display());
        println!("cargo:version=stub");
        println!("cargo:stub=1");
        println!("cargo:warning={STUB_ENV}=1: SPDK declarations from spdk/src/stub.rs; for checking only, nothing built this way links");
        return;
    }
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-changed=src/shim.h");
    let dir = spdk_dir();
    let include = dir.join("include");
    if !include.join("spdk/bdev_module.h").is_file()
        || !dir.join("build/lib/libspdk_bdev.a").is_file()
    {
        fail_not_found(&dir);
    }
    let version = spdk_version(&include).unwrap_or_else(|| fail_not_found(&dir));
    if version != SPDK_VERSION_WANTED {
        println!("cargo:warning=SPDK at {} is v{version}; writeboost is built and tested against v{SPDK_VERSION_WANTED}", dir.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        include.join("spdk/version.h").display()
    );
    // Metadata for dependents' build scripts (DEP_SPDK_ROOT, DEP_SPDK_VERSION).
    println!("cargo:root={}", dir.display());
    println!("cargo:version={version}");

    cc::Build::new()
        .file("src/shim.c")
        .include(&include)
        .flag_if_supported("-std=gnu11")
        .define("_GNU_SOURCE", None)
        .warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .compile("writeboost_spdk_shim");

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg(format!("-I{}", include.display()))
        .clang_arg("-I.")
        .clang_arg("-D_GNU_SOURCE")
        .allowlist_function("spdk_.*")
        .allowlist_function("wb_shim_.*")
        .allowlist_type("spdk_.*")
        .allowlist_var("SPDK_.*")
        // Packed structs: never touched from Rust (the shim or the SPDK API handles them).
        .opaque_type("spdk_app_opts")
        .opaque_type("spdk_bdev_ext_io_opts")
        .opaque_type("spdk_nvme_.*")
        .opaque_type("spdk_nvmf_.*")
        .blocklist_item("IPPORT_.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(true)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| {
            eprintln!("bindgen over {}: {e}", include.display());
            std::process::exit(1);
        });
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}
