//! `corral run --rootfs IMAGE -- CMD` on this machine: the paths that need
//! no Linux user space. A guest without the agent (the test guest) ends the
//! run with a clear reason instead of a wait; bad usage is named. The
//! container itself runs in `tests/agent_vm.rs` (nested lane).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn corral(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .output()
        .unwrap()
}

fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn a_guest_without_the_agent_ends_the_run_with_a_reason() {
    let _kvm = common::kvm();
    let guest = common::test_guest();
    let dir = common::scratch_dir("container-cli");
    let image = dir.join("rootfs.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let started = Instant::now();
    let out = corral(&[
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline",
        "workload=boot",
        "--rootfs",
        image.to_str().unwrap(),
        "--",
        "echo",
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = one_line_error(&out);
    assert!(
        err.contains("before its guest agent answered") && err.contains("rootfs/build.sh"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        out.stdout.is_empty(),
        "the guest console must not mix with the container's output"
    );
    // The vsock socket it made for the agent is gone.
    let tmp = std::env::temp_dir();
    let pattern = "corral-".to_string();
    let leftover = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&pattern) && n.ends_with(".vsock")
        })
        .count();
    assert_eq!(leftover, 0, "vsock sockets left in {}", tmp.display());
}

#[test]
fn container_usage_errors_are_named() {
    let guest = common::test_guest();
    let g = guest.to_str().unwrap();
    let out = corral(&[
        "run",
        "--kernel",
        g,
        "--rootfs",
        "/nonexistent/img",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        one_line_error(&out).contains("--rootfs /nonexistent/img"),
        "{out:?}"
    );
    let out = corral(&["run", "--kernel", g, "--rootfs", g]);
    assert!(
        one_line_error(&out).contains("needs the container's command after `--`"),
        "{out:?}"
    );
    let out = corral(&["run", "--kernel", g, "--", "true"]);
    assert!(
        one_line_error(&out).contains("give --rootfs IMAGE"),
        "{out:?}"
    );
    let out = corral(&[
        "run", "--kernel", g, "--rootfs", g, "--env", "NOEQUALS", "--", "true",
    ]);
    assert!(
        one_line_error(&out).contains("\"NOEQUALS\" is not KEY=VALUE"),
        "{out:?}"
    );
}
