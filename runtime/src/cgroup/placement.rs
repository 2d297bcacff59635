//! Placing the process's threads into the sandbox's cgroups, and pinning
//! vCPUs.
//!
//! One pass, with no sleeps and no retries: every vCPU TID must exist and
//! move (or the call fails naming it); the other threads are taken from
//! `/proc/self/task` plus the VMM's list, and a thread that exits meanwhile
//! (`ESRCH`) or that the kernel will not migrate (`EINVAL`, e.g. a
//! kernel-managed worker) is reported as skipped instead of failing the
//! call. Re-running is idempotent: writing a TID to the cgroup it is already
//! in is a no-op for the kernel, the v2 whole-process move is skipped when
//! the process is already inside the domain, and affinity is set afresh.
//! Threads created after a placement inherit their creator's cgroup.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::fs::Controllers;
use cgroups_rs::CgroupPid;

use super::affinity::{self, PinDecision};
use super::error::CgroupError;
use super::fsio;
use super::layout::Hier;
use super::procfs;
use super::sandbox::{DriverInfo, Sandbox};
use super::PlacementMode;

/// Where one vCPU went and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuPlacement {
    /// The vCPU index (position in the `vcpu_tids` argument).
    pub index: usize,
    /// Its thread id.
    pub tid: i32,
    /// Wall time from the start of this vCPU's placement until its cgroup
    /// membership (every hierarchy) and affinity were final, in µs.
    pub latency_us: u64,
    /// The affinity set, when pinning is managed.
    pub affinity: Option<Vec<u32>>,
    /// It was in its cgroups already (spawned there): nothing was written.
    pub inherited: bool,
}

/// Why a non-vCPU thread was not placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Not a thread of this process (never was, or already exited).
    NotOurThread,
    /// It exited during placement.
    Exited,
    /// The kernel refused to migrate it (a kernel-managed thread).
    Unmovable,
}

/// A thread that was left where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkippedThread {
    /// The thread id.
    pub tid: i32,
    /// Why.
    pub reason: SkipReason,
}

/// The outcome of one [`Sandbox::place`] call.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementReport {
    /// Every vCPU, in index order.
    pub vcpus: Vec<VcpuPlacement>,
    /// The other threads placed (overhead cgroup in Split mode, sandbox
    /// cgroup in SandboxOnly mode).
    pub other_tids: Vec<i32>,
    /// Threads left alone, with the reason.
    pub skipped: Vec<SkippedThread>,
    /// Threads whose TID was written (moved by another thread, which
    /// costs the kernel an RCU grace period after idle): those not born in
    /// place (see `selfmove`).
    pub moved_by_tid: Vec<i32>,
    /// What was done with vCPU affinity.
    pub pinning: PinDecision,
    /// v2: time of the whole-process move into the domain, in µs (`None`
    /// on v1, or when the process was already there).
    pub process_move_us: Option<u64>,
    /// Wall time of the whole call, in µs.
    pub total_us: u64,
    /// The driver in use (and any systemd fallback reason).
    pub driver: DriverInfo,
    /// Every warning so far: driver fallback, unmovable threads.
    pub warnings: Vec<String>,
}

impl PlacementReport {
    /// Per-vCPU placement latency in µs, by vCPU index (for benchmarks).
    pub fn vcpu_latencies_us(&self) -> Vec<u64> {
        self.vcpus.iter().map(|v| v.latency_us).collect()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn cgroup_pid(tid: i32) -> CgroupPid {
    CgroupPid::from(u64::from(tid.unsigned_abs()))
}

fn interface_file(hier: &Hier, dir: &Path) -> PathBuf {
    dir.join(if hier.v2 { "cgroup.threads" } else { "tasks" })
}

impl Sandbox {
    /// Places the vCPU threads (`vcpu_tids`, in vCPU index order) and every
    /// other thread of the process (`/proc/self/task` plus `other_tids`)
    /// according to the placement mode, then pins vCPUs when configured.
    /// Call it after `Vmm::create` and before `Vmm::start`, and again
    /// whenever the vCPU set or the containers change.
    pub fn place(
        &mut self,
        vcpu_tids: &[i32],
        other_tids: &[i32],
    ) -> Result<PlacementReport, CgroupError> {
        self.ensure_open()?;
        let started = Instant::now();
        let mut seen = HashSet::new();
        for &tid in vcpu_tids.iter().chain(other_tids) {
            if tid <= 0 {
                return Err(CgroupError::InvalidTid { tid });
            }
            if !seen.insert(tid) {
                return Err(CgroupError::DuplicateTid { tid });
            }
        }
        if let Some(&tid) = vcpu_tids.iter().find(|&&t| !procfs::is_own_thread(t)) {
            return Err(CgroupError::NotOurThread { tid });
        }
        let vcpu_set: HashSet<i32> = vcpu_tids.iter().copied().collect();
        let mut others: BTreeSet<i32> = procfs::own_threads()?
            .into_iter()
            .filter(|t| !vcpu_set.contains(t))
            .collect();
        let mut skipped = Vec::new();
        for &tid in other_tids {
            if !others.contains(&tid) {
                if procfs::is_own_thread(tid) {
                    others.insert(tid);
                } else {
                    skipped.push(SkippedThread {
                        tid,
                        reason: SkipReason::NotOurThread,
                    });
                }
            }
        }

        let whole_process_only = self.version == super::CgroupVersion::V2
            && self.config.mode == PlacementMode::SandboxOnly;
        let process_move_us = self.move_process_if_needed()?;

        let (pinning, plan) = if self.config.pin_vcpus {
            let allowed = self.allowed_cpus()?;
            let (decision, plan) = affinity::pin_plan(vcpu_tids.len(), &allowed);
            (decision, Some(plan))
        } else {
            (PinDecision::NotManaged, None)
        };

        // Threads spawned into their cgroups (see `selfmove`) are already
        // there: writing their TIDs again would take the kernel's global
        // lock for nothing.
        let in_sandbox: Vec<HashSet<i32>> =
            self.hiers.iter().map(|h| members(h, &h.sandbox)).collect();
        let in_overhead: Vec<HashSet<i32>> = self
            .hiers
            .iter()
            .map(|h| members(h, self.other_dir(h)))
            .collect();

        let mut moved_by_tid = Vec::new();
        let mut vcpus = Vec::with_capacity(vcpu_tids.len());
        for (index, &tid) in vcpu_tids.iter().enumerate() {
            let t0 = Instant::now();
            let mut inherited = true;
            if !whole_process_only {
                for (hier, there) in self.hiers.iter().zip(&in_sandbox) {
                    if !there.contains(&tid) {
                        move_vcpu(hier, tid)?;
                        inherited = false;
                    }
                }
            }
            let cpus = plan.as_ref().and_then(|p| p.get(index)).cloned();
            if let Some(cpus) = &cpus {
                affinity::apply_affinity(tid, cpus)?;
            }
            if !inherited && !whole_process_only {
                moved_by_tid.push(tid);
            }
            vcpus.push(VcpuPlacement {
                index,
                tid,
                latency_us: micros(t0.elapsed()),
                affinity: cpus,
                inherited: inherited && !whole_process_only,
            });
        }

        let mut placed = Vec::new();
        let mut new_warnings = Vec::new();
        for tid in others {
            let there = in_overhead.iter().all(|set| set.contains(&tid));
            let outcome = if whole_process_only {
                None
            } else {
                self.move_other(tid, &in_overhead)?
            };
            match outcome {
                None => {
                    if !there && !whole_process_only {
                        moved_by_tid.push(tid);
                    }
                    placed.push(tid)
                }
                Some(reason) => {
                    if reason == SkipReason::Unmovable {
                        new_warnings.push(format!(
                            "TID {tid} cannot be migrated by the kernel; left in its cgroup"
                        ));
                    }
                    skipped.push(SkippedThread { tid, reason });
                }
            }
        }
        for warning in new_warnings {
            tracing::warn!(sandbox = %self.config.sandbox_id, "{warning}");
            if !self.warnings.contains(&warning) {
                self.warnings.push(warning);
            }
        }
        self.last_vcpus = vcpu_tids.to_vec();

        let report = PlacementReport {
            vcpus,
            other_tids: placed,
            skipped,
            moved_by_tid,
            pinning,
            process_move_us,
            total_us: micros(started.elapsed()),
            driver: self.driver.clone(),
            warnings: self.warnings.clone(),
        };
        tracing::debug!(
            sandbox = %self.config.sandbox_id,
            vcpus = report.vcpus.len(),
            others = report.other_tids.len(),
            skipped = report.skipped.len(),
            moved_by_tid = report.moved_by_tid.len(),
            total_us = report.total_us,
            "threads placed"
        );
        Ok(report)
    }

    /// v2: moves the whole process into the domain (`cgroup.procs`) unless
    /// it is already inside it — in Split mode a second move would pull
    /// the placed threads back out of `vcpu`/`overhead`.
    pub(crate) fn move_process_if_needed(&self) -> Result<Option<u64>, CgroupError> {
        let Some(hier) = self.hiers.iter().find(|h| h.v2) else {
            return Ok(None);
        };
        let Some(domain) = &hier.domain else {
            return Ok(None);
        };
        let domain_cgroup = hier.cgroup_path_of(domain);
        let current = procfs::cgroups_of(self.pid)?.remove("").unwrap_or_default();
        let inside = current == domain_cgroup || current.starts_with(&format!("{domain_cgroup}/"));
        if inside {
            return Ok(None);
        }
        let t0 = Instant::now();
        hier.handle(domain)
            .to_controller()
            .add_task_by_tgid(&cgroup_pid(self.pid))
            .map_err(|source| CgroupError::MoveThread {
                tid: self.pid,
                path: domain.join("cgroup.procs"),
                source: Box::new(source),
            })?;
        Ok(Some(micros(t0.elapsed())))
    }

    /// Moves one non-vCPU thread in every hierarchy; `Some(reason)` when it
    /// was skipped.
    fn move_other(
        &self,
        tid: i32,
        already: &[HashSet<i32>],
    ) -> Result<Option<SkipReason>, CgroupError> {
        for (hier, there) in self.hiers.iter().zip(already) {
            if there.contains(&tid) {
                continue;
            }
            let dir = self.other_dir(hier);
            let result = hier.handle(dir).to_controller().add_task(&cgroup_pid(tid));
            if let Err(source) = result {
                return match CgroupError::errno_of(&source) {
                    Some(libc::ESRCH) => Ok(Some(SkipReason::Exited)),
                    Some(libc::EINVAL) => Ok(Some(SkipReason::Unmovable)),
                    _ => Err(CgroupError::MoveThread {
                        tid,
                        path: interface_file(hier, dir),
                        source: Box::new(source),
                    }),
                };
            }
        }
        Ok(None)
    }

    /// Where the non-vCPU threads go in `hier`.
    fn other_dir<'h>(&self, hier: &'h Hier) -> &'h Path {
        match (&self.config.mode, &hier.overhead) {
            (PlacementMode::Split, Some(overhead)) => overhead,
            _ => &hier.sandbox,
        }
    }

    /// The CPUs the sandbox's vCPUs may use: the sandbox cpuset's effective
    /// CPUs, or the online CPUs when no cpuset applies.
    fn allowed_cpus(&self) -> Result<Vec<u32>, CgroupError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        for hier in &self.hiers {
            if hier.v2 {
                candidates.push(hier.sandbox.join("cpuset.cpus.effective"));
            } else if hier.has(&Controllers::CpuSet) {
                candidates.push(hier.sandbox.join("cpuset.effective_cpus"));
                candidates.push(hier.sandbox.join("cpuset.cpus"));
            }
        }
        candidates.push(PathBuf::from("/sys/devices/system/cpu/online"));
        let Some(path) = candidates.into_iter().find(|p| p.exists()) else {
            return Err(CgroupError::Parse {
                path: PathBuf::from("/sys/devices/system/cpu/online"),
                detail: "no CPU list file exists".to_string(),
            });
        };
        let text = fsio::read_trimmed(&path)?;
        let cpus = affinity::parse_cpu_list(&text).map_err(|detail| CgroupError::Parse {
            path: path.clone(),
            detail,
        })?;
        if cpus.is_empty() {
            return Err(CgroupError::Parse {
                path,
                detail: "the CPU list is empty".to_string(),
            });
        }
        Ok(cpus)
    }
}

/// The threads in cgroup `dir` of `hier` (none when it cannot be read:
/// then every thread is moved, as before this check existed).
fn members(hier: &Hier, dir: &Path) -> HashSet<i32> {
    std::fs::read_to_string(interface_file(hier, dir))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Moves a vCPU thread into the constrained cgroup of one hierarchy.
fn move_vcpu(hier: &Hier, tid: i32) -> Result<(), CgroupError> {
    hier.handle(&hier.sandbox)
        .to_controller()
        .add_task(&cgroup_pid(tid))
        .map_err(|source| CgroupError::MoveVcpu {
            tid,
            path: interface_file(hier, &hier.sandbox),
            source: Box::new(source),
        })
}
