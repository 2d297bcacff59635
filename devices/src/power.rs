//! Guest power control: ACPI hardware-reduced sleep and reset registers in
//! MMIO space, and the interface through which every power request (these
//! registers, the i8042 reset line) reaches the VMM.
//!
//! The register block follows the ACPI "hardware-reduced" model, as QEMU
//! microvm's generic event device and Cloud Hypervisor do: a one-byte
//! SLEEP_CONTROL register (writing SLP_EN with SLP_TYP 5, i.e. 0x34, enters
//! S5 = power off), a one-byte SLEEP_STATUS register, and a one-byte RESET
//! register (writing [`RESET_VALUE`] resets). Being MMIO, it works for guest
//! code that cannot use port I/O, and an ACPI FADT can point at it.

use tracing::debug;

use crate::bus::BusDevice;

/// Offset of SLEEP_CONTROL in the block.
pub const SLEEP_CONTROL: u64 = 0;
/// Offset of SLEEP_STATUS in the block.
pub const SLEEP_STATUS: u64 = 1;
/// Offset of RESET in the block.
pub const RESET: u64 = 2;
/// Size of the register block.
pub const POWER_REGISTERS_LEN: u64 = 3;
/// Value that, written to RESET, resets the machine (the FADT's RESET_VALUE).
pub const RESET_VALUE: u8 = 0x42;
/// SLEEP_CONTROL bit that starts the transition (SLP_EN).
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP of the S5 (soft-off) state.
const SLP_TYP_S5: u8 = 5;

/// What the guest asked the machine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerEvent {
    /// Power off (ACPI S5).
    PowerOff,
    /// Reset (reboot).
    Reset,
}

/// Receives the guest's power requests; implemented by the VMM.
pub trait PowerEventSink: Send + Sync {
    /// The guest asked for `event`. Called on the vCPU thread that made the
    /// request; must not block.
    fn power_event(&self, event: PowerEvent);
}

/// The ACPI sleep/reset register block.
pub struct PowerRegisters {
    sink: std::sync::Arc<dyn PowerEventSink>,
}

impl PowerRegisters {
    /// A register block that reports to `sink`.
    pub fn new(sink: std::sync::Arc<dyn PowerEventSink>) -> Self {
        Self { sink }
    }
}

impl BusDevice for PowerRegisters {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // SLEEP_STATUS reads 0 (never woken); other registers are write-only.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL if value & SLP_EN != 0 && (value >> 2) & 0x7 == SLP_TYP_S5 => {
                self.sink.power_event(PowerEvent::PowerOff)
            }
            RESET if value == RESET_VALUE => self.sink.power_event(PowerEvent::Reset),
            _ => debug!("power: ignored write of {value:#x} at offset {offset}"),
        }
    }
}

/// Adapts a [`PowerEventSink`] to `vm-superio`'s `Trigger`, for the i8042
/// reset line.
pub struct ResetTrigger(pub std::sync::Arc<dyn PowerEventSink>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.power_event(PowerEvent::Reset);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Log(Mutex<Vec<PowerEvent>>);
    impl PowerEventSink for Log {
        fn power_event(&self, event: PowerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let log = Arc::new(Log::default());
        let mut regs = PowerRegisters::new(log.clone());
        regs.write(SLEEP_CONTROL, &[0x14]); // SLP_TYP 5 without SLP_EN
        regs.write(SLEEP_CONTROL, &[0x20 | (3 << 2)]); // S3: not supported
        regs.write(RESET, &[0x41]);
        regs.write(SLEEP_CONTROL, &[]);
        assert!(log.0.lock().unwrap().is_empty());
        regs.write(SLEEP_CONTROL, &[0x34]);
        regs.write(RESET, &[RESET_VALUE]);
        assert_eq!(
            *log.0.lock().unwrap(),
            vec![PowerEvent::PowerOff, PowerEvent::Reset]
        );
        let mut b = [0xff; 2];
        regs.read(SLEEP_STATUS, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
