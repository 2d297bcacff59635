//! The console UART: a 16550 from `vm-superio`, reachable both at the PC's
//! COM1 ports (0x3f8–0x3ff, IRQ 4) and at an MMIO window of the same eight
//! byte-wide registers.
//!
//! Why an MMIO window as well: guest code that may not use port I/O (a
//! user-mode agent, firmware running in ring 3, a guest kernel that prefers
//! MMIO consoles such as Linux's `earlycon=uart8250,mmio,ADDR`) can still
//! reach the console. Both windows drive one UART, so output stays in order.
//!
//! Output goes to any `Write` the VMM picks (stdout, a file, a buffer); it is
//! written and flushed per byte by `vm-superio`, so a crash loses nothing.
//! Input is pushed by the VMM's I/O thread with [`SerialConsole::enqueue_input`];
//! when the guest has drained the receive FIFO, `vm-superio` calls
//! [`SerialInputNotifier::in_buffer_empty`], which wakes that thread so it
//! reads more input only when the guest can take it.

use std::io::Write;

use tracing::warn;
use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// Number of byte-wide registers of a 16550.
pub const SERIAL_REGISTERS: u64 = 8;

/// Wakes the console-input reader when the guest has drained the FIFO.
#[derive(Debug)]
pub struct SerialInputNotifier {
    input_ready: EventFd,
}

impl SerialInputNotifier {
    /// Signals `input_ready` whenever the receive FIFO becomes empty.
    pub fn new(input_ready: EventFd) -> Self {
        Self { input_ready }
    }
}

impl SerialEvents for SerialInputNotifier {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.input_ready.write(1) {
            warn!("console: cannot signal that the guest wants more input: {e}");
        }
    }
}

type Uart = Serial<EventFdTrigger, SerialInputNotifier, Box<dyn Write + Send>>;

/// The console UART.
pub struct SerialConsole {
    uart: Uart,
    /// A failed write was logged: the next ones are not (a guest printing
    /// into a closed pipe must not flood the VMM's log).
    write_error_logged: bool,
}

impl SerialConsole {
    /// A UART that raises `interrupt` (an irqfd) and writes to `out`.
    pub fn new(
        interrupt: EventFdTrigger,
        notifier: SerialInputNotifier,
        out: Box<dyn Write + Send>,
    ) -> Self {
        Self {
            uart: Serial::with_events(interrupt, notifier, out),
            write_error_logged: false,
        }
    }

    /// How many input bytes the guest can take right now.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes were taken.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        if input.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(e) => {
                warn!("console: input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The registers are one byte wide; wider reads see only the first.
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.uart.write(offset, value) {
            // A lost console byte or a failed interrupt must not stop the
            // guest; say so once.
            if !self.write_error_logged {
                self.write_error_logged = true;
                warn!("console: register write at offset {offset} failed ({e:?}); later failures are not logged");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn console() -> (SerialConsole, Sink, EventFd, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let dev = SerialConsole::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            SerialInputNotifier::new(ready.try_clone().unwrap()),
            Box::new(sink.clone()),
        );
        (dev, sink, irq, ready)
    }

    #[test]
    fn output_reaches_the_sink() {
        let (mut dev, sink, _irq, _ready) = console();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn input_flows_and_signals_when_drained() {
        let (mut dev, _sink, irq, ready) = console();
        dev.write(1, &[0x01]); // IER: received-data interrupt
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'a');
        dev.read(0, &mut b);
        assert_eq!(b[0], b'b');
        assert_eq!(ready.read().unwrap(), 1, "drained FIFO wakes the reader");
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut dev, sink, _irq, _ready) = console();
        let mut wide = [0xffu8; 4];
        dev.read(0x1_0000_0000, &mut wide);
        assert_eq!(wide, [0; 4]);
        dev.write(0, &[]);
        dev.write(300, b"x");
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
