//! The guest-physical memory map of a Corral VM (x86_64).
//!
//! ```text
//! 0x0000_0500  boot GDT (64-bit Linux boot and PVH), 0x530 boot IDT
//! 0x0000_6000  PVH start info, module list, memory map
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_9000  identity page tables for 64-bit Linux boot (PML4, PDPT, PD)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA; reserved in the e820 map up to 1 MiB)
//! 0x000e_0000  ACPI tables (reserved, as above): the RSDP first, where Linux
//!              scans for it, then DSDT, MADT, FADT and XSDT (a few KiB)
//! 0x0010_0000  kernel (ELF segments at their physical addresses, or bzImage)
//!   ...        initrd, at the top of RAM below the MMIO gap
//! 0xc000_0000  MMIO gap (1 GiB): no RAM here
//! 0xd000_0000    boot timer          (one page)
//! 0xd000_1000    console UART, MMIO window (eight byte registers)
//! 0xd000_2000    ACPI sleep/reset registers
//! 0xd100_0000    virtio-mmio devices (a page each)
//! 0xfec0_0000    I/O APIC
//! 0xfee0_0000    local APICs
//! 0x1_0000_0000  RAM beyond 3 GiB continues here
//! ```
//!
//! Port I/O: COM1 at 0x3f8 (IRQ 4), i8042 at 0x60/0x64.

/// Boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty; the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x530;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// End of the room for the PVH memory map.
pub const PVH_MEMMAP_END: u64 = ZERO_PAGE_START;
/// Linux `boot_params`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack for 64-bit Linux boot.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the boot page tables.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the boot page tables.
pub const PDPTE_START: u64 = 0xa000;
/// PD of the boot page tables (identity-maps the first GiB with 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line, including its NUL (Linux x86's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA, where the MP table goes; reserved from here to 1 MiB.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of the ACPI tables, the RSDP first: the BIOS area (0xe0000 to
/// 1 MiB) that Linux scans for the RSDP, inside the e820 range reserved from
/// [`EBDA_START`], well above the largest MP table.
pub const ACPI_START: u64 = 0xe_0000;
/// End (exclusive) of the room for the ACPI tables.
pub const ACPI_END: u64 = HIGH_MEMORY_START;
/// Start of memory above the legacy 1 MiB.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (exclusive): 4 GiB.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Boot-timer device.
pub const BOOT_TIMER_START: u64 = 0xd000_0000;
/// MMIO window of the console UART.
pub const SERIAL_MMIO_START: u64 = 0xd000_1000;
/// ACPI hardware-reduced sleep/reset registers.
pub const POWER_REGISTERS_START: u64 = 0xd000_2000;
/// First virtio-mmio device slot.
pub const VIRTIO_MMIO_START: u64 = 0xd100_0000;
/// I/O APIC.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC.
pub const APIC_START: u64 = 0xfee0_0000;
/// Three pages KVM needs for the TSS of real-mode emulation (Intel).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// One page KVM needs for the identity map of real-mode emulation (Intel).
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;

/// COM1.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
/// COM1's interrupt line.
pub const SERIAL_IRQ: u32 = 4;

/// The RAM regions `(start, length)` for `mem_size` bytes of guest memory:
/// below the MMIO gap first, the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut regions = vec![(0, low)];
    if mem_size > low {
        regions.push((MMIO_GAP_END, mem_size - low));
    }
    regions
}

/// End (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]
        );
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT_START, BOOT_GDT_START + 5 * 8),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (PVH_INFO_START, PVH_MODLIST_START),
            (PVH_MODLIST_START, PVH_MEMMAP_START),
            (PVH_MEMMAP_START, PVH_MEMMAP_END),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (PML4_START, PDE_START + 0x1000),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (EBDA_START, ACPI_START),
            (ACPI_START, ACPI_END),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{:x?} overlaps {:x?}",
                pair[0],
                pair[1]
            );
        }
        const {
            assert!(
                BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000
            )
        };
    }
}
