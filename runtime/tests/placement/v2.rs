//! Placement on the cgroup2 hierarchy, wherever it is: this machine's
//! controller-less one (hybrid host) and, through `lane_pure_cgroup_v2`,
//! the nested lane's pure cgroup v2 host.

use super::*;

pub(crate) fn unified(sandbox: &Sandbox) -> HierarchyPaths {
    let paths = sandbox.paths();
    assert_eq!(paths.version, CgroupVersion::V2);
    assert_eq!(paths.hierarchies.len(), 1);
    paths.hierarchies[0].clone()
}

pub(crate) fn v2_cgroup_of_self() -> String {
    self_cgroups()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string()
}

/// Where the cgroup2 hierarchy is mounted.
fn v2_mount_point() -> PathBuf {
    read(Path::new("/proc/self/mountinfo"))
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .expect("a cgroup2 mount is required for this test (none in /proc/self/mountinfo)")
}

/// Whether the cgroup2 hierarchy offers `controller` at all.
fn v2_offers(controller: &str) -> bool {
    read(&v2_mount_point().join("cgroup.controllers"))
        .split_whitespace()
        .any(|c| c == controller)
}

#[test]
fn v2_split_uses_threaded_children_of_a_domain() {
    let _guard = lock();
    require_v2();
    let origin = self_cgroups();
    let vcpus = [FakeThread::spawn("vcpu0"), FakeThread::spawn("vcpu1")];
    let io = FakeThread::spawn("vmm-io");
    let vcpu_tids: Vec<i32> = vcpus.iter().map(|t| t.tid).collect();

    let mut cfg = config("v2split", CgroupVersion::V2, PlacementMode::Split);
    cfg.cpu_quota = Some(1.0);
    cfg.memory_limit = Some(256 << 20);
    if !(v2_offers("cpu") && v2_offers("memory")) {
        // A cgroup2 hierarchy without them (on a hybrid host they are bound
        // to v1): the limits cannot be enforced, and creation says so
        // instead of dropping them.
        let err = Sandbox::create(&cfg).expect_err("limits without their controllers");
        let text = err.to_string();
        assert!(
            matches!(
                &err,
                CgroupError::LimitUnenforceable {
                    blocker: Blocker::NotOffered { .. },
                    ..
                }
            ) && !text.contains('\n')
                && text.contains("cpu controller")
                && text.contains("CPU quota 1 CPUs"),
            "{text}"
        );
        assert!(!v2_mount_point()
            .join(v2_cgroup_of_self().trim_start_matches('/'))
            .join(&cfg.sandbox_id)
            .exists());
        assert_eq!(self_cgroups(), origin);
        cfg.cpu_quota = None;
        cfg.memory_limit = None;
    }
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    assert!(sandbox.warnings().is_empty(), "{:?}", sandbox.warnings());
    let h = unified(&sandbox);
    let domain = h.domain.clone().unwrap();
    // With limits, the process may have had to leave the parent (so that
    // controllers can be enabled there) already at creation.
    let domain_cgroup = format!(
        "/{}",
        domain.strip_prefix(&h.mount_point).unwrap().display()
    );
    let moved_at_create = v2_cgroup_of_self() == domain_cgroup;
    let report = sandbox.place(&vcpu_tids, &[io.tid]).unwrap();
    eprintln!(
        "v2 split: per-vCPU placement {:?} us, process move {:?} us, whole call {} us, \
         warnings {:?}",
        report.vcpu_latencies_us(),
        report.process_move_us,
        report.total_us,
        report.warnings
    );
    let overhead = h.overhead.clone().unwrap();
    assert!(domain.starts_with(&h.origin));
    assert_eq!(read(&domain.join("cgroup.type")), "domain threaded");
    assert_eq!(read(&h.sandbox.join("cgroup.type")), "threaded");
    assert_eq!(read(&overhead.join("cgroup.type")), "threaded");
    assert!(read_ids(&domain.join("cgroup.procs")).contains(&(std::process::id() as i32)));
    assert_eq!(
        read_ids(&h.sandbox.join("cgroup.threads")),
        vcpu_tids.iter().copied().collect()
    );
    assert_others_listed(&overhead.join("cgroup.threads"), &vcpu_tids);
    assert_eq!(report.process_move_us.is_some(), !moved_at_create);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    if cfg.cpu_quota.is_some() {
        assert_eq!(read(&h.sandbox.join("cpu.max")), "100000 100000");
        assert_eq!(read(&overhead.join("cpu.max")), "max 100000");
        assert_eq!(read(&domain.join("memory.max")), (256u64 << 20).to_string());
    }

    // Re-run: the process is not moved again, threads stay placed.
    let again = sandbox.place(&vcpu_tids, &[io.tid]).unwrap();
    assert_eq!(again.process_move_us, None);
    assert_eq!(
        read_ids(&h.sandbox.join("cgroup.threads")),
        vcpu_tids.iter().copied().collect()
    );
    assert_others_listed(&overhead.join("cgroup.threads"), &vcpu_tids);

    vcpus[0].spin(Duration::from_millis(60));
    let stats = sandbox.stats().unwrap();
    assert_eq!(stats.cpu_source, CpuStatSource::CpuStat);
    assert!(stats.vcpu_cpu_usec >= 20_000, "{stats:?}");

    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
}

#[test]
fn v2_sandbox_only_places_the_process_in_the_domain() {
    let _guard = lock();
    require_v2();
    let origin = self_cgroups();
    let before = v2_cgroup_of_self();
    let vcpu = FakeThread::spawn("vcpu0");
    let mut sandbox = Sandbox::create(&config(
        "v2only",
        CgroupVersion::V2,
        PlacementMode::SandboxOnly,
    ))
    .unwrap();
    sandbox.place(&[vcpu.tid], &[]).unwrap();
    let h = unified(&sandbox);
    assert_eq!(h.domain.as_ref(), Some(&h.sandbox));
    assert_eq!(h.overhead, None);
    assert_eq!(read(&h.sandbox.join("cgroup.type")), "domain");
    assert!(read_ids(&h.sandbox.join("cgroup.procs")).contains(&(std::process::id() as i32)));
    let listed = read_ids(&h.sandbox.join("cgroup.threads"));
    for tid in threads() {
        assert!(
            listed.contains(&tid) || !thread_alive(tid),
            "thread {tid} not placed"
        );
    }
    assert_ne!(v2_cgroup_of_self(), before);

    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
}

#[test]
fn v2_devices_are_enforced_by_an_ebpf_program_on_the_vcpu_cgroup() {
    let _guard = lock();
    require_v2();
    let origin = self_cgroups();
    let vcpu = FakeThread::spawn("vcpu0");
    let io = FakeThread::spawn("vmm-io");
    let kvm = Path::new("/dev/kvm");
    assert!(
        kvm.exists(),
        "this test needs /dev/kvm as a device the VMM keeps"
    );
    let null = Path::new("/dev/null");
    assert!(
        vcpu.open(null).is_ok(),
        "/dev/null must open before the rules"
    );

    // A whitelist: nothing but what the VMM itself needs.
    let mut cfg = config("v2dev", CgroupVersion::V2, PlacementMode::Split);
    cfg.devices = vec![DeviceRule::deny_all()];
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    assert!(sandbox.warnings().is_empty(), "{:?}", sandbox.warnings());
    sandbox.place(&[vcpu.tid], &[io.tid]).unwrap();
    let denied = vcpu.open(null);
    let kvm_in_vcpu = vcpu.open(kvm);
    let null_in_overhead = io.open(null);
    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);

    assert_eq!(
        denied.as_ref().map_err(std::io::Error::raw_os_error),
        Err(Some(libc::EPERM)),
        "the vCPU thread opened /dev/null despite the deny-all"
    );
    assert!(
        kvm_in_vcpu.is_ok(),
        "/dev/kvm stays allowed: {kvm_in_vcpu:?}"
    );
    assert!(
        null_in_overhead.is_ok(),
        "the overhead threads are not restricted: {null_in_overhead:?}"
    );
    // The rules went with the cgroup.
    assert!(vcpu.open(null).is_ok());
}
