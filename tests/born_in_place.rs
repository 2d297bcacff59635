//! The pod lifecycle's fast placement, on this machine's real cgroup v1
//! files and real KVM: the VM's threads are born in their cgroups (the
//! creating thread moves itself around their spawning), so `Sandbox::place`
//! finds every vCPU already in the sandbox cgroup and every VMM thread in
//! the overhead cgroup, and writes none of their TIDs; teardown brings the
//! creating thread home and leaves no cgroup. Its own test binary: placement
//! moves every thread of the process, which would disturb other tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use corral_runtime::cgroup::{CgroupConfig, CgroupVersion, PlacementMode};
use corral_runtime::pod::{Pod, PodConfig};
use corral_vmm::{ConsoleOutput, VmExit};

use common::ids;

#[test]
fn v1_pod_threads_are_born_in_place_and_no_vm_thread_is_moved_by_tid() {
    let _kvm = common::kvm();
    assert!(
        Path::new("/sys/fs/cgroup/cpu/tasks").exists(),
        "this test needs the cgroup v1 hierarchies mounted under /sys/fs/cgroup (and root)"
    );
    let before = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap();
    let (mut vm, _) = common::guest_config(2, "workload=boot");
    vm.console.output = ConsoleOutput::Discard;
    let mut cgroup = CgroupConfig::new(format!("corral-born-{}", std::process::id()));
    cgroup.mode = PlacementMode::Split;
    cgroup.version = Some(CgroupVersion::V1);
    cgroup.pin_vcpus = false;
    let mut pod = Pod::create(PodConfig {
        vm,
        cgroup: Some(cgroup),
    })
    .unwrap();

    let report = pod.placement_report().expect("placed").clone();
    let threads = common::threads();
    let vm_threads: BTreeSet<i32> = threads
        .iter()
        .filter(|(_, name)| {
            name.starts_with("vcpu") || name.starts_with("vmm-") || name.starts_with("kvm-nx")
        })
        .map(|(tid, _)| *tid)
        .collect();
    let vcpus: BTreeSet<i32> = report.vcpus.iter().map(|v| v.tid).collect();
    assert_eq!(vcpus.len(), 2);
    assert!(
        report.vcpus.iter().all(|v| v.inherited),
        "every vCPU thread was born in the sandbox cgroup: {report:?}"
    );
    let moved_vm: Vec<i32> = report
        .moved_by_tid
        .iter()
        .copied()
        .filter(|t| vm_threads.contains(t))
        .collect();
    assert!(
        moved_vm.is_empty(),
        "VM threads {moved_vm:?} were moved by TID ({threads:?})"
    );
    let paths = pod.sandbox().unwrap().paths();
    let created: Vec<_> = paths
        .hierarchies
        .iter()
        .flat_map(|h| h.created.clone())
        .collect();
    for h in &paths.hierarchies {
        assert_eq!(ids(&h.sandbox.join("tasks")), vcpus, "{}: vCPUs", h.name);
        let overhead = ids(&h.overhead.as_ref().unwrap().join("tasks"));
        for tid in vm_threads.difference(&vcpus) {
            assert!(
                overhead.contains(tid),
                "{}: VMM thread {tid} ({}) is in the overhead cgroup",
                h.name,
                threads[tid]
            );
        }
    }
    eprintln!(
        "born in place: placement took {} µs on the creating thread; TIDs written: {:?} (the test harness's own threads)",
        pod.placement_time().as_micros(),
        report.moved_by_tid
    );

    pod.start();
    assert_eq!(pod.wait(), VmExit::PowerOff);
    pod.teardown().unwrap();
    for dir in created {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert_eq!(
        std::fs::read_to_string("/proc/thread-self/cgroup").unwrap(),
        before,
        "the creating thread went home"
    );
}
