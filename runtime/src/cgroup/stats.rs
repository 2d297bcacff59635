//! CPU time of the vCPUs against the overhead threads, and memory usage.
//!
//! Sources, best first: the cgroups themselves when the vCPUs and the
//! overhead threads are in different cgroups (Split mode) — `cpuacct.usage`
//! on v1, `cpu.stat` `usage_usec` on v2 (a core file on current kernels,
//! present without the cpu controller) — otherwise the sum of
//! `utime + stime` of the threads in `/proc/self/task/<tid>/stat`, which
//! only counts threads still alive. Values are read directly: cgroups-rs's
//! stat getters turn read errors into zeros.

use cgroups_rs::fs::Controllers;

use super::error::CgroupError;
use super::fsio;
use super::procfs;
use super::sandbox::Sandbox;
use super::PlacementMode;

/// Where the CPU figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuStatSource {
    /// v1 `cpuacct.usage` of the sandbox and overhead cgroups.
    CpuAcct,
    /// v2 `cpu.stat` `usage_usec` of the `vcpu` and `overhead` cgroups.
    CpuStat,
    /// Per-thread `/proc/self/task/<tid>/stat` (live threads only).
    ProcTasks,
}

/// A sandbox's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time of the vCPU threads, in µs.
    pub vcpu_cpu_usec: u64,
    /// CPU time of every other thread of the VMM, in µs.
    pub overhead_cpu_usec: u64,
    /// Where the CPU figures came from.
    pub cpu_source: CpuStatSource,
    /// Memory charged to the sandbox's cgroups, in bytes (`None` when no
    /// memory controller covers them).
    pub memory_usage_bytes: Option<u64>,
}

impl Sandbox {
    /// Reads the sandbox's CPU and memory use.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        self.ensure_open()?;
        let from_cgroups = match self.config.mode {
            PlacementMode::Split => self.cgroup_cpu()?,
            PlacementMode::SandboxOnly => None,
        };
        let (vcpu_cpu_usec, overhead_cpu_usec, cpu_source) = match from_cgroups {
            Some(figures) => figures,
            None => self.proc_cpu()?,
        };
        Ok(CgroupStats {
            vcpu_cpu_usec,
            overhead_cpu_usec,
            cpu_source,
            memory_usage_bytes: self.memory_usage()?,
        })
    }

    fn cgroup_cpu(&self) -> Result<Option<(u64, u64, CpuStatSource)>, CgroupError> {
        for hier in &self.hiers {
            let Some(overhead) = &hier.overhead else {
                continue;
            };
            if hier.v2 {
                let (vcpu_stat, overhead_stat) =
                    (hier.sandbox.join("cpu.stat"), overhead.join("cpu.stat"));
                if vcpu_stat.exists() && overhead_stat.exists() {
                    return Ok(Some((
                        fsio::read_keyed_u64(&vcpu_stat, "usage_usec")?,
                        fsio::read_keyed_u64(&overhead_stat, "usage_usec")?,
                        CpuStatSource::CpuStat,
                    )));
                }
            } else if hier.has(&Controllers::CpuAcct) {
                let ns = |dir: &std::path::Path| fsio::read_u64(&dir.join("cpuacct.usage"));
                return Ok(Some((
                    ns(&hier.sandbox)? / 1000,
                    ns(overhead)? / 1000,
                    CpuStatSource::CpuAcct,
                )));
            }
        }
        Ok(None)
    }

    fn proc_cpu(&self) -> Result<(u64, u64, CpuStatSource), CgroupError> {
        let mut vcpu = 0u64;
        let mut overhead = 0u64;
        for tid in procfs::own_threads()? {
            let usec = procfs::thread_cpu_usec(tid)?.unwrap_or(0);
            if self.last_vcpus.contains(&tid) {
                vcpu = vcpu.saturating_add(usec);
            } else {
                overhead = overhead.saturating_add(usec);
            }
        }
        Ok((vcpu, overhead, CpuStatSource::ProcTasks))
    }

    fn memory_usage(&self) -> Result<Option<u64>, CgroupError> {
        for hier in &self.hiers {
            if hier.v2 {
                let current = hier.memory_cgroup().join("memory.current");
                return if current.exists() {
                    fsio::read_u64(&current).map(Some)
                } else {
                    Ok(None)
                };
            }
            if hier.has(&Controllers::Mem) {
                let mut total = 0u64;
                for leaf in hier.leaves() {
                    total =
                        total.saturating_add(fsio::read_u64(&leaf.join("memory.usage_in_bytes"))?);
                }
                return Ok(Some(total));
            }
        }
        Ok(None)
    }
}
