//! The kernel command line, written NUL-terminated at `CMDLINE_START`
//! within the limit the kernel declares.

use linux_loader::cmdline::Cmdline;
use linux_loader::loader;
use vm_memory::{Bytes, GuestAddress};

use super::{KernelLoadError, LoadedKernel};
use crate::layout::CMDLINE_START;
use crate::memory::GuestMemoryMmap;

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
    use crate::layout::CMDLINE_MAX_SIZE;
    use crate::loader::BootProtocol;
    use crate::memory::create_guest_memory;

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
