//! The guest's cgroups: always cgroup v2 through cgroupfs, one cgroup per
//! container under `<root>/corral/`, whatever cgroup driver the host's
//! spec names (the guest has no systemd; Kata issue #5779 is what happens
//! when an agent believes the host). A requested limit the guest cannot
//! enforce is refused, never dropped.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use crate::error::AgentError;

/// The guest's cgroup v2 hierarchy as the agent uses it.
pub struct GuestCgroups {
    base: PathBuf,
    controllers: BTreeSet<String>,
}

/// A container's usage.
#[derive(Debug, Default)]
pub struct Usage {
    /// From cpu.stat.
    pub cpu_usage_usec: u64,
    /// From cpu.stat.
    pub cpu_user_usec: u64,
    /// From cpu.stat.
    pub cpu_system_usec: u64,
    /// memory.current and memory.max ("max" as u64::MAX), when the memory
    /// controller is there.
    pub memory: Option<(u64, u64)>,
    /// pids.current, when the pids controller is there.
    pub pids: Option<u64>,
}

fn read(path: &Path) -> Result<String, AgentError> {
    fs::read_to_string(path).map_err(|e| AgentError::path("read", path, e))
}

fn write(path: &Path, value: &str) -> Result<(), AgentError> {
    fs::write(path, value).map_err(|e| AgentError::path("write", path, e))
}

impl GuestCgroups {
    /// Uses the cgroup2 hierarchy at `root` (mounted), creating
    /// `root/corral` with every controller `root` offers enabled.
    pub fn open(root: &Path) -> Result<GuestCgroups, AgentError> {
        let offered = read(&root.join("cgroup.controllers")).map_err(|_| {
            AgentError::InvalidArgument(format!(
                "{} is not a cgroup v2 hierarchy (no cgroup.controllers)",
                root.display()
            ))
        })?;
        let base = root.join("corral");
        fs::create_dir_all(&base).map_err(|e| AgentError::path("mkdir", &base, e))?;
        for dir in [root, base.as_path()] {
            for c in offered.split_whitespace() {
                // A controller that cannot be enabled stays off; limits that
                // need it are refused later.
                if let Err(e) = write(&dir.join("cgroup.subtree_control"), &format!("+{c}")) {
                    tracing::warn!("{e}");
                }
            }
        }
        let controllers = read(&base.join("cgroup.subtree_control"))?
            .split_whitespace()
            .map(str::to_string)
            .collect();
        tracing::info!(base = %base.display(), ?controllers, "guest cgroups");
        Ok(GuestCgroups { base, controllers })
    }

    fn need(&self, controller: &str, limit: String) -> Result<(), AgentError> {
        if self.controllers.contains(controller) {
            Ok(())
        } else {
            Err(AgentError::Unenforceable {
                limit,
                reason: format!(
                    "no {controller} controller in {} (enabled: {:?})",
                    self.base.display(),
                    self.controllers
                ),
            })
        }
    }

    /// Creates the cgroup of container `id` with the spec's limits.
    pub fn create(
        &self,
        id: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<PathBuf, AgentError> {
        let dir = self.base.join(id);
        if dir.exists() {
            // Left by a container whose removal failed: reuse only if empty.
            let _ = fs::remove_dir(&dir);
        }
        fs::create_dir(&dir).map_err(|e| AgentError::path("mkdir", &dir, e))?;
        if let Err(e) = self.apply(&dir, resources) {
            let _ = fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(dir)
    }

    fn apply(&self, dir: &Path, resources: Option<&LinuxResources>) -> Result<(), AgentError> {
        let Some(r) = resources else { return Ok(()) };
        if let Some(m) = r.memory() {
            if let Some(limit) = m.limit().filter(|l| *l > 0) {
                self.need("memory", format!("memory limit {limit}"))?;
                write(&dir.join("memory.max"), &limit.to_string())?;
            }
            if let Some(low) = m.reservation().filter(|l| *l > 0) {
                self.need("memory", format!("memory reservation {low}"))?;
                write(&dir.join("memory.low"), &low.to_string())?;
            }
            if let Some(swap) = m.swap().filter(|s| *s > 0) {
                let limit = m.limit().unwrap_or(0);
                // swap is memory+swap in OCI; equal to the limit: no swap.
                if swap != limit {
                    let file = dir.join("memory.swap.max");
                    if !file.exists() {
                        return Err(AgentError::Unenforceable {
                            limit: format!("memory+swap limit {swap}"),
                            reason: "the guest kernel has no swap accounting".into(),
                        });
                    }
                    write(&file, &(swap - limit.max(0)).max(0).to_string())?;
                }
            }
        }
        if let Some(cpu) = r.cpu() {
            if let Some(quota) = cpu.quota().filter(|q| *q > 0) {
                let period = cpu.period().unwrap_or(100_000);
                self.need("cpu", format!("CPU quota {quota}/{period}"))?;
                write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
            }
            if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
                self.need("cpu", format!("CPU shares {shares}"))?;
                // The conversion runc and crun use (shares 2..262144 →
                // weight 1..10000).
                let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
                write(&dir.join("cpu.weight"), &weight.to_string())?;
            }
            for (value, file, what) in [
                (cpu.cpus(), "cpuset.cpus", "cpuset CPUs"),
                (cpu.mems(), "cpuset.mems", "cpuset memory nodes"),
            ] {
                if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                    self.need("cpuset", format!("{what} {v}"))?;
                    write(&dir.join(file), v)?;
                }
            }
        }
        if let Some(pids) = r.pids() {
            if pids.limit() > 0 {
                self.need("pids", format!("pids limit {}", pids.limit()))?;
                write(&dir.join("pids.max"), &pids.limit().to_string())?;
            }
        }
        let unsupported = [
            ("blockIO", r.block_io().is_some()),
            (
                "hugepageLimits",
                r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()),
            ),
            ("network", r.network().is_some()),
            ("rdma", r.rdma().as_ref().is_some_and(|h| !h.is_empty())),
            (
                "unified",
                r.unified().as_ref().is_some_and(|h| !h.is_empty()),
            ),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(AgentError::Unenforceable {
                limit: format!("linux.resources.{name}"),
                reason: "the agent does not implement it".into(),
            });
        }
        // linux.resources.devices: the VM is the device boundary; the guest
        // has only the devices Corral gives it.
        Ok(())
    }

    /// Moves process `pid` into `dir`.
    pub fn add(&self, dir: &Path, pid: i32) -> Result<(), AgentError> {
        write(&dir.join("cgroup.procs"), &pid.to_string())
    }

    /// The pids in `dir`.
    pub fn pids(&self, dir: &Path) -> Vec<i32> {
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Kills everything in `dir` and removes it once empty (bounded wait:
    /// the reaper collects the processes).
    pub fn kill_and_remove(&self, dir: &Path) -> Result<(), AgentError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let kill_file = dir.join("cgroup.kill");
        loop {
            if kill_file.exists() {
                let _ = fs::write(&kill_file, "1");
            } else {
                for pid in self.pids(dir) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            match fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(AgentError::path("remove cgroup", dir, e))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// The usage of `dir`.
    pub fn usage(&self, dir: &Path) -> Result<Usage, AgentError> {
        let stat = read(&dir.join("cpu.stat"))?;
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        let memory = match (
            fs::read_to_string(dir.join("memory.current")),
            fs::read_to_string(dir.join("memory.max")),
        ) {
            (Ok(cur), Ok(max)) => Some((
                cur.trim().parse().unwrap_or(0),
                max.trim().parse().unwrap_or(u64::MAX),
            )),
            _ => None,
        };
        let pids = fs::read_to_string(dir.join("pids.current"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        Ok(Usage {
            cpu_usage_usec: field("usage_usec "),
            cpu_user_usec: field("user_usec "),
            cpu_system_usec: field("system_usec "),
            memory,
            pids,
        })
    }
}
