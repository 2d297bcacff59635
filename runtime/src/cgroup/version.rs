//! Which cgroup version to drive, and where its hierarchies are mounted.
//!
//! cgroup v1 mounts are found with cgroups-rs (`hierarchies::V1`, which
//! parses `/proc/self/mountinfo` and matches controllers against each
//! mount's super options). The cgroup2 mount is found by hand: cgroups-rs
//! only returns `cgroup` (v1) mounts from its mountinfo parser and its `V2`
//! hierarchy is hard-wired to `/sys/fs/cgroup`, which on a hybrid host (v1
//! controllers, cgroup2 at `/sys/fs/cgroup/unified`) is a tmpfs, not cgroup2.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use cgroups_rs::fs::hierarchies::{self, V1};
use cgroups_rs::fs::Controllers;

use super::error::CgroupError;

/// The cgroup interface a sandbox is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy per-controller hierarchies (`tasks` files).
    V1,
    /// The unified hierarchy (`cgroup.procs` / `cgroup.threads`).
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupVersion::V1 => f.write_str("v1"),
            CgroupVersion::V2 => f.write_str("v2"),
        }
    }
}

impl CgroupVersion {
    /// Detects the version to use: v2 when `/sys/fs/cgroup` itself is
    /// cgroup2 (unified mode); otherwise v1 when any v1 controller is mounted
    /// (hybrid hosts keep their controllers there); otherwise v2 when a
    /// cgroup2 mount exists anywhere.
    pub fn detect() -> Result<CgroupVersion, CgroupError> {
        if hierarchies::is_cgroup2_unified_mode() {
            return Ok(CgroupVersion::V2);
        }
        if !v1_mounts().is_empty() {
            return Ok(CgroupVersion::V1);
        }
        match cgroup2_mount()? {
            Some(_) => Ok(CgroupVersion::V2),
            None => Err(CgroupError::NotMounted {
                version: CgroupVersion::V1,
            }),
        }
    }
}

/// The v1 controllers a sandbox uses, in the order tasks are attached
/// (cgroups-rs's order: blkio before memory for writeback accounting).
pub(crate) const V1_CONTROLLERS: [Controllers; 8] = [
    Controllers::BlkIo,
    Controllers::Mem,
    Controllers::Pids,
    Controllers::CpuSet,
    Controllers::CpuAcct,
    Controllers::Cpu,
    Controllers::Devices,
    Controllers::Freezer,
];

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// Controllers bound to this mount (empty for cgroup2).
    pub(crate) controllers: Vec<Controllers>,
    /// Where it is mounted.
    pub(crate) mount_point: PathBuf,
    /// Which cgroup of the hierarchy the mount shows (`/` normally).
    pub(crate) mount_root: PathBuf,
}

impl Mount {
    /// A short name: the controller list (`cpu,cpuacct`) or `unified`.
    pub(crate) fn name(&self) -> String {
        if self.controllers.is_empty() {
            return "unified".to_string();
        }
        self.controllers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The mounted v1 hierarchies among [`V1_CONTROLLERS`], one entry per mount
/// (controllers co-mounted like `cpu,cpuacct` share an entry).
pub(crate) fn v1_mounts() -> Vec<Mount> {
    let v1 = V1::new();
    let mut mounts: Vec<Mount> = Vec::new();
    for controller in V1_CONTROLLERS {
        let Some((mount_point, mount_root)) = v1.get_mount_point(controller.clone()) else {
            continue;
        };
        match mounts.iter_mut().find(|m| m.mount_point == mount_point) {
            Some(existing) => existing.controllers.push(controller),
            None => mounts.push(Mount {
                controllers: vec![controller],
                mount_point,
                mount_root,
            }),
        }
    }
    mounts
}

/// The v1 `name=systemd` hierarchy, which the systemd driver must restore
/// at teardown (systemd moves the process there when starting a scope).
pub(crate) fn v1_systemd_mount() -> Option<Mount> {
    V1::new()
        .get_mount_point(Controllers::Systemd)
        .map(|(mount_point, mount_root)| Mount {
            controllers: vec![Controllers::Systemd],
            mount_point,
            mount_root,
        })
}

/// The first cgroup2 mount in `/proc/self/mountinfo`.
pub(crate) fn cgroup2_mount() -> Result<Option<Mount>, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().find_map(parse_cgroup2_line))
}

/// Parses one mountinfo line; returns the mount if it is cgroup2.
///
/// Format (proc(5)): `id parent major:minor root mount-point options
/// [optional fields...] - fstype source super-options`.
fn parse_cgroup2_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let fstype = right.split_whitespace().next()?;
    if fstype != "cgroup2" {
        return None;
    }
    let mut fields = left.split_whitespace();
    let root = fields.nth(3)?;
    let mount_point = fields.next()?;
    Some(Mount {
        controllers: Vec::new(),
        mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
        mount_root: PathBuf::from(unescape_mountinfo(root)),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_in_hybrid_layout() {
        let line = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        let mount = parse_cgroup2_line(line).unwrap();
        assert_eq!(mount.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(mount.mount_root, PathBuf::from("/"));
        assert_eq!(mount.name(), "unified");
    }

    #[test]
    fn ignores_v1_and_other_mounts() {
        let v1 = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu";
        assert!(parse_cgroup2_line(v1).is_none());
        let tmpfs = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755";
        assert!(parse_cgroup2_line(tmpfs).is_none());
    }

    #[test]
    fn handles_optional_fields_and_escapes() {
        let line = "50 1 0:40 /sub /mnt/my\\040cg rw shared:5 master:2 - cgroup2 none rw";
        let mount = parse_cgroup2_line(line).unwrap();
        assert_eq!(mount.mount_point, PathBuf::from("/mnt/my cg"));
        assert_eq!(mount.mount_root, PathBuf::from("/sub"));
    }

    #[test]
    fn names_co_mounted_controllers() {
        let mount = Mount {
            controllers: vec![Controllers::Cpu, Controllers::CpuAcct],
            mount_point: PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
            mount_root: PathBuf::from("/"),
        };
        assert_eq!(mount.name(), "cpu,cpuacct");
    }
}
