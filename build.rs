//! Builds the test guest (`test-guest/`, a separate cargo project with its
//! own freestanding flags) so that integration tests and benchmarks can boot
//! it: its path is exported as `CORRAL_TEST_GUEST`.
//!
//! It is built in its own target directory with the outer build's flags
//! removed from the environment, since they must not mix.

// A build script reports failure by panicking; cargo shows the message.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn main() {
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
    for var in [
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
    ] {
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
}
