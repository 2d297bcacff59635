//! `corral run` end to end: exit statuses, the console on stdout, one-line
//! reasons on stderr, and a clear `--help`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

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
        let reason: Vec<_> = stderr
            .lines()
            .filter(|l| l.starts_with("corral: "))
            .collect();
        assert_eq!(reason.len(), 1, "{stderr}");
        assert!(reason[0].contains(needle), "{stderr}");
    }
}
