//! Access to the files of an image, wherever they are: an unpacked directory
//! (OCI image layout, or an unpacked `docker save`) or a tar archive of one.
//!
//! An archive is read once, front to back, to index its members (offset and
//! length of each one's data, from the `tar` crate's `raw_file_position`);
//! members are then read in place with positioned reads on one shared file
//! descriptor. Nothing is extracted to disk, and nothing in the archive is
//! ever used as a host path.
//!
//! Blobs named by a digest are read through [`Verified`], which hashes what
//! passes through it so callers can check the sha256 and length once the last
//! byte is read; small JSON blobs go through [`Source::read_json_blob`], which
//! checks before returning a byte.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::ImageError;

/// A window `[pos, end)` of a file, read with `pread` so that any number of
/// these share one descriptor and need no seeking. Used for archive members
/// and, in `squash`, for file contents in the spool.
pub(super) struct FileSlice {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl FileSlice {
    pub(super) fn new(file: Arc<File>, offset: u64, len: u64) -> Self {
        Self {
            file,
            pos: offset,
            end: offset.saturating_add(len),
        }
    }
}

impl Read for FileSlice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            // The file is shorter than the window: a truncated archive.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file ends early",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A reader that hashes (sha256) and counts every byte read through it.
pub(super) struct Verified<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> Verified<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Reads the rest of the stream (so the digest covers all of it).
    pub(super) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }

    /// `sha256:<hex>` of the bytes read so far, and their count.
    pub(super) fn finish(self) -> (String, u64) {
        (format!("sha256:{}", hex(&self.hasher.finalize())), self.len)
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Lower-case hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// What a blob must hash to, and who said so (for the error message).
pub(super) struct Expect<'a> {
    /// `sha256:<hex>`, when known.
    pub digest: Option<&'a str>,
    /// Length in bytes, when known.
    pub size: Option<u64>,
    /// `manifest`, `config`, `layer`.
    pub what: &'static str,
    /// `index`, `manifest`, `file name`.
    pub owner: &'static str,
}

impl Expect<'_> {
    /// Checks a finished [`Verified`] read against this expectation.
    pub(super) fn check(
        &self,
        image: &Path,
        name: &str,
        digest: &str,
        len: u64,
    ) -> Result<(), ImageError> {
        if let Some(expected) = self.digest {
            if expected != digest {
                return Err(ImageError::DigestMismatch {
                    image: image.to_path_buf(),
                    what: self.what,
                    expected: expected.to_owned(),
                    actual: digest.to_owned(),
                    owner: self.owner,
                });
            }
        }
        if let Some(expected) = self.size {
            if expected != len {
                return Err(ImageError::SizeMismatch {
                    image: image.to_path_buf(),
                    what: self.what,
                    name: self.digest.unwrap_or(name).to_owned(),
                    expected,
                    actual: len,
                });
            }
        }
        Ok(())
    }
}

/// Where an archive member's bytes are, or what it links to.
pub(super) enum Member {
    Data {
        offset: u64,
        size: u64,
    },
    /// A symlink or hard link member: the (normalized) member it points to.
    Link(String),
}

/// An image's files.
pub(super) enum Source {
    /// An unpacked directory.
    Dir(PathBuf),
    /// A tar archive, indexed.
    Tar {
        file: Arc<File>,
        members: HashMap<String, Member>,
    },
}

/// The largest JSON blob read (index, manifest, config): 16 MiB, well above
/// any real one (registries cap manifests at 4 MiB).
const JSON_LIMIT: u64 = 16 << 20;

impl Source {
    /// Opens `image`: a directory as it is, a file as a tar archive (indexed now).
    pub(super) fn open(image: &Path) -> Result<Self, ImageError> {
        let open_err = |source| ImageError::Open {
            image: image.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(image).map_err(open_err)?;
        if meta.is_dir() {
            return Ok(Self::Dir(image.to_path_buf()));
        }
        let file = File::open(image).map_err(open_err)?;
        let mut magic = [0u8; 4];
        let n = file.read_at(&mut magic, 0).map_err(open_err)?;
        if n >= 2 && magic[..2] == [0x1f, 0x8b] || n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(ImageError::NotAnImage {
                image: image.to_path_buf(),
                detail: "the archive is compressed; give the plain .tar (decompress it first)"
                    .into(),
            });
        }
        let members = index_archive(image, &file, meta.len())?;
        if members.is_empty() {
            return Err(ImageError::NotAnImage {
                image: image.to_path_buf(),
                detail: "empty archive, or not a tar archive".into(),
            });
        }
        Ok(Self::Tar {
            file: Arc::new(file),
            members,
        })
    }

    /// Whether the image has a file `name` (normalized, relative).
    pub(super) fn has(&self, name: &str) -> bool {
        match self {
            Self::Dir(root) => root.join(name).is_file(),
            Self::Tar { .. } => self.resolve(name).is_some(),
        }
    }

    /// Follows link members (a `docker save` links identical layers).
    fn resolve(&self, name: &str) -> Option<(u64, u64)> {
        let Self::Tar { members, .. } = self else {
            return None;
        };
        let mut name = normalize(name)?;
        for _ in 0..8 {
            match members.get(&name)? {
                Member::Data { offset, size } => return Some((*offset, *size)),
                Member::Link(target) => name = target.clone(),
            }
        }
        None
    }

    /// Size of blob `name`.
    pub(super) fn size(&self, image: &Path, name: &str) -> Result<u64, ImageError> {
        self.open_blob(image, name).map(|(_, size)| size)
    }

    /// Opens blob `name` (a relative path inside the image) for reading.
    pub(super) fn open_blob(
        &self,
        image: &Path,
        name: &str,
    ) -> Result<(Box<dyn Read + Send>, u64), ImageError> {
        let missing = || ImageError::MissingBlob {
            image: image.to_path_buf(),
            name: name.to_owned(),
        };
        let Some(rel) = normalize(name) else {
            return Err(ImageError::BadReference {
                image: image.to_path_buf(),
                value: name.to_owned(),
                expected: "relative path inside the image",
            });
        };
        match self {
            Self::Dir(root) => {
                let path = root.join(rel);
                let read_err = |source| ImageError::ReadBlob {
                    image: image.to_path_buf(),
                    name: name.to_owned(),
                    source,
                };
                // Checked before opening: opening a FIFO planted in the
                // layout would block for ever.
                match std::fs::metadata(&path) {
                    Ok(meta) if meta.is_file() => {}
                    Ok(_) => return Err(missing()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    Err(e) => return Err(read_err(e)),
                }
                let file = File::options()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(read_err)?;
                let meta = file.metadata().map_err(read_err)?;
                if !meta.is_file() {
                    return Err(missing());
                }
                Ok((
                    Box::new(BufReader::with_capacity(256 << 10, file)),
                    meta.len(),
                ))
            }
            Self::Tar { file, .. } => {
                let (offset, size) = self.resolve(&rel).ok_or_else(missing)?;
                Ok((
                    Box::new(FileSlice::new(Arc::clone(file), offset, size)),
                    size,
                ))
            }
        }
    }

    /// Reads a small (JSON) blob whole and checks it against `expect`
    /// before returning it.
    pub(super) fn read_json_blob(
        &self,
        image: &Path,
        name: &str,
        kind: &'static str,
        expect: &Expect<'_>,
    ) -> Result<Vec<u8>, ImageError> {
        let (reader, size) = self.open_blob(image, name)?;
        if size > JSON_LIMIT {
            return Err(ImageError::BlobTooLarge {
                image: image.to_path_buf(),
                name: name.to_owned(),
                size,
                limit: JSON_LIMIT,
                kind,
            });
        }
        let mut verified = Verified::new(reader.take(JSON_LIMIT));
        let mut bytes = Vec::new();
        verified
            .read_to_end(&mut bytes)
            .map_err(|source| ImageError::ReadBlob {
                image: image.to_path_buf(),
                name: name.to_owned(),
                source,
            })?;
        let (digest, len) = verified.finish();
        expect.check(image, name, &digest, len)?;
        Ok(bytes)
    }
}

/// `a/./b//c` → `a/b/c`; `None` for an absolute path, one with `..`, or an
/// empty one. Blob paths come from `manifest.json`, so they must stay inside.
pub(super) fn normalize(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    if name.starts_with('/') || parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

/// Like [`normalize`] for a member name of the outer archive (which may be
/// written `./x`), resolving `..` against the member's own directory for
/// symlink targets.
fn join_link(member: &str, target: &str) -> Option<String> {
    let base = match member.rfind('/') {
        Some(i) if !target.starts_with('/') => &member[..i],
        _ => "",
    };
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Reads the archive's headers once, recording where each member's data is.
fn index_archive(
    image: &Path,
    file: &File,
    len: u64,
) -> Result<HashMap<String, Member>, ImageError> {
    let corrupt = |detail: String, source: Option<io::Error>| ImageError::CorruptArchive {
        image: image.to_path_buf(),
        detail,
        source,
    };
    let mut archive = tar::Archive::new(BufReader::new(file));
    let entries = archive
        .entries_with_seek()
        .map_err(|e| corrupt("cannot read the first header".into(), Some(e)))?;
    let mut members = HashMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| corrupt("bad member header".into(), Some(e)))?;
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(name) = normalize(&raw_name) else {
            continue;
        };
        let kind = entry.header().entry_type();
        let member = if kind.is_file() || kind.is_contiguous() {
            let (offset, size) = (entry.raw_file_position(), entry.size());
            if offset.checked_add(size).is_none_or(|end| end > len) {
                return Err(corrupt(
                    format!("member {raw_name} runs past the end of the file"),
                    None,
                ));
            }
            Member::Data { offset, size }
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned());
            let resolved = match (&target, kind.is_symlink()) {
                (Some(t), true) => join_link(&name, t),
                (Some(t), false) => normalize(t),
                (None, _) => None,
            };
            match resolved {
                Some(target) => Member::Link(target),
                None => continue,
            }
        } else {
            continue;
        };
        members.insert(name, member);
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn normalize_keeps_names_inside() {
        assert_eq!(
            normalize("./blobs//sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize("../etc/passwd"), None);
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(normalize("a/../b"), None);
        assert_eq!(normalize("./"), None);
    }

    #[test]
    fn symlink_members_resolve_against_their_directory() {
        assert_eq!(
            join_link("abc/layer.tar", "../def/layer.tar").as_deref(),
            Some("def/layer.tar")
        );
        assert_eq!(join_link("abc/layer.tar", "/x/y").as_deref(), Some("x/y"));
        assert_eq!(join_link("layer.tar", "../../x"), None);
    }

    #[test]
    fn verified_hashes_what_passes() {
        let mut v = Verified::new(&b"abc"[..]);
        v.drain().unwrap();
        let (digest, len) = v.finish();
        assert_eq!(len, 3);
        assert_eq!(
            digest,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn file_slice_reports_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let mut out = String::new();
        FileSlice::new(Arc::clone(&file), 2, 3)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "234");
        let err = FileSlice::new(file, 8, 5)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
