//! Model-specific registers at boot: the architectural defaults a kernel
//! expects (syscall MSRs zeroed, fast strings on, MTRRs enabled with
//! write-back default) plus the feature MSRs KVM lists for this host (such
//! as IA32_ARCH_CAPABILITIES), so the guest sees the host's mitigations.
//!
//! KVM may list an MSR and still refuse to set it (this host's PVM refuses
//! 0x10a). `KVM_SET_MSRS` stops at the first refusal and returns how many it
//! set, so [`set_tolerant`] skips the refused one, carries on with the rest,
//! and reports what was skipped.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};

/// IA32_TSC.
const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS/ESP/EIP.
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE and its fast-string bit.
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE: MTRRs on, default type write-back.
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

fn entry(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// The MSRs every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

/// The host's feature MSRs and their values, as KVM reports them; empty if
/// KVM has none to report.
pub fn feature_msrs(kvm: &Kvm) -> Vec<kvm_msr_entry> {
    let Ok(list) = kvm.get_msr_feature_index_list() else {
        return Vec::new();
    };
    let wanted: Vec<_> = list.as_slice().iter().map(|&i| entry(i, 0)).collect();
    let Ok(mut msrs) = Msrs::from_entries(&wanted) else {
        return Vec::new();
    };
    match kvm.get_msrs(&mut msrs) {
        // KVM stops at the first MSR it cannot read; keep those it read.
        Ok(read) => msrs.as_slice()[..read.min(wanted.len())].to_vec(),
        Err(_) => Vec::new(),
    }
}

/// Sets `entries` on `vcpu`, skipping each MSR KVM refuses; returns the
/// indices of the refused ones.
pub fn set_tolerant(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<Vec<u32>, MsrError> {
    let mut refused = Vec::new();
    let mut rest = entries;
    while !rest.is_empty() {
        let msrs = Msrs::from_entries(rest).map_err(|_| MsrError::TooMany(rest.len()))?;
        let set = vcpu.set_msrs(&msrs).map_err(MsrError::Set)?;
        if set >= rest.len() {
            break;
        }
        refused.push(rest[set].index);
        rest = &rest[set + 1..];
    }
    Ok(refused)
}

/// MSRs could not be set at all.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// More entries than one KVM_SET_MSRS takes.
    #[error("{0} MSRs are more than KVM_SET_MSRS takes")]
    TooMany(usize),
    /// The ioctl itself failed.
    #[error("KVM_SET_MSRS failed")]
    Set(#[source] kvm_ioctls::Error),
}
