//! Applying one layer blob to the tree: decompress (gzip, zstd, or none),
//! read the tar entries, spool regular files' bytes, and turn whiteouts into
//! deletions — while hashing the blob as stored (its digest) and as
//! uncompressed (its diff_id).
//!
//! Both hashes are known only at the end of the stream, so a bad layer is
//! caught after its entries went into the tree; that is harmless, as the
//! tree and spool are thrown away on any error and nothing reaches the cache.
//! A blob that fails its digest is reported as such even when the damage
//! also broke the decompressor first (the rest of the blob is read to tell).

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

use super::cache::{AppendError, Spool};
use super::manifest::{Compression, LayerSpec};
use super::source::{Expect, Verified};
use super::tree::{Kind, Meta, Name, Tree};
use super::ImageError;

/// Applies layer `index` (`raw`, the blob as stored) to `tree`, spooling file
/// contents. Returns the layer's uncompressed length.
pub(super) fn apply(
    image: &Path,
    index: usize,
    spec: &LayerSpec,
    raw: Box<dyn Read + Send>,
    tree: &mut Tree,
    spool: &mut Spool,
) -> Result<u64, ImageError> {
    let mut raw = Verified::new(raw);
    let unpacked = unpack(image, index, spec, &mut raw, tree, spool);
    let drained = raw.drain();
    let (digest, len) = raw.finish();
    let expect = Expect {
        digest: spec.digest.as_deref(),
        size: spec.size,
        what: "layer",
        owner: spec.owner,
    };
    expect.check(image, &spec.name, &digest, len)?;
    drained.map_err(|source| ImageError::ReadBlob {
        image: image.to_path_buf(),
        name: spec.name.clone(),
        source,
    })?;
    unpacked
}

/// Decompresses, applies and checks the diff_id; returns the uncompressed
/// length. A wrong diff_id is reported in preference to what it broke.
fn unpack(
    image: &Path,
    index: usize,
    spec: &LayerSpec,
    raw: &mut Verified<Box<dyn Read + Send>>,
    tree: &mut Tree,
    spool: &mut Spool,
) -> Result<u64, ImageError> {
    let mut buffered = BufReader::with_capacity(256 << 10, raw);
    let compression = match spec.compression {
        Compression::Sniff => {
            let head = buffered.fill_buf().map_err(|source| ImageError::ReadBlob {
                image: image.to_path_buf(),
                name: spec.name.clone(),
                source,
            })?;
            sniff(head)
        }
        known => known,
    };
    let (format, decoded): (&'static str, Box<dyn Read + '_>) = match compression {
        Compression::Gzip => (
            "tar+gzip",
            Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        ),
        Compression::Zstd => ("tar+zstd", Box::new(ZstdFrames::new(buffered))),
        Compression::None | Compression::Sniff => ("tar", Box::new(buffered)),
    };
    let corrupt = |source| ImageError::CorruptLayer {
        image: image.to_path_buf(),
        layer: spec.name.clone(),
        format,
        source,
    };
    let mut diff = Verified::new(decoded);
    let applied = entries(image, index, spec, &mut diff, tree, spool);
    // The tar's end blocks and any padding after them belong to the diff_id.
    let drained = diff.drain();
    let (diff_id, diff_len) = diff.finish();
    if drained.is_ok() && diff_id != spec.diff_id {
        return Err(ImageError::DiffIdMismatch {
            image: image.to_path_buf(),
            index,
            name: spec.name.clone(),
            expected: spec.diff_id.clone(),
            actual: diff_id,
        });
    }
    applied.map_err(|e| match e {
        Failure::Stream(source) => corrupt(source),
        Failure::Image(e) => e,
    })?;
    drained.map_err(corrupt)?;
    Ok(diff_len)
}

/// The compression a `docker save` layer uses, from its first bytes.
fn sniff(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::None,
    }
}

/// An error reading the (decompressed) stream, or any other.
enum Failure {
    Stream(io::Error),
    Image(ImageError),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Stream(e)
    }
}

/// Tar metadata (headers, GNU long names, PAX records) allowed before each
/// entry: the `tar` crate reads long names and PAX records whole into
/// memory, so without a bound a small hostile layer could claim gigabytes.
const METADATA_LIMIT: u64 = 1 << 20;
/// Longest name of one path component (squashfs and Linux's NAME_MAX).
const NAME_MAX: usize = 255;
/// Longest symlink target (Linux's PATH_MAX less the NUL).
const LINK_MAX: usize = 4095;

/// The layer's decompressed stream, failing once more than
/// [`METADATA_LIMIT`] bytes are read beyond what the entries returned so
/// far declared as their data.
struct Bounded<'a> {
    inner: &'a mut dyn Read,
    read: std::rc::Rc<std::cell::Cell<u64>>,
    allowed: std::rc::Rc<std::cell::Cell<u64>>,
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (read, allowed) = (self.read.get(), self.allowed.get());
        if read >= allowed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {METADATA_LIMIT} bytes of tar headers, long names or PAX records before one entry"),
            ));
        }
        let room = usize::try_from(allowed - read).unwrap_or(usize::MAX);
        let max = buf.len().min(room);
        let n = self.inner.read(&mut buf[..max])?;
        self.read.set(read + n as u64);
        Ok(n)
    }
}

/// A tar path → components inside the root; `None` when `..` climbs out.
/// Absolute paths are taken as relative to the root.
fn components(path: &[u8]) -> Option<Vec<Name>> {
    let mut out: Vec<Name> = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            part => out.push(part.to_vec()),
        }
    }
    Some(out)
}

/// Reads the tar entries of one layer into the tree.
fn entries(
    image: &Path,
    index: usize,
    spec: &LayerSpec,
    stream: &mut dyn Read,
    tree: &mut Tree,
    spool: &mut Spool,
) -> Result<(), Failure> {
    let read = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let allowed = std::rc::Rc::new(std::cell::Cell::new(METADATA_LIMIT));
    let bounded = Bounded {
        inner: stream,
        read: read.clone(),
        allowed: allowed.clone(),
    };
    let mut archive = tar::Archive::new(bounded);
    for entry in archive.entries()? {
        let mut entry = entry?;
        // This entry's data (padded to 512-byte blocks), then the next
        // entry's metadata, may be read from here on.
        let data = entry.size().max(entry.header().entry_size().unwrap_or(0));
        allowed.set(
            read.get()
                .saturating_add(data.saturating_add(511) & !511)
                .saturating_add(METADATA_LIMIT),
        );
        let raw_path = entry.path_bytes().into_owned();
        let bad = |problem: String| {
            Failure::Image(ImageError::BadEntry {
                image: image.to_path_buf(),
                layer: spec.name.clone(),
                path: String::from_utf8_lossy(&raw_path).into_owned(),
                problem,
            })
        };
        let path = components(&raw_path).ok_or_else(|| bad("escapes the image root".into()))?;
        if path.iter().any(|c| c.len() > NAME_MAX) {
            return Err(bad(format!("has a name longer than {NAME_MAX} bytes")));
        }
        if let Some((name, parent)) = path.split_last() {
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                match hidden {
                    b".wh..opq" => tree.opaque(parent, index),
                    // Other `.wh..wh.` names are aufs bookkeeping, not deletions.
                    h if h.starts_with(b".wh.") => {}
                    h => tree.whiteout(parent, h, index),
                }
                continue;
            }
        }
        let header = entry.header();
        let kind = header.entry_type();
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| bad(format!("has {what} {v}, over 32 bits")))
        };
        let mut meta = Meta {
            mode: header.mode()? & 0o7777,
            uid: id(header.uid()?, "uid")?,
            gid: id(header.gid()?, "gid")?,
            mtime: header.mtime()?,
        };
        let device = || -> io::Result<(u32, u32)> {
            Ok((
                header.device_major()?.unwrap_or(0),
                header.device_minor()?.unwrap_or(0),
            ))
        };
        let node = if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            let expected = entry.size();
            let (offset, len) = spool.append(&mut entry).map_err(|e| match e {
                AppendError::Read(e) => Failure::Stream(e),
                AppendError::Write(e) => Failure::Image(e),
            })?;
            if len < expected && !kind.is_gnu_sparse() {
                return Err(Failure::Stream(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "entry {} ends after {len} of {expected} bytes",
                        String::from_utf8_lossy(&raw_path)
                    ),
                )));
            }
            Kind::File { offset, len }
        } else if kind.is_dir() {
            Kind::Dir(Default::default())
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| bad("is a symlink without a target".into()))?;
            if target.len() > LINK_MAX {
                return Err(bad(format!(
                    "is a symlink to a target longer than {LINK_MAX} bytes"
                )));
            }
            Kind::Symlink(target.into_owned())
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| bad("is a hard link without a target".into()))?;
            let target = components(&target)
                .ok_or_else(|| bad("is a hard link out of the image root".into()))?;
            let (kind, target_meta) = tree.hardlink(&target).map_err(|e| bad(e.problem()))?;
            meta = target_meta;
            kind
        } else if kind.is_character_special() {
            let (major, minor) = device()?;
            Kind::Char { major, minor }
        } else if kind.is_block_special() {
            let (major, minor) = device()?;
            Kind::Block { major, minor }
        } else if kind.is_fifo() {
            Kind::Fifo
        } else {
            // PAX global headers, GNU volume labels and the like: no file.
            continue;
        };
        tree.insert(&path, node, meta, index)
            .map_err(|e| bad(e.problem()))?;
    }
    Ok(())
}

/// zstd, all frames of it: ruzstd's `StreamingDecoder` stops after one
/// frame, but a layer may hold several (and skippable ones, as in
/// zstd:chunked), so this restarts the frame decoder until the input ends.
struct ZstdFrames<R> {
    input: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(input: R) -> Self {
        Self {
            input,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.in_frame {
                if self.decoder.can_collect() > 0 {
                    return self.decoder.read(buf);
                }
                if self.decoder.is_finished() {
                    self.in_frame = false;
                    continue;
                }
                self.decoder
                    .decode_blocks(&mut self.input, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(io::Error::other)?;
                continue;
            }
            if self.input.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.reset(&mut self.input) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = io::copy(
                        &mut (&mut self.input).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                    if skipped < u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "zstd skippable frame cut short",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tar_paths_stay_inside_the_root() {
        let c = |p: &str| {
            components(p.as_bytes()).map(|v| {
                v.iter()
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(c("./usr/bin/../lib/x").unwrap(), ["usr", "lib", "x"]);
        assert_eq!(c("/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(c("./").unwrap(), Vec::<String>::new());
        assert_eq!(c("../x"), None);
        assert_eq!(c("a/../../x"), None);
    }

    #[test]
    fn sniffing_recognises_gzip_and_zstd() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(sniff(b"etc/"), Compression::None);
        assert_eq!(sniff(b""), Compression::None);
    }

    #[test]
    fn zstd_frames_are_all_read() {
        use ruzstd::encoding::{compress_to_vec, CompressionLevel};
        let mut stream = compress_to_vec(&b"first frame, "[..], CompressionLevel::Fastest);
        // a skippable frame between the two data frames
        stream.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        stream.extend(compress_to_vec(
            &b"second frame"[..],
            CompressionLevel::Fastest,
        ));
        let mut out = String::new();
        ZstdFrames::new(&stream[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "first frame, second frame");
        let mut cut = stream.clone();
        cut.truncate(stream.len() - 3);
        assert!(ZstdFrames::new(&cut[..])
            .read_to_string(&mut String::new())
            .is_err());
    }
}
