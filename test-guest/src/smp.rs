//! Starting the application processors: copy the real-mode trampoline to a
//! free page below 1 MiB, then INIT, SIPI, SIPI each AP through the local
//! APIC's ICR (MMIO, so this works from ring 3), and wait for them to check
//! in.

use core::sync::atomic::Ordering;

use crate::mmio;
use crate::mptable::Cpus;
use crate::results::Results;
use crate::start_info::StartInfo;

const LAPIC: u64 = 0xfee0_0000;
const LAPIC_ID: u64 = LAPIC + 0x20;
const ICR_LOW: u64 = LAPIC + 0x300;
const ICR_HIGH: u64 = LAPIC + 0x310;
const ICR_BUSY: u32 = 1 << 12;
const ICR_INIT_ASSERT: u32 = 0x4500;
const ICR_STARTUP: u32 = 0x4600;
/// About two seconds at 2.5 GHz.
const ARRIVAL_TIMEOUT_CYCLES: u64 = 5_000_000_000;

/// This CPU's local APIC ID.
pub fn apic_id() -> u32 {
    mmio::read::<u32>(LAPIC_ID) >> 24
}

fn send_ipi(dest: u8, command: u32) {
    mmio::write::<u32>(ICR_HIGH, u32::from(dest) << 24);
    mmio::write::<u32>(ICR_LOW, command);
    for _ in 0..100_000 {
        if mmio::read::<u32>(ICR_LOW) & ICR_BUSY == 0 {
            break;
        }
        core::hint::spin_loop();
    }
}

/// A RAM page below 1 MiB for the trampoline.
fn trampoline_page(info: &StartInfo) -> Option<u64> {
    (0x8..0x9f)
        .map(|p: u64| p << 12)
        .find(|&p| info.is_ram(p, 0x1000))
}

/// Starts every AP in `cpus`; returns how many vCPUs (boot CPU included)
/// are running guest code, or an error message.
pub fn start_aps(info: &StartInfo, cpus: &Cpus, results: &Results) -> Result<u32, &'static str> {
    if cpus.count <= 1 {
        return Ok(1);
    }
    let page = trampoline_page(info).ok_or("no RAM page below 1 MiB for the AP trampoline")?;
    for (i, b) in crate::boot::trampoline().iter().enumerate() {
        mmio::write::<u8>(page + i as u64, *b);
    }
    let vector = (page >> 12) as u32;
    let me = apic_id();
    for &id in cpus.apic_ids[..cpus.count]
        .iter()
        .filter(|&&id| u32::from(id) != me)
    {
        send_ipi(id, ICR_INIT_ASSERT);
        send_ipi(id, ICR_STARTUP | vector);
        send_ipi(id, ICR_STARTUP | vector);
    }
    let want = cpus.count as u32 - 1;
    let start = rdtsc();
    while results.arrived.load(Ordering::SeqCst) < want {
        if rdtsc().wrapping_sub(start) > ARRIVAL_TIMEOUT_CYCLES {
            break;
        }
        core::hint::spin_loop();
    }
    Ok(results.arrived.load(Ordering::SeqCst) + 1)
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear, so ring 3 may use it.
    unsafe { core::arch::x86_64::_rdtsc() }
}
