//! Boots the test guest on the real /dev/kvm with one and two vCPUs and
//! checks that every vCPU ran guest code on a thread whose TID the VMM
//! reported before the guest ran, and that nothing is left afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use corral_vmm::{VmExit, Vmm};

const ITERATIONS: u64 = 20_000_000;

fn boot_and_check(vcpus: u32) {
    let _kvm = common::kvm();
    let fds_before = common::open_fds();
    let (config, console) =
        common::guest_config(vcpus, &format!("workload=spin iterations={ITERATIONS}"));
    let mut vmm = Vmm::create(config).expect("create the VM");

    // Between create and start: every thread exists with its TID known, and
    // no guest code has run (the console is still empty).
    let threads = common::threads();
    let mut reported = vmm.vcpu_tids();
    assert_eq!(reported.len(), vcpus as usize);
    for (index, tid) in reported.iter().enumerate() {
        assert_eq!(
            threads.get(tid).map(String::as_str),
            Some(format!("vcpu{index}").as_str())
        );
    }
    let mut named = common::tids_named(common::is_vcpu_name);
    reported.sort_unstable();
    named.sort_unstable();
    assert_eq!(
        reported, named,
        "vcpu_tids() must be exactly the threads named vcpuN"
    );
    let mut other = vmm.other_tids();
    let mut vmm_named = common::tids_named(|n| n.starts_with("vmm-"));
    other.sort_unstable();
    vmm_named.sort_unstable();
    assert!(!other.is_empty());
    assert_eq!(
        other, vmm_named,
        "other_tids() must be exactly the VMM's other threads"
    );
    assert!(other.iter().all(|t| !reported.contains(t)));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(console.text(), "", "no guest code may run before start()");

    vmm.start();
    let exit = vmm
        .wait_timeout(Some(Duration::from_secs(60)))
        .expect("the guest did not finish within 60 s");
    let out = console.text();
    assert_eq!(exit, VmExit::PowerOff, "console:\n{out}");
    assert!(out.contains("corral-test-guest: booting"), "{out}");
    assert!(out.contains(&format!("mptable: {vcpus} vCPUs")), "{out}");
    assert!(
        out.contains(&format!("smp: {vcpus} of {vcpus} vCPUs running guest code")),
        "{out}"
    );
    for i in 0..vcpus {
        let line = format!("cpu {i} apic {i}: ran {ITERATIONS} iterations in ");
        assert!(out.contains(&line), "missing `{line}` in:\n{out}");
    }
    assert!(
        out.contains(&format!("result: ok, {vcpus} vCPUs ran guest code")),
        "{out}"
    );
    let boot_time = vmm.boot_time();
    drop(vmm);

    assert!(
        boot_time.is_none(),
        "the spin workload does not signal the boot timer"
    );
    assert!(
        common::tids_named(common::is_vcpu_name).is_empty(),
        "vCPU threads left"
    );
    assert!(
        common::tids_named(|n| n.starts_with("vmm-")).is_empty(),
        "VMM threads left"
    );
    assert_eq!(common::open_fds(), fds_before, "file descriptors left open");
    eprintln!("{out}");
}

#[test]
fn boots_with_one_vcpu() {
    boot_and_check(1);
}

#[test]
fn boots_with_two_vcpus() {
    boot_and_check(2);
}

#[test]
fn boot_timer_reports_from_ring3() {
    let _kvm = common::kvm();
    let (config, console) = common::guest_config(1, "workload=boot");
    let mut vmm = Vmm::boot(config).unwrap();
    let exit = vmm
        .wait_timeout(Some(Duration::from_secs(30)))
        .expect("guest hung");
    assert_eq!(exit, VmExit::PowerOff, "{}", console.text());
    let boot = vmm
        .boot_time()
        .expect("the guest signals the boot timer from ring 3");
    assert!(boot > Duration::ZERO && boot < Duration::from_secs(30));
    eprintln!("boot timer: {} µs after VM creation", boot.as_micros());
}

#[test]
fn guest_reset_and_triple_fault_end_the_vm() {
    let _kvm = common::kvm();
    let (config, _) = common::guest_config(1, "r0=reset");
    let mut vmm = Vmm::boot(config).unwrap();
    assert_eq!(
        vmm.wait_timeout(Some(Duration::from_secs(30))),
        Some(VmExit::Reset)
    );
    drop(vmm);

    let (config, _) = common::guest_config(1, "r0=triplefault");
    let mut vmm = Vmm::boot(config).unwrap();
    match vmm.wait_timeout(Some(Duration::from_secs(30))) {
        Some(VmExit::GuestCrash {
            vcpu: 0,
            reason,
            registers,
        }) => {
            assert!(reason.contains("triple fault"), "{reason}");
            let regs = registers.expect("registers are reported");
            assert!(regs.contains("rip=0x") && regs.contains("cpl=0"), "{regs}");
        }
        other => panic!("expected a guest crash, got {other:?}"),
    }
}
