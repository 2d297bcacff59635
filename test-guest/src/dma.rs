//! Memory for device buffers and rings: a bump allocator over a fixed
//! guest-physical window (identity-mapped, so addresses are pointers).

use core::sync::atomic::{AtomicU64, Ordering};

/// Start of the window (past the image and the results block).
pub const DMA_BASE: u64 = 0x0100_0000;
/// Size of the window.
pub const DMA_SIZE: u64 = 0x0200_0000;

static NEXT: AtomicU64 = AtomicU64::new(DMA_BASE);

/// `len` bytes aligned to `align` (a power of two), zeroed; None when the
/// window is exhausted.
pub fn alloc(len: u64, align: u64) -> Option<u64> {
    let mut cur = NEXT.load(Ordering::SeqCst);
    loop {
        let start = (cur + align - 1) & !(align - 1);
        let end = start.checked_add(len)?;
        if end > DMA_BASE + DMA_SIZE {
            return None;
        }
        match NEXT.compare_exchange(cur, end, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => {
                // SAFETY: [start, end) lies in the DMA window, which the boot
                // CPU checked is RAM, and was handed out to nobody else.
                unsafe { core::ptr::write_bytes(start as *mut u8, 0, len as usize) };
                return Some(start);
            }
            Err(now) => cur = now,
        }
    }
}

/// A byte slice over allocated DMA memory.
pub fn bytes(addr: u64, len: usize) -> &'static mut [u8] {
    // SAFETY: callers pass ranges returned by `alloc`, which are RAM, live
    // for the whole run and are used by one CPU at a time; devices write
    // them only while a request we submitted is outstanding.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}
