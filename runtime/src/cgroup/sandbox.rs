//! The `Sandbox`: creating a sandbox's cgroups, changing its limits, and
//! tearing everything down again (explicitly or on drop).

use std::collections::HashMap;
use std::path::PathBuf;

use cgroups_rs::CgroupPid;

use super::devices::{self, DeviceRule};
use super::error::CgroupError;
use super::fsio::{self, Removal};
use super::layout::{Hier, HierarchyPaths, CFS_PERIOD_US};
use super::path::{self, ParentSpec};
use super::procfs;
use super::systemd::{self, Scope};
use super::version::{self, CgroupVersion, Mount};
use super::{CgroupConfig, PlacementMode};

/// Largest CPU quota accepted, in CPUs.
const MAX_QUOTA_CPUS: f64 = 1_000_000.0;
/// The kernel's minimum CFS quota, in microseconds.
const MIN_QUOTA_US: f64 = 1000.0;

/// Which driver created the sandbox's parent cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// Plain cgroupfs directories.
    Cgroupfs,
    /// A systemd transient scope with `Delegate=yes`.
    Systemd,
}

/// The driver in use, and why systemd was not used when it was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInfo {
    /// The driver in use.
    pub kind: DriverKind,
    /// The systemd scope unit, with the systemd driver.
    pub unit: Option<String>,
    /// Set when a systemd-form path fell back to cgroupfs: the reason.
    pub fallback: Option<String>,
}

/// Every cgroup of a sandbox, per hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPaths {
    /// The cgroup version in use.
    pub version: CgroupVersion,
    /// One entry per mounted hierarchy the sandbox uses.
    pub hierarchies: Vec<HierarchyPaths>,
}

/// A sandbox's cgroups in every hierarchy; see the module docs.
#[derive(Debug)]
pub struct Sandbox {
    pub(crate) config: CgroupConfig,
    pub(crate) version: CgroupVersion,
    pub(crate) driver: DriverInfo,
    pub(crate) scope: Option<Scope>,
    pub(crate) hiers: Vec<Hier>,
    /// Hierarchies only restored at teardown (v1 `name=systemd`).
    pub(crate) restore_only: Vec<Hier>,
    pub(crate) warnings: Vec<String>,
    pub(crate) pid: i32,
    /// vCPU TIDs of the last placement, for statistics.
    pub(crate) last_vcpus: Vec<i32>,
    /// No more placement once teardown started.
    pub(crate) closed: bool,
    /// Teardown completed without problems.
    pub(crate) cleaned: bool,
}

/// Converts a quota in CPUs to microseconds per [`CFS_PERIOD_US`].
pub(crate) fn quota_us(cpus: f64) -> Result<i64, CgroupError> {
    let invalid = |reason| CgroupError::InvalidCpuQuota {
        value: cpus,
        reason,
    };
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(invalid("it must be a positive number"));
    }
    if cpus > MAX_QUOTA_CPUS {
        return Err(invalid("it exceeds 1,000,000 CPUs"));
    }
    let us = (cpus * CFS_PERIOD_US as f64).ceil();
    if us < MIN_QUOTA_US {
        return Err(invalid(
            "it is below the kernel minimum of 0.01 CPU (1 ms per 100 ms)",
        ));
    }
    // Bounded above by MAX_QUOTA_CPUS * CFS_PERIOD_US = 1e11, exact in f64.
    Ok(us as i64)
}

fn memory_value(limit: Option<u64>) -> Result<Option<i64>, CgroupError> {
    limit
        .map(|value| {
            i64::try_from(value)
                .ok()
                .filter(|&v| v > 0)
                .ok_or(CgroupError::InvalidMemoryLimit { value })
        })
        .transpose()
}

/// Where `P` is in every hierarchy, after the driver is chosen.
enum Base {
    BelowOrigin(PathBuf),
    FromRoot(PathBuf),
    /// Beneath systemd's own root in each hierarchy: PID 1's cgroup without
    /// a trailing `init.scope` (as runc resolves it), which is the
    /// hierarchy's root on a host and a subtree when systemd itself runs
    /// in a container. `roots` is PID 1's `/proc/1/cgroup`.
    SystemdRoot {
        roots: HashMap<String, String>,
        rel: PathBuf,
    },
}

impl Sandbox {
    /// Creates the sandbox's cgroups (nothing is moved yet; see
    /// [`Sandbox::place`]). On error everything created so far is removed.
    pub fn create(config: &CgroupConfig) -> Result<Sandbox, CgroupError> {
        path::validate_sandbox_id(&config.sandbox_id)?;
        let quota = config.cpu_quota.map(quota_us).transpose()?;
        let memory = memory_value(config.memory_limit)?;
        devices::validate(&config.devices)?;
        let vmm_rules = devices::vmm_rules(&config.disks)?;
        let version = match config.version {
            Some(version) => version,
            None => CgroupVersion::detect()?,
        };
        let mounts = match version {
            CgroupVersion::V1 => version::v1_mounts(),
            CgroupVersion::V2 => version::cgroup2_mount()?.into_iter().collect(),
        };
        if mounts.is_empty() {
            return Err(CgroupError::NotMounted { version });
        }
        let pid = procfs::own_pid();
        let origins = procfs::cgroups_of(pid)?;
        let mut warnings = Vec::new();

        let (base, systemd_target, fallback) = match path::parse_parent(&config.parent)? {
            ParentSpec::BelowOrigin(rel) => (Base::BelowOrigin(rel), None, None),
            ParentSpec::FromRoot(rel) => (Base::FromRoot(rel), None, None),
            ParentSpec::Systemd(spec) => {
                let scope_path = spec.scope_path(&config.parent)?;
                match systemd::reachable() {
                    Ok(()) => (
                        Base::SystemdRoot {
                            roots: procfs::cgroups_of(1)?,
                            rel: scope_path,
                        },
                        Some(spec),
                        None,
                    ),
                    Err(reason) => (Base::BelowOrigin(scope_path), None, Some(reason)),
                }
            }
        };
        if let Some(reason) = &fallback {
            let message = format!(
                "systemd cgroup driver unavailable ({reason}); using cgroupfs beneath the \
                 process's cgroup for {:?}",
                config.parent
            );
            tracing::warn!(sandbox = %config.sandbox_id, "{message}");
            warnings.push(message);
        }

        let mut sandbox = Sandbox {
            config: config.clone(),
            version,
            driver: DriverInfo {
                kind: DriverKind::Cgroupfs,
                unit: None,
                fallback,
            },
            scope: None,
            hiers: Vec::new(),
            restore_only: Vec::new(),
            warnings,
            pid,
            last_vcpus: Vec::new(),
            closed: false,
            cleaned: false,
        };
        // From here on, an early return drops `sandbox`, and Drop tears
        // down whatever was created.
        sandbox.hiers = layout_all(&mounts, version, &origins, &base, config)?;

        if let Some(spec) = systemd_target {
            // The systemd layout is fully computed before systemd moves the
            // process, so teardown always knows where to move it back from.
            sandbox.restore_only = systemd_restore(version, &origins, &base)?;
            let unit = spec.unit();
            match systemd::start_scope(&spec.slice, &unit, pid) {
                Ok(scope) => {
                    for hier in sandbox
                        .hiers
                        .iter_mut()
                        .chain(sandbox.restore_only.iter_mut())
                    {
                        hier.drain_extra.push(hier.parent.clone());
                    }
                    sandbox.driver.kind = DriverKind::Systemd;
                    sandbox.driver.unit = Some(scope.unit.clone());
                    sandbox.scope = Some(scope);
                }
                Err(reason) => {
                    let message = format!(
                        "systemd scope {unit} could not be started ({reason}); using cgroupfs \
                         beneath the process's cgroup"
                    );
                    tracing::warn!(sandbox = %config.sandbox_id, "{message}");
                    sandbox.warnings.push(message);
                    sandbox.driver.fallback = Some(reason);
                    sandbox.restore_only.clear();
                    let fallback = Base::BelowOrigin(spec.scope_path(&config.parent)?);
                    sandbox.hiers = layout_all(&mounts, version, &origins, &fallback, config)?;
                }
            }
        }

        sandbox.build(quota, memory, &vmm_rules)?;
        tracing::info!(
            sandbox = %config.sandbox_id,
            version = %version,
            driver = ?sandbox.driver.kind,
            "cgroups created"
        );
        Ok(sandbox)
    }

    fn build(
        &mut self,
        quota: Option<i64>,
        memory: Option<i64>,
        vmm_rules: &[DeviceRule],
    ) -> Result<(), CgroupError> {
        let mut warnings = Vec::new();
        for i in 0..self.hiers.len() {
            let hier = &mut self.hiers[i];
            if hier.v2 {
                warnings.extend(hier.create_v2(self.pid, quota.is_some(), memory.is_some())?);
            } else {
                hier.create_v1(&self.config.devices, vmm_rules)?;
            }
        }
        if self.version == CgroupVersion::V2 && !self.config.devices.is_empty() {
            warnings.push(format!(
                "{} device rule(s) not applied: cgroup v2 has no devices files (it needs an \
                 eBPF program)",
                self.config.devices.len()
            ));
        }
        warnings.extend(self.write_limits(quota, memory)?);
        for warning in warnings {
            tracing::warn!(sandbox = %self.config.sandbox_id, "{warning}");
            self.warnings.push(warning);
        }
        Ok(())
    }

    fn write_limits(
        &self,
        quota: Option<i64>,
        memory: Option<i64>,
    ) -> Result<Vec<String>, CgroupError> {
        let mut warnings = Vec::new();
        for hier in &self.hiers {
            warnings.extend(hier.apply_cpu_quota(quota)?);
            warnings.extend(hier.apply_memory_limit(memory)?);
        }
        let has = |c| self.hiers.iter().any(|h| h.v2 || h.has(&c));
        if quota.is_some() && !has(cgroups_rs::fs::Controllers::Cpu) {
            warnings.push("CPU quota not applied: the cpu controller is not mounted".to_string());
        }
        if memory.is_some() && !has(cgroups_rs::fs::Controllers::Mem) {
            warnings
                .push("memory limit not applied: the memory controller is not mounted".to_string());
        }
        Ok(warnings)
    }

    /// Changes the CPU quota (CPUs) and memory limit (bytes) when the
    /// sandbox's containers change; `None` removes a limit.
    pub fn update_limits(
        &mut self,
        cpu_quota: Option<f64>,
        memory_limit: Option<u64>,
    ) -> Result<(), CgroupError> {
        self.ensure_open()?;
        let quota = cpu_quota.map(quota_us).transpose()?;
        let memory = memory_value(memory_limit)?;
        for warning in self.write_limits(quota, memory)? {
            tracing::warn!(sandbox = %self.config.sandbox_id, "{warning}");
            if !self.warnings.contains(&warning) {
                self.warnings.push(warning);
            }
        }
        self.config.cpu_quota = cpu_quota;
        self.config.memory_limit = memory_limit;
        Ok(())
    }

    pub(crate) fn ensure_open(&self) -> Result<(), CgroupError> {
        if self.closed {
            return Err(CgroupError::TornDown {
                sandbox_id: self.config.sandbox_id.clone(),
            });
        }
        Ok(())
    }

    /// The cgroup version in use.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The driver in use and, if systemd was asked for but not used, why.
    pub fn driver(&self) -> &DriverInfo {
        &self.driver
    }

    /// Warnings collected so far (limits skipped, driver fallback).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Every cgroup of the sandbox, per hierarchy.
    pub fn paths(&self) -> SandboxPaths {
        SandboxPaths {
            version: self.version,
            hierarchies: self.hiers.iter().map(Hier::paths).collect(),
        }
    }

    /// Moves every thread still in the sandbox's cgroups back to the cgroup
    /// the process came from, removes every cgroup this sandbox created
    /// (deepest first; already-removed ones are fine; shared ancestors stay
    /// while other sandboxes use them) and stops the systemd scope.
    /// Idempotent; it goes on past problems and reports them together.
    pub fn teardown(&mut self) -> Result<(), CgroupError> {
        if self.cleaned {
            return Ok(());
        }
        self.closed = true;
        let mut problems = Vec::new();
        for hier in self.hiers.iter().chain(&self.restore_only) {
            drain(hier, &mut problems);
        }
        for hier in &self.hiers {
            remove_created(hier, &mut problems);
        }
        if let Some(scope) = &self.scope {
            if let Err(reason) = scope.stop() {
                tracing::warn!(sandbox = %self.config.sandbox_id, "{reason}");
            }
        }
        let count = problems.len();
        let mut problems = problems.into_iter();
        match problems.next() {
            None => {
                self.cleaned = true;
                tracing::info!(sandbox = %self.config.sandbox_id, "cgroups removed");
                Ok(())
            }
            Some(first) => Err(CgroupError::Teardown {
                sandbox_id: self.config.sandbox_id.clone(),
                count,
                first: Box::new(first),
            }),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.cleaned {
            if let Err(e) = self.teardown() {
                tracing::error!(sandbox = %self.config.sandbox_id, error = %e, "cgroup teardown failed");
            }
        }
    }
}

/// The directory of the process's cgroup in `mount`.
/// The key of `mount`'s line in a parsed `/proc/<pid>/cgroup`.
fn hierarchy_key(mount: &Mount) -> String {
    match mount.controllers.first() {
        Some(controller) => controller.to_string(),
        None => String::new(),
    }
}

fn origin_dir(mount: &Mount, origins: &HashMap<String, String>) -> Result<PathBuf, CgroupError> {
    let cgroup = origins
        .get(&hierarchy_key(mount))
        .ok_or_else(|| CgroupError::OriginUnknown {
            hierarchy: mount.name(),
        })?;
    procfs::cgroup_dir(&mount.mount_point, &mount.mount_root, cgroup)
}

fn parent_dir(
    mount: &Mount,
    origin: &std::path::Path,
    base: &Base,
) -> Result<PathBuf, CgroupError> {
    match base {
        Base::BelowOrigin(rel) => Ok(origin.components().chain(rel.components()).collect()),
        Base::FromRoot(rel) => {
            let cgroup = format!("/{}", rel.display());
            procfs::cgroup_dir(&mount.mount_point, &mount.mount_root, &cgroup)
        }
        Base::SystemdRoot { roots, rel } => {
            let root = roots.get(&hierarchy_key(mount)).map_or("/", String::as_str);
            let cgroup = format!("{}/{}", systemd_root(root), rel.display());
            procfs::cgroup_dir(&mount.mount_point, &mount.mount_root, &cgroup)
        }
    }
}

/// systemd's root cgroup, given PID 1's cgroup in one hierarchy.
fn systemd_root(pid1_cgroup: &str) -> &str {
    let root = pid1_cgroup
        .strip_suffix("/init.scope")
        .unwrap_or(pid1_cgroup);
    root.trim_end_matches('/')
}

fn layout_all(
    mounts: &[Mount],
    version: CgroupVersion,
    origins: &HashMap<String, String>,
    base: &Base,
    config: &CgroupConfig,
) -> Result<Vec<Hier>, CgroupError> {
    mounts
        .iter()
        .map(|mount| {
            let origin = origin_dir(mount, origins)?;
            let parent = parent_dir(mount, &origin, base)?;
            Ok(Hier::new(
                mount.clone(),
                version == CgroupVersion::V2,
                origin,
                parent,
                &config.sandbox_id,
                config.mode,
            ))
        })
        .collect()
}

/// v1 with systemd: the hierarchies Corral does not manage but systemd
/// puts the process into the scope in, which teardown must restore before
/// stopping the scope (stopping it kills what is still inside): the
/// `name=systemd` hierarchy and, on a hybrid host, the cgroup2 one, which
/// is where systemd tracks processes there.
fn systemd_restore(
    version: CgroupVersion,
    origins: &HashMap<String, String>,
    base: &Base,
) -> Result<Vec<Hier>, CgroupError> {
    if version != CgroupVersion::V1 {
        return Ok(Vec::new());
    }
    let mounts = version::v1_systemd_mount()
        .map(|m| (m, false))
        .into_iter()
        .chain(version::cgroup2_mount()?.map(|m| (m, true)));
    mounts
        .map(|(mount, v2)| {
            let origin = origin_dir(&mount, origins)?;
            let parent = parent_dir(&mount, &origin, base)?;
            Ok(Hier::new(
                mount,
                v2,
                origin,
                parent,
                "",
                PlacementMode::SandboxOnly,
            ))
        })
        .collect()
}

/// Moves every task out of the sandbox's cgroups (deepest first) to the
/// origin cgroup. v1 moves thread by thread through `tasks`; v2 moves whole
/// processes through the origin's `cgroup.procs` (threads cannot leave a
/// threaded subtree one by one).
fn drain(hier: &Hier, problems: &mut Vec<CgroupError>) {
    // Shared ancestors are left alone: other sandboxes may use them, and
    // their removal below tolerates "in use".
    let mut dirs: Vec<&PathBuf> = hier
        .own
        .iter()
        .chain(&hier.drain_extra)
        .filter(|d| d.is_dir())
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    let origin = hier.handle(&hier.origin);
    let target = if hier.v2 { "cgroup.procs" } else { "tasks" };
    for dir in dirs {
        // cgroups-rs's `tasks()` reads `tasks` (v1) or `cgroup.threads` (v2).
        let tasks = hier.handle(dir).to_controller().tasks();
        for task in tasks.into_iter().filter(|t| t.pid > 0) {
            let tid = i32::try_from(task.pid).unwrap_or(i32::MAX);
            let result = if hier.v2 {
                origin
                    .to_controller()
                    .add_task_by_tgid(&CgroupPid::from(task.pid))
            } else {
                origin.to_controller().add_task(&CgroupPid::from(task.pid))
            };
            if let Err(source) = result {
                if CgroupError::errno_of(&source) != Some(libc::ESRCH) {
                    problems.push(CgroupError::MoveThread {
                        tid,
                        path: hier.origin.join(target),
                        source: Box::new(source),
                    });
                }
            }
        }
    }
}

/// Removes what the sandbox created, deepest first.
fn remove_created(hier: &Hier, problems: &mut Vec<CgroupError>) {
    let mut dirs: Vec<(&PathBuf, bool)> = hier
        .own
        .iter()
        .map(|d| (d, false))
        .chain(hier.shared.iter().map(|d| (d, true)))
        .collect();
    dirs.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
    for (dir, shared) in dirs {
        match fsio::remove_dir(dir, shared) {
            Ok(Removal::InUse) => {
                tracing::debug!(dir = %dir.display(), "shared cgroup still in use; kept");
            }
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_root_follows_a_containerized_systemd() {
        assert_eq!(systemd_root("/init.scope"), "");
        assert_eq!(systemd_root("/"), "");
        assert_eq!(systemd_root("/machine/ct1/init.scope"), "/machine/ct1");
        // cpu,cpuacct and the like, where systemd is not in init.scope.
        assert_eq!(systemd_root("/machine/ct1"), "/machine/ct1");
    }

    #[test]
    fn quotas_convert_to_microseconds_per_period() {
        assert_eq!(quota_us(1.5).unwrap(), 150_000);
        assert_eq!(quota_us(0.01).unwrap(), 1000);
        assert_eq!(quota_us(2.0).unwrap(), 200_000);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 0.001, 2e6] {
            let err = quota_us(bad).unwrap_err();
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
        }
    }

    #[test]
    fn memory_limits_must_fit_i64() {
        assert_eq!(memory_value(None).unwrap(), None);
        assert_eq!(memory_value(Some(1 << 30)).unwrap(), Some(1 << 30));
        assert!(memory_value(Some(0)).is_err());
        assert!(memory_value(Some(u64::MAX)).is_err());
    }
}
