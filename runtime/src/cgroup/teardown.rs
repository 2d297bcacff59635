//! Tearing a sandbox down: the process back where it came from, every
//! cgroup the sandbox created removed, the systemd scope stopped; the same
//! detached from the sandbox ([`TeardownHandle`]); and the sweep of stale
//! sibling cgroups before a sandbox is created.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cgroups_rs::CgroupPid;

use super::error::CgroupError;
use super::fsio::{self, Removal};
use super::layout::Hier;
use super::path::OVERHEAD_ROOT;
use super::sandbox::Sandbox;
use super::selfmove::{self, Spot};
use super::PlacementMode;
use crate::sweep::{self, SweepReport};

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
        // This thread goes home by itself first (cheap, see `selfmove`); once
        // the VM's threads have exited, that leaves only threads that were
        // moved by TID to drain.
        let mut problems: Vec<CgroupError> =
            selfmove::enter(&self.hiers, self.config.mode, Spot::Origin)
                .err()
                .into_iter()
                .collect();
        problems.extend(undo(&self.hiers, &self.restore_only));
        if let Some(scope) = &self.scope {
            if let Err(reason) = scope.stop() {
                tracing::warn!(sandbox = %self.config.sandbox_id, "{reason}");
            }
        }
        summarize(&self.config.sandbox_id, problems)?;
        self.cleaned = true;
        Ok(())
    }

    /// The cgroup part of [`Sandbox::teardown`], detached from the sandbox
    /// (take it once the threads are placed).
    pub fn teardown_handle(&self) -> TeardownHandle {
        TeardownHandle {
            sandbox_id: self.config.sandbox_id.clone(),
            hiers: self.hiers.clone(),
            restore_only: self.restore_only.clone(),
            mode: self.config.mode,
        }
    }
}

/// What [`Sandbox::teardown`] does to the cgroups, without the sandbox:
/// for a last-resort cleanup from another thread while the sandbox's owner
/// may be stuck (`corral run`'s second Ctrl-C). Every step tolerates the
/// owner doing the same at the same time. It does not stop a systemd
/// scope: systemd drops a transient scope once it is empty.
#[derive(Debug, Clone)]
pub struct TeardownHandle {
    sandbox_id: String,
    hiers: Vec<Hier>,
    restore_only: Vec<Hier>,
    mode: PlacementMode,
}

impl TeardownHandle {
    /// Moves the calling thread (only it) back to the cgroups the process
    /// came from, cheaply (see [`Spot`]): for a long-lived thread of the
    /// front end (`corral run`'s signal thread) before the owner's
    /// teardown, so that teardown writes no TID.
    pub fn go_home(&self) -> Result<(), CgroupError> {
        selfmove::enter(&self.hiers, self.mode, Spot::Origin)
    }

    /// Moves every thread back to where the process came from and removes
    /// the sandbox's cgroups, deepest first; reports problems together.
    pub fn run(&self) -> Result<(), CgroupError> {
        summarize(&self.sandbox_id, undo(&self.hiers, &self.restore_only))
    }
}

/// Controllers disabled, threads moved back, created cgroups removed.
fn undo(hiers: &[Hier], restore_only: &[Hier]) -> Vec<CgroupError> {
    let mut problems = Vec::new();
    for hier in hiers {
        hier.restore_origin(&mut problems);
    }
    for hier in hiers.iter().chain(restore_only) {
        drain(hier, &mut problems);
    }
    for hier in hiers {
        remove_created(hier, &mut problems);
    }
    problems
}

fn summarize(sandbox_id: &str, problems: Vec<CgroupError>) -> Result<(), CgroupError> {
    let count = problems.len();
    match problems.into_iter().next() {
        None => {
            tracing::info!(sandbox = %sandbox_id, "cgroups removed");
            Ok(())
        }
        Some(first) => Err(CgroupError::Teardown {
            sandbox_id: sandbox_id.to_string(),
            count,
            first: Box::new(first),
        }),
    }
}

/// Removes stale `<prefix><pid>` cgroups beneath each hierarchy's parent
/// and, on v1, beneath its `corral_overhead` (removed too when the sweep
/// empties it: the killed run made it, and this one makes it again if it
/// needs it). Never fails: what stays is logged.
pub(crate) fn sweep_stale(hiers: &[Hier], prefix: &str) {
    let started = Instant::now();
    let mut report = SweepReport::default();
    for hier in hiers {
        sweep::sweep_cgroups(&hier.parent, prefix, &mut report);
        if !hier.v2 {
            let overhead = hier.parent.join(OVERHEAD_ROOT);
            if sweep::sweep_cgroups(&overhead, prefix, &mut report) > 0
                && remove_if_empty(&overhead)
            {
                report.removed.push(overhead);
            }
        }
    }
    for kept in &report.kept {
        tracing::warn!("stale cgroup sweep: {}", kept.with_causes());
    }
    tracing::debug!(
        removed = ?report.removed,
        "stale cgroup sweep took {} µs",
        started.elapsed().as_micros()
    );
    if !report.removed.is_empty() {
        tracing::info!(
            "removed {} stale cgroups of killed runs",
            report.removed.len()
        );
    }
}

fn remove_if_empty(dir: &Path) -> bool {
    matches!(fsio::remove_dir(dir, true), Ok(Removal::Removed))
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
