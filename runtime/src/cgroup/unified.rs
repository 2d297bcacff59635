//! cgroup v2: giving a sandbox the controllers its limits need, and handing
//! them back at teardown.
//!
//! A controller reaches a cgroup only when its parent has it in
//! `cgroup.subtree_control`, which the parent can only do when *its* parent
//! offers it (`cgroup.controllers`), and so on up to a cgroup that already
//! has it enabled or to the hierarchy's root. And a non-root cgroup that
//! holds processes cannot enable controllers for its children (the
//! no-internal-process rule). So for each requested limit Corral:
//!
//! * plans the levels, top-down, from the first ancestor of the sandbox's
//!   parent `P` that offers the controller down to `P` itself — every level
//!   Corral creates and every existing one that lacks it;
//! * refuses ([`CgroupError::LimitUnenforceable`], naming the limit, the
//!   cgroup and its processes) when a level holds processes other than this
//!   one, or the hierarchy does not offer the controller — a requested limit
//!   is never dropped;
//! * when the only process in a level is this one and the sandbox lies
//!   beneath it (the default parent, or a systemd scope), moves the process
//!   into the sandbox's domain first, then enables top-down, recording each
//!   `(cgroup, controller)` it enabled.
//!
//! With a parent relative to the process's cgroup `O` (the default `""`), a
//! busy `O` would make every limit impossible. Then the sandbox's parent is
//! re-anchored at the nearest ancestor of `O` where the limits can be had —
//! on a systemd host `O`'s slice, so the sandbox sits beside the service as
//! a transient scope would (`/system.slice/x.service` →
//! `/system.slice/<relative parent>/<id>`), as runc and systemd place
//! delegated subtrees beside busy cgroups rather than inside them.
//!
//! Teardown returns the process to `O`. If Corral enabled controllers in `O`
//! (the process had vacated it), `O` cannot take a process back until they
//! are disabled again, which needs them disabled beneath `O` first: so the
//! recorded enables at or below `O` are undone, deepest first, before the
//! process moves. Controllers enabled in existing cgroups elsewhere stay
//! enabled, as runc leaves them: disabling them could strip another
//! sandbox's limits.

use std::io;
use std::path::{Path, PathBuf};

use cgroups_rs::CgroupPid;

use super::devfilter;
use super::devices::DeviceRule;
use super::error::{Blocker, CgroupError, Limit};
use super::fsio;
use super::layout::Hier;
use super::procfs;
use super::version::Mount;

/// The cgroup path of `dir` relative to the hierarchy root, as
/// `/proc/<pid>/cgroup` spells it.
pub(crate) fn cgroup_path(mount: &Mount, dir: &Path) -> String {
    let rel = dir.strip_prefix(&mount.mount_point).unwrap_or(dir);
    let full = mount.mount_root.join(rel);
    let text = full.to_string_lossy();
    if text.starts_with('/') {
        text.into_owned()
    } else {
        format!("/{text}")
    }
}

fn words(path: &Path) -> Result<Vec<String>, CgroupError> {
    Ok(fsio::read_trimmed(path)?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

fn lists(path: &Path, controller: &str) -> Result<bool, CgroupError> {
    Ok(words(path)?.iter().any(|w| w == controller))
}

/// The hierarchy's real root has no `cgroup.type` and is exempt from the
/// no-internal-process rule (a cgroup namespace's root is not).
fn is_root(dir: &Path) -> bool {
    !dir.join("cgroup.type").exists()
}

/// The processes in `dir`, except `except`.
fn processes_in(dir: &Path, except: Option<i32>) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    let mut pids = Vec::new();
    for line in fsio::read_trimmed(&path)?.lines() {
        let pid: i32 = line.trim().parse().map_err(|_| CgroupError::Parse {
            path: path.clone(),
            detail: format!("{line:?} is not a process id"),
        })?;
        if Some(pid) != except {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// The levels, top-down, that must enable `limit`'s controller for the
/// children of `parent` to get it (missing levels included), or why that
/// cannot be. `vacatable` is the cgroup this process is in when the sandbox
/// will lie beneath it: the process leaves it, so it does not count.
pub(crate) fn plan(
    mount: &Mount,
    parent: &Path,
    limit: Limit,
    pid: i32,
    vacatable: Option<&Path>,
) -> Result<Vec<PathBuf>, CgroupError> {
    let controller = limit.controller();
    let refuse = |dir: &Path, blocker| CgroupError::LimitUnenforceable {
        limit,
        cgroup: cgroup_path(mount, dir),
        blocker,
    };
    let mut levels = Vec::new();
    let mut cursor = parent.to_path_buf();
    loop {
        if !cursor.starts_with(&mount.mount_point) {
            return Err(CgroupError::NotVisible {
                cgroup: cgroup_path(mount, parent),
                mount_point: mount.mount_point.clone(),
                mount_root: mount.mount_root.clone(),
            });
        }
        if cursor.is_dir() {
            if lists(&cursor.join("cgroup.subtree_control"), controller)? {
                break;
            }
            if !is_root(&cursor) {
                let except = (vacatable == Some(cursor.as_path())).then_some(pid);
                let pids = processes_in(&cursor, except)?;
                if !pids.is_empty() {
                    return Err(refuse(&cursor, Blocker::Busy { pids }));
                }
            }
            levels.push(cursor.clone());
            let offered = cursor.join("cgroup.controllers");
            if lists(&offered, controller)? {
                break;
            }
            if cursor == mount.mount_point {
                let offered = fsio::read_trimmed(&offered)?;
                return Err(refuse(&cursor, Blocker::NotOffered { offered }));
            }
        } else {
            // Corral will create it: empty, and offered only what its
            // parent enables.
            levels.push(cursor.clone());
        }
        match cursor.parent() {
            Some(up) => cursor = up.to_path_buf(),
            None => break,
        }
    }
    levels.reverse();
    Ok(levels)
}

/// The parent for a path `rel` relative to the process's cgroup `origin`:
/// `origin/rel` when every limit can be had there, otherwise beneath the
/// nearest ancestor of `origin` where they can (see the module docs).
/// Without limits, `origin/rel`. When no ancestor works, the refusal met
/// at `origin`.
pub(crate) fn relative_parent(
    mount: &Mount,
    origin: &Path,
    rel: &Path,
    limits: &[Limit],
    pid: i32,
) -> Result<PathBuf, CgroupError> {
    let below =
        |anchor: &Path| -> PathBuf { anchor.components().chain(rel.components()).collect() };
    if limits.is_empty() {
        return Ok(below(origin));
    }
    let mut first_refusal = None;
    let mut anchor = origin.to_path_buf();
    loop {
        let parent = below(&anchor);
        // The process is in `origin`; it may leave it only for beneath it.
        let vacatable = parent.starts_with(origin).then_some(origin);
        let planned = limits
            .iter()
            .try_for_each(|&limit| plan(mount, &parent, limit, pid, vacatable).map(drop));
        match planned {
            Ok(()) => {
                if anchor != origin {
                    tracing::info!(
                        origin = %cgroup_path(mount, origin),
                        parent = %cgroup_path(mount, &parent),
                        "the process's cgroup cannot pass the limits' controllers on; \
                         the sandbox goes beside it"
                    );
                }
                return Ok(parent);
            }
            Err(refusal @ CgroupError::LimitUnenforceable { .. }) => {
                first_refusal.get_or_insert(refusal);
            }
            Err(other) => return Err(other),
        }
        if anchor == mount.mount_point {
            break;
        }
        match anchor.parent() {
            Some(up) => anchor = up.to_path_buf(),
            None => break,
        }
    }
    Err(first_refusal.unwrap_or_else(|| CgroupError::NotVisible {
        cgroup: cgroup_path(mount, origin),
        mount_point: mount.mount_point.clone(),
        mount_root: mount.mount_root.clone(),
    }))
}

/// Writes `+controller` to `dir`'s `cgroup.subtree_control`. A refusal for
/// processes that appeared meanwhile is reported as such.
fn enable(mount: &Mount, dir: &Path, limit: Limit) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let value = format!("+{}", limit.controller());
    match std::fs::write(&file, &value) {
        Ok(()) => Ok(()),
        Err(source) if source.raw_os_error() == Some(libc::EBUSY) => {
            match processes_in(dir, None) {
                Ok(pids) if !pids.is_empty() => Err(CgroupError::LimitUnenforceable {
                    limit,
                    cgroup: cgroup_path(mount, dir),
                    blocker: Blocker::Busy { pids },
                }),
                _ => Err(CgroupError::EnableController {
                    limit,
                    dir: dir.to_path_buf(),
                    source,
                }),
            }
        }
        Err(source) => Err(CgroupError::EnableController {
            limit,
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

fn disable(dir: &Path, controller: &'static str) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    match std::fs::write(&file, format!("-{controller}")) {
        Ok(()) => Ok(()),
        // Already gone with its cgroup.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::DisableController {
            controller,
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

impl Hier {
    /// Creates the v2 domain (and, in Split mode, its threaded children),
    /// attaches the device rules' eBPF programs ([`devfilter`]: the
    /// sandbox's rules then the VMM's own on the constrained cgroup, the
    /// VMM's on the overhead one) and gives it the controllers `limits`
    /// need.
    pub(crate) fn create_v2(
        &mut self,
        pid: i32,
        limits: &[Limit],
        sandbox_rules: &[DeviceRule],
        vmm_rules: &[DeviceRule],
    ) -> Result<(), CgroupError> {
        let mount_point = self.mount.mount_point.clone();
        let domain = self.domain_dir();
        fsio::ensure_dirs(&mount_point, &self.parent, &mut self.shared)?;
        fsio::create_new_dir(&domain)?;
        self.own.push(domain.clone());
        if let Some(overhead) = self.overhead.clone() {
            for child in [self.sandbox.clone(), overhead] {
                fsio::create_new_dir(&child)?;
                self.own.push(child.clone());
                self.handle(&child)
                    .to_controller()
                    .set_cgroup_type("threaded")
                    .map_err(|source| CgroupError::Controller {
                        op: "make threaded",
                        path: child.join("cgroup.type"),
                        value: "threaded".to_string(),
                        source: Box::new(source),
                    })?;
            }
        }
        let mut rules = sandbox_rules.to_vec();
        rules.extend_from_slice(vmm_rules);
        devfilter::apply(&self.sandbox, &rules)?;
        if let Some(overhead) = &self.overhead {
            devfilter::apply(overhead, vmm_rules)?;
        }
        self.provide(pid, limits)
    }

    fn domain_dir(&self) -> PathBuf {
        self.domain.clone().unwrap_or_else(|| self.sandbox.clone())
    }

    /// Makes the controllers of `limits` available where their files are
    /// written: on the whole path down to the domain (see [`plan`]) and,
    /// in Split mode, cpu in the domain for its threaded `vcpu` child. Every
    /// limit is planned before anything is written, so a refusal changes
    /// nothing.
    pub(crate) fn provide(&mut self, pid: i32, limits: &[Limit]) -> Result<(), CgroupError> {
        let domain = self.domain_dir();
        let current = procfs::cgroups_of(pid)?.remove("").unwrap_or_default();
        let current =
            procfs::cgroup_dir(&self.mount.mount_point, &self.mount.mount_root, &current)?;
        let vacatable = (domain.starts_with(&current) && domain != current).then_some(current);
        let mut plans = Vec::new();
        for &limit in limits {
            plans.push((
                limit,
                plan(&self.mount, &self.parent, limit, pid, vacatable.as_deref())?,
            ));
        }
        for (limit, levels) in plans {
            for level in levels {
                if vacatable.as_ref() == Some(&level) && self.process_in(pid, &level)? {
                    self.vacate_into(pid, &domain)?;
                }
                enable(&self.mount, &level, limit)?;
                self.record(level, limit.controller());
            }
            // Split: `vcpu` is a threaded child of the domain (a threaded
            // controller may be enabled there although it holds threads).
            let split = self.overhead.is_some();
            if split
                && matches!(limit, Limit::CpuQuota(_) | Limit::CpuShares(_))
                && !lists(&domain.join("cgroup.subtree_control"), "cpu")?
            {
                enable(&self.mount, &domain, limit)?;
                self.record(domain.clone(), "cpu");
            }
        }
        Ok(())
    }

    fn record(&mut self, dir: PathBuf, controller: &'static str) {
        if !self
            .enabled
            .iter()
            .any(|(d, c)| *d == dir && *c == controller)
        {
            self.enabled.push((dir, controller));
        }
    }

    fn process_in(&self, pid: i32, dir: &Path) -> Result<bool, CgroupError> {
        let current = procfs::cgroups_of(pid)?.remove("").unwrap_or_default();
        Ok(current == cgroup_path(&self.mount, dir))
    }

    /// Moves the whole process into the domain, so that the cgroup it
    /// leaves can pass controllers on.
    fn vacate_into(&self, pid: i32, domain: &Path) -> Result<(), CgroupError> {
        self.handle(domain)
            .to_controller()
            .add_task_by_tgid(&CgroupPid::from(u64::from(pid.unsigned_abs())))
            .map_err(|source| CgroupError::MoveThread {
                tid: pid,
                path: domain.join("cgroup.procs"),
                source: Box::new(source),
            })
    }

    /// Before the process returns to its origin: disables, deepest first,
    /// the controllers Corral enabled at or below a non-root origin, which
    /// would otherwise refuse the process (see the module docs).
    pub(crate) fn restore_origin(&self, problems: &mut Vec<CgroupError>) {
        if !self.v2 || is_root(&self.origin) {
            return;
        }
        let mut undo: Vec<&(PathBuf, &'static str)> = self
            .enabled
            .iter()
            .filter(|(dir, _)| dir.starts_with(&self.origin))
            .collect();
        undo.sort_by_key(|(dir, _)| std::cmp::Reverse(dir.components().count()));
        for (dir, controller) in undo {
            if let Err(e) = disable(dir, controller) {
                problems.push(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(point: &Path) -> Mount {
        Mount {
            controllers: Vec::new(),
            mount_point: point.to_path_buf(),
            mount_root: PathBuf::from("/"),
        }
    }

    /// A fake cgroup2 tree: `dirs` with (controllers, subtree_control,
    /// procs); only the root lacks `cgroup.type`.
    fn tree(name: &str, dirs: &[(&str, &str, &str, &str)]) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("corral-unified-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (rel, offered, enabled, procs) in dirs {
            let dir = root.join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup.controllers"), offered).unwrap();
            std::fs::write(dir.join("cgroup.subtree_control"), enabled).unwrap();
            std::fs::write(dir.join("cgroup.procs"), procs).unwrap();
            if !rel.is_empty() {
                std::fs::write(dir.join("cgroup.type"), "domain").unwrap();
            }
        }
        root
    }

    const MEM: Limit = Limit::Memory(1 << 28);

    #[test]
    fn plans_every_level_below_the_first_that_offers_the_controller() {
        let root = tree(
            "levels",
            &[("", "cpu memory", "cpu", "1\n2\n"), ("a", "cpu", "", "")],
        );
        let m = mount(&root);
        let levels = plan(&m, &root.join("a/b/c"), MEM, 99, None).unwrap();
        let expected: Vec<PathBuf> = ["", "a", "a/b", "a/b/c"]
            .iter()
            .map(|r| {
                if r.is_empty() {
                    root.clone()
                } else {
                    root.join(r)
                }
            })
            .collect();
        assert_eq!(levels, expected);
        let cpu = plan(&m, &root.join("a/b"), Limit::CpuQuota(0.5), 99, None).unwrap();
        assert_eq!(cpu, vec![root.join("a"), root.join("a/b")]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_busy_level_refuses_naming_its_processes_unless_only_we_are_there() {
        let root = tree(
            "busy",
            &[
                ("", "cpu memory", "cpu memory", "1\n"),
                ("s", "cpu memory", "cpu memory", ""),
                ("s/x", "cpu memory", "", "40\n41\n"),
                ("s/y", "cpu memory", "", "41\n"),
            ],
        );
        let m = mount(&root);
        let err = plan(&m, &root.join("s/x"), MEM, 41, None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("memory limit 268435456 bytes: the memory controller")
                && text.contains("/s/x, which holds other processes (40, 41)"),
            "{text}"
        );
        let own = root.join("s/y");
        assert_eq!(
            plan(&m, &own, MEM, 41, Some(&own)).unwrap(),
            vec![own.clone()]
        );
        // Relative parents re-anchor beside a busy origin, not at root.
        let parent = relative_parent(&m, &root.join("s/x"), Path::new("p"), &[MEM], 41).unwrap();
        assert_eq!(parent, root.join("s/p"));
        assert_eq!(
            relative_parent(&m, &own, Path::new(""), &[MEM], 41).unwrap(),
            own
        );
        assert_eq!(
            relative_parent(&m, &root.join("s/x"), Path::new(""), &[], 41).unwrap(),
            root.join("s/x")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_controller_the_hierarchy_lacks_is_refused() {
        let root = tree("absent", &[("", "hugetlb", "", "1\n")]);
        let m = mount(&root);
        let err =
            relative_parent(&m, &root, Path::new(""), &[Limit::CpuQuota(1.0)], 7).unwrap_err();
        assert!(
            matches!(&err, CgroupError::LimitUnenforceable { blocker: Blocker::NotOffered { offered }, .. } if offered == "hugetlb"),
            "{err}"
        );
        assert!(err.to_string().contains("CPU quota 1 CPUs"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
