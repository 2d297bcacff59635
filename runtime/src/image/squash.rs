//! The tree, written as a squashfs (v4, gzip) with backhand.
//!
//! Every regular file is handed to backhand as a [`FileSlice`] of the spool:
//! a positioned reader over the one shared spool descriptor, so an image of
//! any number of files holds one descriptor, and no file's bytes are read
//! before backhand writes that file. Hard links were already resolved to
//! copies of their target's node (backhand's writer has no hard links); its
//! duplicate detection stores their data once.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::BufWriter;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backhand::compression::{CompressionOptions, Compressor, Gzip};
use backhand::{BackhandError, FilesystemCompressor, FilesystemWriter, NodeHeader};

use super::source::FileSlice;
use super::tree::{Kind, Meta, Node, Tree};
use super::ImageError;

/// zlib level. Measured on 171 MiB of real files (/usr/lib/gcc and
/// python3.11) in release builds: level 1 converts at 95 MiB/s into a 76.5 MiB
/// disk, 3 at 63 MiB/s into 61.4 MiB, 6 at 44 MiB/s into 59.3 MiB, 9 (backhand's
/// default) at 17 MiB/s into 57.5 MiB. 3 keeps most of the size for less
/// than half of 6's time. backhand's writer compresses on one thread.
const GZIP_LEVEL: u32 = 3;

/// Writes `tree` (contents in `spool`) as a squashfs to `file` (at `path`,
/// named in errors), then syncs it.
pub(super) fn write(
    image: &Path,
    tree: &Tree,
    spool: &Arc<File>,
    path: &Path,
    file: File,
) -> Result<(), ImageError> {
    let err = |source| ImageError::Squash {
        image: image.to_path_buf(),
        path: path.to_path_buf(),
        source,
    };
    let mut fs = FilesystemWriter::default();
    let options = CompressionOptions::Gzip(Gzip {
        compression_level: GZIP_LEVEL,
        window_size: 15,
        strategies: 0,
    });
    fs.set_compressor(FilesystemCompressor::new(Compressor::Gzip, Some(options)).map_err(err)?);
    // The level only matters when compressing; a reader needs no options.
    fs.set_emit_compression_options(false);

    let root = tree.root();
    let mut ids = HashSet::from([0]);
    let mut newest = root.meta.mtime;
    push_children(&mut fs, Path::new("/"), root, spool, &mut ids, &mut newest).map_err(err)?;
    fs.set_root_mode(perm(&root.meta));
    // backhand adds ids to its table only for pushed nodes.
    if ids.contains(&root.meta.uid) {
        fs.set_root_uid(root.meta.uid);
    }
    if ids.contains(&root.meta.gid) {
        fs.set_root_gid(root.meta.gid);
    }
    fs.set_time(clamp(newest));

    let mut out = BufWriter::with_capacity(1 << 20, file);
    fs.write(&mut out).map_err(err)?;
    let file = out
        .into_inner()
        .map_err(|e| err(BackhandError::StdIo(e.into_error())))?;
    file.sync_all().map_err(|e| err(BackhandError::StdIo(e)))
}

fn clamp(time: u64) -> u32 {
    u32::try_from(time).unwrap_or(u32::MAX)
}

fn perm(meta: &Meta) -> u16 {
    // Masked to 0o7777 when read, so it fits.
    (meta.mode & 0o7777) as u16
}

/// The kernel's `new_encode_dev`, the device number format squashfs stores.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// Pushes `dir`'s children (already in path order: backhand keeps its nodes
/// sorted, so appending in order costs no shifting), then theirs.
fn push_children(
    fs: &mut FilesystemWriter<'_, '_, '_>,
    at: &Path,
    dir: &Node,
    spool: &Arc<File>,
    ids: &mut HashSet<u32>,
    newest: &mut u64,
) -> Result<(), BackhandError> {
    let Kind::Dir(children) = &dir.kind else {
        return Ok(());
    };
    for (name, node) in children {
        let path: PathBuf = at.join(OsStr::from_bytes(name));
        let m = &node.meta;
        let header = NodeHeader::new(perm(m), m.uid, m.gid, clamp(m.mtime));
        ids.extend([m.uid, m.gid]);
        *newest = (*newest).max(m.mtime);
        match &node.kind {
            Kind::Dir(_) => {
                fs.push_dir(&path, header)?;
                push_children(fs, &path, node, spool, ids, newest)?;
            }
            Kind::File { offset, len } => fs.push_file(
                FileSlice::new(Arc::clone(spool), *offset, *len),
                &path,
                header,
            )?,
            Kind::Symlink(target) => fs.push_symlink(
                PathBuf::from(OsString::from_vec(target.clone())),
                &path,
                header,
            )?,
            Kind::Char { major, minor } => {
                fs.push_char_device(encode_dev(*major, *minor), &path, header)?
            }
            Kind::Block { major, minor } => {
                fs.push_block_device(encode_dev(*major, *minor), &path, header)?
            }
            Kind::Fifo => fs.push_fifo(&path, header)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        assert_eq!(encode_dev(1, 3), 0x103); // /dev/null
        assert_eq!(encode_dev(8, 0x123), 0x10_0823);
    }
}
