//! bzImage: loaded by `linux-loader` at its preferred 1 MiB and entered at
//! its 64-bit entry point (boot protocol 2.12+, `XLF_KERNEL_64`). The
//! compressed kernel decompresses itself; the check here makes sure the
//! guest has the memory that takes.

use std::path::Path;

use linux_loader::loader::{self, BzImage, KernelLoader};
use vm_memory::GuestAddress;

use super::{BootProtocol, BootReader, KernelLoadError, LoadedKernel};
use crate::layout::{low_ram_end, CMDLINE_MAX_SIZE, HIGH_MEMORY_START};
use crate::memory::GuestMemoryMmap;

/// Offset of the 64-bit entry point in a bzImage's protected-mode kernel.
const ENTRY_64BIT_OFFSET: u64 = 0x200;
/// xloadflags bit: the kernel has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 1;

/// Loads a bzImage of `len` bytes.
pub(super) fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    file: &mut BootReader,
    len: u64,
    path: &Path,
) -> Result<LoadedKernel, KernelLoadError> {
    let ram_end = low_ram_end(mem_size);
    let does_not_fit = |needs| KernelLoadError::DoesNotFit {
        path: path.to_path_buf(),
        needs,
        ram_end,
    };
    // The image is copied whole to 1 MiB (less its real-mode setup code).
    if HIGH_MEMORY_START.saturating_add(len) > ram_end {
        return Err(does_not_fit(HIGH_MEMORY_START.saturating_add(len)));
    }
    let result = BzImage::load(mem, None, file, Some(GuestAddress(HIGH_MEMORY_START))).map_err(
        |source| KernelLoadError::Corrupt {
            path: path.to_path_buf(),
            source,
        },
    )?;
    let Some(header) = result.setup_header else {
        return Err(KernelLoadError::Corrupt {
            path: path.to_path_buf(),
            source: loader::bzimage::Error::InvalidBzImage.into(),
        });
    };
    let version = header.version;
    if version < 0x020c || header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(KernelLoadError::No64BitEntry {
            path: path.to_path_buf(),
            version,
        });
    }
    let needs = decompression_end(
        result.kernel_load.0,
        header.kernel_alignment,
        header.pref_address,
        header.init_size,
    )
    .max(result.kernel_end);
    if needs > ram_end {
        return Err(does_not_fit(needs));
    }
    // cmdline_size excludes the NUL; initrd_addr_max is the last byte.
    let cmdline_capacity = (header.cmdline_size as usize + 1).min(CMDLINE_MAX_SIZE);
    let initrd_limit = (u64::from(header.initrd_addr_max) + 1).min(ram_end);
    Ok(LoadedKernel {
        protocol: BootProtocol::Linux64 {
            entry: result.kernel_load.0 + ENTRY_64BIT_OFFSET,
            header: Some(header),
        },
        end: needs,
        cmdline_capacity,
        initrd_limit,
    })
}

/// Where the kernel's self-decompression ends: its startup code moves the
/// image to `max(align_up(load, kernel_alignment), pref_address)` (the
/// kernel's LOAD_PHYSICAL_ADDR) and decompresses within `init_size` bytes
/// from there.
fn decompression_end(load: u64, kernel_alignment: u32, pref_address: u64, init_size: u32) -> u64 {
    let align = u64::from(kernel_alignment.max(1));
    let aligned = load.div_ceil(align).saturating_mul(align);
    aligned
        .max(pref_address)
        .saturating_add(u64::from(init_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompression_needs_room_from_the_preferred_address() {
        // A typical x86-64 kernel: 2 MiB alignment, LOAD_PHYSICAL_ADDR 16 MiB.
        let end = decompression_end(0x10_0000, 0x20_0000, 0x100_0000, 0x180_0000);
        assert_eq!(end, 0x100_0000 + 0x180_0000);
        // Loaded above the preferred address: aligned load address counts.
        assert_eq!(
            decompression_end(0x210_0000, 0x20_0000, 0x100_0000, 0x10),
            0x220_0010
        );
        assert_eq!(decompression_end(0x10_0000, 0, 0, 0x10), 0x10_0010);
    }
}
