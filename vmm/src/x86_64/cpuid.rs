//! Per-vCPU CPUID: what KVM supports on this host (`KVM_GET_SUPPORTED_CPUID`),
//! with the topology rewritten so that vCPU `i` has APIC ID `i` and the
//! guest sees one socket of `n` single-threaded cores, and the hypervisor
//! bit set.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_LINE: u32 = 8;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Rewrites `cpuid` (a copy of the supported set) for vCPU `index` of `vcpus`.
pub fn configure(cpuid: &mut CpuId, index: u32, vcpus: u32) {
    // Addressable IDs are rounded up to a power of two, as on real parts.
    let id_space = vcpus.next_power_of_two();
    let core_bits = id_space.trailing_zeros();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (index << 24) | (id_space.min(255) << 16) | (CLFLUSH_LINE << 8);
                if vcpus > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
                entry.ecx |= ECX_HYPERVISOR;
            }
            LEAF_CACHE => {
                let level = (entry.eax >> 5) & 0x7;
                // All cores share the last level; L1/L2 belong to one core.
                let sharing = if level >= 3 { vcpus - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff)
                    | ((sharing.min(0xfff)) << 14)
                    | (((id_space - 1).min(63)) << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                let (eax, ebx, level_type) = match entry.index {
                    0 => (0, 1, LEVEL_TYPE_SMT),
                    1 => (core_bits, vcpus, LEVEL_TYPE_CORE),
                    _ => (0, 0, 0),
                };
                entry.eax = eax;
                entry.ebx = ebx;
                entry.ecx = (level_type << 8) | (entry.index & 0xff);
                entry.edx = index;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ..Default::default()
        }
    }

    #[test]
    fn topology_matches_index_and_count() {
        let mut cpuid = CpuId::from_entries(&[
            entry(1, 0, 0),
            entry(4, 0, 1 << 5),
            entry(4, 3, 3 << 5),
            entry(0xb, 0, 0),
            entry(0xb, 1, 0),
            entry(0xb, 2, 0),
        ])
        .unwrap();
        configure(&mut cpuid, 2, 3);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[1].eax >> 26, 3);
        assert_eq!((e[1].eax >> 14) & 0xfff, 0);
        assert_eq!((e[2].eax >> 14) & 0xfff, 2);
        assert_eq!((e[3].ebx, e[3].edx, e[3].ecx >> 8), (1, 2, LEVEL_TYPE_SMT));
        assert_eq!((e[4].eax, e[4].ebx, e[4].ecx >> 8), (2, 3, LEVEL_TYPE_CORE));
        assert_eq!((e[5].ebx, e[5].ecx), (0, 2));
    }
}
