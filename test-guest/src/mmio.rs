//! Volatile access to device registers by guest-physical address (the
//! guest runs identity-mapped, so addresses are pointers).

/// Reads a register.
pub fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: every address handed here is a device register or RAM the
    // page tables map (all of the low 4 GiB is mapped); a device that is
    // not there reads as whatever the VMM answers, never a fault.
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

/// Writes a register.
pub fn write<T: Copy>(addr: u64, value: T) {
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile(addr as *mut T, value) }
}
