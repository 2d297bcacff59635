//! Legacy PC devices a Linux guest expects on x86: the 16550 console UART
//! and the i8042 controller's CPU-reset line. Both come from `vm-superio`;
//! this module adapts them to the [`crate::bus::BusDevice`] interface.

pub mod i8042;
pub mod serial;

pub use i8042::I8042;
pub use serial::{SerialConsole, SerialInputNotifier};
