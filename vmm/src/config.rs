//! What a VM is made of, and the checks that run before anything is built.
//!
//! [`VmConfig::validate`] rejects every value that cannot work, with an error
//! that names it, before a KVM fd is opened; limits that only KVM knows (its
//! vCPU maximum) are checked when the VM is created.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::console::ConsoleConfig;
use crate::layout::CMDLINE_MAX_SIZE;
pub use crate::loader::BootFile;
pub use corral_devices::virtio::block::{DiskCache, DiskConfig};
pub use corral_devices::virtio::net::NetConfig;
pub use corral_devices::virtio::vsock::VsockConfig;

/// Smallest guest memory: the boot structures, a kernel at 1 MiB and room to run.
pub const MIN_MEMORY_MIB: u64 = 8;
/// Command line used when the caller gives none, suited to a micro-VM:
/// console on COM1; a reboot request (which ends the VM) through the FADT's
/// reset register (Linux falls back to the i8042 without ACPI), and one
/// second after a panic; no probing of hardware a micro-VM lacks (PCI, a
/// second UART, PS/2 extras). Power-off is ACPI S5 through the FADT.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=a panic=1 pci=off nomodule \
     8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// A VM to build.
#[derive(Debug)]
pub struct VmConfig {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// ELF vmlinux (PVH entry preferred) or bzImage.
    pub kernel: BootFile,
    /// Optional initrd/initramfs.
    pub initrd: Option<BootFile>,
    /// Kernel command line, exactly as given to the guest.
    pub cmdline: String,
    /// Where the serial console goes and where its input comes from.
    pub console: ConsoleConfig,
    /// virtio-blk disks, in slot order.
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces, in slot order (after the disks).
    pub nets: Vec<NetConfig>,
    /// A virtio-vsock device (after the nets).
    pub vsock: Option<VsockConfig>,
    /// Seccomp filters on the VM's threads (on by default).
    pub seccomp: crate::seccomp::SeccompPolicy,
}

impl VmConfig {
    /// One vCPU, 128 MiB, [`DEFAULT_CMDLINE`], console on stdout.
    pub fn new(kernel: impl Into<BootFile>) -> Self {
        Self {
            vcpus: 1,
            memory_mib: 128,
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            console: ConsoleConfig::default(),
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            seccomp: crate::seccomp::SeccompPolicy::Enforce,
        }
    }

    /// Guest memory in bytes (valid after [`VmConfig::validate`]).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    /// Checks every value that can be checked without KVM.
    pub fn validate(&self) -> Result<(), VmConfigError> {
        if self.vcpus == 0 {
            return Err(VmConfigError::NoVcpus);
        }
        self.validate_memory(host_memory_mib())?;
        check_boot_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_boot_file("initrd", initrd)?;
        }
        validate_cmdline(&self.cmdline)
    }

    fn validate_memory(&self, host_mib: Option<u64>) -> Result<(), VmConfigError> {
        let mib = self.memory_mib;
        if mib == 0 {
            return Err(VmConfigError::NoMemory);
        }
        if mib < MIN_MEMORY_MIB {
            return Err(VmConfigError::MemoryTooSmall {
                mib,
                min: MIN_MEMORY_MIB,
            });
        }
        match host_mib {
            Some(host) if mib > host => Err(VmConfigError::MemoryTooLarge { mib, host }),
            // Without a host figure, still refuse sizes no address space holds.
            None if mib.checked_shl(20).is_none_or(|b| b >> 20 != mib) => {
                Err(VmConfigError::MemoryUnrepresentable { mib })
            }
            _ => Ok(()),
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, Error)]
pub enum VmConfigError {
    /// Zero vCPUs.
    #[error("vCPU count 0: a VM needs at least one vCPU")]
    NoVcpus,
    /// More vCPUs than KVM or the MP table allow.
    #[error("vCPU count {requested}: at most {limit} are supported here ({why})")]
    TooManyVcpus {
        /// What was asked for.
        requested: u32,
        /// The binding limit.
        limit: u32,
        /// Where the limit comes from.
        why: String,
    },
    /// Zero memory.
    #[error("memory 0 MiB: a VM needs memory")]
    NoMemory,
    /// Less memory than a VM can boot in.
    #[error("memory {mib} MiB is below the minimum of {min} MiB")]
    MemoryTooSmall {
        /// What was asked for.
        mib: u64,
        /// The minimum.
        min: u64,
    },
    /// More memory than the host has.
    #[error("memory {mib} MiB is more than this host's {host} MiB of RAM")]
    MemoryTooLarge {
        /// What was asked for.
        mib: u64,
        /// The host's RAM in MiB.
        host: u64,
    },
    /// A kernel or initrd file that cannot be used.
    #[error("{what} {path} cannot be used")]
    BadFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: io::Error,
    },
    /// A command line longer than the guest accepts.
    #[error("command line is {len} bytes; the limit is {max} bytes")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The longest allowed (without the terminating NUL).
        max: usize,
    },
    /// A command line with bytes a kernel cannot take.
    #[error("command line has byte {byte:#04x} at offset {at}; only printable ASCII and spaces are allowed")]
    CmdlineInvalid {
        /// Offset of the first bad byte.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// A memory size that no address space can hold.
    #[error("memory {mib} MiB is larger than any guest address space")]
    MemoryUnrepresentable {
        /// What was asked for.
        mib: u64,
    },
}

fn check_boot_file(what: &'static str, file: &BootFile) -> Result<(), VmConfigError> {
    match file {
        BootFile::Path(path) => check_file(what, path),
        BootFile::Embedded { bytes: &[], .. } => Err(VmConfigError::BadFile {
            what,
            path: file.label(),
            source: io::Error::new(io::ErrorKind::InvalidData, "empty"),
        }),
        BootFile::Embedded { .. } => Ok(()),
    }
}

fn check_file(what: &'static str, path: &Path) -> Result<(), VmConfigError> {
    let bad = |source| VmConfigError::BadFile {
        what,
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(bad)?;
    if !meta.is_file() {
        return Err(bad(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() == 0 {
        return Err(bad(io::Error::new(
            io::ErrorKind::InvalidData,
            "file is empty",
        )));
    }
    Ok(())
}

/// Checks a guest command line against the size limit and character set.
pub fn validate_cmdline(cmdline: &str) -> Result<(), VmConfigError> {
    let max = CMDLINE_MAX_SIZE - 1;
    if cmdline.len() > max {
        return Err(VmConfigError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if let Some((at, byte)) = cmdline
        .bytes()
        .enumerate()
        .find(|(_, b)| !(*b == b' ' || b.is_ascii_graphic()))
    {
        return Err(VmConfigError::CmdlineInvalid { at, byte });
    }
    Ok(())
}

/// The host's total RAM in MiB, from sysinfo(2).
fn host_memory_mib() -> Option<u64> {
    // SAFETY: sysinfo only writes into the struct we pass, which is
    // zero-initialised plain data of the right type.
    let info = unsafe {
        let mut info: libc::sysinfo = std::mem::zeroed();
        if libc::sysinfo(&mut info) != 0 {
            return None;
        }
        info
    };
    let bytes = info.totalram.checked_mul(u64::from(info.mem_unit))?;
    Some(bytes >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        // Any existing non-empty regular file passes the file checks.
        VmConfig::new("/proc/self/exe")
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().unwrap();
        // Reboot through the FADT's reset register; no Corral-specific
        // power-off parameter (ACPI S5 is the way).
        let words: Vec<&str> = DEFAULT_CMDLINE.split_whitespace().collect();
        assert!(words.contains(&"reboot=a"), "{DEFAULT_CMDLINE}");
        assert!(
            !words.iter().any(|w| w.starts_with("corral.")),
            "{DEFAULT_CMDLINE}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = config();
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(VmConfigError::NoVcpus)));

        let mut c = config();
        c.memory_mib = 0;
        assert!(matches!(c.validate(), Err(VmConfigError::NoMemory)));
        c.memory_mib = 2;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "memory 2 MiB is below the minimum of 8 MiB"
        );
        c.memory_mib = 512;
        c.validate_memory(Some(1024)).unwrap();
        c.memory_mib = 4096;
        let e = c.validate_memory(Some(1024)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "memory 4096 MiB is more than this host's 1024 MiB of RAM"
        );
        c.memory_mib = u64::MAX;
        assert!(c.validate_memory(None).is_err());

        let mut c = config();
        c.kernel = "/nonexistent/vmlinux".into();
        let e = c.validate().unwrap_err();
        assert_eq!(e.to_string(), "kernel /nonexistent/vmlinux cannot be used");
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(cause.contains("No such file"), "{cause}");

        let mut c = config();
        c.initrd = Some("/proc".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.to_string(), "initrd /proc cannot be used");
        assert_eq!(
            std::error::Error::source(&e).unwrap().to_string(),
            "not a regular file"
        );
    }

    #[test]
    fn cmdline_limits() {
        validate_cmdline(&"a".repeat(CMDLINE_MAX_SIZE - 1)).unwrap();
        let e = validate_cmdline(&"a".repeat(CMDLINE_MAX_SIZE)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line is 2048 bytes; the limit is 2047 bytes"
        );
        assert!(matches!(
            validate_cmdline("console=ttyS0\nquiet"),
            Err(VmConfigError::CmdlineInvalid {
                at: 13,
                byte: b'\n'
            })
        ));
        assert!(validate_cmdline("a\0b").is_err());
    }
}
