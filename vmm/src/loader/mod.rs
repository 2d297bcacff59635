//! Puts the kernel, the initrd and the command line into guest memory.
//!
//! Loading itself is `linux-loader`'s: an ELF vmlinux (entered through its
//! PVH note when it has one, else in 64-bit mode as Linux's boot protocol
//! allows) or a bzImage (64-bit boot protocol). What these modules add is
//! the checks that turn a bad file into an error naming what is wrong with
//! it: the format, a truncated file, a kernel that does not fit the guest.
//!
//! - this file: the format sniffing, the shared types and errors;
//! - `elf`, `bzimage`: one format each;
//! - `initrd`, `cmdline`: the other two things a kernel is given.

mod bzimage;
mod cmdline;
mod elf;
mod initrd;
mod source;

pub use cmdline::load_cmdline;
pub use initrd::load_initrd;
pub use source::{BootFile, BootReader};

use std::io::{self, Read};
use std::path::PathBuf;

use linux_loader::bootparam::setup_header;
use linux_loader::loader;
use thiserror::Error;

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
    /// Not a 64-bit x86 ELF.
    #[error("kernel {path} is not a 64-bit x86 ELF (class {class}, machine {machine}); Corral boots x86-64 kernels")]
    Not64Bit {
        /// The file.
        path: PathBuf,
        /// ELF class byte (2 = 64-bit).
        class: u8,
        /// ELF machine (62 = x86-64).
        machine: u16,
    },
    /// A segment would overwrite the boot structures below 1 MiB.
    #[error("kernel {path}: segment {segment} loads at {addr:#x}, below 1 MiB where the boot structures live")]
    SegmentInBootArea {
        /// The file.
        path: PathBuf,
        /// Segment index.
        segment: u16,
        /// Its physical address.
        addr: u64,
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

/// Loads the kernel `source` into `mem` (of `mem_size` bytes).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    source: &BootFile,
) -> Result<LoadedKernel, KernelLoadError> {
    let label = source.label();
    let path = label.as_path();
    let read_err = |source| KernelLoadError::Read {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let (mut file, len) = source.open().map_err(read_err)?;
    let mut head = [0u8; BZIMAGE_MAGIC_OFFSET + 4];
    let n = read_up_to(&mut file, &mut head).map_err(read_err)?;
    let head = &head[..n];

    if head.starts_with(ELF_MAGIC) {
        elf::check(&mut file, len, mem_size, path)?;
        elf::load(mem, mem_size, &mut file, path)
    } else if head.get(BZIMAGE_MAGIC_OFFSET..) == Some(BZIMAGE_MAGIC.as_slice()) {
        bzimage::load(mem, mem_size, &mut file, len, path)
    } else {
        Err(KernelLoadError::UnknownFormat {
            path: path.to_path_buf(),
            magic: head.iter().take(8).copied().collect(),
        })
    }
}

fn read_up_to(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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

/// Helpers for the submodules' tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::io::Write;
    use std::path::PathBuf;

    /// Writes `bytes` to a fresh file under this process's temp directory.
    pub(crate) fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("corral-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        path
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::temp_file;
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn unknown_formats_are_named() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let junk = temp_file("junk", b"#!/bin/sh\necho not a kernel\n");
        let e = load_kernel(&mem, 16 << 20, &junk.into()).unwrap_err();
        assert!(matches!(e, KernelLoadError::UnknownFormat { .. }), "{e}");
        assert!(e
            .to_string()
            .contains("neither an ELF vmlinux nor a bzImage"));
    }
}
