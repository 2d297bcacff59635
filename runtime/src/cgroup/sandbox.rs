//! The `Sandbox`: creating a sandbox's cgroups, changing its limits, and
//! tearing everything down again (explicitly or on drop).

use std::collections::HashMap;
use std::path::PathBuf;

use super::devices::{self, DeviceRule};
use super::error::{Blocker, CgroupError, Limit};
use super::layout::{Hier, HierarchyPaths, CFS_PERIOD_US};
use super::path::{self, ParentSpec};
use super::procfs;
use super::systemd::{self, Scope};
use super::teardown;
use super::unified;
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

/// The limits asked for, in the order they are provided.
fn limits_of(cpu_quota: Option<f64>, memory_limit: Option<u64>) -> Vec<Limit> {
    cpu_quota
        .map(Limit::CpuQuota)
        .into_iter()
        .chain(memory_limit.map(Limit::Memory))
        .collect()
}

/// The limits of `config`, CPU shares included.
fn config_limits(config: &CgroupConfig) -> Vec<Limit> {
    let mut limits = limits_of(config.cpu_quota, config.memory_limit);
    limits.extend(config.cpu_shares.map(Limit::CpuShares));
    limits
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
        let limits = config_limits(config);
        if version == CgroupVersion::V1 {
            check_v1_limits(&mounts, &limits)?;
        }
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
        let layout = Layout {
            mounts: &mounts,
            version,
            origins: &origins,
            config,
            limits: &limits,
            pid,
        };
        sandbox.hiers = layout.all(&base)?;

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
                    sandbox.hiers = layout.all(&fallback)?;
                }
            }
        }

        if let Some(prefix) = &config.stale_prefix {
            teardown::sweep_stale(&sandbox.hiers, prefix);
        }
        sandbox.build(&limits, quota, memory, &vmm_rules)?;
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
        limits: &[Limit],
        quota: Option<i64>,
        memory: Option<i64>,
        vmm_rules: &[DeviceRule],
    ) -> Result<(), CgroupError> {
        for i in 0..self.hiers.len() {
            let hier = &mut self.hiers[i];
            if hier.v2 {
                hier.create_v2(self.pid, limits, &self.config.devices, vmm_rules)?;
            } else {
                hier.create_v1(&self.config.devices, vmm_rules)?;
            }
        }
        self.write_limits(quota, memory)
    }

    /// Writes both limits (`None` clears one) in every hierarchy that
    /// carries their controller.
    fn write_limits(&self, quota: Option<i64>, memory: Option<i64>) -> Result<(), CgroupError> {
        for hier in &self.hiers {
            hier.apply_cpu_quota(quota)?;
            hier.apply_memory_limit(memory)?;
            hier.apply_cpu_shares(self.config.cpu_shares)?;
        }
        Ok(())
    }

    /// Makes sure every hierarchy can carry `limits`: v1 needs their
    /// controllers mounted; v2 gets them enabled as at creation.
    fn provide_limits(&mut self, limits: &[Limit]) -> Result<(), CgroupError> {
        if self.version == CgroupVersion::V1 {
            let mounts: Vec<Mount> = self.hiers.iter().map(|h| h.mount.clone()).collect();
            check_v1_limits(&mounts, limits)?;
        }
        for hier in self.hiers.iter_mut().filter(|h| h.v2) {
            let missing: Vec<Limit> = limits
                .iter()
                .copied()
                .filter(|&l| hier.limit_file(l).is_some_and(|f| !f.exists()))
                .collect();
            if !missing.is_empty() {
                hier.provide(self.pid, &missing)?;
            }
        }
        Ok(())
    }

    /// Changes the vCPU cgroup's CPU weight (OCI shares; `None`: the
    /// default), enabling the cpu controller as at creation, or fails with
    /// [`CgroupError::LimitUnenforceable`] and changes nothing.
    pub fn update_cpu_shares(&mut self, shares: Option<u64>) -> Result<(), CgroupError> {
        self.ensure_open()?;
        let limits: Vec<Limit> = shares.map(Limit::CpuShares).into_iter().collect();
        self.provide_limits(&limits)?;
        for hier in &self.hiers {
            hier.apply_cpu_shares(shares)?;
        }
        self.config.cpu_shares = shares;
        Ok(())
    }

    /// Changes the CPU quota (CPUs) and memory limit (bytes) when the
    /// sandbox's containers change; `None` removes a limit. A limit whose
    /// controller the sandbox does not have yet gets it as at creation, or
    /// the call fails with [`CgroupError::LimitUnenforceable`] and changes
    /// nothing.
    pub fn update_limits(
        &mut self,
        cpu_quota: Option<f64>,
        memory_limit: Option<u64>,
    ) -> Result<(), CgroupError> {
        self.ensure_open()?;
        let quota = cpu_quota.map(quota_us).transpose()?;
        let memory = memory_value(memory_limit)?;
        let limits = limits_of(cpu_quota, memory_limit);
        self.provide_limits(&limits)?;
        self.write_limits(quota, memory)?;
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

    /// Warnings collected so far (driver fallback, unmovable threads).
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
}

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

/// v1: a requested limit needs a mounted hierarchy carrying its
/// controller.
fn check_v1_limits(mounts: &[Mount], limits: &[Limit]) -> Result<(), CgroupError> {
    for &limit in limits {
        let controller = match limit {
            Limit::CpuQuota(_) | Limit::CpuShares(_) => cgroups_rs::fs::Controllers::Cpu,
            Limit::Memory(_) => cgroups_rs::fs::Controllers::Mem,
        };
        if !mounts.iter().any(|m| m.controllers.contains(&controller)) {
            return Err(CgroupError::LimitUnenforceable {
                limit,
                cgroup: "cgroup v1".to_string(),
                blocker: Blocker::NotMounted,
            });
        }
    }
    Ok(())
}

/// What laying out the hierarchies depends on.
struct Layout<'a> {
    mounts: &'a [Mount],
    version: CgroupVersion,
    origins: &'a HashMap<String, String>,
    config: &'a CgroupConfig,
    limits: &'a [Limit],
    pid: i32,
}

impl Layout<'_> {
    /// Every hierarchy's cgroups for `base`. On v2 a parent relative to the
    /// origin goes where the limits' controllers can be had (see
    /// [`unified::relative_parent`]).
    fn all(&self, base: &Base) -> Result<Vec<Hier>, CgroupError> {
        let v2 = self.version == CgroupVersion::V2;
        self.mounts
            .iter()
            .map(|mount| {
                let origin = origin_dir(mount, self.origins)?;
                let parent = match base {
                    Base::BelowOrigin(rel) if v2 => {
                        unified::relative_parent(mount, &origin, rel, self.limits, self.pid)?
                    }
                    _ => parent_dir(mount, &origin, base)?,
                };
                Ok(Hier::new(
                    mount.clone(),
                    v2,
                    origin,
                    parent,
                    &self.config.sandbox_id,
                    self.config.mode,
                ))
            })
            .collect()
    }
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
