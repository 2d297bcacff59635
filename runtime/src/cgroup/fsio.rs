//! Small file-system steps on cgroupfs that cgroups-rs does not offer in the
//! form needed here, each with errors that name the path and value.
//!
//! * Directory creation one level at a time, remembering which levels this
//!   sandbox made: cgroups-rs's `Controller::create` is `create_dir_all`,
//!   which cannot tell ours from pre-existing ones, and teardown must remove
//!   exactly ours.
//! * Removal with plain `rmdir`, tolerating "already gone": cgroups-rs's
//!   `delete` retries with sleeps (10–80 ms) and recurses into
//!   sub-directories, which could remove cgroups Corral did not create.
//! * Reading single values: cgroups-rs's stat getters map read errors to 0,
//!   which would hide a missing cgroup behind a plausible number.
//!
//! (`cgroup.subtree_control` is written in [`super::unified`]: cgroups-rs's
//! `enable_controllers` is private, ignores errors and reads
//! `cgroup.controllers` from a fixed `/sys/fs/cgroup`.)

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::error::CgroupError;

/// Reads a whole interface file, trimmed.
pub(crate) fn read_trimmed(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads a file holding one unsigned number.
pub(crate) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read_trimmed(path)?;
    text.parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        detail: format!("expected an unsigned number, found {text:?}"),
    })
}

/// Reads `key` from a flat-keyed file (`key value` lines, like `cpu.stat`).
pub(crate) fn read_keyed_u64(path: &Path, key: &str) -> Result<u64, CgroupError> {
    let text = read_trimmed(path)?;
    let value = text
        .lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim());
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CgroupError::Parse {
            path: path.to_path_buf(),
            detail: format!("no numeric {key:?} line"),
        })
}

/// Creates every missing directory from the deepest existing ancestor of
/// `dir` down to `dir`, never above `mount_point`, pushing each one created
/// here onto `created` as soon as it exists (so a failure half-way still
/// leaves a complete record for teardown). A level that appears
/// concurrently is not ours.
pub(crate) fn ensure_dirs(
    mount_point: &Path,
    dir: &Path,
    created: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    let mut missing = Vec::new();
    let mut cursor = dir;
    while !cursor.is_dir() {
        if cursor == mount_point || !cursor.starts_with(mount_point) {
            return Err(CgroupError::CreateDir {
                path: dir.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} is not a mounted cgroup hierarchy",
                        mount_point.display()
                    ),
                ),
            });
        }
        missing.push(cursor.to_path_buf());
        cursor = match cursor.parent() {
            Some(parent) => parent,
            None => break,
        };
    }
    for level in missing.into_iter().rev() {
        match fs::create_dir(&level) {
            Ok(()) => created.push(level),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::CreateDir {
                    path: level,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Creates `dir`, which must not exist yet (a sandbox's own cgroup).
pub(crate) fn create_new_dir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CgroupError::AlreadyExists {
            path: dir.to_path_buf(),
        }),
        Err(source) => Err(CgroupError::CreateDir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// What `remove_dir` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// The directory was removed now.
    Removed,
    /// It was already gone.
    AlreadyGone,
    /// It still has tasks or children (only reported when tolerated).
    InUse,
}

/// Removes one cgroup directory. `tolerate_in_use` is for shared ancestors
/// that another sandbox may still be using.
pub(crate) fn remove_dir(dir: &Path, tolerate_in_use: bool) -> Result<Removal, CgroupError> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(Removal::Removed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removal::AlreadyGone),
        Err(e)
            if tolerate_in_use
                && matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY)) =>
        {
            Ok(Removal::InUse)
        }
        Err(source) => Err(CgroupError::RemoveDir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values_are_found_by_exact_key() {
        let dir = std::env::temp_dir().join(format!("corral-fsio-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cpu.stat");
        fs::write(&file, "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n").unwrap();
        assert_eq!(read_keyed_u64(&file, "usage_usec").unwrap(), 1500);
        assert_eq!(read_keyed_u64(&file, "system_usec").unwrap(), 500);
        assert!(read_keyed_u64(&file, "usage").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ensure_dirs_reports_only_new_levels_and_stays_below_the_mount() {
        let root = std::env::temp_dir().join(format!("corral-ensure-{}", std::process::id()));
        fs::create_dir_all(root.join("a")).unwrap();
        let mut created = Vec::new();
        ensure_dirs(&root, &root.join("a/b/c"), &mut created).unwrap();
        assert_eq!(created, vec![root.join("a/b"), root.join("a/b/c")]);
        let mut again = Vec::new();
        ensure_dirs(&root, &root.join("a/b/c"), &mut again).unwrap();
        assert!(again.is_empty());
        assert!(ensure_dirs(&root.join("nope"), &root.join("nope/x"), &mut again).is_err());
        assert!(matches!(
            create_new_dir(&root.join("a/b")),
            Err(CgroupError::AlreadyExists { .. })
        ));
        assert_eq!(remove_dir(&root.join("a/b"), true).unwrap(), Removal::InUse);
        assert!(remove_dir(&root.join("a/b"), false).is_err());
        assert_eq!(
            remove_dir(&root.join("a/b/c"), false).unwrap(),
            Removal::Removed
        );
        assert_eq!(
            remove_dir(&root.join("a/b/c"), false).unwrap(),
            Removal::AlreadyGone
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
