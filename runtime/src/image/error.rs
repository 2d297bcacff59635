//! [`ImageError`]: every way turning an image into a disk can fail.
//!
//! Each message is one line naming the image and the bad value or path; the
//! underlying cause (an I/O error, a JSON error, backhand's error) is kept as
//! the error's `source`, not repeated in the message, so that a caller
//! printing the chain (`{:#}` with anyhow) shows each part once.

use std::io;
use std::path::PathBuf;

/// Why [`prepare`](super::prepare) (or [`ImageConfig::command`](super::ImageConfig::command))
/// failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image path could not be opened or read at all.
    #[error("cannot open image {}", image.display())]
    Open {
        /// The image path as given.
        image: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Neither an OCI layout (`index.json`) nor a `docker save` archive
    /// (`manifest.json`).
    #[error("image {}: {detail}", image.display())]
    NotAnImage {
        /// The image path as given.
        image: PathBuf,
        /// What was found instead.
        detail: String,
    },
    /// The outer tar archive is damaged or cut short.
    #[error("image {}: corrupt or truncated tar archive ({detail})", image.display())]
    CorruptArchive {
        /// The image path as given.
        image: PathBuf,
        /// Where it went wrong.
        detail: String,
        /// The tar reader's error, when there was one.
        #[source]
        source: Option<io::Error>,
    },
    /// A blob a manifest or `manifest.json` refers to is not in the image.
    #[error("image {}: blob {name:?} is missing", image.display())]
    MissingBlob {
        /// The image path as given.
        image: PathBuf,
        /// The blob's path inside the image.
        name: String,
    },
    /// A blob is there but reading it failed.
    #[error("image {}: cannot read {name:?}", image.display())]
    ReadBlob {
        /// The image path as given.
        image: PathBuf,
        /// The blob's path inside the image.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A blob's sha256 is not the one its reference names.
    #[error(
        "image {}: {what} {expected} has digest {actual}, not the {owner}'s",
        image.display()
    )]
    DigestMismatch {
        /// The image path as given.
        image: PathBuf,
        /// `manifest`, `config`, `layer`.
        what: &'static str,
        /// The digest the reference names.
        expected: String,
        /// The digest of the bytes found.
        actual: String,
        /// Who named the digest: `index`, `manifest`, `file name`.
        owner: &'static str,
    },
    /// A blob's length is not the one its descriptor gives.
    #[error(
        "image {}: {what} {name} is {actual} bytes, not the descriptor's {expected}",
        image.display()
    )]
    SizeMismatch {
        /// The image path as given.
        image: PathBuf,
        /// `manifest`, `config`, `layer`.
        what: &'static str,
        /// The blob's digest or path.
        name: String,
        /// The descriptor's size.
        expected: u64,
        /// The blob's size.
        actual: u64,
    },
    /// A layer's uncompressed sha256 is not the config's `rootfs.diff_ids[i]`.
    #[error(
        "image {}: layer {index} ({name}) unpacks to {actual}, not the config's diff_id {expected}",
        image.display()
    )]
    DiffIdMismatch {
        /// The image path as given.
        image: PathBuf,
        /// The layer's position, from 0.
        index: usize,
        /// The layer's blob path.
        name: String,
        /// `rootfs.diff_ids[index]`.
        expected: String,
        /// The sha256 of the uncompressed layer.
        actual: String,
    },
    /// A JSON document is not what it should be.
    #[error("image {}: {name} is not a valid {kind}", image.display())]
    BadJson {
        /// The image path as given.
        image: PathBuf,
        /// The blob's path inside the image.
        name: String,
        /// `image index`, `image manifest`, `image config`, `docker manifest.json`.
        kind: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON document is too large to be one.
    #[error("image {}: {name} is {size} bytes, over the {limit}-byte limit for a {kind}", image.display())]
    BlobTooLarge {
        /// The image path as given.
        image: PathBuf,
        /// The blob's path inside the image.
        name: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
        /// What it should have been.
        kind: &'static str,
    },
    /// A digest, or a blob path in `manifest.json`, that this code will not use.
    #[error("image {}: {value:?} is not a {expected}", image.display())]
    BadReference {
        /// The image path as given.
        image: PathBuf,
        /// The offending value.
        value: String,
        /// What it should have been (`sha256 digest`, `relative blob path`).
        expected: &'static str,
    },
    /// The index (or `manifest.json`) names no image this code can pick.
    #[error("image {}: {detail}", image.display())]
    NoManifest {
        /// The image path as given.
        image: PathBuf,
        /// What the index holds instead.
        detail: String,
    },
    /// The image is for another OS or architecture.
    #[error("image {} is for {found:?}; this host runs linux/amd64", image.display())]
    WrongPlatform {
        /// The image path as given.
        image: PathBuf,
        /// `os/architecture` of the image (several, comma-separated, for an index).
        found: String,
    },
    /// A media type this code cannot unpack.
    #[error("image {}: unsupported media type {media_type:?} for {what}", image.display())]
    UnsupportedMediaType {
        /// The image path as given.
        image: PathBuf,
        /// What it was given for (`layer sha256:…`, `index entry sha256:…`).
        what: String,
        /// The media type.
        media_type: String,
    },
    /// The manifest's layer list and the config's `rootfs.diff_ids` differ in length.
    #[error(
        "image {}: the manifest lists {layers} layers but the config's rootfs.diff_ids has {diff_ids}",
        image.display()
    )]
    LayerCount {
        /// The image path as given.
        image: PathBuf,
        /// Layers in the manifest.
        layers: usize,
        /// Entries in `rootfs.diff_ids`.
        diff_ids: usize,
    },
    /// A layer is not a readable (compressed) tar stream.
    #[error("image {}: layer {layer} is not a readable {format} stream", image.display())]
    CorruptLayer {
        /// The image path as given.
        image: PathBuf,
        /// The layer's blob path.
        layer: String,
        /// `tar`, `tar+gzip`, `tar+zstd`.
        format: &'static str,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
    /// A layer entry that cannot be placed in the tree.
    #[error("image {}: layer {layer}: entry {path:?} {problem}", image.display())]
    BadEntry {
        /// The image path as given.
        image: PathBuf,
        /// The layer's blob path.
        layer: String,
        /// The entry's path in the layer tar.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Neither the image nor the user gave a command.
    #[error("image {} has no entrypoint or cmd; give a command after --", image.display())]
    NoCommand {
        /// The image path as given.
        image: PathBuf,
    },
    /// A user or group name the image's `/etc/passwd` or `/etc/group` does
    /// not list (see [`resolve_user`](super::resolve_user)).
    #[error("user {user:?}: cannot find {what}")]
    UnknownUser {
        /// The user as given (`name[:group]`).
        user: String,
        /// What was looked for, and where.
        what: String,
    },
    /// The cache filesystem has too little room for the image.
    #[error(
        "image {} needs {needed} bytes in {}, which has {free} bytes free",
        image.display(),
        cache.display()
    )]
    NoSpace {
        /// The image path as given.
        image: PathBuf,
        /// The cache directory.
        cache: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// The cache directory or a file in it could not be made or written.
    #[error("cache {}: cannot {action}", path.display())]
    Cache {
        /// The path in the cache.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// backhand could not write the squashfs.
    #[error("image {}: cannot write squashfs {}", image.display(), path.display())]
    Squash {
        /// The image path as given.
        image: PathBuf,
        /// The temporary output file.
        path: PathBuf,
        /// backhand's error.
        #[source]
        source: backhand::BackhandError,
    },
}
