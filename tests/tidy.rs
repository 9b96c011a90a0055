//! Tidy: patterns the project bans, checked over its own sources (no SPDK needed).
//! - `unsafe` code only in the SPDK glue (src/bdev/) and the bindings (spdk/);
//! - `unsafe impl Send`/`Sync` only in the FFI file (src/bdev/ffi.rs) and the bindings;
//! - no `as *const i8` / `as *mut i8` casts (C strings are `c_char`, which is not i8 everywhere);
//! - no source file in src/engine or src/bdev over 600 lines;
//! - every file of the SPDK glue (src/bdev/) opens with a `//!` comment saying what it owns;
//! - in the glue, an errno is chosen only in src/bdev/error.rs (`Error::errno`): elsewhere an
//!   errno constant may only be compared with a return code SPDK gave.
//!
//! It also compiles the glue's pure-Rust parts, which need no SPDK, and runs their unit tests
//! here, so that they run in every `cargo test` (the glue itself needs the `spdk` feature): the
//! lock-free I/O queues of `src/bdev/io/queue.rs`.

#[path = "../src/bdev/io/queue.rs"]
#[allow(dead_code)]
mod bdev_io_queue;

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a line: without a `//` comment (string contents are not parsed; none of the
/// banned patterns appears in a string literal of this project).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn has_unsafe_keyword(code: &str) -> bool {
    let mut rest = code;
    while let Some(i) = rest.find("unsafe") {
        let before = rest[..i].chars().last();
        let after = rest[i + 6..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !ident(before) && !ident(after) {
            return true;
        }
        rest = &rest[i + 6..];
    }
    false
}

#[test]
fn banned_patterns_are_absent() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in ["src", "spdk", "tests", "bench", "fuzz", "mutations"] {
        rust_files(&root.join(d), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut bad = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "tests/tidy.rs" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let glue = rel.starts_with("src/bdev/") || rel.starts_with("spdk/");
        let ffi = rel == "src/bdev/ffi.rs" || rel.starts_with("spdk/");
        for (n, line) in text.lines().enumerate() {
            let c = code(line);
            let at = format!("{rel}:{}: {}", n + 1, line.trim());
            if has_unsafe_keyword(c) && !glue {
                bad.push(format!("unsafe outside src/bdev and spdk/: {at}"));
            }
            let t = c.split_whitespace().collect::<Vec<_>>().join(" ");
            if t.contains("unsafe impl")
                && (t.contains("Send for") || t.contains("Sync for"))
                && !ffi
            {
                bad.push(format!(
                    "unsafe impl Send/Sync outside src/bdev/ffi.rs: {at}"
                ));
            }
            let errno_const = t.contains("libc::E");
            if rel.starts_with("src/bdev/")
                && rel != "src/bdev/error.rs"
                && errno_const
                && !(t.contains("==") || t.contains("!="))
            {
                bad.push(format!(
                    "errno chosen outside src/bdev/error.rs (add an Error variant): {at}"
                ));
            }
            if t.contains("as *const i8") || t.contains("as *mut i8") {
                bad.push(format!("cast to i8 pointer (use c_char): {at}"));
            }
        }
        let limited = rel.starts_with("src/engine/") || rel.starts_with("src/bdev/");
        if limited && text.lines().count() > 600 {
            bad.push(format!(
                "{rel}: {} lines (at most 600)",
                text.lines().count()
            ));
        }
    }
    assert!(bad.is_empty(), "banned patterns:\n{}", bad.join("\n"));
}

#[test]
fn glue_files_say_what_they_own() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/bdev"), &mut files);
    assert!(files.len() > 10, "found only {} files", files.len());
    let bad: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        bad.is_empty(),
        "files without a leading //! comment: {bad:?}"
    );
}

#[test]
fn the_checker_sees_what_it_bans() {
    assert!(has_unsafe_keyword("    unsafe { f() }"));
    assert!(has_unsafe_keyword("unsafe fn g()"));
    assert!(!has_unsafe_keyword("fn newest_unsafe_copy()"));
    assert!(!has_unsafe_keyword("let unsafely = 1;"));
    assert_eq!(code("let x = 1; // unsafe"), "let x = 1; ");
}
