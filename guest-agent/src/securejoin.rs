//! Resolving a path inside a container's root as the container will see
//! it, before the agent has pivoted there: symlinks in the image (absolute
//! or relative) are followed within the root and `..` stops at it, so an
//! image cannot make the agent create or mount anything outside its root
//! (an image with `dev -> /sys/fs/cgroup` or `etc -> /` would otherwise).
//! The same job as runc's filepath-securejoin; hand-written because the
//! Rust crates for it resolve against the current root, not a given one.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Most symlinks followed in one path (Linux's own limit).
const MAX_LINKS: usize = 40;

fn parts(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// `path` resolved inside `root` as if `root` were `/`. Components that do
/// not exist yet are taken as they are (to be created).
pub fn secure_join(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let mut resolved = PathBuf::new();
    let mut pending = parts(path);
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!("too many symlinks in {}", path.display()));
                }
                let target = std::fs::read_link(&full)
                    .map_err(|e| format!("read symlink {}: {e}", full.display()))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut next = parts(&target);
                next.extend(pending);
                pending = next;
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let base = std::env::temp_dir().join(format!("corral-securejoin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("real/dir")).unwrap();
        symlink("/", root.join("etc")).unwrap();
        symlink("../../../outside", root.join("dev")).unwrap();
        symlink("/real", root.join("abs")).unwrap();
        symlink("real/dir", root.join("rel")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let j = |p: &str| secure_join(&root, Path::new(p));
        assert_eq!(j("/etc/passwd").unwrap(), root.join("passwd"));
        assert_eq!(j("/dev/pts").unwrap(), root.join("outside/pts"));
        assert_eq!(j("/../../x").unwrap(), root.join("x"));
        assert_eq!(j("/abs/dir/y").unwrap(), root.join("real/dir/y"));
        assert_eq!(j("rel/z").unwrap(), root.join("real/dir/z"));
        assert_eq!(j("/new/deeper").unwrap(), root.join("new/deeper"));
        assert!(j("/loop/x").unwrap_err().contains("too many symlinks"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
