//! Boot benchmarks on the real /dev/kvm, with the test guest (1 vCPU,
//! 128 MiB, `workload=boot`: signal the boot timer from ring 3 and power
//! off at once).
//!
//! - `boot/creation_to_boot_timer`: from the start of VM creation to the
//!   guest's boot-timer write, as the VMM's boot timer records it.
//! - `boot/create_to_teardown`: create → guest power-off → every thread
//!   joined and every fd closed (`Vmm` dropped).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use corral_vmm::{ConsoleOutput, VmExit, Vmm};
use criterion::{criterion_group, criterion_main, Criterion};

fn boot_config() -> corral_vmm::VmConfig {
    let (mut config, _) = common::guest_config(1, "workload=boot");
    config.memory_mib = 128;
    config.console.output = ConsoleOutput::Discard;
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

    group.bench_function("create_to_teardown", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut vmm = Vmm::boot(boot_config()).unwrap();
                assert_eq!(vmm.wait(), VmExit::PowerOff);
                drop(vmm);
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, boot);
criterion_main!(benches);
