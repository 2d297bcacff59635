//! Per-vCPU CPUID: what KVM supports on this host (`KVM_GET_SUPPORTED_CPUID`),
//! with the topology rewritten so that vCPU `i` has APIC ID `i` and the
//! guest sees one socket of `n` single-threaded cores, and the hypervisor
//! bit set; and the TSC-deadline timer offered where KVM emulates it.
//!
//! The topology leaves are rebuilt rather than patched: KVM may list only
//! some of their subleaves (this project's PVM hosts list subleaf 0 of 0xB
//! and 0x1F alone), and a guest that finds no core level counts every vCPU
//! as a package of its own.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE: u32 = 0x8000_001d;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_LINE: u32 = 8;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
/// "AuthenticAMD" ends in "cAMD", leaf 0's ECX.
const AMD_VENDOR_ECX: u32 = u32::from_le_bytes(*b"cAMD");

/// Offers the TSC-deadline LAPIC timer in leaf 1. KVM emulates it in its
/// in-kernel LAPIC whatever the host CPU has, but reports it through
/// `KVM_CAP_TSC_DEADLINE_TIMER` rather than in the supported CPUID, so a
/// VMM sets the bit itself (as Firecracker and Cloud Hypervisor do). With
/// it a Linux guest needs no PIT to calibrate its LAPIC timer.
pub fn offer_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == LEAF_FEATURES {
            e.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

/// Rewrites `cpuid` (a copy of the supported set) for vCPU `index` of `vcpus`.
pub fn configure(cpuid: &CpuId, index: u32, vcpus: u32) -> CpuId {
    // Addressable IDs are rounded up to a power of two, as on real parts.
    let id_space = vcpus.next_power_of_two();
    let core_bits = id_space.trailing_zeros();
    let amd = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == LEAF_VENDOR && e.ecx == AMD_VENDOR_ECX);
    let mut entries: Vec<kvm_cpuid_entry2> = Vec::with_capacity(cpuid.as_slice().len() + 4);
    let mut topology_leaves = Vec::new();
    for entry in cpuid.as_slice() {
        let mut e = *entry;
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (index << 24) | (id_space.min(255) << 16) | (CLFLUSH_LINE << 8);
                if vcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
                e.ecx |= ECX_HYPERVISOR;
            }
            LEAF_CACHE | LEAF_AMD_CACHE => {
                let level = (e.eax >> 5) & 0x7;
                // All cores share the last level; L1/L2 belong to one core.
                let sharing = if level >= 3 { vcpus - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing.min(0xfff) << 14);
                if e.function == LEAF_CACHE {
                    e.eax |= (id_space - 1).min(63) << 26;
                }
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                if !topology_leaves.contains(&e.function) {
                    topology_leaves.push(e.function);
                }
                continue;
            }
            LEAF_AMD_SIZES if amd => {
                // NC: cores per package - 1; ApicIdCoreIdSize.
                e.ecx = (e.ecx & !0xf0ff) | (vcpus - 1).min(255) | (core_bits << 12);
            }
            LEAF_AMD_TOPOLOGY if amd => {
                e.eax = index; // extended APIC ID
                e.ebx = index & 0xff; // core ID, one thread per core
                e.ecx = 0; // node 0, one node
            }
            _ => {}
        }
        entries.push(e);
    }
    for function in topology_leaves {
        let levels = [
            (0, 1, LEVEL_TYPE_SMT),
            (core_bits, vcpus, LEVEL_TYPE_CORE),
            (0, 0, 0),
        ];
        for (subleaf, (eax, ebx, level_type)) in (0u32..).zip(levels) {
            entries.push(kvm_cpuid_entry2 {
                function,
                index: subleaf,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax,
                ebx,
                ecx: (level_type << 8) | subleaf,
                edx: index,
                ..Default::default()
            });
        }
    }
    // The supported set came from a CpuId of at least this capacity less
    // the topology entries we add; from_entries only fails above
    // KVM_MAX_CPUID_ENTRIES, which we then truncate to.
    entries.truncate(kvm_bindings::KVM_MAX_CPUID_ENTRIES);
    CpuId::from_entries(&entries).unwrap_or_else(|_| cpuid.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ..Default::default()
        }
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    #[test]
    fn tsc_deadline_is_offered_in_leaf_1_only() {
        let mut c = CpuId::from_entries(&[entry(1, 0, 7), entry(7, 0, 0)]).unwrap();
        offer_tsc_deadline(&mut c);
        assert_eq!(find(&c, 1, 0).ecx, ECX_TSC_DEADLINE);
        assert_eq!(find(&c, 1, 0).eax, 7);
        assert_eq!(find(&c, 7, 0).ecx, 0);
    }

    #[test]
    fn topology_matches_index_and_count() {
        // As this project's hosts report it: only subleaf 0 of 0xB.
        let supported = CpuId::from_entries(&[
            entry(1, 0, 0),
            entry(4, 0, 1 << 5),
            entry(4, 3, 3 << 5),
            entry(0xb, 0, 0),
        ])
        .unwrap();
        let c = configure(&supported, 2, 3);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        let l1d = find(&c, 4, 0);
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!((find(&c, 4, 3).eax >> 14) & 0xfff, 2);
        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.ebx, smt.edx, smt.ecx >> 8), (1, 2, LEVEL_TYPE_SMT));
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx >> 8), (2, 3, LEVEL_TYPE_CORE));
        assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        let end = find(&c, 0xb, 2);
        assert_eq!((end.ebx, end.ecx), (0, 2));
        assert!(
            c.as_slice().iter().all(|e| e.function != 0x1f),
            "0x1f only if KVM has it"
        );
    }

    #[test]
    fn amd_leaves_follow_the_topology() {
        let mut vendor = entry(0, 0, 0x10);
        vendor.ecx = AMD_VENDOR_ECX;
        let mut sizes = entry(LEAF_AMD_SIZES, 0, 0x3030);
        sizes.ecx = 0x7007; // a 8-core host
        let supported =
            CpuId::from_entries(&[vendor, sizes, entry(LEAF_AMD_TOPOLOGY, 0, 0)]).unwrap();
        let c = configure(&supported, 1, 2);
        assert_eq!(find(&c, LEAF_AMD_SIZES, 0).ecx & 0xf0ff, 0x1001);
        assert_eq!(find(&c, LEAF_AMD_TOPOLOGY, 0).eax, 1);
    }
}
