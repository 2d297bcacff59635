//! The cache directory: the disk's key and name, the free-space check, the
//! spool file of layer contents, the temporary output that becomes the disk
//! by rename, and a per-process lock so two threads do not build one key.
//!
//! Nothing here is left behind on an error: the spool is unlinked as soon as
//! it is opened (the descriptor keeps it), and the temporary output is
//! removed when its guard drops unless it was renamed into place.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use sha2::{Digest as _, Sha256};

use super::source::hex;
use super::ImageError;

/// The cache key of a layer stack: the hex of containerd's chain ID
/// (`chain(L0) = diff_id(L0)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diff_id(Ln))`),
/// so images that share all their layers share a disk. No layers: sha256("").
pub(super) fn chain_id(diff_ids: &[String]) -> String {
    let mut chain: Option<String> = None;
    for id in diff_ids {
        chain = Some(match chain {
            None => id.clone(),
            Some(parent) => format!("sha256:{}", hex(&Sha256::digest(format!("{parent} {id}")))),
        });
    }
    match chain {
        Some(c) => c.trim_start_matches("sha256:").to_owned(),
        None => hex(&Sha256::digest(b"")),
    }
}

/// Bytes available to an unprivileged writer on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    // The field types are u64 on 64-bit Linux, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (
        u64::from(st.blocks_available()),
        u64::from(st.fragment_size()),
    );
    Ok(blocks.saturating_mul(block_size))
}

/// Removes temporary disks (`*.squashfs.tmp.<pid>`) left in `cache` by
/// processes that are gone (killed while converting). Best effort.
pub(super) fn sweep_stale(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split_once(".squashfs.tmp."))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(path = %entry.path().display(), "removing a dead process's temporary disk");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Fails with [`ImageError::NoSpace`] when `needed` bytes do not fit in the
/// cache filesystem's free space.
pub(super) fn check_space(image: &Path, cache: &Path, needed: u64) -> Result<(), ImageError> {
    let free = free_bytes(cache).map_err(|source| ImageError::Cache {
        path: cache.to_path_buf(),
        action: "read the free space (statvfs)",
        source,
    })?;
    fits(image, cache, needed, free)
}

fn fits(image: &Path, cache: &Path, needed: u64, free: u64) -> Result<(), ImageError> {
    if needed > free {
        return Err(ImageError::NoSpace {
            image: image.to_path_buf(),
            cache: cache.to_path_buf(),
            needed,
            free,
        });
    }
    Ok(())
}

/// Keys being built in this process. Another thread asking for one waits,
/// then finds the disk in the cache, instead of writing the same
/// `<key>.squashfs.tmp.<pid>` at the same time.
static BUILDING: (Mutex<Option<HashSet<String>>>, Condvar) = (Mutex::new(None), Condvar::new());

/// Held while a key is being built; see [`BUILDING`].
pub(super) struct Building {
    key: String,
}

impl Building {
    pub(super) fn start(key: &str) -> Self {
        let (lock, cond) = &BUILDING;
        let mut keys = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while keys.as_ref().is_some_and(|k| k.contains(key)) {
            keys = cond.wait(keys).unwrap_or_else(PoisonError::into_inner);
        }
        keys.get_or_insert_with(HashSet::new).insert(key.to_owned());
        Self {
            key: key.to_owned(),
        }
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        let (lock, cond) = &BUILDING;
        let mut keys = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = keys.as_mut() {
            k.remove(&self.key);
        }
        cond.notify_all();
    }
}

/// A file that is removed when dropped, unless [`TempFile::persist`]ed.
pub(super) struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Creates `path`, which must not exist: never through a planted
    /// symlink, never over another writer's file (O_EXCL).
    pub(super) fn create(path: PathBuf) -> Result<(Self, File), ImageError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| ImageError::Cache {
                path: path.clone(),
                action: "create the temporary disk",
                source,
            })?;
        Ok((Self { path, armed: true }, file))
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `to` (atomically replacing any file there).
    pub(super) fn persist(mut self, to: &Path) -> Result<(), ImageError> {
        std::fs::rename(&self.path, to).map_err(|source| ImageError::Cache {
            path: to.to_path_buf(),
            action: "rename the finished disk into place",
            source,
        })?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where layer contents go while the tree is built: one file, appended to,
/// unlinked from the start. Overwritten files just leave dead bytes.
pub(super) struct Spool {
    out: BufWriter<File>,
    len: u64,
    /// The most it may hold: the cache's free space when it was made, less
    /// a reserve, so a decompression bomb fails early instead of filling
    /// the filesystem for everyone.
    limit: u64,
    path: PathBuf,
    image: PathBuf,
}

/// Free space a spool leaves untouched on the cache's filesystem.
const SPOOL_RESERVE: u64 = 64 << 20;

/// Why an append failed: reading the entry, or writing the spool.
pub(super) enum AppendError {
    Read(io::Error),
    Write(ImageError),
}

impl Spool {
    pub(super) fn create(image: &Path, cache: &Path, key: &str) -> Result<Self, ImageError> {
        let path = cache.join(format!(".{key}.spool.{}", std::process::id()));
        let err = |action, source| ImageError::Cache {
            path: path.clone(),
            action,
            source,
        };
        let limit = free_bytes(cache)
            .map_err(|e| err("read the free space (statvfs)", e))?
            .saturating_sub(SPOOL_RESERVE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| err("create the layer spool", e))?;
        std::fs::remove_file(&path).map_err(|e| err("unlink the layer spool", e))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            len: 0,
            limit,
            path,
            image: image.to_path_buf(),
        })
    }

    /// Copies `from` to the end of the spool; returns its (offset, length).
    pub(super) fn append(&mut self, from: &mut dyn Read) -> Result<(u64, u64), AppendError> {
        let offset = self.len;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(AppendError::Read(e)),
            };
            if self.len.saturating_add(n as u64) > self.limit {
                let cache = self.path.parent().unwrap_or(Path::new("/")).to_path_buf();
                return Err(AppendError::Write(ImageError::NoSpace {
                    image: self.image.clone(),
                    cache,
                    needed: self
                        .len
                        .saturating_add(n as u64)
                        .saturating_add(SPOOL_RESERVE),
                    free: self.limit.saturating_add(SPOOL_RESERVE),
                }));
            }
            self.out.write_all(&buf[..n]).map_err(|source| {
                AppendError::Write(ImageError::Cache {
                    path: self.path.clone(),
                    action: "write the layer spool",
                    source,
                })
            })?;
            self.len += n as u64;
        }
        Ok((offset, self.len - offset))
    }

    /// Flushes and hands back the file, shared, for reading.
    pub(super) fn finish(self) -> Result<Arc<File>, ImageError> {
        let path = self.path;
        let file = self.out.into_inner().map_err(|e| ImageError::Cache {
            path,
            action: "write the layer spool",
            source: e.into_error(),
        })?;
        Ok(Arc::new(file))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chain_id_follows_containerd() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        assert_eq!(chain_id(std::slice::from_ref(&a)), "a".repeat(64));
        let expect = hex(&Sha256::digest(format!("{a} {b}")));
        assert_eq!(chain_id(&[a.clone(), b.clone()]), expect);
        assert_ne!(chain_id(&[b, a]), expect);
        assert_eq!(
            chain_id(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn space_check_names_both_sizes() {
        let err = fits(Path::new("/i.tar"), Path::new("/cache"), 2048, 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image /i.tar needs 2048 bytes in /cache, which has 1024 bytes free"
        );
        fits(Path::new("/i.tar"), Path::new("/cache"), 1024, 1024).unwrap();
        let dir = tempfile::tempdir().unwrap();
        check_space(Path::new("/i.tar"), dir.path(), 1).unwrap();
        assert!(check_space(Path::new("/i.tar"), dir.path(), u64::MAX).is_err());
    }

    #[test]
    fn spool_is_unlinked_and_temp_files_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(Path::new("img"), dir.path(), "k").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(spool.append(&mut &b"hello"[..]).ok(), Some((0, 5)));
        assert_eq!(spool.append(&mut &b"world"[..]).ok(), Some((5, 5)));
        let file = spool.finish().unwrap();
        let mut out = String::new();
        super::super::source::FileSlice::new(file, 5, 5)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "world");

        let (tmp, _file) = TempFile::create(dir.path().join("x.tmp")).unwrap();
        drop(tmp);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let (tmp, _file) = TempFile::create(dir.path().join("y.tmp")).unwrap();
        tmp.persist(&dir.path().join("y")).unwrap();
        assert!(dir.path().join("y").is_file());
    }

    #[test]
    fn a_dead_processs_temporary_disk_is_swept_and_a_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        // Above Linux's largest pid: no such process.
        let dead = tmp.path().join("v1-abc.squashfs.tmp.4194305");
        let live = tmp
            .path()
            .join(format!("v1-abc.squashfs.tmp.{}", std::process::id()));
        let disk = tmp.path().join("v1-abc.squashfs");
        for f in [&dead, &live, &disk] {
            std::fs::write(f, b"x").unwrap();
        }
        sweep_stale(tmp.path());
        assert!(!dead.exists());
        assert!(live.exists() && disk.exists());
    }

    #[test]
    fn temporary_files_are_never_opened_through_an_existing_path() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let planted = tmp.path().join("planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(TempFile::create(planted).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
