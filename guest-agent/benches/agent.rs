//! Figures for the guest agent, on this machine: the release agent binary as
//! PID 1 of fresh namespaces behind the hybrid-vsock proxy (the host-process
//! fixture of `tests/support`), driven by the runtime's client.
//!
//! - container cycle (create, start, read output, wait, remove) with the
//!   rootfs as ext4 vs squashfs + tmpfs overlay: the format choice;
//! - exec round trip (ExecProcess + WaitProcess of `true`);
//! - stdout throughput for ReadStdout sizes of 64 KiB and 1 MiB;
//! - the peer: Debian's runc running the same `echo hi` from the same
//!   busybox tree (`runc run`, a bundle with `runc spec`'s config), on
//!   this machine in the same run.
//!
//! `cargo bench -p corral-agent --bench agent` (root; needs mkfs.ext4,
//! mksquashfs, losetup, unshare). Prints medians, mins and maxes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use corral_runtime::agent::{AgentClient, Storage};
use support::scenarios::{process, read_all, spec};
use support::*;

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "median {:>9.3?}  min {:>9.3?}  max {:>9.3?}  (n={})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1],
        v.len()
    )
}

async fn cycle(c: &AgentClient, storage: &Storage, n: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for i in 0..n {
        let id = format!("cycle{i}");
        let started = Instant::now();
        c.create_container(&id, &spec(&["echo", "hi"], false, "b", ""), storage.clone())
            .await
            .unwrap();
        c.start(&id).await.unwrap();
        assert_eq!(read_all(c, &id, "", false).await, b"hi\n");
        assert_eq!(c.wait(&id, "").await.unwrap().status, 0);
        c.remove(&id).await.unwrap();
        times.push(started.elapsed());
    }
    times
}

async fn throughput(c: &AgentClient, storage: &Storage, len: u32) -> f64 {
    let size = 64usize << 20;
    let script = format!("head -c {size} /dev/zero");
    c.create_container(
        "tp",
        &spec(&["sh", "-c", &script], false, "b", ""),
        storage.clone(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    c.start("tp").await.unwrap();
    let mut got = 0usize;
    while let Some(chunk) = c.read_output("tp", "", false, len).await.unwrap() {
        got += chunk.len();
    }
    let took = started.elapsed();
    assert_eq!(got, size);
    c.wait("tp", "").await.unwrap();
    c.remove("tp").await.unwrap();
    size as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

/// `runc run` of `echo hi` from the busybox tree `n` times.
fn runc_cycles(dir: &std::path::Path, n: usize) -> Vec<Duration> {
    let bundle = dir.join("runc-bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle).unwrap();
    image::run(
        Command::new("cp")
            .arg("-a")
            .arg(dir.join("rootfs-src"))
            .arg(bundle.join("rootfs")),
    );
    image::run(Command::new("runc").args(["spec"]).current_dir(&bundle));
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(["echo", "hi"]);
    std::fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    let mut times = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let out = image::run(
            Command::new("runc")
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(format!("corral-bench-{}-{i}", std::process::id())),
        );
        times.push(started.elapsed());
        assert_eq!(out, "hi\n");
    }
    times
}

fn main() {
    // `cargo bench` passes filter arguments; this bench has one group.
    let dir = scratch("bench");
    let t = Instant::now();
    let ext4 = image::busybox_ext4(&dir);
    let ext4_build = t.elapsed();
    let t = Instant::now();
    let squashfs = image::busybox_squashfs(&dir);
    let squashfs_build = t.elapsed();
    let attach = |path: &std::path::Path| {
        let dev = image::run(Command::new("losetup").args(["-f", "--show"]).arg(path));
        dev.trim().to_string()
    };
    let ext4_dev = attach(&ext4);
    let squashfs_dev = attach(&squashfs);
    let agent = Agent::start(&dir, "1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = agent.client().await;
        let mut ext4_storage = Storage::new();
        ext4_storage.device = ext4_dev.clone();
        let mut squashfs_storage = Storage::new();
        squashfs_storage.device = squashfs_dev.clone();
        cycle(&c, &ext4_storage, 5).await;
        cycle(&c, &squashfs_storage, 5).await;
        println!("rootfs images of the same busybox tree:");
        println!(
            "  ext4      {:>8} bytes on disk, built in {ext4_build:.3?} (mkfs.ext4 -d, 64 MiB image)",
            std::fs::metadata(&ext4).unwrap().len()
        );
        println!(
            "  squashfs  {:>8} bytes, built in {squashfs_build:.3?} (mksquashfs, gzip)",
            std::fs::metadata(&squashfs).unwrap().len()
        );
        // Alternate the formats, 10 cycles at a time.
        let (mut e, mut s) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            e.extend(cycle(&c, &ext4_storage, 10).await);
            s.extend(cycle(&c, &squashfs_storage, 10).await);
        }
        println!("container cycle (create, start, output, wait, remove):");
        println!("  ext4                      {}", stats(e));
        println!("  squashfs + tmpfs overlay  {}", stats(s));
        c.create_container("rt", &spec(&["sleep", "1000"], false, "b", ""), ext4_storage.clone())
            .await
            .unwrap();
        c.start("rt").await.unwrap();
        let mut times = Vec::new();
        for i in 0..200 {
            let id = format!("x{i}");
            let started = Instant::now();
            c.exec("rt", &id, &process(&["true"], false)).await.unwrap();
            assert_eq!(c.wait("rt", &id).await.unwrap().status, 0);
            times.push(started.elapsed());
        }
        c.remove("rt").await.unwrap();
        println!("exec round trip (ExecProcess + WaitProcess of `true`): {}", stats(times));
        for len in [64u32 << 10, 1 << 20] {
            let mibs: Vec<f64> = {
                let mut v = Vec::new();
                for _ in 0..3 {
                    v.push(throughput(&c, &ext4_storage, len).await);
                }
                v
            };
            println!(
                "stdout throughput, ReadStdout of up to {:>4} KiB: {:.0} / {:.0} / {:.0} MiB/s (3 runs of 64 MiB)",
                len >> 10,
                mibs[0],
                mibs[1],
                mibs[2]
            );
        }
        println!("peer, runc run (same tree, echo hi, no VM): {}", stats(runc_cycles(&dir, 50)));
        let size = std::fs::metadata(support::AGENT).unwrap().len();
        println!("agent binary used here: {size} bytes ({})", support::AGENT);
    });
    drop(agent);
    for dev in [ext4_dev, squashfs_dev] {
        let _ = Command::new("losetup").arg("-d").arg(dev).status();
    }
}
