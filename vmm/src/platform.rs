//! The VM's fixed platform devices and the two buses they sit on:
//! the console UART (ports 0x3f8–0x3ff and an MMIO window, IRQ 4 through an
//! irqfd), the i8042 reset line, the boot timer and the ACPI sleep/reset
//! registers.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use corral_devices::boot_timer::{BootTime, BootTimer, BOOT_TIMER_LEN};
use corral_devices::bus::{Bus, BusError};
use corral_devices::legacy::i8042::{I8042_PORT_BASE, I8042_PORT_LEN};
use corral_devices::legacy::serial::SERIAL_REGISTERS;
use corral_devices::legacy::{SerialConsole, SerialInputNotifier, I8042};
use corral_devices::power::{PowerEventSink, PowerRegisters, ResetTrigger, POWER_REGISTERS_LEN};
use corral_devices::trigger::EventFdTrigger;
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::layout::{
    BOOT_TIMER_START, POWER_REGISTERS_START, SERIAL_IRQ, SERIAL_MMIO_START, SERIAL_PORT_BASE,
};
use crate::vm::Vm;

/// The platform devices could not be set up.
#[derive(Debug, Error)]
pub enum PlatformError {
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    /// KVM would not take the serial interrupt's irqfd.
    #[error("KVM could not register the console's irqfd")]
    Irqfd(#[source] kvm_ioctls::Error),
    /// Two devices claim the same addresses.
    #[error("device layout conflict")]
    Bus(#[from] BusError),
}

/// The buses and the handles the rest of the VMM needs.
pub(crate) struct Platform {
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) serial: Arc<Mutex<SerialConsole>>,
    /// Signalled when the guest has drained the console's input FIFO.
    pub(crate) serial_wants_input: EventFd,
}

impl Platform {
    pub(crate) fn new(
        vm: &Vm,
        console_out: Box<dyn Write + Send>,
        power: Arc<dyn PowerEventSink>,
        created: Instant,
        boot_time: BootTime,
    ) -> Result<Self, PlatformError> {
        let eventfd =
            || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(PlatformError::EventFd);
        let serial_irq = eventfd()?;
        vm.fd()
            .register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(PlatformError::Irqfd)?;
        let serial_wants_input = eventfd()?;
        let notifier_fd = serial_wants_input
            .try_clone()
            .map_err(PlatformError::EventFd)?;
        let serial = Arc::new(Mutex::new(SerialConsole::new(
            EventFdTrigger::new(serial_irq),
            SerialInputNotifier::new(notifier_fd),
            console_out,
        )));

        let mut pio = Bus::new();
        pio.insert(serial.clone(), SERIAL_PORT_BASE, SERIAL_REGISTERS)?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(ResetTrigger(power.clone())))),
            I8042_PORT_BASE,
            I8042_PORT_LEN,
        )?;

        let mut mmio = Bus::new();
        mmio.insert(serial.clone(), SERIAL_MMIO_START, SERIAL_REGISTERS)?;
        mmio.insert(
            Arc::new(Mutex::new(BootTimer::new(created, boot_time))),
            BOOT_TIMER_START,
            BOOT_TIMER_LEN,
        )?;
        mmio.insert(
            Arc::new(Mutex::new(PowerRegisters::new(power))),
            POWER_REGISTERS_START,
            POWER_REGISTERS_LEN,
        )?;
        Ok(Self {
            pio,
            mmio,
            serial,
            serial_wants_input,
        })
    }
}
