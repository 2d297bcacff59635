//! The fast placement path: the calling thread moves *itself*.
//!
//! Writing another thread's TID to `tasks` (v1) or `cgroup.threads` (v2)
//! makes the kernel take `cgroup_threadgroup_rwsem` for writing, and the
//! first such write after the lock has been idle for a moment waits for an
//! RCU grace period (`rcu_sync_enter`): 6–8 ms on an idle host here, 14–29
//! ms under load, paid again at teardown. Writing `0` moves the writer
//! alone, and for a single thread that is `current` the kernel skips that
//! lock (`cgroup_procs_write_start`, Linux 6.1 and later): ~15–200 µs.
//!
//! So a runtime that spawns the VM's threads places them without writing
//! their TIDs: threads inherit their creator's cgroups at `clone`, and the
//! creating thread moves itself before each group (overhead, then vCPU,
//! then overhead again; see `corral_vmm::SpawnPlacement`), and home again
//! at teardown once the VM's threads have exited. Only threads that
//! existed before (a tokio pool, a signal thread) still need a TID write.
//!
//! On cgroup v2 the process must first be inside the sandbox's threaded
//! domain, which only a whole-process move (`cgroup.procs`, with the lock)
//! does; and no thread can leave a threaded subtree alone, so the way home
//! is the whole-process move of teardown. v2's `favordynmods` mount option
//! makes those lock writes cheap (see ARCHITECTURE.md, host tuning).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::CgroupError;
use super::layout::Hier;
use super::sandbox::Sandbox;
use super::PlacementMode;

/// Where the calling thread goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spot {
    /// The constrained cgroup, where vCPU threads belong.
    Vcpu,
    /// Where every other thread of the VM belongs: the unconstrained
    /// sibling in split mode, the sandbox cgroup in sandbox-only mode.
    Overhead,
    /// Back to the cgroups the process came from (v1 only; see the module
    /// documentation).
    Origin,
}

impl Sandbox {
    /// Moves the calling thread (only it) to `spot` in every hierarchy the
    /// sandbox uses, without the kernel's global lock (see the module
    /// documentation). On v2 it first moves the process into the sandbox's
    /// domain when it is not there yet.
    pub fn enter(&self, spot: Spot) -> Result<(), CgroupError> {
        if spot != Spot::Origin {
            self.ensure_open()?;
            self.move_process_if_needed()?;
        }
        enter(&self.hiers, self.config.mode, spot)
    }
}

/// [`Sandbox::enter`] on a sandbox's hierarchies.
pub(crate) fn enter(hiers: &[Hier], mode: PlacementMode, spot: Spot) -> Result<(), CgroupError> {
    for hier in hiers {
        let Some(dir) = spot_dir(hier, mode, spot) else {
            continue;
        };
        write_self(&dir.join(if hier.v2 { "cgroup.threads" } else { "tasks" }))?;
    }
    Ok(())
}

/// The directory of `spot` in `hier`, or `None` where a single thread
/// cannot go there on its own (v2: home, or a sandbox-only domain, which
/// takes whole processes).
pub(crate) fn spot_dir(hier: &Hier, mode: PlacementMode, spot: Spot) -> Option<&PathBuf> {
    match spot {
        Spot::Origin if hier.v2 => None,
        Spot::Origin => Some(&hier.origin),
        _ if hier.v2 && mode == PlacementMode::SandboxOnly => None,
        Spot::Vcpu => Some(&hier.sandbox),
        Spot::Overhead => match (mode, &hier.overhead) {
            (PlacementMode::Split, Some(overhead)) => Some(overhead),
            _ => Some(&hier.sandbox),
        },
    }
}

/// Writes `0` (the writer itself) to the interface file `path`.
fn write_self(path: &Path) -> Result<(), CgroupError> {
    let error = |source| CgroupError::Write {
        path: path.to_path_buf(),
        value: "0".to_string(),
        source,
    };
    let mut file = OpenOptions::new().write(true).open(path).map_err(error)?;
    file.write_all(b"0").map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::version::Mount;

    fn hier(v2: bool) -> Hier {
        let mount = Mount {
            controllers: Vec::new(),
            mount_point: PathBuf::from("/sys/fs/cgroup/cpu"),
            mount_root: PathBuf::from("/"),
        };
        Hier::new(
            mount,
            v2,
            PathBuf::from("/o"),
            PathBuf::from("/o"),
            "s",
            PlacementMode::Split,
        )
    }

    #[test]
    fn each_spot_has_its_directory() {
        let v1 = hier(false);
        let dir = |mode, spot| spot_dir(&v1, mode, spot).map(|p| p.display().to_string());
        assert_eq!(
            dir(PlacementMode::Split, Spot::Vcpu).as_deref(),
            Some("/o/s")
        );
        assert_eq!(
            dir(PlacementMode::Split, Spot::Overhead).as_deref(),
            Some("/o/corral_overhead/s")
        );
        assert_eq!(
            dir(PlacementMode::SandboxOnly, Spot::Overhead).as_deref(),
            Some("/o/s")
        );
        assert_eq!(
            dir(PlacementMode::Split, Spot::Origin).as_deref(),
            Some("/o")
        );
        let v2 = hier(true);
        assert_eq!(spot_dir(&v2, PlacementMode::Split, Spot::Origin), None);
        assert_eq!(spot_dir(&v2, PlacementMode::SandboxOnly, Spot::Vcpu), None);
        assert_eq!(
            spot_dir(&v2, PlacementMode::Split, Spot::Vcpu).map(|p| p.display().to_string()),
            Some("/o/s/vcpu".to_string())
        );
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let e = write_self(Path::new("/nonexistent/tasks")).unwrap_err();
        assert_eq!(e.to_string(), "cannot write \"0\" to /nonexistent/tasks");
    }
}
