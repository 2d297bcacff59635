//! Tearing a sandbox down: the process back where it came from, every
//! cgroup the sandbox created removed, the systemd scope stopped.

use std::path::PathBuf;

use cgroups_rs::CgroupPid;

use super::error::CgroupError;
use super::fsio::{self, Removal};
use super::layout::Hier;
use super::sandbox::Sandbox;

impl Sandbox {
    /// Moves every thread still in the sandbox's cgroups back to the cgroup
    /// the process came from (on v2 first disabling the controllers Corral
    /// enabled in it, which would refuse the process), removes every cgroup
    /// this sandbox created
    /// (deepest first; already-removed ones are fine; shared ancestors stay
    /// while other sandboxes use them) and stops the systemd scope.
    /// Idempotent; it goes on past problems and reports them together.
    pub fn teardown(&mut self) -> Result<(), CgroupError> {
        if self.cleaned {
            return Ok(());
        }
        self.closed = true;
        let mut problems = Vec::new();
        for hier in &self.hiers {
            hier.restore_origin(&mut problems);
        }
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
