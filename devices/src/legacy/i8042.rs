//! The i8042 keyboard controller, reduced to what a micro-VM needs: the
//! CPU-reset command (0xfe written to port 0x64), with which Linux
//! (`reboot=k`) and simple guests ask to reboot. Corral does not reboot a
//! guest; the VMM ends the VM and reports a reset.

use vm_superio::I8042Device;

use crate::bus::BusDevice;
use crate::power::ResetTrigger;

/// First port of the i8042 (data port 0x60; command/status port 0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60–0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// The i8042 reset line.
pub struct I8042 {
    device: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// An i8042 that reports to `reset` when the guest asks for a CPU reset.
    pub fn new(reset: ResetTrigger) -> Self {
        Self {
            device: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.device.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        // Reporting to the sink cannot fail.
        let Ok(()) = self.device.write(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::{PowerEvent, PowerEventSink};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Log(Mutex<Vec<PowerEvent>>);
    impl PowerEventSink for Log {
        fn power_event(&self, event: PowerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn reset_command_raises_the_line() {
        let log = Arc::new(Log::default());
        let mut dev = I8042::new(ResetTrigger(log.clone()));
        dev.write(4, &[0xaa]);
        dev.write(0, &[0xfe]);
        assert!(log.0.lock().unwrap().is_empty(), "other writes do nothing");
        dev.write(4, &[0xfe]);
        assert_eq!(*log.0.lock().unwrap(), vec![PowerEvent::Reset]);
    }
}
