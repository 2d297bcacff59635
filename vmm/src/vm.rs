//! The KVM VM: `/dev/kvm`, the VM fd with its in-kernel irqchip (PIC, I/O
//! APIC, local APICs), and guest memory registered with it.
//!
//! There is no PIT, as in Cloud Hypervisor: guests get the TSC-deadline
//! LAPIC timer (see `x86_64::cpuid`) and kvmclock, and Linux then never
//! uses a PIT. An in-kernel PIT costs a kernel thread per VM (`kvm-pit`),
//! created in `KVM_CREATE_PIT2` and flushed and stopped when the VM fd is
//! closed: measured here, that flush is what made half of all exits take
//! 12-20 ms longer.

use kvm_ioctls::{Cap, Kvm, VmFd};
use thiserror::Error;

use crate::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_ADDRESS};
use crate::memory::{
    create_guest_memory, register_memory, unregister_memory, GuestMemoryMmap, MemoryError,
};

/// The KVM API version every supported kernel reports.
const KVM_API_VERSION: i32 = 12;

/// KVM could not give us a VM.
#[derive(Debug, Error)]
pub enum VmError {
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm (is KVM enabled on this host, and may this user use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// An unexpected KVM API version.
    #[error("KVM API version {0} is not the supported version 12")]
    ApiVersion(i32),
    /// A capability Corral relies on is missing.
    #[error("this host's KVM lacks {0:?}, which Corral needs")]
    MissingCapability(Cap),
    /// A VM-level KVM ioctl failed.
    #[error("KVM could not {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Capabilities the VMM cannot work without.
const REQUIRED_CAPS: [Cap; 5] = [
    Cap::Irqchip,
    Cap::Irqfd,
    Cap::Ioeventfd,
    Cap::UserMemory,
    Cap::ImmediateExit,
];

/// A VM with memory and interrupt controllers, but no vCPUs yet.
///
/// Teardown deletes the memory slots first (the cheapest order, see
/// `unregister_memory`), then unmaps guest memory, then closes the VM fd.
pub struct Vm {
    memory: GuestMemoryMmap,
    fd: VmFd,
    kvm: Kvm,
}

impl Vm {
    /// Opens KVM, checks what Corral needs and creates the VM with
    /// `mem_size` bytes of RAM.
    pub fn new(mem_size: u64) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(VmError::ApiVersion(version));
        }
        if let Some(cap) = REQUIRED_CAPS.into_iter().find(|c| !kvm.check_extension(*c)) {
            return Err(VmError::MissingCapability(cap));
        }
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("create a VM", e))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmError::Kvm("set the TSS address", e))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_START)
            .map_err(|e| VmError::Kvm("set the identity map address", e))?;
        // Memory before the irqchip: on some hosts (PVM here) adding a slot
        // to a VM that already has an in-kernel irqchip costs ~7 ms, while
        // this order costs ~0.2 ms in total (the cost then moves to VM
        // teardown, after the guest has finished).
        let memory = create_guest_memory(mem_size)?;
        register_memory(&fd, &memory)?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Kvm("create the in-kernel irqchip", e))?;
        Ok(Self { memory, fd, kvm })
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The `/dev/kvm` handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The most vCPUs this KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        unregister_memory(&self.fd, &self.memory);
    }
}
