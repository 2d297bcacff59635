//! Console output from ring 3, one of:
//! - a 16550 reached by MMIO (byte registers), driven as the datasheet says
//!   (wait for THR empty, then write) — Corral's console window;
//! - a virtio console (`virtio-serial-device` under QEMU microvm, whose COM1
//!   is port I/O only), found among the command line's virtio devices;
//! - nothing, in which case the results block in memory still tells.
//!
//! Only the boot CPU prints.

use core::cell::UnsafeCell;
use core::fmt;

use crate::{dma, mmio, virtio};

const THR: u64 = 0;
const LSR: u64 = 5;
const LSR_THR_EMPTY: u8 = 0x20;
const VCONSOLE_BUF: usize = 4096;

// One static instance: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Sink {
    None,
    Uart(u64),
    Virtio { queue: virtio::Queue, buf: u64 },
}

struct Global(UnsafeCell<Sink>);
// SAFETY: only the boot CPU touches the console (documented above).
unsafe impl Sync for Global {}
static CONSOLE: Global = Global(UnsafeCell::new(Sink::None));

fn sink() -> &'static mut Sink {
    // SAFETY: single user (the boot CPU), and no reference outlives a call.
    unsafe { &mut *CONSOLE.0.get() }
}

/// Uses the MMIO UART at `base`.
pub fn use_uart(base: u64) {
    *sink() = Sink::Uart(base);
}

/// Uses a virtio console at `base`, if one is there; returns whether.
pub fn use_virtio_console(base: u64) -> bool {
    let Some(dev) = virtio::Device::init(base, virtio::ID_CONSOLE, 0) else {
        return false;
    };
    // receiveq0 must exist for the device to go live; we never use it.
    let (Some(_rx), Some(tx), Some(buf)) = (
        dev.queue(0, 4),
        dev.queue(1, 4),
        dma::alloc(VCONSOLE_BUF as u64, 64),
    ) else {
        return false;
    };
    if !dev.go() {
        return false;
    }
    *sink() = Sink::Virtio { queue: tx, buf };
    true
}

fn put_uart(base: u64, b: u8) {
    // A UART that never drains would hang us; give up after a while.
    for _ in 0..1_000_000 {
        if mmio::read::<u8>(base + LSR) & LSR_THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    mmio::write::<u8>(base + THR, b);
}

/// A console writer (`write!` into it).
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match sink() {
            Sink::None => {}
            Sink::Uart(base) => {
                for b in s.bytes() {
                    if b == b'\n' {
                        put_uart(*base, b'\r');
                    }
                    put_uart(*base, b);
                }
            }
            Sink::Virtio { queue, buf } => {
                for chunk in s.as_bytes().chunks(VCONSOLE_BUF) {
                    dma::bytes(*buf, chunk.len()).copy_from_slice(chunk);
                    if queue.submit(&[(*buf, chunk.len() as u32, false)]).is_some() {
                        let _ = queue.wait_used();
                    }
                }
            }
        }
        Ok(())
    }
}

/// Prints a line on the console.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}
