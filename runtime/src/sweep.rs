//! Sweeping what a killed Corral left behind: sandbox cgroups named
//! `<prefix><pid>` (`corral run`'s `corral-<pid>`) and hybrid-vsock
//! sockets `<prefix><pid>.vsock` (and their `_<port>` siblings) whose
//! process is gone.
//!
//! A process killed with SIGKILL (by a person, the OOM killer, a
//! supervisor) cannot remove its cgroups or unlink its sockets. So the next
//! start sweeps, before it creates its own, the directories it is about to
//! use: the cgroup parent in every hierarchy (`corral_overhead` beneath it
//! on v1; see [`crate::cgroup::CgroupConfig::stale_prefix`]) and the socket
//! directory ([`sweep_sockets`]). It costs one `readdir` per directory, and
//! a `/proc/<pid>/stat` read per matching name.
//!
//! # When a name is stale
//!
//! The name carries the pid of the process that made it. Pids are reused,
//! so "the pid exists" is not enough; and a live Corral's cgroups are empty
//! between their creation and the placement of its threads, so "no task in
//! it" is not enough either. [`judge`] calls a name stale when its pid
//! * is this process's own (an earlier process with this pid made it; this
//!   one has made nothing yet: the sweep runs first),
//! * has no `/proc/<pid>`, or is a zombie (its tasks have left every
//!   cgroup, its files are closed),
//! * runs a program whose name (`comm`) is neither this program's nor
//!   starts with `corral`: the pid was reused by something else.
//!
//! A pid reused by another Corral keeps the name: that process either made
//! it itself or, having started after the name was made, sweeps it at its
//! own start (the first rule). One sandbox of a given prefix per process is
//! assumed, as `corral run` has.
//!
//! # What is removed
//!
//! A stale cgroup goes with its sub-cgroups (v2's threaded `vcpu` and
//! `overhead`), deepest first, and only when none of them holds a task
//! ([`remove_cgroup_tree`]); `rmdir` itself refuses a cgroup with tasks, so
//! a task that arrives after the check keeps it too. A stale socket is
//! removed only if it is a socket (never a file or link of that name) owned
//! by this user.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a sweep kept something (or could not look).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A directory could not be listed, or a cgroup's task list read (its
    /// tree is left alone).
    #[error("cannot read {path}")]
    Read {
        /// The directory or task file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A stale cgroup still holds tasks, so its tree was left alone.
    #[error("{path} still holds tasks; kept")]
    HoldsTasks {
        /// The cgroup with tasks.
        path: PathBuf,
    },
    /// A stale entry could not be removed.
    #[error("cannot remove {path}")]
    Remove {
        /// The cgroup or socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl SweepError {
    /// The error with its causes, in one line (for a log).
    pub fn with_causes(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            line.push_str(&format!(": {c}"));
            cause = c.source();
        }
        line
    }
}

/// What a sweep removed, and what it kept and why.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Every directory or socket removed.
    pub removed: Vec<PathBuf>,
    /// Stale entries that stay, with the reason.
    pub kept: Vec<SweepError>,
}

/// What `/proc` says about a pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcState {
    /// No such process.
    Gone,
    /// Exited, not yet reaped.
    Zombie,
    /// Running (or sleeping, stopped…) as the program named `comm`.
    Running {
        /// Its `comm`.
        comm: String,
    },
}

/// Whether a name's owner may still use it, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A Corral with that pid runs: keep.
    Live,
    /// Stale: the pid is this process's, which has made nothing yet.
    OwnPid,
    /// Stale: the process has exited.
    Exited,
    /// Stale: the pid now belongs to another program.
    PidReused,
}

/// The pid in `<prefix><pid>`: decimal, no sign, no leading zero.
pub fn cgroup_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix).and_then(decimal)
}

/// The pid in `<prefix><pid><suffix>` or `<prefix><pid><suffix>_<port>`.
pub fn socket_pid(name: &str, prefix: &str, suffix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let pid = decimal(&rest[..end])?;
    match rest[end..].strip_prefix(suffix)? {
        "" => Some(pid),
        tail => {
            let port = tail.strip_prefix('_')?;
            (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
        }
    }
}

fn decimal(s: &str) -> Option<u32> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The verdict on a name made by `pid` (see the module documentation).
pub fn judge(pid: u32, own_pid: u32, state: &ProcState, own_comm: &str) -> Verdict {
    if pid == own_pid {
        return Verdict::OwnPid;
    }
    match state {
        ProcState::Gone | ProcState::Zombie => Verdict::Exited,
        ProcState::Running { comm } if comm == own_comm || comm.starts_with("corral") => {
            Verdict::Live
        }
        ProcState::Running { .. } => Verdict::PidReused,
    }
}

/// `comm` and the state letter of a `/proc/<pid>/stat` line (the comm may
/// hold spaces and parentheses: it ends at the last `)`).
pub fn parse_stat(stat: &str) -> Option<(String, char)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some((comm.to_string(), state))
}

/// What `/proc/<pid>/stat` says about `pid`. A process whose stat cannot
/// be read or parsed counts as running under an unknown name (kept unless
/// the pid was reused, which an unreadable stat cannot tell).
pub fn probe(pid: u32) -> ProcState {
    let text = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            return ProcState::Gone
        }
        other => other.unwrap_or_default(),
    };
    match parse_stat(&text) {
        Some((_, 'Z' | 'X')) => ProcState::Zombie,
        Some((comm, _)) => ProcState::Running { comm },
        None => ProcState::Running {
            comm: "corral?".into(),
        },
    }
}

fn self_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .map(|c| c.trim_end().to_string())
        .unwrap_or_else(|_| "corral".into())
}

/// Judges `pid` on what `/proc` says now; this program's name is read
/// once, and only when a name matches.
fn is_stale(pid: u32, own_comm: &mut Option<String>) -> bool {
    let own = own_comm.get_or_insert_with(self_comm);
    judge(pid, std::process::id(), &probe(pid), own) != Verdict::Live
}

/// The entries of `dir`; a missing `dir` has none, another failure is
/// reported.
fn list(dir: &Path, report: &mut SweepReport) -> Option<std::fs::ReadDir> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Some(entries),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            report.kept.push(SweepError::Read {
                path: dir.to_path_buf(),
                source,
            });
            None
        }
    }
}

/// Removes the stale `<prefix><pid>` cgroups directly beneath `parent`
/// (each with its sub-cgroups), adding to `report`; returns how many were
/// removed. A missing `parent` has nothing to sweep.
pub fn sweep_cgroups(parent: &Path, prefix: &str, report: &mut SweepReport) -> usize {
    let Some(entries) = list(parent, report) else {
        return 0;
    };
    let mut comm = None;
    let mut swept = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| cgroup_pid(n, prefix)) else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || !is_stale(pid, &mut comm) {
            continue;
        }
        match remove_cgroup_tree(&entry.path(), &mut report.removed) {
            Ok(()) => swept += 1,
            Err(e) => report.kept.push(e),
        }
    }
    swept
}

/// Removes cgroup `dir` and every cgroup beneath it, deepest first, unless
/// one of them holds a task; pushes each removed directory onto `removed`.
/// Already gone is fine.
pub fn remove_cgroup_tree(dir: &Path, removed: &mut Vec<PathBuf>) -> Result<(), SweepError> {
    let mut dirs = Vec::new();
    collect_dirs(dir, 0, &mut dirs)?;
    for d in &dirs {
        if holds_tasks(d)? {
            return Err(SweepError::HoldsTasks { path: d.clone() });
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        match std::fs::remove_dir(&d) {
            Ok(()) => removed.push(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SweepError::Remove { path: d, source }),
        }
    }
    Ok(())
}

/// Deeper than any layout Corral makes; a bound on a hostile tree.
const MAX_DEPTH: usize = 16;

fn collect_dirs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), SweepError> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other.map_err(|source| SweepError::Read {
            path: dir.to_path_buf(),
            source,
        })?,
    };
    out.push(dir.to_path_buf());
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    for entry in entries.flatten() {
        // `file_type` does not follow links; cgroupfs has none anyway.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), depth + 1, out)?;
        }
    }
    Ok(())
}

/// Whether cgroup `dir` lists a thread (v2 `cgroup.threads`, v1 `tasks`).
fn holds_tasks(dir: &Path) -> Result<bool, SweepError> {
    for file in ["cgroup.threads", "tasks"] {
        let path = dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok(!text.trim().is_empty()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SweepError::Read { path, source }),
        }
    }
    Ok(false)
}

/// Removes the stale sockets `<prefix><pid><suffix>` and
/// `<prefix><pid><suffix>_<port>` in `dir` (e.g. `corral-`, `.vsock`).
pub fn sweep_sockets(dir: &Path, prefix: &str, suffix: &str) -> SweepReport {
    let mut report = SweepReport::default();
    let Some(entries) = list(dir, &mut report) else {
        return report;
    };
    // SAFETY: geteuid has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let mut comm = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| socket_pid(n, prefix, suffix)) else {
            continue;
        };
        // `DirEntry::metadata` does not follow a link.
        let ours = entry
            .metadata()
            .is_ok_and(|m| m.file_type().is_socket() && m.uid() == euid);
        if !ours || !is_stale(pid, &mut comm) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => report.removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => report.kept.push(SweepError::Remove { path, source }),
        }
    }
    report
}

#[cfg(test)]
mod tests;
