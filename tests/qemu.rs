//! The test guest is not tuned to Corral: it boots under QEMU microvm with
//! KVM as well, starts both vCPUs and runs its workload on each. QEMU's COM1
//! is port I/O only, which the guest uses only in ring 0 (the banner), so
//! the per-vCPU results are read back from guest RAM (a shared file) after
//! QEMU exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

const RESULTS_ADDR: usize = 0x30_0000;
const ITERATIONS: u64 = 20_000_000;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn test_guest_boots_under_qemu_microvm() {
    let _kvm = common::kvm();
    let qemu = "qemu-system-x86_64";
    if Command::new(qemu).arg("--version").output().is_err() {
        panic!("{qemu} is missing: install Debian's qemu-system-x86 (the README's set-up does)");
    }
    let ram = common::scratch_dir("qemu").join("guest-ram");
    let _ = std::fs::remove_file(&ram);
    let started = Instant::now();
    let child = Command::new(qemu)
        .args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=off,memory-backend=ram",
            "-object",
            &format!(
                "memory-backend-file,id=ram,size=128M,mem-path={},share=on",
                ram.display()
            ),
        ])
        .args(common::QEMU_KVM)
        .args(common::QEMU_BARE)
        .args([
            "-m",
            "128",
            "-smp",
            "2",
            "-serial",
            "stdio",
            "-kernel",
            common::test_guest().to_str().unwrap(),
            "-append",
            &format!("uart=none boot_timer=none poweroff=0xfea00200 iterations={ITERATIONS}"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = common::wait_output_within(child, Duration::from_secs(60), "QEMU");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "QEMU failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("corral-test-guest: booting"), "{stdout}");

    let mem = std::fs::read(&ram).unwrap();
    std::fs::remove_file(&ram).unwrap();
    let r = &mem[RESULTS_ADDR..RESULTS_ADDR + 40 + 2 * 24];
    assert_eq!(&r[0..8], b"CORRALTG", "the guest never reached ring 3");
    let (expected, arrived, done, status) =
        (u32_at(r, 8), u32_at(r, 12), u32_at(r, 16), u32_at(r, 20));
    assert_eq!(expected, 2, "the guest found 2 vCPUs in QEMU's MP table");
    assert_eq!(arrived, 1, "the AP checked in");
    assert_eq!(done, 2, "both vCPUs finished the workload");
    assert_eq!(status, 1, "the guest reported success");
    for cpu in 0..2 {
        let at = 40 + 24 * cpu;
        let (apic, cpu_done, iters, cycles) = (
            u32_at(r, at),
            u32_at(r, at + 4),
            u64_at(r, at + 8),
            u64_at(r, at + 16),
        );
        assert_eq!((apic, cpu_done, iters), (cpu as u32, 1, ITERATIONS));
        eprintln!("QEMU: cpu {cpu} apic {apic}: ran {iters} iterations in {cycles} cycles");
    }
    eprintln!("QEMU microvm run took {} ms", started.elapsed().as_millis());
}

/// Runs QEMU microvm (KVM) with `devices` and the test guest's `workload`,
/// its ring-3 output on a virtio console; returns the console text.
fn qemu_with_devices(workload: &str, devices: &[&str], netns: Option<&str>) -> String {
    let com1 = common::scratch_dir("qemu-dev").join("com1.txt");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
            c
        }
        None => Command::new("qemu-system-x86_64"),
    };
    // acpi=off makes microvm list its virtio-mmio devices on the command
    // line; force-legacy=false selects virtio-mmio version 2 (modern).
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off",
    ])
    .args(common::QEMU_KVM)
    .args(["-m", "128", "-smp", "1"])
    .args(common::QEMU_BARE)
    .args(["-global", "virtio-mmio.force-legacy=false"])
    .arg("-serial")
    .arg(format!("file:{}", com1.display()))
    .args([
        "-chardev",
        "stdio,id=vc",
        "-device",
        "virtio-serial-device",
        "-device",
        "virtconsole,chardev=vc",
    ])
    .args(devices)
    .arg("-kernel")
    .arg(common::test_guest())
    .args([
        "-append",
        &format!("uart=none boot_timer=none poweroff=none workload={workload}"),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd
        .spawn()
        .expect("qemu-system-x86_64 is missing: install qemu-system-x86");
    let out = common::wait_output_within(child, Duration::from_secs(120), "QEMU");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn test_guest_virtio_drivers_pass_against_qemu_devices() {
    let _kvm = common::kvm();
    let dir = common::scratch_dir("qemu-blk");
    let (rw, ro) = (dir.join("rw.img"), dir.join("ro.img"));
    std::fs::File::create(&rw)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    std::fs::File::create(&ro)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let d0 = format!("file={},format=raw,if=none,id=d0", rw.display());
    let d1 = format!("file={},format=raw,if=none,id=d1,readonly=on", ro.display());
    let out = qemu_with_devices(
        "blk",
        &[
            "-drive",
            &d0,
            "-device",
            "virtio-blk-device,drive=d0,serial=qemu-disk",
            "-drive",
            &d1,
            "-device",
            "virtio-blk-device,drive=d1",
        ],
        None,
    );
    assert!(
        out.contains("8192 sectors, serial \"qemu-disk\", read-write"),
        "{out}"
    );
    assert!(out.contains("read back and verified 8192 sectors"), "{out}");
    assert!(
        out.contains("read-only disk refused the write (IOERR); reads work: true"),
        "{out}"
    );
    assert!(out.contains("result: ok"), "{out}");

    let ns = format!("corral-q{}", std::process::id());
    let ip = |args: &[&str]| {
        assert!(
            Command::new("ip").args(args).status().unwrap().success(),
            "ip {args:?}"
        )
    };
    ip(&["netns", "add", &ns]);
    ip(&[
        "netns", "exec", &ns, "ip", "tuntap", "add", "tapq0", "mode", "tap",
    ]);
    ip(&[
        "netns",
        "exec",
        &ns,
        "ip",
        "addr",
        "add",
        "10.0.0.1/24",
        "dev",
        "tapq0",
    ]);
    ip(&["netns", "exec", &ns, "ip", "link", "set", "tapq0", "up"]);
    let out = qemu_with_devices(
        "net",
        &[
            "-netdev",
            "tap,id=n0,ifname=tapq0,script=no,downscript=no",
            "-device",
            "virtio-net-device,netdev=n0,mac=02:00:00:00:00:09",
        ],
        Some(&ns),
    );
    ip(&["netns", "del", &ns]);
    assert!(
        out.contains("net: 50 of 50 pings with 1000-byte payloads echoed intact"),
        "{out}"
    );
    assert!(out.contains("result: ok"), "{out}");
    eprintln!("{out}");
}

/// `sh -c script`, its stdout and stderr piped.
fn sh_piped(script: &str) -> std::process::Child {
    Command::new("sh")
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The helper every reference run waits with: a child that outlives its
/// limit is killed, and the failure shows its threads' states and what it
/// printed (a QEMU that timed out in CI had said nothing at all). A child
/// that prints more than a pipe holds is not blocked by it.
#[test]
fn a_reference_run_past_its_limit_shows_its_threads_and_output() {
    let child = sh_piped("echo reference-started; exec sleep 30");
    let started = Instant::now();
    let panic = std::panic::catch_unwind(|| {
        common::wait_output_within(child, Duration::from_secs(1), "the sleeper")
    })
    .expect_err("a 30 s sleep finished within 1 s");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(started.elapsed() < Duration::from_secs(10), "{message}");
    assert!(
        message.contains("the sleeper did not finish within 1s"),
        "{message}"
    );
    assert!(message.contains("reference-started"), "{message}");
    assert!(message.contains("  sleep S hrtimer_nanosleep"), "{message}");
    // 1 MiB on stdout: more than a pipe holds.
    let child = sh_piped("head -c 1048576 /dev/zero");
    let out = common::wait_output_within(child, Duration::from_secs(20), "head");
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 1 << 20);
}
