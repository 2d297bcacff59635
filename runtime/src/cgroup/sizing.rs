//! Sandbox sizing from the OCI resources of its containers.
//!
//! Each container's CFS quota/period is turned into milli-CPUs (rounded up,
//! so 1 µs of quota is never lost); the sum gives the vCPUs to hot-add
//! (rounded up to whole vCPUs) on top of the configured default, and the
//! CPU quota of the constrained cgroup (the containers' sum only — the
//! default vCPUs carry the guest's own overhead and are not a limit).
//! Memory limits are summed and added to the default guest memory.
//! Unlimited values (quota ≤ 0, no period, limit ≤ 0) contribute nothing.

use oci_spec::runtime::LinuxResources;

const MIB: u64 = 1024 * 1024;

/// What a sandbox gets when its containers ask for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizingDefaults {
    /// vCPUs the VM always has.
    pub vcpus: u32,
    /// Guest memory the VM always has, in MiB.
    pub memory_mib: u64,
}

/// The computed size of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    /// vCPUs: default + containers' CPU rounded up.
    pub vcpus: u32,
    /// Guest memory in MiB: default + containers' limits rounded up.
    pub memory_mib: u64,
    /// Summed container CPU quota in CPUs, for `CgroupConfig::cpu_quota`;
    /// `None` when no container has a quota.
    pub quota: Option<f64>,
    /// The same quota in milli-CPUs (0 when none).
    pub milli_cpus: u64,
}

impl Sizing {
    /// The memory size in bytes, for `CgroupConfig::memory_limit`.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib.saturating_mul(MIB)
    }
}

/// Milli-CPUs of one quota/period pair, rounded up; 0 when unlimited.
pub(crate) fn milli_cpus(quota: Option<i64>, period: Option<u64>) -> u64 {
    match (quota, period) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => {
            let quota = u128::from(quota.unsigned_abs());
            let milli = (quota * 1000).div_ceil(u128::from(period));
            u64::try_from(milli).unwrap_or(u64::MAX)
        }
        _ => 0,
    }
}

/// Sizes a sandbox from its containers' resources.
pub fn from_resources(resources: &[LinuxResources], defaults: SizingDefaults) -> Sizing {
    let mut milli: u64 = 0;
    let mut memory_bytes: u64 = 0;
    for res in resources {
        if let Some(cpu) = res.cpu() {
            milli = milli.saturating_add(milli_cpus(cpu.quota(), cpu.period()));
        }
        if let Some(limit) = res.memory().as_ref().and_then(|m| m.limit()) {
            if limit > 0 {
                memory_bytes = memory_bytes.saturating_add(limit.unsigned_abs());
            }
        }
    }
    let extra_vcpus = u32::try_from(milli.div_ceil(1000)).unwrap_or(u32::MAX);
    Sizing {
        vcpus: defaults.vcpus.saturating_add(extra_vcpus),
        memory_mib: defaults
            .memory_mib
            .saturating_add(memory_bytes.div_ceil(MIB)),
        quota: (milli > 0).then(|| milli as f64 / 1000.0),
        milli_cpus: milli,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResources, LinuxResourcesBuilder,
    };

    fn container(quota: Option<i64>, period: Option<u64>, memory: Option<i64>) -> LinuxResources {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(q) = quota {
            cpu = cpu.quota(q);
        }
        if let Some(p) = period {
            cpu = cpu.period(p);
        }
        let mut builder = LinuxResourcesBuilder::default().cpu(cpu.build().unwrap());
        if let Some(m) = memory {
            builder = builder.memory(LinuxMemoryBuilder::default().limit(m).build().unwrap());
        }
        builder.build().unwrap()
    }

    const DEFAULTS: SizingDefaults = SizingDefaults {
        vcpus: 1,
        memory_mib: 256,
    };

    #[test]
    fn quota_over_period_rounds_up_to_milli_cpus() {
        assert_eq!(milli_cpus(Some(150_000), Some(100_000)), 1500);
        assert_eq!(milli_cpus(Some(1), Some(100_000)), 1);
        assert_eq!(milli_cpus(Some(33_333), Some(100_000)), 334);
        assert_eq!(milli_cpus(Some(-1), Some(100_000)), 0);
        assert_eq!(milli_cpus(Some(50_000), Some(0)), 0);
        assert_eq!(milli_cpus(None, Some(100_000)), 0);
        assert_eq!(milli_cpus(Some(i64::MAX), Some(1)), u64::MAX);
    }

    #[test]
    fn containers_are_summed_then_rounded_to_vcpus() {
        let s = from_resources(
            &[
                container(Some(150_000), Some(100_000), Some(512 * MIB as i64)),
                container(Some(25_000), Some(50_000), Some(100)),
            ],
            DEFAULTS,
        );
        // 1.5 + 0.5 CPUs = 2 vCPUs extra; 512 MiB + 1 MiB (rounded up) extra.
        assert_eq!(s.milli_cpus, 2000);
        assert_eq!(s.vcpus, 3);
        assert_eq!(s.quota, Some(2.0));
        assert_eq!(s.memory_mib, 256 + 512 + 1);
        assert_eq!(s.memory_bytes(), (256 + 513) * MIB);
    }

    #[test]
    fn fractional_cpu_adds_a_whole_vcpu() {
        let s = from_resources(&[container(Some(10_000), Some(100_000), None)], DEFAULTS);
        assert_eq!(s.vcpus, 2);
        assert_eq!(s.quota, Some(0.1));
    }

    #[test]
    fn unlimited_containers_get_only_the_defaults() {
        let s = from_resources(
            &[
                container(Some(-1), Some(100_000), Some(-1)),
                container(None, None, None),
            ],
            DEFAULTS,
        );
        assert_eq!(s.vcpus, 1);
        assert_eq!(s.memory_mib, 256);
        assert_eq!(s.quota, None);
        assert_eq!(from_resources(&[], DEFAULTS).vcpus, 1);
    }
}
