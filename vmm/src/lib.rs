//! Corral's virtual machine monitor, as a library.
//!
//! It boots a guest on KVM inside the calling process: one named OS thread
//! per vCPU (`vcpu0`, `vcpu1`, …) and one I/O thread (`vmm-io`), all with
//! known TIDs before the guest runs, so that a container runtime can put
//! exactly the vCPU threads into a pod's constrained cgroup.
//!
//! Entry points: [`VmConfig`] → [`Vmm::create`] → [`Vmm::start`] →
//! [`Vmm::wait`] → [`VmExit`]. No CLI concerns live here.
//!
//! Module map:
//! - [`config`]: the VM description and its validation.
//! - [`layout`]: the guest-physical memory map.
//! - [`memory`], [`vm`]: guest RAM and the KVM VM with its irqchip and PIT.
//! - [`loader`], [`x86_64`]: kernel/initrd/cmdline loading, boot parameters
//!   (PVH, zero page, e820), the MP table, the ACPI tables, CPUID, MSRs,
//!   boot registers.
//! - [`vcpu`]: vCPU set-up, the run loop and the kick that stops it.
//! - `platform`: the fixed devices and the buses vCPU exits go through.
//! - `io_thread`, [`console`]: the device I/O event loop and console ends.
//! - [`virtio_devices`]: attaching virtio-blk/net/vsock (slots, IRQs,
//!   irqfds, ioeventfds, worker threads, command-line entries).
//! - [`exit`]: how a VM ends.
//! - [`threads`]: named threads with known TIDs.
//! - [`seccomp`]: a seccomp filter per thread kind.

pub mod config;
pub mod console;
pub mod exit;
mod io_thread;
pub mod layout;
pub mod loader;
pub mod memory;
mod platform;
pub mod seccomp;
pub mod threads;
pub mod vcpu;
pub mod virtio_devices;
pub mod vm;
mod vmm;
pub mod x86_64;

pub use config::{
    BootFile, DiskCache, DiskConfig, NetConfig, VmConfig, VmConfigError, VsockConfig,
    DEFAULT_CMDLINE,
};
pub use console::{ConsoleBuffer, ConsoleConfig, ConsoleInput, ConsoleOutput};
pub use exit::{ShutdownHandle, VmExit};
pub use seccomp::SeccompPolicy;
pub use threads::Tid;
pub use vmm::{PlacementHookError, SpawnPlacement, Vmm, VmmError};
