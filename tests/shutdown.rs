//! A host-side shutdown request stops a guest that spins in ring 3 on every
//! vCPU, promptly, and leaves no thread or file descriptor behind; so does
//! dropping a running VM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use corral_vmm::{VmExit, Vmm};

fn assert_nothing_left(fds_before: usize) {
    assert!(
        common::tids_named(common::is_vcpu_name).is_empty(),
        "vCPU threads left"
    );
    assert!(
        common::tids_named(|n| n.starts_with("vmm-")).is_empty(),
        "VMM threads left"
    );
    assert_eq!(common::open_fds(), fds_before, "file descriptors left open");
}

#[test]
fn shutdown_request_stops_spinning_vcpus() {
    let _kvm = common::kvm();
    let fds_before = common::open_fds();
    let (config, console) = common::guest_config(2, "workload=hang");
    let mut vmm = Vmm::boot(config).unwrap();
    assert!(
        console.wait_for(
            "spinning on every vCPU until stopped",
            Duration::from_secs(30)
        ),
        "guest did not reach its spin loop:\n{}",
        console.text()
    );
    // Guest code runs on the reported threads: each vCPU TID burns CPU
    // while the guest spins.
    let before: Vec<u64> = vmm
        .vcpu_tids()
        .iter()
        .map(|t| common::cpu_ticks(*t))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for (tid, was) in vmm.vcpu_tids().iter().zip(before) {
        let used = common::cpu_ticks(*tid) - was;
        assert!(
            used >= 20,
            "vCPU thread {tid} used only {used} ticks in 500 ms of guest spinning"
        );
    }

    // From another thread, as a signal handler or API server would.
    let handle = vmm.shutdown_handle();
    let started = Instant::now();
    std::thread::spawn(move || handle.request()).join().unwrap();
    let exit = vmm
        .wait_timeout(Some(Duration::from_secs(10)))
        .expect("the VM did not stop within 10 s of the request");
    let took = started.elapsed();
    assert_eq!(exit, VmExit::HostShutdown);
    drop(vmm);
    eprintln!(
        "shutdown request → all vCPUs out of KVM_RUN and joined: {} µs",
        took.as_micros()
    );
    assert_nothing_left(fds_before);
}

#[test]
fn dropping_a_running_vm_stops_it() {
    let _kvm = common::kvm();
    let fds_before = common::open_fds();
    let (config, console) = common::guest_config(2, "workload=hang");
    let vmm = Vmm::boot(config).unwrap();
    assert!(console.wait_for("spinning on every vCPU", Duration::from_secs(30)));
    drop(vmm);
    assert_nothing_left(fds_before);
}

#[test]
fn dropping_an_unstarted_vm_runs_no_guest_code() {
    let _kvm = common::kvm();
    let fds_before = common::open_fds();
    let (config, console) = common::guest_config(2, "workload=spin");
    let vmm = Vmm::create(config).unwrap();
    drop(vmm);
    assert_eq!(console.text(), "");
    assert_nothing_left(fds_before);
}
