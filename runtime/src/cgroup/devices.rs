//! Device access rules: the v1 devices controller (here) and, on v2, the
//! same rules as an eBPF program (`devfilter`).
//!
//! The sandbox cgroup gets the configured rules (e.g. a deny-all followed by
//! the containers' devices), and then — in both the sandbox and the overhead
//! cgroup — allow rules for what the VMM itself opens: `/dev/kvm`,
//! `/dev/net/tun`, `/dev/vhost-net` (each when present) and the block device
//! behind every attached disk whose path is a block device node. They are
//! written last so no configured rule can take them away. Rules are written
//! with cgroups-rs's `DevicesController` before any thread joins the cgroup.
//!
//! cgroup v2 has no devices files: there `devfilter` turns the same rules,
//! in the same order, into an eBPF device program.

use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cgroups_rs::fs::devices::{DevicePermissions, DeviceType, DevicesController};

use super::error::CgroupError;

/// Device nodes the VMM opens itself, allowed when present.
const VMM_NODES: [&str; 3] = ["/dev/kvm", "/dev/net/tun", "/dev/vhost-net"];

/// Which devices a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Every device (`a`).
    All,
    /// Character devices (`c`).
    Char,
    /// Block devices (`b`).
    Block,
}

/// One devices-controller rule (`devices.allow` / `devices.deny` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    /// Allow (`true`) or deny (`false`).
    pub allow: bool,
    /// Device type.
    pub kind: DeviceKind,
    /// Major number; `None` matches any.
    pub major: Option<u32>,
    /// Minor number; `None` matches any.
    pub minor: Option<u32>,
    /// Access, a non-empty combination of `r`, `w`, `m`.
    pub access: String,
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            DeviceKind::All => 'a',
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        };
        let number = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        write!(
            f,
            "{} {kind} {}:{} {}",
            if self.allow { "allow" } else { "deny" },
            number(self.major),
            number(self.minor),
            self.access
        )
    }
}

impl DeviceRule {
    /// Denies every device (`a *:* rwm`); put it first in a whitelist.
    pub fn deny_all() -> DeviceRule {
        DeviceRule {
            allow: false,
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: "rwm".to_string(),
        }
    }

    /// Allows `rwm` on the device node at `path`; `None` when `path` exists
    /// but is not a device node (e.g. a disk image file).
    pub fn for_node(path: &Path) -> Result<Option<DeviceRule>, CgroupError> {
        let meta = fs::metadata(path).map_err(|source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file_type = meta.file_type();
        let kind = if file_type.is_block_device() {
            DeviceKind::Block
        } else if file_type.is_char_device() {
            DeviceKind::Char
        } else {
            return Ok(None);
        };
        let rdev = meta.rdev();
        Ok(Some(DeviceRule {
            allow: true,
            kind,
            major: Some(libc::major(rdev)),
            minor: Some(libc::minor(rdev)),
            access: "rwm".to_string(),
        }))
    }

    /// Checks the rule and converts it for cgroups-rs.
    fn to_cgroups_rs(&self) -> Result<(DeviceType, i64, i64, Vec<DevicePermissions>), CgroupError> {
        let invalid = |reason: &str| CgroupError::InvalidDeviceRule {
            rule: self.to_string(),
            reason: reason.to_string(),
        };
        if !DevicePermissions::is_valid(&self.access) {
            return Err(invalid("access must be a non-empty combination of r, w, m"));
        }
        let access =
            DevicePermissions::from_str(&self.access).map_err(|_| invalid("bad access letters"))?;
        let kind = match self.kind {
            DeviceKind::All => DeviceType::All,
            DeviceKind::Char => DeviceType::Char,
            DeviceKind::Block => DeviceType::Block,
        };
        // cgroups-rs spells "any" as -1.
        let number = |n: Option<u32>| n.map_or(-1, i64::from);
        Ok((kind, number(self.major), number(self.minor), access))
    }
}

/// Validates rules early, before any cgroup is created.
pub(crate) fn validate(rules: &[DeviceRule]) -> Result<(), CgroupError> {
    rules.iter().try_for_each(|r| r.to_cgroups_rs().map(|_| ()))
}

/// The VMM's own devices: the fixed nodes that exist, plus the block device
/// behind each disk path that is a block device node.
pub(crate) fn vmm_rules(disks: &[PathBuf]) -> Result<Vec<DeviceRule>, CgroupError> {
    let mut rules = Vec::new();
    for node in VMM_NODES {
        let path = Path::new(node);
        if path.exists() {
            rules.extend(DeviceRule::for_node(path)?);
        }
    }
    for disk in disks {
        if let Some(rule) = DeviceRule::for_node(disk)? {
            if rule.kind == DeviceKind::Block {
                rules.push(rule);
            }
        }
    }
    rules.dedup();
    Ok(rules)
}

/// Writes `rules` in order to the devices cgroup at `dir`.
pub(crate) fn apply(
    dir: &Path,
    mount_root: &Path,
    rules: &[DeviceRule],
) -> Result<(), CgroupError> {
    let controller = DevicesController::new(dir.to_path_buf(), mount_root.to_path_buf());
    for rule in rules {
        let (kind, major, minor, access) = rule.to_cgroups_rs()?;
        let result = if rule.allow {
            controller.allow_device(kind, major, minor, &access)
        } else {
            controller.deny_device(kind, major, minor, &access)
        };
        result.map_err(|source| CgroupError::Controller {
            op: "write device rule to",
            path: dir.to_path_buf(),
            value: rule.to_string(),
            source: Box::new(source),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_display_in_devices_syntax() {
        assert_eq!(DeviceRule::deny_all().to_string(), "deny a *:* rwm");
        let kvm = DeviceRule {
            allow: true,
            kind: DeviceKind::Char,
            major: Some(10),
            minor: Some(232),
            access: "rw".to_string(),
        };
        assert_eq!(kvm.to_string(), "allow c 10:232 rw");
        assert_eq!(kvm.to_cgroups_rs().unwrap().1, 10);
        assert_eq!(DeviceRule::deny_all().to_cgroups_rs().unwrap().1, -1);
    }

    #[test]
    fn bad_access_is_rejected_naming_the_rule() {
        let mut rule = DeviceRule::deny_all();
        rule.access = "rx".to_string();
        let err = validate(&[rule]).unwrap_err();
        assert!(err.to_string().contains("deny a *:* rx"), "{err}");
        let mut rule = DeviceRule::deny_all();
        rule.access.clear();
        assert!(validate(&[rule]).is_err());
    }

    #[test]
    fn device_nodes_are_recognised_and_files_are_not() {
        let null = DeviceRule::for_node(Path::new("/dev/null"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (null.kind, null.major, null.minor),
            (DeviceKind::Char, Some(1), Some(3))
        );
        assert_eq!(
            DeviceRule::for_node(Path::new("/proc/self/stat")).unwrap(),
            None
        );
        assert!(DeviceRule::for_node(Path::new("/nonexistent/disk.img")).is_err());
    }

    #[test]
    fn vmm_rules_skip_disk_images_and_char_devices() {
        let rules =
            vmm_rules(&[PathBuf::from("/dev/null"), PathBuf::from("/proc/self/stat")]).unwrap();
        assert!(rules.iter().all(|r| r.allow));
        assert!(!rules
            .iter()
            .any(|r| r.major == Some(1) && r.minor == Some(3)));
    }
}
