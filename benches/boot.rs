//! Boot benchmarks on the real /dev/kvm, with the test guest (1 vCPU,
//! 128 MiB, `workload=boot`: signal the boot timer from ring 3 and power
//! off at once).
//!
//! - `boot/creation_to_boot_timer`: from the start of VM creation to the
//!   guest's boot-timer write, as the VMM's boot timer records it.
//! - `boot/create_to_teardown`: create → guest power-off → every thread
//!   joined and every fd closed (`Vmm` dropped); `…_seccomp_off`: the
//!   same without seccomp filters (their cost).
//! - `tables/…`: what the boot tables add to every creation, built in
//!   memory: the MP table, and the ACPI tables (2 vCPUs, 3 virtio devices),
//!   the share of `creation_to_boot_timer` that ACPI costs.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use corral_runtime::cgroup::CgroupConfig;
use corral_runtime::pod::{Pod, PodConfig};
use corral_vmm::{ConsoleOutput, VmExit, Vmm};
use criterion::{criterion_group, criterion_main, Criterion};

fn boot_config() -> corral_vmm::VmConfig {
    let (mut config, _) = common::guest_config(1, "workload=boot");
    config.memory_mib = 128;
    config.console.output = ConsoleOutput::Discard;
    config
}

/// [`boot_config`] with the seccomp filters off: the pair shows what the
/// filters cost (compiled once per process; installed on every thread).
fn boot_config_without_seccomp() -> corral_vmm::VmConfig {
    let mut config = boot_config();
    config.seccomp = corral_vmm::SeccompPolicy::Off;
    config
}

fn boot(c: &mut Criterion) {
    let _kvm = common::kvm();
    let mut group = c.benchmark_group("boot");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(8));

    group.bench_function("creation_to_boot_timer", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut vmm = Vmm::boot(boot_config()).unwrap();
                assert_eq!(vmm.wait(), VmExit::PowerOff);
                total += vmm.boot_time().expect("the guest signals the boot timer");
            }
            total
        })
    });

    for (name, config) in [
        (
            "create_to_teardown",
            boot_config as fn() -> corral_vmm::VmConfig,
        ),
        (
            "create_to_teardown_seccomp_off",
            boot_config_without_seccomp,
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let mut vmm = Vmm::boot(config()).unwrap();
                    assert_eq!(vmm.wait(), VmExit::PowerOff);
                    drop(vmm);
                    total += start.elapsed();
                }
                total
            })
        });
    }
    for (name, placed) in [
        ("pod_create_to_teardown", false),
        ("pod_create_to_teardown_placed", true),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let cgroup = placed.then(|| {
                        let mut c =
                            CgroupConfig::new(format!("corral-bench-{}", std::process::id()));
                        c.parent = "/corral-bench".to_string();
                        c
                    });
                    let mut pod = Pod::create(PodConfig {
                        vm: boot_config(),
                        cgroup,
                    })
                    .unwrap();
                    pod.start();
                    assert_eq!(pod.wait(), VmExit::PowerOff);
                    pod.teardown().unwrap();
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

fn tables(c: &mut Criterion) {
    use corral_vmm::virtio_devices::Slot;
    use corral_vmm::x86_64::{acpi, mptable};
    let slots: Vec<Slot> = (0..3)
        .map(|i| Slot {
            base: corral_vmm::layout::VIRTIO_MMIO_START + i * 0x1000,
            irq: 5 + i as u32,
        })
        .collect();
    let mut group = c.benchmark_group("tables");
    group.bench_function("mptable_2_vcpus", |b| {
        b.iter(|| mptable::build(2, corral_vmm::layout::EBDA_START).unwrap())
    });
    group.bench_function("acpi_2_vcpus_3_devices", |b| {
        b.iter(|| acpi::build(2, &slots).unwrap())
    });
    group.finish();
}

criterion_group!(benches, boot, tables);
criterion_main!(benches);
