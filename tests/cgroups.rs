//! Cgroup placement of a real VM's threads, on this machine's real cgroup
//! files (v1 hierarchies and the cgroup2 mount), beneath the cgroups this
//! process is already in: the vCPU threads `Vmm::create` reports go to the
//! sandbox cgroup before any guest code runs, every other thread of the
//! process to the overhead cgroup; a CPU quota holds; teardown leaves
//! nothing.
//!
//! The `v2_` tests and the `pure_v2_` ones run again inside the nested
//! lane's L1, a pure cgroup v2 host laid out as systemd does, through
//! [`lane_pure_cgroup_v2`]; the `pure_v2_` ones only run there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/nested/mod.rs"]
mod nested;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use corral_runtime::cgroup::{CgroupConfig, CgroupVersion, PlacementMode, Sandbox};
use corral_vmm::{VmExit, Vmm};

use common::ids;

fn process_threads() -> BTreeSet<i32> {
    common::threads().into_keys().collect()
}

fn require_cgroups() {
    assert!(
        Path::new("/sys/fs/cgroup/cpu/tasks").exists()
            || Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists()
            || Path::new("/sys/fs/cgroup/cgroup.procs").exists(),
        "these tests need the cgroup hierarchies mounted under /sys/fs/cgroup (and root)"
    );
}

fn cg_config(mode: PlacementMode, version: CgroupVersion, tag: &str) -> CgroupConfig {
    let mut c = CgroupConfig::new(format!("corral-test-{tag}-{}", std::process::id()));
    c.mode = mode;
    c.version = Some(version);
    c.pin_vcpus = false;
    c
}

/// Asserts the split placement in every hierarchy of `sandbox`.
fn assert_split(sandbox: &Sandbox, vcpus: &BTreeSet<i32>) {
    let others: BTreeSet<i32> = process_threads().difference(vcpus).copied().collect();
    let file = if sandbox.version() == CgroupVersion::V2 {
        "cgroup.threads"
    } else {
        "tasks"
    };
    for h in sandbox.paths().hierarchies {
        assert_eq!(
            &ids(&h.sandbox.join(file)),
            vcpus,
            "{}: sandbox cgroup holds exactly the vCPU threads",
            h.name
        );
        let overhead = h
            .overhead
            .as_ref()
            .expect("split mode has an overhead cgroup");
        assert_eq!(
            ids(&overhead.join(file)),
            others,
            "{}: overhead cgroup holds every other thread",
            h.name
        );
    }
}

/// Tears `sandbox` down and checks every directory it created is gone.
fn teardown_and_check(sandbox: &mut Sandbox) {
    let created: Vec<_> = sandbox
        .paths()
        .hierarchies
        .into_iter()
        .flat_map(|h| h.created)
        .collect();
    sandbox.teardown().unwrap();
    for dir in created {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

fn run_split(version: CgroupVersion) {
    let _kvm = common::kvm();
    require_cgroups();
    let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let (config, console) = common::guest_config(2, "workload=hang");
    let mut vmm = Vmm::create(config).unwrap();
    let vcpus: BTreeSet<i32> = vmm.vcpu_tids().into_iter().collect();
    let mut sandbox = Sandbox::create(&cg_config(PlacementMode::Split, version, "split")).unwrap();
    let report = sandbox.place(&vmm.vcpu_tids(), &vmm.other_tids()).unwrap();
    // Placed before any guest code ran.
    assert_eq!(console.text(), "");
    assert_split(&sandbox, &vcpus);
    vmm.start();
    assert!(
        console.wait_for("spinning on every vCPU", Duration::from_secs(30)),
        "{}",
        console.text()
    );
    // Still exact with the guest running (the kernel's KVM workers included).
    assert_split(&sandbox, &vcpus);
    let stats = sandbox.stats().unwrap();
    vmm.shutdown_handle().request();
    assert_eq!(vmm.wait(), VmExit::HostShutdown);
    drop(vmm);
    teardown_and_check(&mut sandbox);
    assert_eq!(
        std::fs::read_to_string("/proc/self/cgroup").unwrap(),
        before,
        "threads went back home"
    );
    eprintln!(
        "{version:?} split: vCPU placement {:?} µs; stats while spinning {stats:?}",
        report.vcpu_latencies_us()
    );
}

#[test]
fn v1_split_places_real_vcpu_threads() {
    run_split(CgroupVersion::V1);
}

#[test]
fn v2_split_places_real_vcpu_threads() {
    run_split(CgroupVersion::V2);
}

#[test]
fn v1_sandbox_only_places_the_whole_process() {
    let _kvm = common::kvm();
    require_cgroups();
    let (config, _console) = common::guest_config(2, "workload=hang");
    let vmm = Vmm::create(config).unwrap();
    let mut sandbox = Sandbox::create(&cg_config(
        PlacementMode::SandboxOnly,
        CgroupVersion::V1,
        "only",
    ))
    .unwrap();
    sandbox.place(&vmm.vcpu_tids(), &vmm.other_tids()).unwrap();
    let all = process_threads();
    for h in sandbox.paths().hierarchies {
        assert_eq!(
            ids(&h.sandbox.join("tasks")),
            all,
            "{}: the whole process",
            h.name
        );
        assert!(h.overhead.is_none());
    }
    vmm.start();
    drop(vmm);
    teardown_and_check(&mut sandbox);
}

#[test]
fn systemd_form_path_without_systemd_falls_back_to_cgroupfs() {
    let _kvm = common::kvm();
    require_cgroups();
    let (config, _console) = common::guest_config(1, "workload=hang");
    let vmm = Vmm::create(config).unwrap();
    let mut c = cg_config(PlacementMode::Split, CgroupVersion::V1, "systemd");
    c.parent = format!("corral-test.slice:corral:t{}", std::process::id());
    let mut sandbox = Sandbox::create(&c).unwrap();
    assert!(
        sandbox.driver().fallback.is_some(),
        "{:?}",
        sandbox.driver()
    );
    sandbox.place(&vmm.vcpu_tids(), &vmm.other_tids()).unwrap();
    assert_split(&sandbox, &vmm.vcpu_tids().into_iter().collect());
    drop(vmm);
    teardown_and_check(&mut sandbox);
    eprintln!("fallback: {:?}", sandbox.driver());
}

fn cpuacct_usage_ns(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("cpuacct.usage"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_half_cpu_quota_holds_for_spinning_vcpus() {
    let _kvm = common::kvm();
    require_cgroups();
    let (config, console) = common::guest_config(2, "workload=hang");
    let mut vmm = Vmm::create(config).unwrap();
    let mut c = cg_config(PlacementMode::Split, CgroupVersion::V1, "quota");
    c.cpu_quota = Some(0.5);
    let mut sandbox = Sandbox::create(&c).unwrap();
    sandbox.place(&vmm.vcpu_tids(), &vmm.other_tids()).unwrap();
    vmm.start();
    assert!(
        console.wait_for("spinning on every vCPU", Duration::from_secs(30)),
        "{}",
        console.text()
    );
    let paths = sandbox.paths();
    let acct = paths
        .hierarchies
        .iter()
        .find(|h| h.sandbox.join("cpuacct.usage").exists())
        .expect("a cpuacct hierarchy");
    let cpu = paths
        .hierarchies
        .iter()
        .find(|h| h.sandbox.join("cpu.cfs_quota_us").exists())
        .expect("a cpu hierarchy");
    let overhead = cpu.overhead.clone().unwrap();
    assert_eq!(
        std::fs::read_to_string(cpu.sandbox.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "50000"
    );
    assert_eq!(
        std::fs::read_to_string(overhead.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "-1"
    );
    // Let the first period settle, then measure three seconds.
    std::thread::sleep(Duration::from_millis(500));
    let (t0, u0) = (Instant::now(), cpuacct_usage_ns(&acct.sandbox));
    std::thread::sleep(Duration::from_secs(3));
    let (t1, u1) = (Instant::now(), cpuacct_usage_ns(&acct.sandbox));
    let cpus = (u1 - u0) as f64 / (t1 - t0).as_nanos() as f64;
    let overhead_throttled = std::fs::read_to_string(overhead.join("cpu.stat")).unwrap();
    vmm.shutdown_handle().request();
    vmm.wait();
    drop(vmm);
    sandbox.teardown().unwrap();
    eprintln!("2 spinning vCPUs under a 0.5-CPU quota used {cpus:.3} CPUs");
    assert!(
        (0.425..=0.575).contains(&cpus),
        "vCPUs used {cpus:.3} CPUs, not 0.5 ± 15 %"
    );
    assert!(
        overhead_throttled.lines().any(|l| l == "nr_throttled 0"),
        "the overhead cgroup was throttled: {overhead_throttled}"
    );
}

// ------------------------------------------------------- pure cgroup v2 (L1)

/// Runs this file's cgroup v2 tests inside the nested lane's L1, a pure
/// cgroup v2 host with a real `/dev/kvm` (`tests/support/nested/init.sh`).
/// Holds the KVM lock the other tests take: L1's emulation keeps both cores
/// busy, which would starve the CPU-quota measurements here.
#[test]
fn lane_pure_cgroup_v2() {
    let _kvm = common::kvm();
    nested::run_own_tests_in_l1(
        "lane_pure_cgroup_v2",
        &["pure_v2_", "v2_split_places_real_vcpu_threads"],
        Duration::from_secs(600),
    );
}

/// The cgroup2 mount of a pure v2 host.
const V2_MOUNT: &str = "/sys/fs/cgroup";

/// Whether `test` runs here: only inside L1, which must then be a pure
/// cgroup v2 host (it fails loudly otherwise). Elsewhere it says where it
/// runs and returns `false`.
/// Fails unless this runs in the nested lane's L1 on a pure cgroup v2 host.
fn require_pure_v2_lane() {
    assert!(
        nested::in_l1(),
        "this test needs a pure cgroup v2 host: run it through lane_pure_cgroup_v2, \
         which runs it in the nested lane's L1"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut cgroup2_root = false;
    let mut v1 = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split_whitespace().next();
        let mount_point = left.split_whitespace().nth(4).unwrap_or("");
        cgroup2_root |= fstype == Some("cgroup2") && mount_point == V2_MOUNT;
        if fstype == Some("cgroup") {
            v1.push(mount_point.to_string());
        }
    }
    assert!(
        cgroup2_root && v1.is_empty(),
        "this test needs a pure cgroup v2 host (cgroup2 at {V2_MOUNT}, no v1 hierarchy); \
         cgroup2 at {V2_MOUNT}: {cgroup2_root}, v1 mounts {v1:?}"
    );
    let offered = std::fs::read_to_string(Path::new(V2_MOUNT).join("cgroup.controllers")).unwrap();
    for controller in ["cpu", "memory"] {
        assert!(
            offered.split_whitespace().any(|c| c == controller),
            "this test needs the {controller} controller offered in {V2_MOUNT} ({offered:?})"
        );
    }
}

/// The cgroup2 path of process `pid` (`/proc/<pid>/cgroup`'s `0::` line).
fn v2_cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup2 line in /proc/{pid}/cgroup: {text}"))
        .to_string()
}

fn v2_dir(cgroup: &str) -> std::path::PathBuf {
    Path::new(V2_MOUNT).join(cgroup.trim_start_matches('/'))
}

fn read_trimmed(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
        .trim()
        .to_string()
}

/// `usage_usec` of a cgroup2 `cpu.stat`.
fn usage_usec(dir: &Path) -> u64 {
    read_trimmed(&dir.join("cpu.stat"))
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .unwrap()
        .parse()
        .unwrap()
}

/// Another process (`sleep`) in this test's cgroup, as a shell or a
/// supervisor beside `corral run` would be; killed and reaped on drop.
struct Neighbour(std::process::Child);

impl Neighbour {
    fn spawn() -> Neighbour {
        Neighbour(
            std::process::Command::new("sleep")
                .arg("3600")
                .spawn()
                .expect("cannot start `sleep` as a neighbour process"),
        )
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs a pure cgroup v2 host: lane_pure_cgroup_v2 runs it in the nested lane's L1"]
fn pure_v2_a_half_cpu_quota_holds_beside_a_busy_origin() {
    require_pure_v2_lane();
    let _kvm = common::kvm();
    let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let origin = v2_dir(&v2_cgroup_of(std::process::id()));
    let neighbour = Neighbour::spawn();
    let (config, console) = common::guest_config(2, "workload=hang");
    let mut vmm = Vmm::create(config).unwrap();
    let vcpus: BTreeSet<i32> = vmm.vcpu_tids().into_iter().collect();
    // The default parent, relative to a cgroup that holds another process.
    let mut c = cg_config(PlacementMode::Split, CgroupVersion::V2, "p2quota");
    c.cpu_quota = Some(0.5);
    c.memory_limit = Some(512 << 20);
    let mut sandbox = Sandbox::create(&c)
        .unwrap_or_else(|e| panic!("create beside the busy {}: {e}", origin.display()));
    assert!(sandbox.warnings().is_empty(), "{:?}", sandbox.warnings());
    sandbox.place(&vmm.vcpu_tids(), &vmm.other_tids()).unwrap();
    assert_eq!(console.text(), "");
    assert_split(&sandbox, &vcpus);
    let h = sandbox.paths().hierarchies[0].clone();
    let domain = h.domain.clone().unwrap();
    let overhead = h.overhead.clone().unwrap();
    assert!(!domain.starts_with(&origin), "{h:?}");
    assert_eq!(read_trimmed(&h.sandbox.join("cpu.max")), "50000 100000");
    assert_eq!(read_trimmed(&overhead.join("cpu.max")), "max 100000");
    assert_eq!(
        read_trimmed(&domain.join("memory.max")),
        (512u64 << 20).to_string()
    );
    vmm.start();
    assert!(
        console.wait_for("spinning on every vCPU", Duration::from_secs(120)),
        "{}",
        console.text()
    );
    assert_split(&sandbox, &vcpus);
    // Let the first period settle, then measure three seconds.
    std::thread::sleep(Duration::from_millis(500));
    let (t0, u0) = (Instant::now(), usage_usec(&h.sandbox));
    std::thread::sleep(Duration::from_secs(3));
    let (t1, u1) = (Instant::now(), usage_usec(&h.sandbox));
    let cpus = (u1 - u0) as f64 / (t1 - t0).as_micros() as f64;
    let overhead_stat = read_trimmed(&overhead.join("cpu.stat"));
    vmm.shutdown_handle().request();
    assert_eq!(vmm.wait(), VmExit::HostShutdown);
    drop(vmm);
    teardown_and_check(&mut sandbox);
    assert_eq!(
        std::fs::read_to_string("/proc/self/cgroup").unwrap(),
        before,
        "threads went back home"
    );
    drop(neighbour);
    eprintln!("2 spinning vCPUs under a 0.5-CPU quota in L1 used {cpus:.3} CPUs");
    // L1 is emulated, so the band is wider than on real hardware: the upper
    // bound is the quota, the lower one that the vCPUs really spun.
    assert!(
        (0.3..=0.6).contains(&cpus),
        "vCPUs used {cpus:.3} CPUs under a 0.5-CPU quota"
    );
    assert!(
        overhead_stat.lines().any(|l| l == "nr_throttled 0"),
        "the overhead cgroup was throttled: {overhead_stat}"
    );
}

/// `corral run` booting the test guest spinning on two vCPUs, with
/// `cgroup_args`; stdout and stderr piped. Killed on drop if still running.
struct Corral(std::process::Child);

impl Corral {
    fn spawn(cgroup_args: &[&str]) -> Corral {
        let guest = common::test_guest();
        Corral(
            std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
                .args(["run", "--kernel", guest.to_str().unwrap(), "--cpus", "2"])
                .args(["--cmdline", "workload=hang"])
                .args(cgroup_args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// Waits up to `limit` for corral to exit (killing it after that) and
    /// returns its status, whether it had to be killed, and its stderr.
    fn finish(&mut self, limit: Duration) -> (Option<i32>, bool, String) {
        use std::io::Read;
        let deadline = Instant::now() + limit;
        let mut killed = false;
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                killed = true;
                let _ = self.0.kill();
                break self.0.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.0.stderr.take() {
            pipe.read_to_string(&mut stderr).unwrap();
        }
        (status.code(), killed, stderr)
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
#[ignore = "needs a pure cgroup v2 host: lane_pure_cgroup_v2 runs it in the nested lane's L1"]
fn pure_v2_corral_run_from_a_busy_cgroup_enforces_both_limits() {
    require_pure_v2_lane();
    let _kvm = common::kvm();
    // corral starts in this test's cgroup, which also holds this test
    // process and a sleeping neighbour.
    let origin = v2_cgroup_of(std::process::id());
    let _neighbour = Neighbour::spawn();
    let mut corral = Corral::spawn(&[
        "--cgroup-parent",
        "",
        "--cpus-quota",
        "0.5",
        "--memory-limit",
        "256",
    ]);
    let pid = corral.0.id();
    // Split: once placed, the main thread is in the domain's overhead cgroup.
    let deadline = Instant::now() + Duration::from_secs(120);
    let placed = loop {
        let now = v2_cgroup_of(pid);
        if now != origin && now.ends_with("/overhead") {
            break now;
        }
        if Instant::now() > deadline || corral.0.try_wait().unwrap().is_some() {
            let (code, _, stderr) = corral.finish(Duration::ZERO);
            panic!("corral was not placed within 120 s (in {now}, exit {code:?}): {stderr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let domain = v2_dir(placed.strip_suffix("/overhead").unwrap());
    let cpu_max = std::fs::read_to_string(domain.join("vcpu/cpu.max"));
    let memory_max = std::fs::read_to_string(domain.join("memory.max"));
    // SAFETY: kill(2) on our own child's PID, which is still ours to reap.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let (code, killed, stderr) = corral.finish(Duration::from_secs(60));
    eprintln!("corral run from {origin} was placed in {placed}; stderr: {stderr}");
    assert!(!killed, "corral did not stop on SIGTERM: {stderr}");
    assert_eq!(code, Some(130), "{stderr}");
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert_eq!(
        cpu_max.as_deref().map(str::trim).ok(),
        Some("50000 100000"),
        "{}/vcpu/cpu.max: {cpu_max:?}",
        domain.display()
    );
    assert_eq!(
        memory_max.as_deref().map(str::trim).ok(),
        Some("268435456"),
        "{}/memory.max: {memory_max:?}",
        domain.display()
    );
    assert!(!domain.exists(), "{} left behind", domain.display());
}

/// Removes the (empty) cgroup `dir` and every cgroup beneath it.
fn remove_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        if entry.file_type().unwrap().is_dir() {
            remove_tree(&entry.path());
        }
    }
    std::fs::remove_dir(dir).unwrap_or_else(|e| panic!("cannot remove {}: {e}", dir.display()));
}

#[test]
#[ignore = "needs a pure cgroup v2 host: lane_pure_cgroup_v2 runs it in the nested lane's L1"]
fn pure_v2_corral_run_refuses_a_limit_it_cannot_enforce() {
    require_pure_v2_lane();
    let _kvm = common::kvm();
    // A parent beneath a cgroup that holds another process.
    let busy_name = format!("corral-test-busy-{}", std::process::id());
    let busy = v2_dir(&busy_name);
    std::fs::create_dir(&busy).unwrap();
    let neighbour = Neighbour::spawn();
    std::fs::write(busy.join("cgroup.procs"), neighbour.0.id().to_string()).unwrap();
    let parent = format!("/{busy_name}/pods");
    let (code, killed, stderr) =
        Corral::spawn(&["--cgroup-parent", &parent, "--memory-limit", "256"])
            .finish(Duration::from_secs(60));
    let pods_left = busy.join("pods").exists();
    drop(neighbour);
    remove_tree(&busy);
    eprintln!("corral run --cgroup-parent {parent} --memory-limit 256: {stderr}");
    assert!(!killed, "corral ran the VM instead of refusing: {stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {stderr}");
    for needle in [
        "--memory-limit 256",
        "memory controller",
        &format!("/{busy_name}"),
        "--cgroup-parent",
    ] {
        assert!(lines[0].contains(needle), "{needle:?} missing: {stderr}");
    }
    assert!(!pods_left, "the refused sandbox left {parent}");
}
