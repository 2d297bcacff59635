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
//! teardown removes only when empty.

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
use cgroups_rs::CgroupPid;

use super::devices::{self, DeviceRule};
use super::error::CgroupError;
use super::fsio;
use super::path::{OVERHEAD_ROOT, V2_OVERHEAD, V2_VCPU};
use super::procfs;
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
        let rel = dir.strip_prefix(&self.mount.mount_point).unwrap_or(dir);
        let full = self.mount.mount_root.join(rel);
        let text = full.to_string_lossy();
        if text.starts_with('/') {
            text.into_owned()
        } else {
            format!("/{text}")
        }
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
            if let Some(root) = overhead.parent() {
                fsio::ensure_dirs(&mount_point, root, &mut self.shared)?;
            }
            fsio::create_new_dir(&overhead)?;
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

    /// Creates the v2 domain (and, in Split mode, its threaded children),
    /// enabling the controllers the limits need where they are offered.
    /// Returns warnings for the controllers that are not.
    pub(crate) fn create_v2(
        &mut self,
        pid: i32,
        want_cpu: bool,
        want_memory: bool,
    ) -> Result<Vec<String>, CgroupError> {
        let mut warnings = Vec::new();
        let mount_point = self.mount.mount_point.clone();
        let domain = self.domain.clone().unwrap_or_else(|| self.sandbox.clone());
        fsio::ensure_dirs(&mount_point, &self.parent, &mut self.shared)?;
        fsio::create_new_dir(&domain)?;
        self.own.push(domain.clone());

        // Domain controllers (memory) must be enabled in the parent for the
        // domain; cpu too, so the domain can pass it on to `vcpu`.
        let mut wanted = Vec::new();
        if want_cpu {
            wanted.push("cpu");
        }
        if want_memory {
            wanted.push("memory");
        }
        if self.must_vacate_parent(pid, &wanted)? {
            // No-internal-process rule: a non-root cgroup holding processes
            // cannot enable controllers for its children. When the process
            // itself sits in the parent (the default layout, or a systemd
            // scope), it moves into its domain first.
            self.handle(&domain)
                .to_controller()
                .add_task_by_tgid(&CgroupPid::from(u64::from(pid.unsigned_abs())))
                .map_err(|source| CgroupError::MoveThread {
                    tid: pid,
                    path: domain.join("cgroup.procs"),
                    source: Box::new(source),
                })?;
        }
        for controller in wanted {
            enable_or_warn(&self.parent, controller, &mut warnings);
        }

        if let Some(overhead) = self.overhead.clone() {
            for child in [self.sandbox.clone(), overhead] {
                fsio::create_new_dir(&child)?;
                self.own.push(child.clone());
                let handle = self.handle(&child);
                handle
                    .to_controller()
                    .set_cgroup_type("threaded")
                    .map_err(|source| CgroupError::Controller {
                        op: "make threaded",
                        path: child.join("cgroup.type"),
                        value: "threaded".to_string(),
                        source: Box::new(source),
                    })?;
            }
            // Only now is the domain a threaded root, where threaded
            // controllers may be enabled although it holds processes.
            // (When the domain was not given cpu, the parent's warning said so.)
            let offered = fsio::read_trimmed(&domain.join("cgroup.controllers"))?;
            if want_cpu && offered.split_whitespace().any(|c| c == "cpu") {
                enable_or_warn(&domain, "cpu", &mut warnings);
            }
        }
        Ok(warnings)
    }

    /// Whether the process must leave the (non-root) parent so that one of
    /// `wanted` can be enabled there.
    fn must_vacate_parent(&self, pid: i32, wanted: &[&str]) -> Result<bool, CgroupError> {
        // The root cgroup has no cgroup.type and is exempt from the rule.
        if wanted.is_empty() || !self.parent.join("cgroup.type").exists() {
            return Ok(false);
        }
        let offered = fsio::read_trimmed(&self.parent.join("cgroup.controllers"))?;
        let enabled = fsio::read_trimmed(&self.parent.join("cgroup.subtree_control"))?;
        let needs_enabling = wanted.iter().any(|c| {
            offered.split_whitespace().any(|o| o == *c)
                && !enabled.split_whitespace().any(|e| e == *c)
        });
        if !needs_enabling {
            return Ok(false);
        }
        let current = procfs::cgroups_of(pid)?.remove("").unwrap_or_default();
        Ok(current == self.cgroup_path_of(&self.parent))
    }

    /// Writes the CPU quota (`None` clears it) to the constrained cgroup.
    /// Returns a warning when the cpu controller is not available.
    pub(crate) fn apply_cpu_quota(
        &self,
        quota_us: Option<i64>,
    ) -> Result<Option<String>, CgroupError> {
        if !self.v2 && !self.has(&Controllers::Cpu) {
            return Ok(None);
        }
        let file = if self.v2 {
            "cpu.max"
        } else {
            "cpu.cfs_quota_us"
        };
        if !self.sandbox.join(file).exists() {
            return Ok(quota_us.map(|q| {
                format!(
                    "CPU quota {q} us not applied: {} has no {file} (cpu controller not enabled)",
                    self.sandbox.display()
                )
            }));
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
                path: self.sandbox.join(file),
                value: format!("{quota} {CFS_PERIOD_US}"),
                source: Box::new(source),
            })?;
        Ok(None)
    }

    /// Writes the memory limit (`None` clears it).
    ///
    /// v1 memcg charges a process's memory to the memcg of its `mm` owner
    /// (the thread-group leader), whatever cgroups its other threads are in;
    /// so the limit goes where the leader is: the overhead cgroup in Split
    /// mode, the sandbox cgroup in SandboxOnly mode. On v2 it goes on the
    /// domain, which holds the whole process.
    pub(crate) fn apply_memory_limit(
        &self,
        limit: Option<i64>,
    ) -> Result<Option<String>, CgroupError> {
        if !self.v2 && !self.has(&Controllers::Mem) {
            return Ok(None);
        }
        let target = self.memory_cgroup();
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        if !target.join(file).exists() {
            return Ok(limit.map(|l| {
                format!(
                    "memory limit {l} bytes not applied: {} has no {file} (memory controller not enabled)",
                    target.display()
                )
            }));
        }
        let controller = MemController::new(target.clone(), self.mount.mount_root.clone(), self.v2);
        let value = limit.unwrap_or(-1);
        controller
            .set_limit(value)
            .map_err(|source| CgroupError::Controller {
                op: "set memory limit of",
                path: target.join(file),
                value: value.to_string(),
                source: Box::new(source),
            })?;
        Ok(None)
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

/// Enables a cgroup2 controller for the children of `dir`, turning a
/// missing controller or a refusal into a warning.
fn enable_or_warn(dir: &Path, controller: &str, warnings: &mut Vec<String>) {
    match fsio::enable_controller(dir, controller) {
        Ok(true) => {}
        Ok(false) => warnings.push(format!(
            "{controller} controller not offered in {}/cgroup.controllers; its limits are skipped",
            dir.display()
        )),
        Err(e) => warnings.push(format!(
            "cannot enable the {controller} controller in {}: {e}; its limits are skipped",
            dir.display()
        )),
    }
}
