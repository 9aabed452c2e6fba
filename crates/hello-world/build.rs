//! Links the server with the functions it runs from exec to its first answers placed together
//! (`layout/<target>.order`, written by `cargo xtask layout`).
//!
//! Why: the kernel maps a program's file pages 64 KiB at a time around each page it touches
//! (fault-around), so code that a start touches here and there across the binary ends up
//! resident nearly whole. Packed together, half as many of the binary's pages stay resident, and
//! those are most of the idle RSS (bench/RESULTS.md). The order only moves functions: what runs
//! is the same, and a function missing from the file (new or renamed since it was written) is
//! simply placed after the others.
//!
//! Both targets link with the LLD that ships with the Rust toolchain, which reads the order
//! file; it is already the default linker for x86_64 glibc builds. The static musl build also
//! packs its relative relocations (`DT_RELR`, which its own startup code applies): 1 KiB instead
//! of 100 KiB read at every start. The glibc build does not, as that would need glibc 2.36 where
//! it runs.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let order = manifest_dir.join("layout").join(format!("{target}.order"));
    println!("cargo::rerun-if-changed={}", order.display());
    if !order.exists() || env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let Some(gcc_ld) = toolchain_lld_dir() else {
        println!("cargo::warning=no rust-lld in the toolchain: linking without the code layout");
        return;
    };
    let link_arg = |arg: &str| println!("cargo::rustc-link-arg-bins={arg}");
    link_arg(&format!("-B{}", gcc_ld.display()));
    link_arg("-fuse-ld=lld");
    link_arg(&format!("-Wl,--symbol-ordering-file={}", order.display()));
    // Functions the file names but this build lacks (another build mode, renamed code) are
    // expected; they are not worth a warning each.
    link_arg("-Wl,--no-warn-symbol-ordering");
    if env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl") {
        link_arg("-Wl,-z,pack-relative-relocs");
    }
}

/// The toolchain's `gcc-ld` directory: an `ld.lld` there runs the toolchain's own `rust-lld`,
/// as rustc does for its default glibc link.
fn toolchain_lld_dir() -> Option<PathBuf> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    let host = env::var("HOST").ok()?;
    let dir = sysroot.join("lib/rustlib").join(host).join("bin/gcc-ld");
    dir.join("ld.lld").exists().then_some(dir)
}
