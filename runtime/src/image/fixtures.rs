//! Test images, built with the tar crate: layer tars, OCI image layouts
//! (written as a directory or as a tar) and `docker save` archives.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::source::hex;

/// One entry of a layer tar.
pub(super) enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    /// path, content, mode, uid, gid
    Owned(&'a str, &'a [u8], u32, u64, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
    /// A path written into the header as is (the tar crate's `set_path`
    /// refuses `..`), for the escape test.
    RawPath(&'a str),
}

/// A layer tar of `entries`.
pub(super) fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mode(0o644);
        let (path, data): (&str, &[u8]) = match e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                (p, &[])
            }
            E::File(p, data, mode) => {
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                (p, data)
            }
            E::Owned(p, data, mode, uid, gid) => {
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(data.len() as u64);
                (p, data)
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name(target).unwrap();
                (p, &[])
            }
            E::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_link_name(target).unwrap();
                (p, &[])
            }
            E::Char(p, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                (p, &[])
            }
            E::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                (p, &[])
            }
            E::RawPath(p) => {
                let name = &mut h.as_gnu_mut().unwrap().name;
                name[..p.len()].copy_from_slice(p.as_bytes());
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
                continue;
            }
        };
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub(super) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// How a layer is stored in an OCI image.
#[derive(Clone, Copy)]
pub(super) enum Z {
    None,
    Gzip,
    Zstd,
}

/// An image's files, by path inside it.
#[derive(Clone, Default)]
pub(super) struct Files(pub BTreeMap<String, Vec<u8>>);

impl Files {
    pub(super) fn write_dir(&self, dir: &Path) {
        for (name, bytes) in &self.0 {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }

    pub(super) fn write_tar(&self, path: &Path) {
        let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
        for (name, bytes) in &self.0 {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &bytes[..]).unwrap();
        }
        b.finish().unwrap();
    }

    /// The blob a digest names.
    pub(super) fn blob_mut(&mut self, digest: &str) -> &mut Vec<u8> {
        self.0
            .get_mut(&format!("blobs/sha256/{}", &digest[7..]))
            .unwrap()
    }

    fn put_blob(&mut self, bytes: Vec<u8>) -> (String, usize) {
        let (digest, len) = (sha256(&bytes), bytes.len());
        self.0
            .insert(format!("blobs/sha256/{}", &digest[7..]), bytes);
        (digest, len)
    }
}

/// `config` section every test image has unless told otherwise.
pub(super) fn run_config() -> Value {
    json!({
        "Entrypoint": ["/bin/app"],
        "Cmd": ["--serve"],
        "Env": ["PATH=/bin", "MODE=test"],
        "WorkingDir": "/srv",
        "User": "1000:1000",
        "ExposedPorts": { "80/tcp": {} },
        "Labels": null,
    })
}

fn image_config(arch: &str, run: &Value, diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": run,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [{ "created_by": "test" }],
    }))
    .unwrap()
}

/// An OCI image layout of `layers` (tar, storage), for `arch`.
pub(super) fn oci(layers: &[(Vec<u8>, Z)], arch: &str, run: &Value) -> Files {
    let mut files = Files::default();
    let diff_ids: Vec<String> = layers.iter().map(|(tar, _)| sha256(tar)).collect();
    let (config_digest, config_len) = files.put_blob(image_config(arch, run, &diff_ids));
    let descs: Vec<Value> = layers
        .iter()
        .map(|(tar, z)| {
            let (bytes, media) = match z {
                Z::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
                Z::Gzip => (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip"),
                Z::Zstd => (
                    ruzstd::encoding::compress_to_vec(
                        &tar[..],
                        ruzstd::encoding::CompressionLevel::Fastest,
                    ),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
            };
            let (digest, len) = files.put_blob(bytes);
            json!({ "mediaType": media, "digest": digest, "size": len })
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_len },
        "layers": descs,
    });
    let (digest, len) = files.put_blob(serde_json::to_vec(&manifest).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": len,
            "platform": { "architecture": arch, "os": "linux" },
        }],
    });
    files
        .0
        .insert("index.json".into(), serde_json::to_vec(&index).unwrap());
    files.0.insert(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    files
}

/// Moves `files`' image behind a nested, multi-platform index whose other
/// (arm64) manifest's blob is absent, as `docker save` of one platform does.
pub(super) fn nest_in_multiplatform_index(files: &mut Files) {
    let top: Value = serde_json::from_slice(&files.0["index.json"]).unwrap();
    let amd64 = top["manifests"][0].clone();
    let mut arm64 = amd64.clone();
    arm64["digest"] = json!(format!("sha256:{}", "1".repeat(64)));
    arm64["platform"] = json!({ "architecture": "arm64", "os": "linux" });
    let attestation = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "2".repeat(64)), "size": 1,
        "platform": { "architecture": "unknown", "os": "unknown" },
    });
    let nested = json!({ "schemaVersion": 2, "manifests": [arm64, amd64, attestation] });
    let (digest, len) = files.put_blob(serde_json::to_vec(&nested).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": len }],
    });
    files
        .0
        .insert("index.json".into(), serde_json::to_vec(&index).unwrap());
}

/// A legacy `docker save` archive of uncompressed `layers` (`<hex>.json`
/// config, `<id>/layer.tar` layers).
pub(super) fn docker(layers: &[Vec<u8>], run: &Value) -> Files {
    docker_named(layers, run, false)
}

/// A `docker save` archive; with `blobs`, files are named as docker 25+
/// names them (`blobs/sha256/<hex>`; its index.json left out) and the
/// layers are gzipped.
pub(super) fn docker_named(layers: &[Vec<u8>], run: &Value, blobs: bool) -> Files {
    let mut files = Files::default();
    let diff_ids: Vec<String> = layers.iter().map(|tar| sha256(tar)).collect();
    let config = image_config("amd64", run, &diff_ids);
    let config_name = if blobs {
        files.put_blob(config).0.replace("sha256:", "blobs/sha256/")
    } else {
        let name = format!("{}.json", &sha256(&config)[7..]);
        files.0.insert(name.clone(), config);
        name
    };
    let mut paths = Vec::new();
    for (i, tar) in layers.iter().enumerate() {
        let path = if blobs {
            files
                .put_blob(gzip(tar))
                .0
                .replace("sha256:", "blobs/sha256/")
        } else {
            let path = format!(
                "{}/layer.tar",
                &sha256(format!("layer {i}").as_bytes())[7..]
            );
            files.0.insert(path.clone(), tar.clone());
            path
        };
        paths.push(path);
    }
    let manifest = json!([{ "Config": config_name, "RepoTags": ["test:latest"], "Layers": paths }]);
    files.0.insert(
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    );
    files
}
