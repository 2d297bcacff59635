//! Puts the kernel, the initrd and the command line into guest memory.
//!
//! Loading itself is `linux-loader`'s: an ELF vmlinux (entered through its
//! PVH note when it has one, else in 64-bit mode as Linux's boot protocol
//! allows) or a bzImage (64-bit boot protocol). What this module adds is the
//! checks that turn a bad file into an error naming what is wrong with it:
//! the format, a truncated file, a kernel that does not fit the guest.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::mem::size_of;
use std::path::{Path, PathBuf};

use linux_loader::bootparam::setup_header;
use linux_loader::cmdline::Cmdline;
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader};
use thiserror::Error;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::layout::{
    low_ram_end, CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_MEMORY_START, MMIO_GAP_END,
};
use crate::memory::GuestMemoryMmap;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy)]
pub enum BootProtocol {
    /// 32-bit protected mode at the PVH entry, start info in EBX.
    Pvh {
        /// Guest-physical entry point.
        entry: u64,
    },
    /// 64-bit long mode, zero page in RSI (Linux's 64-bit boot protocol).
    Linux64 {
        /// Guest-physical entry point.
        entry: u64,
        /// The bzImage's setup header (None for an ELF vmlinux).
        header: Option<setup_header>,
    },
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// How to enter it.
    pub protocol: BootProtocol,
    /// First guest-physical address after it (and after its own working
    /// space, for a bzImage that decompresses itself).
    pub end: u64,
    /// The longest command line it accepts, NUL included.
    pub cmdline_capacity: usize,
    /// Highest address an initrd may end at.
    pub initrd_limit: u64,
}

/// Where the initrd went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRange {
    /// Guest-physical start (page-aligned).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A kernel, initrd or command line that cannot be loaded.
#[derive(Debug, Error)]
pub enum KernelLoadError {
    /// The file cannot be read.
    #[error("cannot read {what} {path}")]
    Read {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("kernel {path} is neither an ELF vmlinux nor a bzImage (starts with {magic:02x?})")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Its first bytes.
        magic: Vec<u8>,
    },
    /// The file ends before something it declares.
    #[error("kernel {path} is truncated: {what} needs bytes up to {needs} but the file has {len}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What is cut off.
        what: String,
        /// File offset it needs.
        needs: u64,
        /// File length.
        len: u64,
    },
    /// The kernel needs memory the guest does not have.
    #[error("kernel {path} needs guest memory up to {needs:#x}, but RAM below the MMIO gap ends at {ram_end:#x}; give the VM more memory")]
    DoesNotFit {
        /// The file.
        path: PathBuf,
        /// Highest address it needs.
        needs: u64,
        /// Where usable RAM ends.
        ram_end: u64,
    },
    /// A bzImage that cannot be booted in 64-bit mode.
    #[error("kernel {path}: bzImage boot protocol {version:#x} has no 64-bit entry point (needs 2.12 or later with XLF_KERNEL_64)")]
    No64BitEntry {
        /// The file.
        path: PathBuf,
        /// Its boot protocol version.
        version: u16,
    },
    /// `linux-loader` rejected the image.
    #[error("kernel {path} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// linux-loader's finding.
        #[source]
        source: loader::Error,
    },
    /// The initrd does not fit.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory: {available} bytes are free between the kernel and the top of low RAM; give the VM more memory")]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Room there is.
        available: u64,
    },
    /// The command line is longer than this kernel accepts.
    #[error("command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit (without NUL).
        max: usize,
    },
    /// The command line could not be written.
    #[error("cannot place the command line")]
    Cmdline(#[source] loader::Error),
    /// The command line could not be built.
    #[error("invalid command line")]
    CmdlineSyntax(#[source] linux_loader::cmdline::Error),
    /// Guest memory could not be written.
    #[error("cannot write {what} into guest memory")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// Offset of the 64-bit entry point in a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// xloadflags bit: the kernel has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 1;

/// Loads the kernel at `path` into `mem` (of `mem_size` bytes).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
) -> Result<LoadedKernel, KernelLoadError> {
    let read_err = |source| KernelLoadError::Read {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let mut head = [0u8; BZIMAGE_MAGIC_OFFSET + 4];
    let n = read_up_to(&mut file, &mut head).map_err(read_err)?;
    let head = &head[..n];

    if head.starts_with(ELF_MAGIC) {
        check_elf(&mut file, len, mem_size, path)?;
        load_elf(mem, mem_size, &mut file, path)
    } else if head.get(BZIMAGE_MAGIC_OFFSET..) == Some(BZIMAGE_MAGIC.as_slice()) {
        load_bzimage(mem, mem_size, &mut file, path)
    } else {
        Err(KernelLoadError::UnknownFormat {
            path: path.to_path_buf(),
            magic: head.iter().take(8).copied().collect(),
        })
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Checks what linux-loader would only report as a failed read: that the
/// file holds every header and segment it declares, and that every segment
/// lands in RAM.
fn check_elf(file: &mut File, len: u64, mem_size: u64, path: &Path) -> Result<(), KernelLoadError> {
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
    let phdr_len = size_of::<Elf64_Phdr>() as u64;
    let table_end = u64::from(ehdr.e_phnum)
        .checked_mul(phdr_len)
        .and_then(|size| size.checked_add(ehdr.e_phoff))
        .unwrap_or(u64::MAX);
    if ehdr.e_phentsize as u64 != phdr_len && ehdr.e_phnum != 0 {
        return Err(KernelLoadError::Corrupt {
            path: path.to_path_buf(),
            source: loader::elf::Error::InvalidProgramHeaderSize.into(),
        });
    }
    if table_end > len {
        return Err(truncated(
            format!("{} program headers", ehdr.e_phnum),
            table_end,
        ));
    }
    file.seek(SeekFrom::Start(ehdr.e_phoff)).map_err(read_err)?;
    let ram_end = low_ram_end(mem_size);
    for i in 0..ehdr.e_phnum {
        let mut phdr = Elf64_Phdr::default();
        file.read_exact(phdr.as_mut_slice()).map_err(read_err)?;
        if phdr.p_type != PT_LOAD {
            continue;
        }
        let file_end = phdr.p_offset.saturating_add(phdr.p_filesz);
        if file_end > len {
            return Err(truncated(format!("segment {i}"), file_end));
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

fn load_elf(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    file: &mut File,
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

fn load_bzimage(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    file: &mut File,
    path: &Path,
) -> Result<LoadedKernel, KernelLoadError> {
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
    // The image decompresses itself in place and needs init_size bytes from
    // its load address to do so.
    let ram_end = low_ram_end(mem_size);
    let needs = result
        .kernel_load
        .0
        .saturating_add(u64::from(header.init_size))
        .max(result.kernel_end);
    if needs > ram_end {
        return Err(KernelLoadError::DoesNotFit {
            path: path.to_path_buf(),
            needs,
            ram_end,
        });
    }
    // cmdline_size excludes the NUL; initrd_addr_max is the last byte.
    let cmdline_capacity = (header.cmdline_size as usize + 1).min(CMDLINE_MAX_SIZE);
    let initrd_limit = (u64::from(header.initrd_addr_max) + 1).min(ram_end);
    Ok(LoadedKernel {
        protocol: BootProtocol::Linux64 {
            entry: result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            header: Some(header),
        },
        end: needs,
        cmdline_capacity,
        initrd_limit,
    })
}

/// Places the initrd at `path` as high as `kernel` allows, page-aligned.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<InitrdRange, KernelLoadError> {
    let read_err = |source| KernelLoadError::Read {
        what: "initrd",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let lowest = kernel.end.next_multiple_of(0x1000);
    let top = kernel.initrd_limit.min(MMIO_GAP_END);
    let available = top.saturating_sub(lowest);
    let addr = top.saturating_sub(size) & !0xfff;
    if size > available || addr < lowest {
        return Err(KernelLoadError::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
            available,
        });
    }
    let len = usize::try_from(size).map_err(|_| KernelLoadError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        available,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| KernelLoadError::GuestMemory {
            what: "the initrd",
            source,
        })?;
    Ok(InitrdRange { addr, size })
}

/// Writes `cmdline` (NUL-terminated) at [`CMDLINE_START`]; returns its
/// length without the NUL.
pub fn load_cmdline(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
) -> Result<usize, KernelLoadError> {
    let max = kernel.cmdline_capacity - 1;
    if cmdline.len() > max {
        return Err(KernelLoadError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let cl = Cmdline::try_from(cmdline, kernel.cmdline_capacity)
        .map_err(KernelLoadError::CmdlineSyntax)?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(KernelLoadError::Cmdline)?;
    let written = cl
        .as_cstring()
        .map_err(KernelLoadError::CmdlineSyntax)?
        .as_bytes()
        .len();
    // Make sure nothing of a longer, earlier command line survives.
    mem.write_obj(0u8, GuestAddress(CMDLINE_START + written as u64))
        .map_err(|source| KernelLoadError::GuestMemory {
            what: "the command line",
            source,
        })?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use std::io::Write;

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("corral-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        path
    }

    /// A minimal valid ELF64 with one PT_LOAD segment at `paddr`.
    fn tiny_elf(paddr: u64, payload: &[u8]) -> Vec<u8> {
        let mut ehdr = Elf64_Ehdr::default();
        ehdr.e_ident[..4].copy_from_slice(ELF_MAGIC);
        ehdr.e_ident[4] = 2; // 64-bit
        ehdr.e_ident[5] = 1; // little endian
        ehdr.e_ident[6] = 1;
        ehdr.e_type = 2;
        ehdr.e_machine = 62;
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
        let k = load_kernel(&mem, 16 << 20, &path).unwrap();
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
    fn rejects_bad_kernels_by_name() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let mem_size = 16 << 20;

        let junk = temp_file("junk", b"#!/bin/sh\necho not a kernel\n");
        let e = load_kernel(&mem, mem_size, &junk).unwrap_err();
        assert!(matches!(e, KernelLoadError::UnknownFormat { .. }), "{e}");
        assert!(e
            .to_string()
            .contains("neither an ELF vmlinux nor a bzImage"));

        let elf = tiny_elf(0x20_0000, &[0x90; 4096]);
        let cut = temp_file("cut.elf", &elf[..elf.len() - 100]);
        let e = load_kernel(&mem, mem_size, &cut).unwrap_err();
        assert!(matches!(e, KernelLoadError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("segment 0"), "{e}");

        let header_only = temp_file("hdr.elf", &elf[..40]);
        let e = load_kernel(&mem, mem_size, &header_only).unwrap_err();
        assert!(e.to_string().contains("the ELF header"), "{e}");

        let big = temp_file("big.elf", &tiny_elf(15 << 20, &[0u8; 0x10_0000]));
        let e = load_kernel(&mem, mem_size, &big).unwrap_err();
        assert!(matches!(e, KernelLoadError::DoesNotFit { .. }), "{e}");
    }

    #[test]
    fn initrd_goes_high_and_must_fit() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let kernel = LoadedKernel {
            protocol: BootProtocol::Pvh { entry: 0x10_0000 },
            end: 0x20_0000,
            cmdline_capacity: CMDLINE_MAX_SIZE,
            initrd_limit: 16 << 20,
        };
        let small = temp_file("initrd", &[7u8; 5000]);
        let r = load_initrd(&mem, &kernel, &small).unwrap();
        assert_eq!(
            r,
            InitrdRange {
                addr: (16 << 20) - 0x2000,
                size: 5000
            }
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(r.addr + 4999)).unwrap(), 7);

        let huge = temp_file("initrd-huge", &vec![0u8; 15 << 20]);
        let e = load_initrd(&mem, &kernel, &huge).unwrap_err();
        assert!(matches!(e, KernelLoadError::InitrdTooLarge { .. }), "{e}");
    }

    #[test]
    fn cmdline_is_written_and_bounded() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let mut kernel = LoadedKernel {
            protocol: BootProtocol::Pvh { entry: 0x10_0000 },
            end: 0x20_0000,
            cmdline_capacity: CMDLINE_MAX_SIZE,
            initrd_limit: 16 << 20,
        };
        assert_eq!(
            load_cmdline(&mem, &kernel, "console=ttyS0 quiet").unwrap(),
            19
        );
        let mut buf = [0u8; 20];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 quiet\0");
        kernel.cmdline_capacity = 8;
        let e = load_cmdline(&mem, &kernel, "console=ttyS0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line is 13 bytes; this kernel accepts at most 7"
        );
    }
}
