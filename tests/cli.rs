//! `corral run` end to end: exit statuses, the console on stdout, one-line
//! reasons on stderr, and a clear `--help`; and the container mode
//! (`--rootfs IMAGE -- CMD`) on the paths that need no Linux user space (a
//! guest without the agent ends the run with a reason; bad usage is named).
//! The container itself runs in `tests/agent_vm.rs` (nested lane).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn corral(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .output()
        .unwrap()
}

fn run_guest(cmdline: &str, cpus: &str) -> Output {
    let guest = common::test_guest();
    corral(&[
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--cpus",
        cpus,
        "--cmdline",
        cmdline,
    ])
}

#[test]
fn help_explains_run() {
    let out = corral(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("micro-VM"), "{help}");
    assert!(help.contains("run"), "{help}");
    let out = corral(&["run", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--kernel", "--initrd", "--cmdline", "--cpus", "--memory"] {
        assert!(help.contains(flag), "run --help lacks {flag}:\n{help}");
    }
    assert_eq!(corral(&["run", "--bogus"]).status.code(), Some(2));
}

#[test]
fn power_off_exits_zero_with_the_console_on_stdout() {
    let _kvm = common::kvm();
    let out = run_guest("workload=spin iterations=1000000", "2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("corral-test-guest: booting"), "{stdout}");
    assert!(
        stdout.contains("result: ok, 2 vCPUs ran guest code"),
        "{stdout}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn reset_and_crash_exit_non_zero_with_one_line() {
    let _kvm = common::kvm();
    for (cmdline, code, needle) in [
        ("r0=reset", 3, "the guest asked for a reset"),
        ("r0=triplefault", 4, "guest crashed on vcpu0: triple fault"),
    ] {
        let out = run_guest(cmdline, "1");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{cmdline}: {stderr}");
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one line on stderr: {stderr}");
        assert!(
            lines[0].starts_with("corral: ") && lines[0].contains(needle),
            "{stderr}"
        );
    }
}

#[test]
fn a_stalled_console_reader_does_not_stop_shutdown() {
    let _kvm = common::kvm();
    let guest = common::test_guest();
    // stdout is a pipe nobody reads while the guest prints without end.
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args([
            "run",
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "workload=flood",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(child.try_wait().unwrap().is_none(), "corral exited early");
    // SAFETY: kill(2) on our own child's PID, which is still ours to reap.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if asked.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("corral did not stop within 10 s of SIGTERM with a stalled console reader");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(130));
    eprintln!(
        "SIGTERM → exit with a stalled reader: {} ms",
        asked.elapsed().as_millis()
    );
}

fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

/// A 1 MiB file of zeros to pass as --rootfs (no filesystem: these runs
/// never get as far as mounting it).
fn blank_image(name: &str) -> std::path::PathBuf {
    let image = common::scratch_dir(name).join("rootfs.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    image
}

#[test]
fn a_guest_without_the_agent_ends_the_run_with_a_reason() {
    let _kvm = common::kvm();
    let guest = common::test_guest();
    let image = blank_image("container-cli");
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
        one_line_error(&out).contains("give --image PATH or --rootfs DISK"),
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

#[test]
fn a_signal_during_a_container_run_ends_it_with_130() {
    let _kvm = common::kvm();
    let guest = common::test_guest();
    let image = blank_image("container-signal");
    // The test guest hangs and has no agent: Corral is still waiting for it.
    let child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args([
            "run",
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "workload=hang",
        ])
        .arg("--rootfs")
        .arg(&image)
        .args(["--", "true"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill with a pid we own and a valid signal.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let err = one_line_error(&out);
    assert!(err.contains("host"), "{err}");
}
