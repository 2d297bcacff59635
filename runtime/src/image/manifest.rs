//! From an image's entry point to its config and layer list: an OCI
//! `index.json` (→ optional nested index → manifest → config), or a
//! `docker save` `manifest.json` (→ config file and layer paths).
//!
//! The OCI documents are parsed with `oci-spec`'s image types. `manifest.json`
//! is docker's own format, which no crate in the tree models, so it has a
//! three-field struct here. Every JSON blob is digest-checked before it is
//! parsed; the platform and the layer/diff_id pairing are checked here too,
//! before any layer is read.

use std::path::Path;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;

use super::source::{normalize, Expect, Source};
use super::ImageError;

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Compression {
    /// Plain tar.
    None,
    /// gzip (possibly multi-member).
    Gzip,
    /// zstd (possibly several frames).
    Zstd,
    /// Unknown until the first bytes are read (`docker save` gives no media type).
    Sniff,
}

/// One layer to apply, in order.
#[derive(Clone, Debug)]
pub(super) struct LayerSpec {
    /// The blob's path inside the image.
    pub name: String,
    /// `sha256:<hex>` of the blob as stored, when something names it.
    pub digest: Option<String>,
    /// The blob's length, when a descriptor gives it.
    pub size: Option<u64>,
    /// Who names `digest`/`size`, for messages: `manifest` or `file name`.
    pub owner: &'static str,
    /// How to decompress it.
    pub compression: Compression,
    /// `sha256:<hex>` of the uncompressed tar: the config's `rootfs.diff_ids[i]`.
    pub diff_id: String,
}

/// The image, resolved down to its config and layers.
pub(super) struct Resolved {
    pub config: ImageConfiguration,
    pub layers: Vec<LayerSpec>,
}

/// `docker save`'s `manifest.json` is an array of these.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Finds the image's config and layers, checking digests, platform and
/// layer count on the way.
pub(super) fn resolve(src: &Source, image: &Path) -> Result<Resolved, ImageError> {
    let resolved = if src.has("index.json") {
        resolve_oci(src, image)?
    } else if src.has("manifest.json") {
        resolve_docker(src, image)?
    } else {
        return Err(ImageError::NotAnImage {
            image: image.to_path_buf(),
            detail:
                "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)"
                    .into(),
        });
    };
    check_platform(image, &resolved.config)?;
    Ok(resolved)
}

fn parse<T: for<'de> Deserialize<'de>>(
    image: &Path,
    name: &str,
    kind: &'static str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::BadJson {
        image: image.to_path_buf(),
        name: name.to_owned(),
        kind,
        source,
    })
}

/// `sha256:<64 hex>` → the blob path `blobs/sha256/<hex>`.
fn blob_path(image: &Path, digest: &str) -> Result<String, ImageError> {
    sha256_hex(digest)
        .map(|hex| format!("blobs/sha256/{hex}"))
        .ok_or_else(|| ImageError::BadReference {
            image: image.to_path_buf(),
            value: digest.to_owned(),
            expected: "sha256 digest",
        })
}

/// The hex part of a well-formed `sha256:<64 lower-case hex>`.
pub(super) fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

fn resolve_oci(src: &Source, image: &Path) -> Result<Resolved, ImageError> {
    let top = Expect {
        digest: None,
        size: None,
        what: "index",
        owner: "layout",
    };
    let bytes = src.read_json_blob(image, "index.json", "image index", &top)?;
    let index: ImageIndex = parse(image, "index.json", "image index", &bytes)?;
    let mut desc = select(image, index.manifests(), "index.json")?.clone();
    let mut nested_level = 0;
    loop {
        let media = desc.media_type().as_ref().to_owned();
        let name = blob_path(image, desc.digest().as_ref())?;
        let is_index = INDEX_TYPES.contains(&media.as_str());
        if !is_index && !MANIFEST_TYPES.contains(&media.as_str()) {
            return Err(ImageError::UnsupportedMediaType {
                image: image.to_path_buf(),
                what: format!("index entry {}", desc.digest()),
                media_type: media,
            });
        }
        let what = if is_index { "index" } else { "manifest" };
        let expect = Expect {
            digest: Some(desc.digest().as_ref()),
            size: Some(desc.size()),
            what,
            owner: "index",
        };
        let kind = if is_index {
            "image index"
        } else {
            "image manifest"
        };
        let bytes = src.read_json_blob(image, &name, kind, &expect)?;
        if !is_index {
            let manifest: ImageManifest = parse(image, &name, kind, &bytes)?;
            return resolve_manifest(src, image, &manifest);
        }
        if nested_level > 0 {
            return Err(ImageError::NoManifest {
                image: image.to_path_buf(),
                detail: format!(
                    "index {} nests indexes more than one level deep",
                    desc.digest()
                ),
            });
        }
        let nested: ImageIndex = parse(image, &name, kind, &bytes)?;
        desc = select(image, nested.manifests(), &name)?.clone();
        nested_level += 1;
    }
}

/// Picks the linux/amd64 manifest of an index, else its only one.
fn select<'a>(
    image: &Path,
    descs: &'a [Descriptor],
    name: &str,
) -> Result<&'a Descriptor, ImageError> {
    // Attestation manifests (buildkit) are "unknown/unknown"; they are no image.
    let is_attestation = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get("vnd.docker.reference.type"))
            .is_some()
            || d.platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() == "unknown")
    };
    let candidates: Vec<&Descriptor> = descs.iter().filter(|d| !is_attestation(d)).collect();
    let is_host = |d: &&&Descriptor| {
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
        })
    };
    if let Some(found) = candidates.iter().find(is_host) {
        return Ok(found);
    }
    match candidates.as_slice() {
        [only] => Ok(only),
        [] => Err(ImageError::NoManifest {
            image: image.to_path_buf(),
            detail: format!("{name} lists no image manifest"),
        }),
        many if many.iter().all(|d| d.platform().is_some()) => Err(ImageError::WrongPlatform {
            image: image.to_path_buf(),
            found: many
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
        many => Err(ImageError::NoManifest {
            image: image.to_path_buf(),
            detail: format!(
                "{name} lists {} manifests and none says it is for linux/amd64",
                many.len()
            ),
        }),
    }
}

fn resolve_manifest(
    src: &Source,
    image: &Path,
    manifest: &ImageManifest,
) -> Result<Resolved, ImageError> {
    let cdesc = manifest.config();
    let name = blob_path(image, cdesc.digest().as_ref())?;
    let expect = Expect {
        digest: Some(cdesc.digest().as_ref()),
        size: Some(cdesc.size()),
        what: "config",
        owner: "manifest",
    };
    let bytes = src.read_json_blob(image, &name, "image config", &expect)?;
    let config: ImageConfiguration = parse(image, &name, "image config", &bytes)?;
    let diff_ids = checked_diff_ids(image, &config, manifest.layers().len())?;
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(desc, diff_id)| {
            let media = desc.media_type().as_ref();
            let compression = match media {
                "application/vnd.oci.image.layer.v1.tar"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar"
                | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
                "application/vnd.oci.image.layer.v1.tar+gzip"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
                | "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
                "application/vnd.oci.image.layer.v1.tar+zstd"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                    Compression::Zstd
                }
                other => {
                    return Err(ImageError::UnsupportedMediaType {
                        image: image.to_path_buf(),
                        what: format!("layer {}", desc.digest()),
                        media_type: other.to_owned(),
                    })
                }
            };
            Ok(LayerSpec {
                name: blob_path(image, desc.digest().as_ref())?,
                digest: Some(desc.digest().to_string()),
                size: Some(desc.size()),
                owner: "manifest",
                compression,
                diff_id,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Resolved { config, layers })
}

/// The config's diff_ids, checked for form and for count against the layers.
fn checked_diff_ids(
    image: &Path,
    config: &ImageConfiguration,
    layers: usize,
) -> Result<Vec<String>, ImageError> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers {
        return Err(ImageError::LayerCount {
            image: image.to_path_buf(),
            layers,
            diff_ids: diff_ids.len(),
        });
    }
    for id in diff_ids {
        if sha256_hex(id).is_none() {
            return Err(ImageError::BadReference {
                image: image.to_path_buf(),
                value: id.clone(),
                expected: "sha256 diff_id",
            });
        }
    }
    Ok(diff_ids.clone())
}

fn resolve_docker(src: &Source, image: &Path) -> Result<Resolved, ImageError> {
    let top = Expect {
        digest: None,
        size: None,
        what: "manifest",
        owner: "archive",
    };
    let bytes = src.read_json_blob(image, "manifest.json", "docker manifest.json", &top)?;
    let entries: Vec<DockerEntry> = parse(image, "manifest.json", "docker manifest.json", &bytes)?;
    let entry = match entries.as_slice() {
        [one] => one,
        [] => {
            return Err(ImageError::NoManifest {
                image: image.to_path_buf(),
                detail: "manifest.json lists no image".into(),
            })
        }
        many => {
            let tags: Vec<String> = many
                .iter()
                .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
                .collect();
            return Err(ImageError::NoManifest {
                image: image.to_path_buf(),
                detail: format!(
                    "manifest.json lists {} images ({}); save one image per archive",
                    many.len(),
                    tags.join(", ")
                ),
            });
        }
    };
    // docker names the config after its digest: `<hex>.json` (legacy) or
    // `blobs/sha256/<hex>` (docker 25+); layers of the latter are named so too.
    let config_digest = digest_from_name(&entry.config);
    let expect = Expect {
        digest: config_digest.as_deref(),
        size: None,
        what: "config",
        owner: "file name",
    };
    let bytes = src.read_json_blob(image, &entry.config, "image config", &expect)?;
    let config: ImageConfiguration = parse(image, &entry.config, "image config", &bytes)?;
    let diff_ids = checked_diff_ids(image, &config, entry.layers.len())?;
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(name, diff_id)| LayerSpec {
            name: name.clone(),
            digest: digest_from_name(name),
            size: None,
            owner: "file name",
            compression: Compression::Sniff,
            diff_id,
        })
        .collect();
    Ok(Resolved { config, layers })
}

/// `sha256:<hex>` when `name` is `<hex>.json` or `blobs/sha256/<hex>`.
fn digest_from_name(name: &str) -> Option<String> {
    let name = normalize(name)?;
    let hex = name
        .strip_suffix(".json")
        .filter(|h| !h.contains('/'))
        .or_else(|| name.strip_prefix("blobs/sha256/"))?;
    let digest = format!("sha256:{hex}");
    sha256_hex(&digest).is_some().then_some(digest)
}

/// The host this runs on: the micro-VM monitor boots x86_64 Linux guests.
const HOST: (&str, &str) = ("linux", "amd64");

fn check_platform(image: &Path, config: &ImageConfiguration) -> Result<(), ImageError> {
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    if (os.as_str(), arch.as_str()) != HOST {
        return Err(ImageError::WrongPlatform {
            image: image.to_path_buf(),
            found: format!("{os}/{arch}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn docker_config_names_carry_their_digest() {
        let hex = "ab".repeat(32);
        assert_eq!(
            digest_from_name(&format!("{hex}.json")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            digest_from_name(&format!("blobs/sha256/{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_from_name("config.json"), None);
        assert_eq!(digest_from_name(&format!("x/{hex}.json")), None);
    }

    #[test]
    fn sha256_digests_are_checked_for_form() {
        assert!(sha256_hex(&format!("sha256:{}", "0f".repeat(32))).is_some());
        assert!(sha256_hex(&format!("sha256:{}", "0F".repeat(32))).is_none());
        assert!(sha256_hex(&format!("sha512:{}", "0f".repeat(32))).is_none());
        assert!(sha256_hex("sha256:00").is_none());
    }

    fn desc(platform: Option<(&str, &str)>) -> serde_json::Value {
        let mut d = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", "0".repeat(64)),
            "size": 1,
        });
        if let Some((os, arch)) = platform {
            d["platform"] = serde_json::json!({ "os": os, "architecture": arch });
        }
        d
    }

    fn pick(descs: Vec<serde_json::Value>) -> Result<Option<String>, ImageError> {
        let descs: Vec<Descriptor> =
            serde_json::from_value(serde_json::Value::Array(descs)).unwrap();
        select(Path::new("/i"), &descs, "index.json").map(|d| {
            d.platform()
                .as_ref()
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
        })
    }

    #[test]
    fn index_selection_prefers_amd64_then_the_only_one() {
        let multi = vec![
            desc(Some(("linux", "arm64"))),
            desc(Some(("linux", "amd64"))),
            desc(Some(("unknown", "unknown"))),
        ];
        assert_eq!(pick(multi).unwrap().as_deref(), Some("linux/amd64"));
        assert_eq!(pick(vec![desc(None)]).unwrap(), None);
        let err = pick(vec![
            desc(Some(("linux", "arm64"))),
            desc(Some(("linux", "s390x"))),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "image /i is for \"linux/arm64, linux/s390x\"; this host runs linux/amd64"
        );
        let err = pick(vec![]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image /i: index.json lists no image manifest"
        );
    }
}
