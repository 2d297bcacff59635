//! A container's rootfs as a disk the guest agent mounts.
//!
//! containerd hands the shim the container's snapshot as mounts (overlay
//! for the default snapshotter) or, with `ctr run --rootfs`, a directory in
//! the spec's `root.path`. The shim mounts the snapshot on the bundle's
//! `rootfs/`, copies the tree into an ext4 filesystem on one of the pod's
//! disk slots with `mkfs.ext4 -d` (e2fsprogs; it keeps owners, modes,
//! devices, symlinks, hard links and xattrs, which no maintained Rust crate
//! writes for ext4), and unmounts it again: once the copy is made, nothing
//! stays mounted on the host, so a killed shim leaves no mount behind.
//!
//! Slots are sparse files attached as virtio-blk disks when the VM is
//! created (serial `corral-slot<N>`), because the VM's disks are fixed at
//! boot; a pod's later containers are written into free slots, and the
//! agent drops its cached blocks before it mounts one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use containerd_shim::protos::types::mount::Mount;

/// Why a container's disk could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ShimDiskError {
    /// A file operation on the slot or the bundle failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// mkfs.ext4 could not be run.
    #[error("cannot run mkfs.ext4 (install e2fsprogs)")]
    Spawn(#[source] std::io::Error),
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 -d {dir} failed: {stderr}")]
    Mkfs {
        /// The rootfs tree.
        dir: PathBuf,
        /// Its last stderr line.
        stderr: String,
    },
    /// The snapshot could not be mounted.
    #[error(
        "cannot mount the container's rootfs ({kind} from {source_path}) on {target}: {message}"
    )]
    Mount {
        /// Mount type.
        kind: String,
        /// Mount source.
        source_path: String,
        /// The bundle's rootfs directory.
        target: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The spec names no rootfs and containerd gave no mounts.
    #[error("the container has no rootfs: no snapshot mounts and no root.path in its spec")]
    NoRootfs,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ShimDiskError + 'a {
    move |source| ShimDiskError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The virtio serial of slot `n`.
pub fn slot_serial(n: usize) -> String {
    format!("corral-slot{n}")
}

/// Creates (or empties) slot file `path` as a sparse file of `bytes`.
pub fn reset_slot(path: &Path, bytes: u64) -> Result<(), ShimDiskError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(io("cannot create disk slot", path))?;
    file.set_len(bytes)
        .map_err(io("cannot size disk slot", path))?;
    Ok(())
}

/// Writes the tree at `dir` as an ext4 filesystem onto the slot file
/// (already sized by [`reset_slot`]).
pub fn write_tree(dir: &Path, slot: &Path) -> Result<(), ShimDiskError> {
    let started = Instant::now();
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            "-d",
        ])
        .arg(dir)
        .arg(slot)
        .output()
        .map_err(ShimDiskError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(ShimDiskError::Mkfs {
            dir: dir.to_path_buf(),
            stderr: stderr.lines().last().unwrap_or("no output").to_string(),
        });
    }
    tracing::info!(
        "disk: {} written to {} in {} ms",
        dir.display(),
        slot.display(),
        started.elapsed().as_millis()
    );
    Ok(())
}

/// A rootfs tree, mounted from containerd's snapshot (unmounted on drop)
/// or given as a directory.
pub struct RootTree {
    dir: PathBuf,
    mounted: bool,
}

impl RootTree {
    /// The tree of a container: its snapshot `mounts` mounted on
    /// `bundle/rootfs`, or else the spec's `root_path` (relative to the
    /// bundle).
    pub async fn open(
        bundle: &Path,
        mounts: &[Mount],
        root_path: Option<&Path>,
    ) -> Result<RootTree, ShimDiskError> {
        if mounts.is_empty() {
            let path = root_path.ok_or(ShimDiskError::NoRootfs)?;
            return Ok(RootTree {
                dir: bundle.join(path),
                mounted: false,
            });
        }
        let target = bundle.join("rootfs");
        std::fs::create_dir_all(&target).map_err(io("cannot create", &target))?;
        let mut tree = RootTree {
            dir: target.clone(),
            mounted: false,
        };
        for m in mounts {
            containerd_shim::asynchronous::util::mount_rootfs(m, &target)
                .await
                .map_err(|e| ShimDiskError::Mount {
                    kind: m.type_.clone(),
                    source_path: m.source.clone(),
                    target: target.clone(),
                    message: e.to_string(),
                })?;
            tree.mounted = true;
        }
        Ok(tree)
    }

    /// The tree's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RootTree {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = unmount(&self.dir) {
                tracing::warn!("cannot unmount {}: {e}", self.dir.display());
            }
        }
    }
}

/// Detaches the mount on `dir`; not mounted is not an error.
pub fn unmount(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // SAFETY: `c` is a valid NUL-terminated path for the call.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc == 0 {
            continue; // stacked mounts: take them all off
        }
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
            _ => Err(e),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_becomes_an_ext4_slot() {
        let dir = std::env::temp_dir().join(format!("corral-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tree/bin")).unwrap();
        std::fs::write(dir.join("tree/bin/hello"), b"hi").unwrap();
        let slot = dir.join("slot.img");
        reset_slot(&slot, 32 << 20).unwrap();
        write_tree(&dir.join("tree"), &slot).unwrap();
        let head = std::fs::read(&slot).unwrap();
        // ext4 magic 0xEF53 at 1024 + 0x38.
        assert_eq!(&head[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        assert_eq!(head.len(), 32 << 20);
        let err = write_tree(&dir.join("missing"), &slot).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(slot_serial(2), "corral-slot2");
    }
}
