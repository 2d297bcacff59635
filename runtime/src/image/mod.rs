//! OCI and docker images → squashfs disks, in process.
//!
//! [`prepare`] takes an OCI image layout (a directory, or a tar of one) or a
//! `docker save` archive, and leaves a squashfs of the image's merged root
//! filesystem in a cache directory, which the guest agent mounts read-only
//! under a tmpfs overlay. No external tool runs: tar, gzip, zstd and squashfs
//! are all handled by crates, in this process.
//!
//! The steps, one file each:
//! - `source`: the image's files, from a directory or read in place from an
//!   archive; sha256-checked blob reads;
//! - `manifest`: index → manifest → config (or `manifest.json`), with the
//!   platform and diff_id checks;
//! - `layer` and `tree`: each layer applied, whiteouts included, to an
//!   in-memory tree of metadata; file bytes go to one spool file (`cache`);
//! - `squash`: the tree written as squashfs by backhand;
//! - `user`: the image's user name resolved through the disk's own
//!   `/etc/passwd` and `/etc/group` ([`resolve_user`]).
//!
//! The disk is `<cache_dir>/v1-<key>.squashfs`, `key` being the layers' chain ID
//! (`v1` the converter's format version),
//! so a second `prepare` of the same image (or of any image with the same
//! layers) reads only its manifest and config. It is written as
//! `v1-<key>.squashfs.tmp.<pid>` and renamed into place when complete; on any
//! error nothing is left in the cache directory.

mod cache;
mod error;
mod layer;
mod manifest;
mod source;
mod squash;
mod tree;
mod user;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::ImageError;
pub use user::{resolve_user, ResolvedUser};

/// What the image's config says to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
    /// `config.Env`, `NAME=value` each.
    pub env: Vec<String>,
    /// `config.WorkingDir`, when not empty.
    pub working_dir: Option<String>,
    /// `config.User`, when not empty.
    pub user: Option<String>,
    /// The image this came from, to name it in [`ImageConfig::command`]'s error.
    pub image: PathBuf,
}

impl ImageConfig {
    fn from_oci(image: &Path, config: &oci_spec::image::ImageConfiguration) -> Self {
        let Some(c) = config.config() else {
            return Self {
                image: image.to_path_buf(),
                ..Self::default()
            };
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Self {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
            image: image.to_path_buf(),
        }
    }

    /// The command to run, as docker picks it: the entrypoint, followed by
    /// `user_args` when given, else by the image's cmd. Fails when that
    /// leaves nothing to run.
    pub fn command(&self, user_args: &[String]) -> Result<Vec<String>, ImageError> {
        let args = if user_args.is_empty() {
            &self.cmd
        } else {
            user_args
        };
        let command: Vec<String> = self.entrypoint.iter().chain(args).cloned().collect();
        if command.is_empty() {
            return Err(ImageError::NoCommand {
                image: self.image.clone(),
            });
        }
        Ok(command)
    }
}

/// A ready disk.
#[derive(Clone, Debug)]
pub struct PreparedImage {
    /// The squashfs, `<cache_dir>/v1-<key>.squashfs`.
    pub disk: PathBuf,
    /// What the image says to run.
    pub config: ImageConfig,
    /// True when the disk came from the cache, no layer read.
    pub cached: bool,
    /// Uncompressed bytes of all layers read (0 when cached).
    pub bytes_unpacked: u64,
}

/// The version of the disks this converter writes (the cache key's prefix).
const DISK_FORMAT: &str = "v1";

/// Bytes the squashfs may need beyond the file data, per node (inode,
/// directory entry, fragment and id table share): a generous bound.
const METADATA_PER_NODE: u64 = 128;

/// Turns `image` (OCI layout directory or archive, or `docker save`
/// archive) into a squashfs disk in `cache_dir` (created if missing), or
/// finds it there already.
pub fn prepare(image: &Path, cache_dir: &Path) -> Result<PreparedImage, ImageError> {
    let source = source::Source::open(image)?;
    let resolved = manifest::resolve(&source, image)?;
    let config = ImageConfig::from_oci(image, &resolved.config);
    let diff_ids: Vec<String> = resolved.layers.iter().map(|l| l.diff_id.clone()).collect();
    let key = cache::chain_id(&diff_ids);

    std::fs::create_dir_all(cache_dir).map_err(|source| ImageError::Cache {
        path: cache_dir.to_path_buf(),
        action: "create the directory",
        source,
    })?;
    // The converter's format version is part of the name, so disks made
    // by an older (perhaps faulty) converter are never reused.
    let disk = cache_dir.join(format!("{DISK_FORMAT}-{key}.squashfs"));
    let _building = cache::Building::start(&key);
    if disk.is_file() {
        tracing::debug!(disk = %disk.display(), "image disk cached");
        return Ok(PreparedImage {
            disk,
            config,
            cached: true,
            bytes_unpacked: 0,
        });
    }

    // Before spooling: at least the layers as stored must fit (the spool
    // holds them uncompressed; running out later fails the write cleanly).
    let mut stored = 0u64;
    for layer in &resolved.layers {
        let size = match layer.size {
            Some(size) => size,
            None => source.size(image, &layer.name)?,
        };
        stored = stored.saturating_add(size);
    }
    cache::check_space(image, cache_dir, stored)?;

    cache::sweep_stale(cache_dir);
    let mut spool = cache::Spool::create(image, cache_dir, &key)?;
    let mut tree = tree::Tree::new();
    let mut unpacked = 0u64;
    for (index, spec) in resolved.layers.iter().enumerate() {
        let (raw, _) = source.open_blob(image, &spec.name)?;
        unpacked += layer::apply(image, index, spec, raw, &mut tree, &mut spool)?;
    }
    let spool = spool.finish()?;

    // Before writing: the disk holds at most the live files' bytes (backhand
    // stores a block uncompressed when compressing does not shrink it).
    let (nodes, file_bytes) = tree.stats();
    cache::check_space(
        image,
        cache_dir,
        file_bytes.saturating_add(nodes.saturating_mul(METADATA_PER_NODE)),
    )?;
    let (tmp, file) = cache::TempFile::create(cache_dir.join(format!(
        "{DISK_FORMAT}-{key}.squashfs.tmp.{}",
        std::process::id()
    )))?;
    squash::write(image, &tree, &spool, tmp.path(), file)?;
    tmp.persist(&disk)?;
    tracing::debug!(disk = %disk.display(), unpacked, nodes, "image disk written");
    Ok(PreparedImage {
        disk,
        config,
        cached: false,
        bytes_unpacked: unpacked,
    })
}
