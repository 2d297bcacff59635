//! virtio-blk, virtio-net and virtio-vsock exercised for real: the test
//! guest's own drivers (ring 3, MMIO, polling) against Corral's devices on
//! /dev/kvm, with the host side checked independently (the disk file, the
//! host network stack in a namespace, Unix-socket peers).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_vmm::{DiskConfig, VmExit, Vmm, VsockConfig};

const PATTERN_SEED: u64 = 0x434f_5252_414c_0000;

/// Whether `path` holds the test guest's pattern in every sector.
fn pattern_mismatch(path: &Path) -> Option<u64> {
    let data = std::fs::read(path).unwrap();
    for (s, sector) in data.chunks_exact(512).enumerate() {
        for (w, word) in sector.chunks_exact(8).enumerate() {
            let want = PATTERN_SEED ^ ((s as u64) << 32) ^ w as u64;
            if word != want.to_le_bytes() {
                return Some(s as u64);
            }
        }
    }
    None
}

fn sparse_file(path: &Path, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
}

#[test]
fn blk_pattern_flush_get_id_and_read_only() {
    let _kvm = common::kvm();
    let dir = common::scratch_dir("blk");
    let (rw, ro) = (dir.join("rw.img"), dir.join("ro.img"));
    sparse_file(&rw, 4 << 20);
    std::fs::write(&ro, vec![0x5a; 1 << 20]).unwrap();
    let (mut config, console) = common::guest_config(1, "workload=blk");
    config.disks = vec![
        DiskConfig {
            path: rw.clone(),
            read_only: false,
            serial: Some("data-disk".into()),
            cache: Default::default(),
        },
        DiskConfig {
            path: ro.clone(),
            read_only: true,
            serial: None,
            cache: Default::default(),
        },
    ];
    let mut vmm = Vmm::boot(config).unwrap();
    let exit = vmm.wait_timeout(Some(Duration::from_secs(120)));
    let out = console.text();
    assert_eq!(exit, Some(VmExit::PowerOff), "{out}");
    for line in [
        "blk 0: 8192 sectors, serial \"data-disk\", read-write",
        "blk 0: read back and verified 8192 sectors; out-of-range read refused",
        "blk 1: 2048 sectors, serial \"ro.img\", read-only",
        "blk 1: read-only disk refused the write (IOERR); reads work: true",
        "result: ok",
    ] {
        assert!(out.contains(line), "missing `{line}`:\n{out}");
    }
    drop(vmm);
    assert_eq!(
        pattern_mismatch(&rw),
        None,
        "the host file lacks the guest's pattern"
    );
    assert!(
        std::fs::read(&ro).unwrap().iter().all(|b| *b == 0x5a),
        "the read-only disk changed"
    );
}

#[test]
fn a_completed_flush_survives_killing_the_vmm() {
    let _kvm = common::kvm();
    let dir = common::scratch_dir("flush");
    let disk = dir.join("disk.img");
    sparse_file(&disk, 8 << 20);
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["run", "--kernel", common::test_guest().to_str().unwrap()])
        .args([
            "--disk",
            disk.to_str().unwrap(),
            "--cmdline",
            "workload=blk",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let started = Instant::now();
    // SIGKILL the moment the guest reports its FLUSH completed.
    while !String::from_utf8_lossy(&seen).contains("and flushed") {
        assert!(started.elapsed() < Duration::from_secs(60), "no flush line");
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "corral exited early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        pattern_mismatch(&disk),
        None,
        "flushed data missing after the VMM was killed"
    );
}

#[test]
fn net_talks_to_the_host_stack_in_a_namespace() {
    let _kvm = common::kvm();
    let ns = format!("corral-t{}", std::process::id());
    let run = |args: &[&str]| {
        let st = Command::new("ip")
            .args(args)
            .status()
            .expect("ip (iproute2) is missing");
        assert!(st.success(), "ip {args:?} failed");
    };
    run(&["netns", "add", &ns]);
    let netns = |args: &[&str]| {
        let mut full = vec!["netns", "exec", &ns, "ip"];
        full.extend_from_slice(args);
        run(&full);
    };
    netns(&["tuntap", "add", "tapt0", "mode", "tap"]);
    netns(&["addr", "add", "10.0.0.1/24", "dev", "tapt0"]);
    netns(&["link", "set", "tapt0", "up"]);
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_corral"), "run"])
        .args(["--kernel", common::test_guest().to_str().unwrap()])
        .args([
            "--net",
            "tapt0,mac=02:00:00:00:00:07",
            "--cmdline",
            "workload=net",
        ])
        .output()
        .unwrap();
    run(&["netns", "del", &ns]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "net: MAC 02:00:00:00:00:07",
        "net: ARP: 10.0.0.1 is at ",
        "net: 50 of 50 pings with 1000-byte payloads echoed intact",
        "result: ok",
    ] {
        assert!(stdout.contains(line), "missing `{line}`:\n{stdout}");
    }
}

/// CRC-32 (IEEE), as the guest computes it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[test]
fn vsock_streams_both_ways_and_refusals() {
    let _kvm = common::kvm();
    let dir = common::scratch_dir("vsock");
    let uds = dir.join("v.sock");
    let echo = UnixListener::bind(format!("{}_6000", uds.display())).unwrap();
    std::thread::spawn(move || {
        for conn in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    const MIB: usize = 16;
    const STREAMS: usize = 3;
    let (mut config, console) = common::guest_config(
        1,
        &format!("workload=vsock stream_mib={MIB} streams={STREAMS}"),
    );
    config.vsock = Some(VsockConfig {
        cid: 3,
        uds_path: uds.clone(),
    });
    let mut vmm = Vmm::boot(config).unwrap();
    assert!(
        console.wait_for("listening on port 5000", Duration::from_secs(120)),
        "{}",
        console.text()
    );
    let clients: Vec<_> = (0..STREAMS)
        .map(|k| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&uds).unwrap();
                s.write_all(b"CONNECT 5000\n").unwrap();
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while !line.ends_with(b"\n") {
                    s.read_exact(&mut b).unwrap();
                    line.push(b[0]);
                }
                let data: Vec<u8> = (0..MIB << 20)
                    .map(|i| (i * 31 + k * 7 + i / 4099) as u8)
                    .collect();
                let mut reader = s.try_clone().unwrap();
                let rx = std::thread::spawn(move || {
                    let mut got = Vec::with_capacity(MIB << 20);
                    reader.read_to_end(&mut got).unwrap();
                    got
                });
                s.write_all(&data).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let got = rx.join().unwrap();
                (
                    String::from_utf8(line).unwrap(),
                    data.len(),
                    got.len(),
                    crc32(&data),
                    crc32(&got),
                )
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let exit = vmm.wait_timeout(Some(Duration::from_secs(120)));
    let out = console.text();
    assert_eq!(exit, Some(VmExit::PowerOff), "{out}");
    assert!(
        out.contains("connection to host port 7777 refused with RST"),
        "{out}"
    );
    assert_eq!(out.matches(", crc32 ").count(), 2 * STREAMS, "{out}");
    assert!(!out.contains("MISMATCH"), "{out}");
    assert!(out.contains("result: ok"), "{out}");
    for (line, sent, got, crc_sent, crc_got) in results {
        assert!(line.starts_with("OK "), "{line}");
        assert_eq!(
            (got, crc_got),
            (sent, crc_sent),
            "host→guest echo corrupted"
        );
    }
}
