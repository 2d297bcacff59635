//! The PVH start info the VMM leaves for us: command line and memory map.

use crate::mmio;

const MAGIC: u32 = 0x336e_c578;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// What the guest needs from the start info.
pub struct StartInfo {
    pub cmdline_addr: u64,
    pub memmap_addr: u64,
    pub memmap_entries: u32,
}

impl StartInfo {
    /// Reads the start info at `addr`; None if its magic is wrong.
    pub fn read(addr: u64) -> Option<Self> {
        if mmio::read::<u32>(addr) != MAGIC {
            return None;
        }
        Some(Self {
            cmdline_addr: mmio::read(addr + 0x18),
            memmap_addr: mmio::read(addr + 0x28),
            memmap_entries: mmio::read(addr + 0x30),
        })
    }

    /// Copies the NUL-terminated command line into `buf`; returns its length.
    pub fn copy_cmdline(&self, buf: &mut [u8]) -> usize {
        if self.cmdline_addr == 0 {
            return 0;
        }
        let mut n = 0;
        while n < buf.len() {
            let b: u8 = mmio::read(self.cmdline_addr + n as u64);
            if b == 0 {
                break;
            }
            buf[n] = b;
            n += 1;
        }
        n
    }

    /// Whether `[addr, addr + len)` lies in one RAM entry of the memory map.
    pub fn is_ram(&self, addr: u64, len: u64) -> bool {
        (0..u64::from(self.memmap_entries.min(128))).any(|i| {
            let entry = self.memmap_addr + i * 24;
            let start: u64 = mmio::read(entry);
            let size: u64 = mmio::read(entry + 8);
            let kind: u32 = mmio::read(entry + 16);
            kind == E820_RAM && addr >= start && addr + len <= start.saturating_add(size)
        })
    }
}
