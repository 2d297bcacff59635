//! Ending the VM from ring 3. Port I/O is not an option there (it faults on
//! PVM hosts), so the guest writes S5 to an ACPI hardware-reduced
//! SLEEP_CONTROL register by MMIO (Corral's at 0xd0002000, QEMU microvm's
//! generic event device at 0xfea00200). If that does not end the VM (no
//! such register), it falls back to a fault with no usable IDT: a triple
//! fault, which QEMU with `-no-reboot` treats as the end.

use crate::mmio;

/// SLP_TYP = 5 (S5), SLP_EN.
const S5_SLEEP: u8 = (5 << 2) | (1 << 5);

pub fn power_off(sleep_control: Option<u64>) -> ! {
    if let Some(addr) = sleep_control {
        mmio::write::<u8>(addr, S5_SLEEP);
        // Give an asynchronous power-off a moment to take effect.
        for _ in 0..100_000_000u64 {
            core::hint::spin_loop();
        }
    }
    // SAFETY: deliberately raises #UD; with no IDT this ends the VM.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}
