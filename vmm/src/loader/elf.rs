//! ELF vmlinux: checked here, loaded by `linux-loader`, entered through its
//! PVH note when it has one (else in 64-bit mode at its entry point).

use std::io::{Read, Seek, SeekFrom};
use std::mem::size_of;
use std::path::Path;

use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{self, Elf, KernelLoader};
use vm_memory::{ByteValued, GuestAddress};

use super::{BootProtocol, BootReader, KernelLoadError, LoadedKernel};
use crate::layout::{low_ram_end, CMDLINE_MAX_SIZE, HIGH_MEMORY_START};
use crate::memory::GuestMemoryMmap;

const ELFCLASS64: u8 = 2;
const EM_X86_64: u16 = 62;

/// Checks what linux-loader would only report as a failed read, or not at
/// all: a 64-bit x86 ELF, the file holding every header and segment it
/// declares, every segment landing in RAM above the boot structures.
pub(super) fn check(
    file: &mut BootReader,
    len: u64,
    mem_size: u64,
    path: &Path,
) -> Result<(), KernelLoadError> {
    let truncated = |what: String, needs: u64| KernelLoadError::Truncated {
        path: path.to_path_buf(),
        what,
        needs,
        len,
    };
    let read_err = |source| KernelLoadError::Read {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let ehdr_len = size_of::<Elf64_Ehdr>() as u64;
    if len < ehdr_len {
        return Err(truncated("the ELF header".into(), ehdr_len));
    }
    let mut ehdr = Elf64_Ehdr::default();
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    file.read_exact(ehdr.as_mut_slice()).map_err(read_err)?;
    if ehdr.e_ident[4] != ELFCLASS64 || ehdr.e_machine != EM_X86_64 {
        return Err(KernelLoadError::Not64Bit {
            path: path.to_path_buf(),
            class: ehdr.e_ident[4],
            machine: ehdr.e_machine,
        });
    }
    let phdr_len = size_of::<Elf64_Phdr>() as u64;
    if u64::from(ehdr.e_phentsize) != phdr_len && ehdr.e_phnum != 0 {
        return Err(KernelLoadError::Corrupt {
            path: path.to_path_buf(),
            source: loader::elf::Error::InvalidProgramHeaderSize.into(),
        });
    }
    let table_end = u64::from(ehdr.e_phnum)
        .checked_mul(phdr_len)
        .and_then(|size| size.checked_add(ehdr.e_phoff))
        .unwrap_or(u64::MAX);
    if table_end > len {
        return Err(truncated(
            format!("{} program headers", ehdr.e_phnum),
            table_end,
        ));
    }
    file.seek(SeekFrom::Start(ehdr.e_phoff)).map_err(read_err)?;
    let ram_end = low_ram_end(mem_size);
    for segment in 0..ehdr.e_phnum {
        let mut phdr = Elf64_Phdr::default();
        file.read_exact(phdr.as_mut_slice()).map_err(read_err)?;
        if phdr.p_type != PT_LOAD {
            continue;
        }
        let file_end = phdr.p_offset.saturating_add(phdr.p_filesz);
        if file_end > len {
            return Err(truncated(format!("segment {segment}"), file_end));
        }
        if phdr.p_paddr < HIGH_MEMORY_START {
            return Err(KernelLoadError::SegmentInBootArea {
                path: path.to_path_buf(),
                segment,
                addr: phdr.p_paddr,
            });
        }
        let mem_end = phdr.p_paddr.saturating_add(phdr.p_memsz);
        if mem_end > ram_end {
            return Err(KernelLoadError::DoesNotFit {
                path: path.to_path_buf(),
                needs: mem_end,
                ram_end,
            });
        }
    }
    Ok(())
}

/// Loads a checked ELF.
pub(super) fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    file: &mut BootReader,
    path: &Path,
) -> Result<LoadedKernel, KernelLoadError> {
    let result =
        Elf::load(mem, None, file, Some(GuestAddress(HIGH_MEMORY_START))).map_err(|source| {
            KernelLoadError::Corrupt {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let protocol = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => BootProtocol::Pvh { entry: entry.0 },
        _ => BootProtocol::Linux64 {
            entry: result.kernel_load.0,
            header: None,
        },
    };
    Ok(LoadedKernel {
        protocol,
        end: result.kernel_end,
        cmdline_capacity: CMDLINE_MAX_SIZE,
        initrd_limit: low_ram_end(mem_size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::test_util::temp_file;
    use crate::loader::{load_kernel, BootFile};
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    /// A minimal valid ELF64 with one PT_LOAD segment at `paddr`.
    pub(crate) fn tiny_elf(paddr: u64, payload: &[u8]) -> Vec<u8> {
        let mut ehdr = Elf64_Ehdr::default();
        ehdr.e_ident[..4].copy_from_slice(b"\x7fELF");
        ehdr.e_ident[4] = ELFCLASS64;
        ehdr.e_ident[5] = 1; // little endian
        ehdr.e_ident[6] = 1;
        ehdr.e_type = 2;
        ehdr.e_machine = EM_X86_64;
        ehdr.e_version = 1;
        ehdr.e_entry = paddr;
        ehdr.e_phoff = size_of::<Elf64_Ehdr>() as u64;
        ehdr.e_ehsize = size_of::<Elf64_Ehdr>() as u16;
        ehdr.e_phentsize = size_of::<Elf64_Phdr>() as u16;
        ehdr.e_phnum = 1;
        let data_off = (size_of::<Elf64_Ehdr>() + size_of::<Elf64_Phdr>()) as u64;
        let phdr = Elf64_Phdr {
            p_type: PT_LOAD,
            p_flags: 7,
            p_offset: data_off,
            p_vaddr: paddr,
            p_paddr: paddr,
            p_filesz: payload.len() as u64,
            p_memsz: payload.len() as u64 + 0x1000,
            p_align: 0x1000,
        };
        let mut out = ehdr.as_slice().to_vec();
        out.extend_from_slice(phdr.as_slice());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn loads_an_elf_without_pvh_note_for_64bit_entry() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let path = temp_file("ok.elf", &tiny_elf(0x20_0000, &[0x90; 64]));
        let k = load_kernel(&mem, 16 << 20, &path.clone().into()).unwrap();
        assert!(matches!(
            k.protocol,
            BootProtocol::Linux64 {
                entry: 0x20_0000,
                header: None
            }
        ));
        assert_eq!(k.end, 0x20_0000 + 64 + 0x1000);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(), 0x90);
    }

    #[test]
    fn rejects_bad_elves_by_name() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let mem_size = 16 << 20;
        let elf = tiny_elf(0x20_0000, &[0x90; 4096]);
        let cut = temp_file("cut.elf", &elf[..elf.len() - 100]);
        let e = load_kernel(&mem, mem_size, &cut.clone().into()).unwrap_err();
        assert!(matches!(e, KernelLoadError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("segment 0"), "{e}");

        let header_only = temp_file("hdr.elf", &elf[..40]);
        let e = load_kernel(&mem, mem_size, &header_only.clone().into()).unwrap_err();
        assert!(e.to_string().contains("the ELF header"), "{e}");

        let big = temp_file("big.elf", &tiny_elf(15 << 20, &[0u8; 0x10_0000]));
        let e = load_kernel(&mem, mem_size, &big.clone().into()).unwrap_err();
        assert!(matches!(e, KernelLoadError::DoesNotFit { .. }), "{e}");

        let low = temp_file("low.elf", &tiny_elf(0x8000, &[0u8; 16]));
        let e = load_kernel(&mem, mem_size, &low.clone().into()).unwrap_err();
        assert!(
            matches!(e, KernelLoadError::SegmentInBootArea { addr: 0x8000, .. }),
            "{e}"
        );

        let mut elf32 = elf.clone();
        elf32[4] = 1;
        let e =
            load_kernel(&mem, mem_size, &BootFile::from(temp_file("32.elf", &elf32))).unwrap_err();
        assert!(
            e.to_string().contains("not a 64-bit x86 ELF (class 1"),
            "{e}"
        );
    }
}
