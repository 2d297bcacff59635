//! Emulated devices of a Corral micro-VM.
//!
//! Every device here is reached by the guest through the [`bus::Bus`]: a vCPU
//! thread that exits on a port-I/O or MMIO access looks the address up and
//! calls the device's [`bus::BusDevice`] methods inline. Devices never call
//! back into the VMM; they report what the VMM must act on through small
//! interfaces it implements ([`power::PowerEventSink`]) or through eventfds
//! (interrupts).
//!
//! - [`legacy`]: the 16550 console UART and the i8042 reset line, built on
//!   `vm-superio`.
//! - [`boot_timer`]: records when the guest says it has booted.
//! - [`power`]: ACPI hardware-reduced sleep/reset registers in MMIO space.
//! - [`virtio`]: virtio-mmio transport; virtio-blk, virtio-net, virtio-vsock.

pub mod boot_timer;
pub mod bus;
pub mod legacy;
pub mod power;
pub mod ratelimit;
pub mod trigger;
pub mod virtio;
