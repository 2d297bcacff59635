//! Cgroup placement of a real VM's threads, on this machine's real cgroup
//! files (v1 hierarchies and the cgroup2 mount), beneath the cgroups this
//! process is already in: the vCPU threads `Vmm::create` reports go to the
//! sandbox cgroup before any guest code runs, every other thread of the
//! process to the overhead cgroup; a CPU quota holds; teardown leaves
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use corral_runtime::cgroup::{CgroupConfig, CgroupVersion, PlacementMode, Sandbox};
use corral_vmm::{VmExit, Vmm};

fn ids(file: &Path) -> BTreeSet<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn process_threads() -> BTreeSet<i32> {
    common::threads().into_keys().collect()
}

fn require_cgroups() {
    assert!(
        Path::new("/sys/fs/cgroup/cpu/tasks").exists()
            || Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists(),
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
