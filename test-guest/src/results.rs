//! The results block at a fixed guest-physical address (3 MiB): every vCPU
//! records what it did here, the boot CPU prints it, and a host that can
//! read guest memory afterwards (QEMU with a file-backed RAM) can check it
//! without any console.

use core::sync::atomic::{AtomicU32, AtomicU64};

use crate::boot::MAX_CPUS;

/// Where the block lives.
pub const RESULTS_ADDR: u64 = 0x30_0000;
/// First eight bytes once the block is valid.
pub const MAGIC: u64 = u64::from_le_bytes(*b"CORRALTG");

/// One vCPU's record.
#[repr(C)]
pub struct CpuResult {
    pub apic_id: AtomicU32,
    pub done: AtomicU32,
    pub iterations: AtomicU64,
    pub cycles: AtomicU64,
}

/// The whole block (layout is read by the host tests; keep it stable).
#[repr(C)]
pub struct Results {
    pub magic: AtomicU64,
    pub expected: AtomicU32,
    pub arrived: AtomicU32,
    pub done: AtomicU32,
    /// 0 running, 1 ok, 2 failed.
    pub status: AtomicU32,
    pub iterations: AtomicU64,
    pub workload: AtomicU32,
    pub go: AtomicU32,
    pub cpus: [CpuResult; MAX_CPUS],
}

/// Size of the block.
pub const RESULTS_LEN: u64 = core::mem::size_of::<Results>() as u64;

/// The block.
pub fn results() -> &'static Results {
    // SAFETY: the boot CPU checks that RESULTS_ADDR..+RESULTS_LEN is RAM
    // (and past our image, by the linker script's assertion) before any CPU
    // touches it; it is zeroed at boot, which is a valid `Results`; all
    // fields are atomics, so sharing it between CPUs is sound.
    unsafe { &*(RESULTS_ADDR as *const Results) }
}
