//! The initrd: placed as high in low RAM as the kernel allows, page-aligned,
//! and never over the kernel or the boot structures below 1 MiB.

use vm_memory::{Bytes, GuestAddress};

use super::{BootFile, InitrdRange, KernelLoadError, LoadedKernel};
use crate::layout::{HIGH_MEMORY_START, MMIO_GAP_END};
use crate::memory::GuestMemoryMmap;

/// Places the initrd `source` as high as `kernel` allows, page-aligned.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    source: &BootFile,
) -> Result<InitrdRange, KernelLoadError> {
    let label = source.label();
    let path = label.as_path();
    let read_err = |source| KernelLoadError::Read {
        what: "initrd",
        path: path.to_path_buf(),
        source,
    };
    let (mut file, size) = source.open().map_err(read_err)?;
    let lowest = kernel.end.max(HIGH_MEMORY_START).next_multiple_of(0x1000);
    let top = kernel.initrd_limit.min(MMIO_GAP_END);
    let available = top.saturating_sub(lowest);
    let too_large = || KernelLoadError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        available,
    };
    let addr = top.saturating_sub(size) & !0xfff;
    if size > available || addr < lowest {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| KernelLoadError::GuestMemory {
            what: "the initrd",
            source,
        })?;
    Ok(InitrdRange { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::CMDLINE_MAX_SIZE;
    use crate::loader::test_util::temp_file;
    use crate::loader::BootProtocol;
    use crate::memory::create_guest_memory;

    fn kernel(end: u64) -> LoadedKernel {
        LoadedKernel {
            protocol: BootProtocol::Pvh { entry: 0x10_0000 },
            end,
            cmdline_capacity: CMDLINE_MAX_SIZE,
            initrd_limit: 16 << 20,
        }
    }

    #[test]
    fn initrd_goes_high_and_must_fit() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let small = temp_file("initrd", &[7u8; 5000]);
        let r = load_initrd(&mem, &kernel(0x20_0000), &small.clone().into()).unwrap();
        assert_eq!(
            r,
            InitrdRange {
                addr: (16 << 20) - 0x2000,
                size: 5000
            }
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(r.addr + 4999)).unwrap(), 7);

        let huge = temp_file("initrd-huge", &vec![0u8; 15 << 20]);
        let e = load_initrd(&mem, &kernel(0x20_0000), &huge.clone().into()).unwrap_err();
        assert!(matches!(e, KernelLoadError::InitrdTooLarge { .. }), "{e}");
        // Even with no kernel in the way, nothing goes below 1 MiB.
        let r = load_initrd(&mem, &kernel(0), &huge.clone().into()).unwrap();
        assert_eq!(r.addr, HIGH_MEMORY_START);
        let over = temp_file("initrd-over", &vec![0u8; (15 << 20) + 1]);
        let e = load_initrd(&mem, &kernel(0), &over.clone().into()).unwrap_err();
        assert!(matches!(e, KernelLoadError::InitrdTooLarge { .. }), "{e}");
    }
}
