//! OCI images made by the tests themselves (no registry): layers as tar
//! archives (a directory tree, or entries listed here, whiteouts included),
//! written as an OCI image layout directory, an OCI archive, or a
//! `docker save` archive, with real sha256 digests and diff_ids.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One entry of a hand-made layer.
pub enum Entry<'a> {
    /// A directory.
    Dir(&'a str),
    /// A regular file with its mode.
    File(&'a str, &'a [u8], u32),
    /// A whiteout: deletes the path from the layers below.
    Whiteout(&'a str),
    /// An opaque directory marker: hides the directory's lower contents.
    Opaque(&'a str),
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A layer from a directory tree on disk (symlinks kept as symlinks, owned
/// by root).
pub fn layer_from_dir(root: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir_all(".", root).unwrap();
    b.into_inner().unwrap()
}

/// A layer of the given entries.
pub fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    };
    for e in entries {
        match e {
            Entry::Dir(p) => add(p, tar::EntryType::Directory, 0o755, b""),
            Entry::File(p, data, mode) => add(p, tar::EntryType::Regular, *mode, data),
            Entry::Whiteout(p) => {
                let path = Path::new(p);
                let name = path.file_name().unwrap().to_str().unwrap();
                let wh = path.with_file_name(format!(".wh.{name}"));
                add(wh.to_str().unwrap(), tar::EntryType::Regular, 0o644, b"");
            }
            Entry::Opaque(dir) => add(
                &format!("{dir}/.wh..wh..opq"),
                tar::EntryType::Regular,
                0o644,
                b"",
            ),
        }
    }
    b.into_inner().unwrap()
}

/// gzip of `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The image's config: amd64/linux, the given process settings (`config`
/// is the JSON object of Env, Cmd, Entrypoint, WorkingDir, User), and the
/// diff_ids of the uncompressed `layers`.
pub fn config_json(arch: &str, config: serde_json::Value, layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// Writes an OCI image layout at `dir`: `layers` (uncompressed tars) are
/// stored gzip-compressed.
pub fn oci_layout(dir: &Path, config: &[u8], layers: &[Vec<u8>]) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = digest(bytes);
        std::fs::write(blobs.join(&d["sha256:".len()..]), bytes).unwrap();
        serde_json::json!({"digest": d, "size": bytes.len()})
    };
    let mut layer_descs = Vec::new();
    for l in layers {
        let mut desc = put(&gzip(l));
        desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
        layer_descs.push(desc);
    }
    let mut config_desc = put(config);
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": layer_descs,
    }))
    .unwrap();
    let mut manifest_desc = put(&manifest);
    manifest_desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    manifest_desc["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    dir.to_path_buf()
}

/// Writes a `docker save` archive (legacy layout: `<id>/layer.tar`,
/// `<hex>.json` config, `manifest.json`) at `path`.
pub fn docker_archive(path: &Path, config: &[u8], layers: &[Vec<u8>]) -> PathBuf {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    let config_name = format!("{}.json", &digest(config)["sha256:".len()..]);
    add(&config_name, config);
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        add(&name, l);
        names.push(name);
    }
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["corral-test:latest"],
        "Layers": names,
    }]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.into_inner().unwrap().flush().unwrap();
    path.to_path_buf()
}

/// Packs an OCI layout directory into an OCI archive at `path`.
pub fn oci_archive(layout: &Path, path: &Path) -> PathBuf {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    b.append_dir_all(".", layout).unwrap();
    b.into_inner().unwrap().flush().unwrap();
    path.to_path_buf()
}
