//! Builds the test guest (`test-guest/`, a separate cargo project with its
//! own freestanding flags) so that integration tests and benchmarks can boot
//! it: its path is exported as `CORRAL_TEST_GUEST`.
//!
//! It is built in its own target directory with the outer build's flags
//! removed from the environment, since they must not mix.
//!
//! With the `embedded-guest` feature it also finds the guest that `corral`
//! carries inside itself: `guest-kernel/build.sh`'s bzImage and
//! `rootfs/build.sh --gzip`'s initramfs (both cached outside the tree, so
//! this is quick once built), or the files named by `CORRAL_EMBED_KERNEL`
//! and `CORRAL_EMBED_INITRD`. Their paths are exported as
//! `CORRAL_EMBEDDED_KERNEL` and `CORRAL_EMBEDDED_INITRD` for
//! `include_bytes!`.

// A build script reports failure by panicking; cargo shows the message.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Variables of the outer build that must not reach a nested cargo.
const OUTER_BUILD_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PROFILE_RELEASE_DEBUG",
    "CARGO_PROFILE_RELEASE_LTO",
    "CARGO_PROFILE_RELEASE_PANIC",
];

fn main() {
    // Relative relocations packed (RELR, glibc 2.36+, binutils 2.38+): the
    // dynamic loader reads a few KiB of bitmap instead of ~580 KiB of
    // `.rela.dyn` entries at every start, which shows in peak RSS.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let guest = root.join("test-guest");
    for item in [
        "src",
        "Cargo.toml",
        "build.rs",
        "link.ld",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest.join(item).display());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = guest.join("target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest)
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(&target_dir);
    for var in OUTER_BUILD_VARS {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the test guest");
    assert!(
        status.success(),
        "building the test guest (test-guest/) failed"
    );
    let elf = target_dir.join("release").join("corral-test-guest");
    println!("cargo:rustc-env=CORRAL_TEST_GUEST={}", elf.display());
    if std::env::var_os("CARGO_FEATURE_EMBEDDED_GUEST").is_some() {
        embed_guest(&root);
    }
}

/// Finds (building if not cached) the guest to embed.
fn embed_guest(root: &Path) {
    for var in [
        "CORRAL_EMBED_KERNEL",
        "CORRAL_EMBED_INITRD",
        "CORRAL_CACHE_DIR",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // The scripts key their caches by these inputs; a change must rerun
    // them to pick up the new outputs.
    for input in [
        "guest-kernel",
        "rootfs",
        "guest-agent/src",
        "guest-agent/Cargo.toml",
        "guest-tools/src",
        "guest-tools/Cargo.toml",
        "shared-protocol",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    let kernel = match std::env::var_os("CORRAL_EMBED_KERNEL") {
        Some(path) => PathBuf::from(path),
        None => script_output(root, "guest-kernel/build.sh", &[]).join("bzImage"),
    };
    let initrd = match std::env::var_os("CORRAL_EMBED_INITRD") {
        Some(path) => PathBuf::from(path),
        None => script_output(root, "rootfs/build.sh", &["--gzip"]),
    };
    for file in [&kernel, &initrd] {
        assert!(
            file.is_file(),
            "embedded guest: {} is not a file",
            file.display()
        );
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!(
        "cargo:rustc-env=CORRAL_EMBEDDED_KERNEL={}",
        kernel.display()
    );
    println!(
        "cargo:rustc-env=CORRAL_EMBEDDED_INITRD={}",
        initrd.display()
    );
}

/// Runs one of the guest build scripts; its last stdout line is its output.
fn script_output(root: &Path, script: &str, args: &[&str]) -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(root.join(script)).args(args).current_dir(root);
    for var in OUTER_BUILD_VARS {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim();
    assert!(!last.is_empty(), "{script} printed no output path");
    PathBuf::from(last)
}
