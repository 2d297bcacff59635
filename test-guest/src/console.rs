//! Console output from ring 3: a 16550 reached by MMIO (byte registers),
//! driven as the datasheet says (wait for THR empty, then write). Without a
//! UART (`uart=none`, e.g. under QEMU microvm, whose COM1 is port I/O only)
//! output is dropped; the results block in memory still tells the story.

use core::fmt;

use crate::mmio;

const THR: u64 = 0;
const LSR: u64 = 5;
const LSR_THR_EMPTY: u8 = 0x20;

/// A console writer.
pub struct Console {
    base: Option<u64>,
}

impl Console {
    pub const fn new(base: Option<u64>) -> Self {
        Self { base }
    }

    fn put(&self, b: u8) {
        let Some(base) = self.base else { return };
        // A UART that never drains would hang us; give up after a while.
        for _ in 0..1_000_000 {
            if mmio::read::<u8>(base + LSR) & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        mmio::write::<u8>(base + THR, b);
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}
