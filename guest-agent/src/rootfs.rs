//! A container's root filesystem, on the agent's side: the block device the
//! host attached (by virtio serial in a VM, by path in tests), its format
//! read from the superblock, mounted under the state directory. Read-only
//! image formats (squashfs, erofs) get a tmpfs upper layer through
//! overlayfs, so the container can still write.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_protocol::agent::Storage;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::AgentError;

/// A mounted rootfs.
pub struct Rootfs {
    /// The directory to use as the container's root.
    pub root: PathBuf,
    dir: PathBuf,
    mounted: Vec<PathBuf>,
    /// Where the volumes are mounted.
    volumes: Vec<PathBuf>,
}

/// The filesystem in the first 4 KiB of a device, by magic number.
pub fn detect(head: &[u8]) -> Option<&'static str> {
    let le32 = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let le16 = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    if head.starts_with(b"hsqs") {
        Some("squashfs")
    } else if le32(1024) == Some(0xE0F5_E1E2) {
        Some("erofs")
    } else if le16(1024 + 56) == Some(0xEF53) {
        Some("ext4")
    } else {
        None
    }
}

/// `/dev/<name>` of the disk whose virtio serial is `serial`; waits up to
/// 5 s for it to appear.
fn find_by_serial(serial: &str) -> Result<PathBuf, AgentError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(entries) = fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let found = fs::read_to_string(e.path().join("serial"))
                    .map(|s| s.trim() == serial)
                    .unwrap_or(false);
                if found {
                    return Ok(Path::new("/dev").join(e.file_name()));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(AgentError::NoDisk {
                serial: serial.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `BLKFLSBUF`: drops the device's cached blocks. The host may have
/// written a new filesystem onto a disk this guest saw before (the shim
/// reuses spare disks for a pod's later containers); without this, the
/// superblock read at probe time (zeros) would be served from the cache.
fn drop_cached_blocks(device: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    // SAFETY: BLKFLSBUF takes no argument and touches no user memory; the
    // fd is open for the duration of the call.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), BLKFLSBUF as _, 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // Not a block device (a test's image file): nothing is cached.
        if e.raw_os_error() != Some(libc::ENOTTY) {
            return Err(e);
        }
    }
    Ok(())
}

/// The device of `storage` and its filesystem type (given, or read from
/// its superblock).
fn open_storage(storage: &Storage) -> Result<(PathBuf, &'static str), AgentError> {
    let device = match (storage.device.is_empty(), storage.virtio_serial.is_empty()) {
        (false, true) => PathBuf::from(&storage.device),
        (true, false) => find_by_serial(&storage.virtio_serial)?,
        _ => {
            return Err(AgentError::InvalidArgument(
                "storage needs exactly one of device and virtio_serial".into(),
            ))
        }
    };
    let mut head = vec![0u8; 4096];
    File::open(&device)
        .and_then(|mut f| {
            drop_cached_blocks(&f)?;
            f.read_exact(&mut head)
        })
        .map_err(|e| AgentError::path("read the device", &device, e))?;
    let fstype = if storage.fstype.is_empty() {
        detect(&head).ok_or_else(|| {
            AgentError::InvalidArgument(format!(
                "no ext4, squashfs or erofs filesystem on {}",
                device.display()
            ))
        })?
    } else {
        match storage.fstype.as_str() {
            "ext4" => "ext4",
            "squashfs" => "squashfs",
            "erofs" => "erofs",
            other => {
                return Err(AgentError::InvalidArgument(format!(
                    "filesystem type {other:?} is not supported (ext4, squashfs, erofs)"
                )))
            }
        }
    };
    Ok((device, fstype))
}

impl Rootfs {
    /// Mounts `storage` for container `id` under `state_dir/id/`.
    pub fn mount(state_dir: &Path, id: &str, storage: &Storage) -> Result<Rootfs, AgentError> {
        let (device, fstype) = open_storage(storage)?;
        let dir = state_dir.join(id);
        let mut rootfs = Rootfs {
            root: dir.join("rootfs"),
            dir: dir.clone(),
            mounted: Vec::new(),
            volumes: Vec::new(),
        };
        let result = rootfs.mount_layers(&device, fstype, storage.readonly);
        if let Err(e) = result {
            let _ = rootfs.unmount();
            return Err(e);
        }
        tracing::info!(container = id, device = %device.display(), fstype, "rootfs mounted");
        Ok(rootfs)
    }

    /// Mounts volume number `index` (a disk, as it is: read-only formats
    /// stay read-only) under this container's directory; returns where, for
    /// a bind mount into the container.
    pub fn mount_volume(&mut self, index: usize, storage: &Storage) -> Result<PathBuf, AgentError> {
        let (device, fstype) = open_storage(storage)?;
        let target = self.dir.join("volumes").join(index.to_string());
        let flags = if storage.readonly || fstype != "ext4" {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        // Listed before mounting, so that unmount removes the directory
        // even when the mount fails.
        self.volumes.push(target.clone());
        self.mount_at(&device, &target, fstype, flags, None)?;
        tracing::info!(device = %device.display(), fstype, "volume mounted");
        Ok(target)
    }

    fn mount_at(
        &mut self,
        source: &Path,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), AgentError> {
        fs::create_dir_all(target).map_err(|e| AgentError::path("mkdir", target, e))?;
        mount(Some(source), target, Some(fstype), flags, data)
            .map_err(|e| AgentError::path("mount", target, e))?;
        self.mounted.push(target.to_path_buf());
        Ok(())
    }

    fn mount_layers(
        &mut self,
        device: &Path,
        fstype: &str,
        readonly: bool,
    ) -> Result<(), AgentError> {
        let root = self.root.clone();
        if fstype == "ext4" {
            let flags = if readonly {
                MsFlags::MS_RDONLY
            } else {
                MsFlags::empty()
            };
            return self.mount_at(device, &root, fstype, flags, None);
        }
        let lower = self.dir.join("lower");
        let rw = self.dir.join("rw");
        self.mount_at(device, &lower, fstype, MsFlags::MS_RDONLY, None)?;
        self.mount_at(
            Path::new("tmpfs"),
            &rw,
            "tmpfs",
            MsFlags::empty(),
            Some("mode=0755"),
        )?;
        for d in ["upper", "work"] {
            fs::create_dir_all(rw.join(d)).map_err(|e| AgentError::path("mkdir", rw.join(d), e))?;
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            rw.join("upper").display(),
            rw.join("work").display()
        );
        self.mount_at(
            Path::new("overlay"),
            &root,
            "overlay",
            MsFlags::empty(),
            Some(&data),
        )
    }

    /// Unmounts everything (lazily: a process that survived the kill
    /// cannot keep it busy) and removes the directory.
    pub fn unmount(&mut self) -> Result<(), AgentError> {
        // Every target is tried; the ones that failed stay listed for a
        // later attempt.
        let mut first = None;
        let mut kept = Vec::new();
        while let Some(target) = self.mounted.pop() {
            if let Err(e) = umount2(&target, MntFlags::MNT_DETACH) {
                first.get_or_insert(AgentError::path("unmount", &target, e));
                kept.push(target);
            }
        }
        kept.reverse();
        self.mounted = kept;
        if let Some(e) = first {
            return Err(e);
        }
        // remove_dir, never remove_dir_all: a directory that is still a
        // mount point must not lose the container's files.
        let volumes = std::mem::take(&mut self.volumes);
        let fixed = [
            self.dir.join("volumes"),
            self.root.clone(),
            self.dir.join("lower"),
            self.dir.join("rw"),
            self.dir.clone(),
        ];
        // Every directory is tried; the first failure is reported.
        let mut failed = None;
        for d in volumes.into_iter().chain(fixed) {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    failed.get_or_insert(AgentError::path("remove", &d, e));
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_by_their_magic() {
        let mut head = vec![0u8; 4096];
        assert_eq!(detect(&head), None);
        head[1080] = 0x53;
        head[1081] = 0xEF;
        assert_eq!(detect(&head), Some("ext4"));
        let mut head = vec![0u8; 4096];
        head[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
        assert_eq!(detect(&head), Some("erofs"));
        let mut head = b"hsqs".to_vec();
        head.resize(4096, 0);
        assert_eq!(detect(&head), Some("squashfs"));
        assert_eq!(detect(&[1, 2, 3]), None);
    }
}
