//! Parsing the parent cgroup given in OCI `linux.cgroupsPath` form, and the
//! names Corral derives from it.
//!
//! Accepted forms:
//!
//! * `""` — beneath the cgroup the process is in, per hierarchy;
//! * `a/b` (relative) — `a/b` beneath the process's cgroup, per hierarchy;
//! * `/a/b` (absolute) — `a/b` from the hierarchy root, as OCI specifies;
//! * `slice:prefix:name` (systemd) — the transient scope `prefix-name.scope`
//!   in `slice` (default `system.slice`). A string is systemd form when it
//!   does not start with `/`, has exactly three `:`-separated fields and the
//!   first is empty or ends in `.slice` — cgroupfs paths may contain `:`
//!   (e.g. `kubepods-…:cri-containerd:…` components), so `:` alone is not
//!   enough.

use std::path::{Path, PathBuf};

use cgroups_rs::systemd::utils::expand_slice;
use cgroups_rs::systemd::{DEFAULT_SLICE, SCOPE_SUFFIX, SLICE_SUFFIX};

use super::error::CgroupError;

/// Name of the directory holding every sandbox's overhead cgroup on v1.
pub(crate) const OVERHEAD_ROOT: &str = "corral_overhead";
/// The v2 threaded child for vCPU threads.
pub(crate) const V2_VCPU: &str = "vcpu";
/// The v2 threaded child for the other threads.
pub(crate) const V2_OVERHEAD: &str = "overhead";

/// Where a sandbox's parent cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParentSpec {
    /// Beneath the process's own cgroup (empty path: the cgroup itself).
    BelowOrigin(PathBuf),
    /// From the hierarchy root (no leading `/`).
    FromRoot(PathBuf),
    /// A systemd transient scope.
    Systemd(SystemdPath),
}

/// The three fields of a systemd-form cgroupsPath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SystemdPath {
    /// The slice unit, e.g. `system.slice` or `kubepods-burstable.slice`.
    pub(crate) slice: String,
    /// The scope name prefix (may be empty).
    pub(crate) prefix: String,
    /// The scope name.
    pub(crate) name: String,
}

impl SystemdPath {
    /// The scope unit: `prefix-name.scope` (or `name.scope`).
    pub(crate) fn unit(&self) -> String {
        if self.prefix.is_empty() {
            format!("{}{SCOPE_SUFFIX}", self.name)
        } else {
            format!("{}-{}{SCOPE_SUFFIX}", self.prefix, self.name)
        }
    }

    /// The scope's cgroup relative to a hierarchy root, as systemd lays it
    /// out: `a.slice/a-b.slice/prefix-name.scope`.
    pub(crate) fn scope_path(&self, original: &str) -> Result<PathBuf, CgroupError> {
        let slice_dir = expand_slice(&self.slice).map_err(|e| CgroupError::InvalidCgroupsPath {
            path: original.to_string(),
            reason: format!("slice {:?} cannot be expanded: {e}", self.slice),
        })?;
        Ok(Path::new(&slice_dir).join(self.unit()))
    }
}

/// Parses the `parent` field of the configuration.
pub(crate) fn parse_parent(path: &str) -> Result<ParentSpec, CgroupError> {
    let invalid = |reason: &str| CgroupError::InvalidCgroupsPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    if let Some(systemd) = parse_systemd(path)? {
        return Ok(ParentSpec::Systemd(systemd));
    }
    // Checked on the raw segments: `Path::components` silently drops `.`.
    for segment in path.split('/') {
        match segment {
            "." => return Err(invalid("contains a \".\" component")),
            ".." => return Err(invalid("contains a \"..\" component")),
            _ => {}
        }
    }
    let rel = Path::new(path.trim_start_matches('/'));
    if path.starts_with('/') {
        Ok(ParentSpec::FromRoot(rel.to_path_buf()))
    } else {
        Ok(ParentSpec::BelowOrigin(rel.to_path_buf()))
    }
}

fn parse_systemd(path: &str) -> Result<Option<SystemdPath>, CgroupError> {
    if path.starts_with('/') {
        return Ok(None);
    }
    let fields: Vec<&str> = path.split(':').collect();
    let [slice, prefix, name] = fields[..] else {
        return Ok(None);
    };
    if !(slice.is_empty() || slice.ends_with(SLICE_SUFFIX)) {
        return Ok(None);
    }
    let invalid = |reason: &str| CgroupError::InvalidCgroupsPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if [slice, prefix, name].iter().any(|f| f.contains('/')) {
        return Err(invalid("systemd-form fields may not contain '/'"));
    }
    if name.is_empty() {
        return Err(invalid("systemd-form name is empty"));
    }
    if name.ends_with(SLICE_SUFFIX) {
        return Err(invalid(
            "a slice as the systemd-form name is not supported; Corral creates a scope",
        ));
    }
    if name == "." || name == ".." || prefix == "." || prefix == ".." {
        return Err(invalid("systemd-form fields may not be \".\" or \"..\""));
    }
    let slice = if slice.is_empty() {
        DEFAULT_SLICE
    } else {
        slice
    };
    let parsed = SystemdPath {
        slice: slice.to_string(),
        prefix: prefix.to_string(),
        name: name.to_string(),
    };
    // Reject bad slice names now rather than at scope creation.
    parsed.scope_path(path)?;
    Ok(Some(parsed))
}

/// Checks that a sandbox id is usable as one cgroup directory name.
pub(crate) fn validate_sandbox_id(id: &str) -> Result<(), CgroupError> {
    let invalid = |reason| CgroupError::InvalidSandboxId {
        id: id.to_string(),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id == "." || id == ".." {
        return Err(invalid("it is \".\" or \"..\""));
    }
    if id.contains('/') || id.contains('\0') {
        return Err(invalid("it contains '/' or NUL"));
    }
    if id.len() > 200 {
        return Err(invalid("it is longer than 200 bytes"));
    }
    if id == OVERHEAD_ROOT {
        return Err(invalid("it is the name of Corral's overhead directory"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_relative_paths_are_below_the_origin() {
        assert_eq!(
            parse_parent("").unwrap(),
            ParentSpec::BelowOrigin(PathBuf::new())
        );
        assert_eq!(
            parse_parent("pods/p1").unwrap(),
            ParentSpec::BelowOrigin(PathBuf::from("pods/p1"))
        );
    }

    #[test]
    fn absolute_paths_start_at_the_hierarchy_root() {
        assert_eq!(
            parse_parent("/kubepods/burstable/pod1").unwrap(),
            ParentSpec::FromRoot(PathBuf::from("kubepods/burstable/pod1"))
        );
        assert_eq!(
            parse_parent("/").unwrap(),
            ParentSpec::FromRoot(PathBuf::new())
        );
    }

    #[test]
    fn colons_inside_cgroupfs_paths_are_not_systemd_form() {
        let p = "/system.slice/containerd.service/kubepods-pod1.slice:cri-containerd:abc";
        assert!(matches!(parse_parent(p).unwrap(), ParentSpec::FromRoot(_)));
        assert!(matches!(
            parse_parent("a:b").unwrap(),
            ParentSpec::BelowOrigin(_)
        ));
        assert!(matches!(
            parse_parent("x:y:z").unwrap(),
            ParentSpec::BelowOrigin(_)
        ));
    }

    #[test]
    fn systemd_form_is_parsed_and_expanded() {
        let ParentSpec::Systemd(s) = parse_parent("kubepods-besteffort.slice:corral:abc").unwrap()
        else {
            panic!("not systemd form");
        };
        assert_eq!(s.unit(), "corral-abc.scope");
        assert_eq!(
            s.scope_path("x").unwrap(),
            PathBuf::from("kubepods.slice/kubepods-besteffort.slice/corral-abc.scope")
        );
        let ParentSpec::Systemd(s) = parse_parent("::abc").unwrap() else {
            panic!("not systemd form");
        };
        assert_eq!(s.slice, "system.slice");
        assert_eq!(s.unit(), "abc.scope");
    }

    #[test]
    fn bad_paths_are_rejected_with_the_value() {
        for bad in [
            "../x",
            "a/../b",
            "/a/./b",
            "system.slice:p:",
            "system.slice:p:x.slice",
        ] {
            let err = parse_parent(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(parse_parent("bad-.slice:p:n").is_err());
    }

    #[test]
    fn sandbox_ids_must_be_one_component() {
        assert!(validate_sandbox_id("sb-1").is_ok());
        for bad in ["", ".", "..", "a/b", OVERHEAD_ROOT] {
            assert!(validate_sandbox_id(bad).is_err(), "{bad:?}");
        }
    }
}
