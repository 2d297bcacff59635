//! The boot timer: the guest writes [`BOOT_COMPLETE_MAGIC`] to the first byte
//! of this MMIO page when it considers itself booted, and the VMM records how
//! long that took since the VM was created (as Firecracker's boot timer
//! does, with the same magic value). Being MMIO it works from any guest
//! privilege level. Only the first signal counts.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing::info;

use crate::bus::BusDevice;

/// Byte the guest writes at offset 0 to say it has booted.
pub const BOOT_COMPLETE_MAGIC: u8 = 123;
/// Size of the device's MMIO window.
pub const BOOT_TIMER_LEN: u64 = 0x1000;

/// Where the boot time is published; cloned by whoever wants to read it.
pub type BootTime = Arc<OnceLock<Duration>>;

/// The boot-timer device.
pub struct BootTimer {
    start: Instant,
    boot_time: BootTime,
}

impl BootTimer {
    /// A timer that measures from `start` (the VM's creation) and publishes
    /// into `boot_time`.
    pub fn new(start: Instant, boot_time: BootTime) -> Self {
        Self { start, boot_time }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_COMPLETE_MAGIC) {
            return;
        }
        let elapsed = self.start.elapsed();
        if self.boot_time.set(elapsed).is_ok() {
            info!(
                "guest boot completed {} µs after VM creation",
                elapsed.as_micros()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_first_magic_write_only() {
        let published = BootTime::default();
        let mut timer = BootTimer::new(Instant::now(), published.clone());
        timer.write(0, &[1]);
        timer.write(1, &[BOOT_COMPLETE_MAGIC]);
        assert!(published.get().is_none());
        timer.write(0, &[BOOT_COMPLETE_MAGIC]);
        let first = *published.get().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        timer.write(0, &[BOOT_COMPLETE_MAGIC]);
        assert_eq!(*published.get().unwrap(), first);
    }
}
