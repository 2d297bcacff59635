//! What procfs says about this process: its threads, the cgroup each
//! hierarchy has it in, and per-thread CPU time.
//!
//! `/proc/<pid>/cgroup` is parsed by cgroups-rs
//! (`get_cgroups_relative_paths_by_pid`, which splits co-mounted controller
//! lists and keeps `:` inside paths); the rest is read here.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use super::error::CgroupError;

/// The cgroup (path relative to the hierarchy root) of thread `tid` in
/// every hierarchy, keyed by controller name (`cpu`, `name=systemd`, …) and
/// by `""` for cgroup2. `/proc/<tid>` resolves for any thread, not just
/// thread-group leaders.
pub(crate) fn cgroups_of(tid: i32) -> Result<HashMap<String, String>, CgroupError> {
    let pid = u32::try_from(tid).map_err(|_| CgroupError::InvalidTid { tid })?;
    cgroups_rs::fs::cgroup::get_cgroups_relative_paths_by_pid(pid).map_err(|source| {
        CgroupError::Controller {
            op: "parse",
            path: PathBuf::from(format!("/proc/{tid}/cgroup")),
            value: String::new(),
            source: Box::new(source),
        }
    })
}

/// This process's id.
pub(crate) fn own_pid() -> i32 {
    // Process ids fit in pid_t (i32) by construction.
    i32::try_from(std::process::id()).unwrap_or(i32::MAX)
}

/// Every thread of this process, from `/proc/self/task`.
pub(crate) fn own_threads() -> Result<Vec<i32>, CgroupError> {
    let dir = Path::new("/proc/self/task");
    let entries = fs::read_dir(dir).map_err(|source| CgroupError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut tids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        if let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

/// Whether `tid` is (still) a thread of this process.
pub(crate) fn is_own_thread(tid: i32) -> bool {
    tid > 0 && Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// The directory of cgroup `cgroup` (a path relative to the hierarchy root,
/// as in `/proc/self/cgroup`) under a mount that shows `mount_root`.
pub(crate) fn cgroup_dir(
    mount_point: &Path,
    mount_root: &Path,
    cgroup: &str,
) -> Result<PathBuf, CgroupError> {
    let not_visible = || CgroupError::NotVisible {
        cgroup: cgroup.to_string(),
        mount_point: mount_point.to_path_buf(),
        mount_root: mount_root.to_path_buf(),
    };
    let rel = Path::new(cgroup)
        .strip_prefix(mount_root)
        .map_err(|_| not_visible())?;
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(not_visible());
    }
    // Joined component-wise: `join("")` would leave a trailing slash.
    Ok(mount_point.components().chain(rel.components()).collect())
}

/// CPU time (user + system) of thread `tid` in microseconds, or `None` if
/// the thread has exited.
pub(crate) fn thread_cpu_usec(tid: i32) -> Result<Option<u64>, CgroupError> {
    let path = PathBuf::from(format!("/proc/self/task/{tid}/stat"));
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(source) => return Err(CgroupError::Read { path, source }),
    };
    let ticks = parse_stat_ticks(&text).ok_or_else(|| CgroupError::Parse {
        path: path.clone(),
        detail: "no utime/stime fields".to_string(),
    })?;
    let hz = clock_ticks_per_second();
    Ok(Some(ticks.saturating_mul(1_000_000) / hz))
}

/// utime + stime (fields 14 and 15 of `stat`, in clock ticks). The command
/// name (field 2) may contain spaces and parentheses, so fields are counted
/// from the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // After the comm come field 3 (state) … field 13; utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// `sysconf(_SC_CLK_TCK)`, the unit of the `stat` times (100 when unknown).
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory
    // arguments and no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_survive_odd_command_names() {
        let stat = "1234 (vcpu 0) (x)) S 1 1234 1234 0 -1 4194368 10 0 0 0 \
                    250 40 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(290));
    }

    #[test]
    fn stat_ticks_reject_truncated_lines() {
        assert_eq!(parse_stat_ticks("1 (a) S 1 2 3"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn own_thread_cpu_time_is_readable() {
        let tids = own_threads().unwrap();
        assert!(tids.contains(&own_pid()));
        assert!(thread_cpu_usec(own_pid()).unwrap().is_some());
        assert_eq!(thread_cpu_usec(i32::MAX).unwrap(), None);
    }

    #[test]
    fn cgroup_dir_strips_the_mount_root() {
        let dir = cgroup_dir(Path::new("/sys/fs/cgroup/memory"), Path::new("/"), "/a/b").unwrap();
        assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/memory/a/b"));
        let dir = cgroup_dir(Path::new("/cg"), Path::new("/pod"), "/pod/c").unwrap();
        assert_eq!(dir, PathBuf::from("/cg/c"));
        assert!(cgroup_dir(Path::new("/cg"), Path::new("/pod"), "/other").is_err());
        assert!(cgroup_dir(Path::new("/cg"), Path::new("/"), "/a/../../etc").is_err());
    }
}
