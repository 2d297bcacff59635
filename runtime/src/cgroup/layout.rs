//! Where a sandbox's cgroups go in each hierarchy, creating them, and
//! writing their limits.
//!
//! Layout, with `P` the resolved parent and `S` the sandbox id:
//!
//! | version, mode   | sandbox (constrained) | overhead                | domain |
//! |-----------------|-----------------------|-------------------------|--------|
//! | v1 Split        | `P/S`                 | `P/corral_overhead/S`   | —      |
//! | v1 SandboxOnly  | `P/S`                 | —                       | —      |
//! | v2 Split        | `P/S/vcpu` (threaded) | `P/S/overhead` (threaded) | `P/S` |
//! | v2 SandboxOnly  | `P/S`                 | —                       | `P/S`  |
//!
//! Each directory is recorded as it is made: `own` for the sandbox's
//! private cgroups, `shared` for missing ancestors it had to create (parts
//! of `P`, `corral_overhead`), which other sandboxes may share and which
//! teardown removes only when empty. v1 cgroups are created here; v2 ones,
//! with the controllers their limits need, in [`super::unified`].

use std::path::{Path, PathBuf};

use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::devices::DevicesController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::systemd::SystemdController;
use cgroups_rs::fs::{Controller, Controllers, Subsystem};

use super::devices::{self, DeviceRule};
use super::error::{CgroupError, Limit};
use super::fsio;
use super::path::{OVERHEAD_ROOT, V2_OVERHEAD, V2_VCPU};
use super::unified;
use super::version::Mount;
use super::PlacementMode;

/// CFS period used for every quota Corral writes (100 ms, the default).
pub(crate) const CFS_PERIOD_US: u64 = 100_000;

/// The cgroups of one sandbox in one hierarchy (public view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HierarchyPaths {
    /// The hierarchy: its controller list (`cpu`, `cpu,cpuacct`, …) or
    /// `unified` for cgroup2.
    pub name: String,
    /// Where the hierarchy is mounted.
    pub mount_point: PathBuf,
    /// The cgroup the process was in when the sandbox was created; threads
    /// return there at teardown.
    pub origin: PathBuf,
    /// The resolved parent `P`.
    pub parent: PathBuf,
    /// The constrained cgroup: vCPU threads (Split) or the whole process
    /// (SandboxOnly).
    pub sandbox: PathBuf,
    /// The unconstrained cgroup of the other threads (Split only).
    pub overhead: Option<PathBuf>,
    /// v2 only: the per-sandbox domain holding the whole process.
    pub domain: Option<PathBuf>,
    /// Every directory this sandbox created, shared ancestors included.
    pub created: Vec<PathBuf>,
    /// v2: every controller Corral enabled for the sandbox, with the cgroup
    /// in whose `cgroup.subtree_control` it did so.
    pub enabled: Vec<(PathBuf, String)>,
}

/// Internal state of one hierarchy.
#[derive(Debug, Clone)]
pub(crate) struct Hier {
    pub(crate) mount: Mount,
    pub(crate) v2: bool,
    pub(crate) origin: PathBuf,
    pub(crate) parent: PathBuf,
    pub(crate) sandbox: PathBuf,
    pub(crate) overhead: Option<PathBuf>,
    pub(crate) domain: Option<PathBuf>,
    /// Directories private to this sandbox that it created.
    pub(crate) own: Vec<PathBuf>,
    /// Missing ancestors it created (possibly shared with other sandboxes).
    pub(crate) shared: Vec<PathBuf>,
    /// Directories to empty at teardown besides `own`/`shared` (a systemd
    /// scope, which systemd created but moved the process into).
    pub(crate) drain_extra: Vec<PathBuf>,
    /// v2: every `(cgroup, controller)` Corral enabled in a
    /// `cgroup.subtree_control`, in order.
    pub(crate) enabled: Vec<(PathBuf, &'static str)>,
}

impl Hier {
    /// Lays out one hierarchy: `origin` and `parent` are directories.
    pub(crate) fn new(
        mount: Mount,
        v2: bool,
        origin: PathBuf,
        parent: PathBuf,
        sandbox_id: &str,
        mode: PlacementMode,
    ) -> Hier {
        let own_dir = parent.join(sandbox_id);
        let (sandbox, overhead, domain) = match (v2, mode) {
            (false, PlacementMode::Split) => (
                own_dir.clone(),
                Some(parent.join(OVERHEAD_ROOT).join(sandbox_id)),
                None,
            ),
            (false, PlacementMode::SandboxOnly) => (own_dir.clone(), None, None),
            (true, PlacementMode::Split) => (
                own_dir.join(V2_VCPU),
                Some(own_dir.join(V2_OVERHEAD)),
                Some(own_dir.clone()),
            ),
            (true, PlacementMode::SandboxOnly) => (own_dir.clone(), None, Some(own_dir.clone())),
        };
        Hier {
            mount,
            v2,
            origin,
            parent,
            sandbox,
            overhead,
            domain,
            own: Vec::new(),
            shared: Vec::new(),
            drain_extra: Vec::new(),
            enabled: Vec::new(),
        }
    }

    /// The public view.
    pub(crate) fn paths(&self) -> HierarchyPaths {
        let mut created: Vec<PathBuf> = self.shared.iter().chain(&self.own).cloned().collect();
        created.sort_by_key(|p| p.components().count());
        HierarchyPaths {
            name: self.mount.name(),
            mount_point: self.mount.mount_point.clone(),
            origin: self.origin.clone(),
            parent: self.parent.clone(),
            sandbox: self.sandbox.clone(),
            overhead: self.overhead.clone(),
            domain: self.domain.clone(),
            created,
            enabled: self
                .enabled
                .iter()
                .map(|(dir, c)| (dir.clone(), (*c).to_string()))
                .collect(),
        }
    }

    /// Whether this v1 hierarchy carries `controller`.
    pub(crate) fn has(&self, controller: &Controllers) -> bool {
        self.mount.controllers.contains(controller)
    }

    /// A cgroups-rs handle on `dir` for the interface files every
    /// controller shares (`tasks`, `cgroup.procs`, `cgroup.threads`,
    /// `cgroup.type`). On v1 it is the hierarchy's own controller. On v2 it
    /// is a cpu handle: those are core cgroup2 files, present whether or
    /// not the cpu controller is enabled, and cgroups-rs only switches them
    /// to their v2 names for controllers that report `is_v2` — not for the
    /// freezer, whose handle would write `tasks`.
    pub(crate) fn handle(&self, dir: &Path) -> Subsystem {
        let dir = dir.to_path_buf();
        let root = self.mount.mount_root.clone();
        if self.v2 {
            return Subsystem::Cpu(CpuController::new(dir, root, true));
        }
        match self.mount.controllers.first() {
            Some(Controllers::BlkIo) => Subsystem::BlkIo(BlkIoController::new(dir, root, false)),
            Some(Controllers::Mem) => Subsystem::Mem(MemController::new(dir, root, false)),
            Some(Controllers::Pids) => Subsystem::Pid(PidController::new(dir, root, false)),
            Some(Controllers::CpuSet) => Subsystem::CpuSet(CpuSetController::new(dir, root, false)),
            Some(Controllers::CpuAcct) => Subsystem::CpuAcct(CpuAcctController::new(dir, root)),
            Some(Controllers::Cpu) => Subsystem::Cpu(CpuController::new(dir, root, false)),
            Some(Controllers::Devices) => Subsystem::Devices(DevicesController::new(dir, root)),
            Some(Controllers::Systemd) => {
                Subsystem::Systemd(SystemdController::new(dir, root, false))
            }
            _ => Subsystem::Freezer(FreezerController::new(dir, root, false)),
        }
    }

    /// The cgroup path of `dir` relative to the hierarchy root, as
    /// `/proc/<pid>/cgroup` spells it.
    pub(crate) fn cgroup_path_of(&self, dir: &Path) -> String {
        unified::cgroup_path(&self.mount, dir)
    }

    /// Creates this hierarchy's v1 cgroups and writes device rules.
    pub(crate) fn create_v1(
        &mut self,
        sandbox_rules: &[DeviceRule],
        vmm_rules: &[DeviceRule],
    ) -> Result<(), CgroupError> {
        let mount_point = self.mount.mount_point.clone();
        fsio::ensure_dirs(&mount_point, &self.parent, &mut self.shared)?;
        fsio::create_new_dir(&self.sandbox)?;
        self.own.push(self.sandbox.clone());
        if let Some(overhead) = self.overhead.clone() {
            // Twice at most: another start's sweep may remove an emptied
            // `corral_overhead` between the two steps (then it is ours).
            for attempt in 0..2 {
                if let Some(root) = overhead.parent() {
                    fsio::ensure_dirs(&mount_point, root, &mut self.shared)?;
                }
                match fsio::create_new_dir(&overhead) {
                    Err(CgroupError::CreateDir { source, .. })
                        if attempt == 0 && source.kind() == std::io::ErrorKind::NotFound => {}
                    other => {
                        other?;
                        break;
                    }
                }
            }
            self.own.push(overhead);
        }
        let leaves: Vec<PathBuf> = self.leaves().cloned().collect();
        if self.has(&Controllers::CpuSet) {
            for dir in &leaves {
                self.init_cpuset(dir)?;
            }
        }
        if self.has(&Controllers::Devices) {
            let root = self.mount.mount_root.clone();
            let mut rules = sandbox_rules.to_vec();
            rules.extend_from_slice(vmm_rules);
            devices::apply(&self.sandbox, &root, &rules)?;
            if let Some(overhead) = &self.overhead {
                devices::apply(overhead, &root, vmm_rules)?;
            }
        }
        Ok(())
    }

    /// The sandbox and overhead cgroups.
    pub(crate) fn leaves(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.sandbox).chain(self.overhead.iter())
    }

    /// A new v1 cpuset has empty `cpuset.cpus`/`cpuset.mems`, and no task
    /// can join it until they are set. cgroups-rs's `CpuSetController::create`
    /// copies them down from the nearest non-empty ancestor into every empty
    /// level; it only logs failures, so the result is checked here.
    fn init_cpuset(&self, dir: &Path) -> Result<(), CgroupError> {
        let controller =
            CpuSetController::new(dir.to_path_buf(), self.mount.mount_root.clone(), false);
        controller
            .create()
            .map_err(|source| CgroupError::Controller {
                op: "initialise cpuset",
                path: dir.to_path_buf(),
                value: String::new(),
                source: Box::new(source),
            })?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if fsio::read_trimmed(&dir.join(file))?.is_empty() {
                return Err(CgroupError::CpusetEmpty {
                    path: dir.to_path_buf(),
                    file,
                });
            }
        }
        Ok(())
    }

    /// The file a limit is written to in this hierarchy, if it carries the
    /// limit's controller (v2: always; the file exists once the controller
    /// is enabled).
    pub(crate) fn limit_file(&self, limit: Limit) -> Option<PathBuf> {
        let (controller, dir, v1_file, v2_file) = match limit {
            Limit::CpuQuota(_) => (
                Controllers::Cpu,
                &self.sandbox,
                "cpu.cfs_quota_us",
                "cpu.max",
            ),
            Limit::Memory(_) => (
                Controllers::Mem,
                &self.memory_cgroup(),
                "memory.limit_in_bytes",
                "memory.max",
            ),
            Limit::CpuShares(_) => (Controllers::Cpu, &self.sandbox, "cpu.shares", "cpu.weight"),
        };
        if self.v2 {
            Some(dir.join(v2_file))
        } else if self.has(&controller) {
            Some(dir.join(v1_file))
        } else {
            None
        }
    }

    /// Writes the CPU quota (`None` clears it) to the constrained cgroup.
    /// The controller must have been provided (v2) or be mounted here (v1).
    pub(crate) fn apply_cpu_quota(&self, quota_us: Option<i64>) -> Result<(), CgroupError> {
        let Some(file) = self.limit_file(Limit::CpuQuota(0.0)) else {
            return Ok(());
        };
        if quota_us.is_none() && !file.exists() {
            return Ok(()); // Nothing to clear.
        }
        let controller =
            CpuController::new(self.sandbox.clone(), self.mount.mount_root.clone(), self.v2);
        // cgroups-rs writes "max" on v2 for a non-positive quota.
        let (quota, period) = match quota_us {
            Some(q) => (q, Some(CFS_PERIOD_US)),
            None => (-1, None),
        };
        controller
            .set_cfs_quota_and_period(Some(quota), period)
            .map_err(|source| CgroupError::Controller {
                op: "set CPU quota of",
                path: file,
                value: format!("{quota} {CFS_PERIOD_US}"),
                source: Box::new(source),
            })
    }

    /// Writes the CPU weight of the constrained cgroup: v1 `cpu.shares`,
    /// v2 `cpu.weight` converted as runc and crun convert it (`None`
    /// restores the default: 1024 shares, weight 100).
    pub(crate) fn apply_cpu_shares(&self, shares: Option<u64>) -> Result<(), CgroupError> {
        let Some(file) = self.limit_file(Limit::CpuShares(0)) else {
            return Ok(());
        };
        if shares.is_none() && !file.exists() {
            return Ok(());
        }
        let value = match (self.v2, shares) {
            (false, Some(s)) => s,
            (false, None) => 1024,
            (true, Some(s)) => shares_to_weight(s),
            (true, None) => 100,
        };
        let value = value.to_string();
        std::fs::write(&file, &value).map_err(|source| CgroupError::Write {
            path: file,
            value,
            source,
        })
    }

    /// Writes the memory limit (`None` clears it).
    ///
    /// v1 memcg charges a process's memory to the memcg of its `mm` owner
    /// (the thread-group leader), whatever cgroups its other threads are in;
    /// so the limit goes where the leader is: the overhead cgroup in Split
    /// mode, the sandbox cgroup in SandboxOnly mode. On v2 it goes on the
    /// domain, which holds the whole process.
    pub(crate) fn apply_memory_limit(&self, limit: Option<i64>) -> Result<(), CgroupError> {
        let Some(file) = self.limit_file(Limit::Memory(0)) else {
            return Ok(());
        };
        if limit.is_none() && !file.exists() {
            return Ok(()); // Nothing to clear.
        }
        let target = self.memory_cgroup();
        let controller = MemController::new(target, self.mount.mount_root.clone(), self.v2);
        let value = limit.unwrap_or(-1);
        controller
            .set_limit(value)
            .map_err(|source| CgroupError::Controller {
                op: "set memory limit of",
                path: file,
                value: value.to_string(),
                source: Box::new(source),
            })
    }

    /// The cgroup whose memory usage and limit cover the sandbox's memory.
    pub(crate) fn memory_cgroup(&self) -> PathBuf {
        match (&self.domain, &self.overhead) {
            (Some(domain), _) => domain.clone(),
            (None, Some(overhead)) => overhead.clone(),
            (None, None) => self.sandbox.clone(),
        }
    }
}

/// cgroup v1 shares (2–262144) → v2 `cpu.weight` (1–10000), the mapping
/// runc, crun and the kubelet use.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod shares_tests {
    use super::shares_to_weight;

    #[test]
    fn shares_map_to_weights_as_runc_maps_them() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(u64::MAX), 10_000);
    }
}
