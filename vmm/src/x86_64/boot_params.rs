//! What the kernel is told at entry: the e820 memory map, the command line,
//! the initrd and where the ACPI RSDP is, as a PVH `hvm_start_info` or a
//! Linux zero page (`boot_params`), written with `linux-loader`'s boot
//! configurators.

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use thiserror::Error;
use vm_memory::GuestAddress;

use crate::layout::{
    ram_regions, CMDLINE_START, EBDA_START, HIGH_MEMORY_START, PVH_INFO_START, PVH_MEMMAP_END,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::loader::InitrdRange;
use crate::memory::GuestMemoryMmap;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// Boot parameters could not be written.
#[derive(Debug, Error)]
pub enum BootParamsError {
    /// linux-loader could not write them.
    #[error("cannot write the {0} boot parameters into guest memory")]
    Write(&'static str, #[source] linux_loader::configurator::Error),
    /// The memory map has more entries than there is room for.
    #[error("the memory map has {0} entries, more than the boot parameters hold")]
    TooManyEntries(usize),
}

/// The guest's memory map: base memory up to the EBDA, the EBDA/legacy hole
/// reserved up to 1 MiB (the MP table and the ACPI tables live there), then
/// RAM.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIGH_MEMORY_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_regions(mem_size) {
        // Below 1 MiB is covered above.
        let end = start + len;
        let start = start.max(HIGH_MEMORY_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Writes a PVH start info with the memory map, command line, initrd and
/// the RSDP's address `rsdp`.
pub fn write_pvh(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    initrd: Option<InitrdRange>,
    rsdp: u64,
) -> Result<(), BootParamsError> {
    let map = e820_map(mem_size);
    let room = (PVH_MEMMAP_END - PVH_MEMMAP_START) as usize
        / std::mem::size_of::<hvm_memmap_table_entry>();
    if map.len() > room {
        return Err(BootParamsError::TooManyEntries(map.len()));
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        rsdp_paddr: rsdp,
        ..Default::default()
    };
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some(initrd) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr: initrd.addr,
                size: initrd.size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| BootParamsError::Write("PVH", e))
}

/// Writes a Linux zero page; `header` is the bzImage's setup header, if any;
/// `rsdp` the RSDP's address.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdRange>,
    rsdp: u64,
) -> Result<(), BootParamsError> {
    let mut params = boot_params {
        acpi_rsdp_addr: rsdp,
        ..Default::default()
    };
    if let Some(header) = header {
        params.hdr = header;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        // Both fit in 32 bits: the initrd is placed below the MMIO gap.
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyEntries(map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootParamsError::Write("Linux", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    #[test]
    fn e820_covers_ram_and_reserves_the_legacy_hole() {
        let m = e820_map(128 << 20);
        assert_eq!(
            m,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x60400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (128 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
        let big = e820_map(5 << 30);
        assert_eq!(
            big[2],
            E820Entry {
                addr: 0x10_0000,
                size: MMIO_GAP_START - 0x10_0000,
                kind: E820_RAM
            }
        );
        assert_eq!(
            big[3],
            E820Entry {
                addr: MMIO_GAP_END,
                size: (5 << 30) - MMIO_GAP_START,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn pvh_start_info_points_at_map_and_initrd() {
        let mem = create_guest_memory(64 << 20).unwrap();
        write_pvh(
            &mem,
            64 << 20,
            Some(InitrdRange {
                addr: 0x300_0000,
                size: 42,
            }),
            0xe_0000,
        )
        .unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 42));
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 2 * 24))
            .unwrap();
        assert_eq!(last.addr + last.size, 64 << 20);
    }

    #[test]
    fn zero_page_has_cmdline_initrd_and_map() {
        let mem = create_guest_memory(64 << 20).unwrap();
        write_zero_page(
            &mem,
            64 << 20,
            None,
            10,
            Some(InitrdRange {
                addr: 0x300_0000,
                size: 7,
            }),
            0xe_0000,
        )
        .unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!(p.e820_entries, 3);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
    }
}
