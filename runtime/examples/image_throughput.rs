//! How fast `corral_runtime::image::prepare` turns an image into a disk.
//!
//! Builds a two-layer, gzip-compressed OCI image of about 100 MiB in a
//! temporary directory (a first layer of 600 × 100 KiB files, half of them
//! incompressible; a second of 4000 × 10 KiB text-like files, which
//! overwrites a few of the first layer's and whites one out), then times a
//! cold `prepare` and a cached second one.
//!
//! ```sh
//! cargo run --release -p corral-runtime --no-default-features --example image_throughput
//! ```

use std::error::Error;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use corral_runtime::image::prepare;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

/// xorshift64*: reproducible bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `len` bytes: random, or words from a small vocabulary (compresses ~3×).
    fn bytes(&mut self, len: usize, text: bool) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "container ",
            "runtime ",
            "squashfs ",
            "layer ",
            "image ",
            "kernel ",
            "guest ",
            "overlay ",
            "digest ",
            "manifest ",
            "config ",
            "tmpfs ",
            "virtio ",
            "block ",
            "inode ",
            "fragment ",
        ];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            let r = self.next();
            if text {
                out.extend_from_slice(WORDS[(r % 16) as usize].as_bytes());
                if r.is_multiple_of(7) {
                    out.extend_from_slice(format!("{}\n", r % 100_000).as_bytes());
                }
            } else {
                out.extend_from_slice(&r.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }
}

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn header(
    path: &str,
    len: usize,
    kind: tar::EntryType,
    mode: u32,
) -> Result<tar::Header, Box<dyn Error>> {
    let mut h = tar::Header::new_gnu();
    h.set_path(path)?;
    h.set_entry_type(kind);
    h.set_size(len as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    Ok(h)
}

/// A layer tar: `files` files of `size` bytes under `dir`, plus `extra` entries.
fn layer(
    rng: &mut Rng,
    dir: &str,
    files: usize,
    size: usize,
    extra: &[&str],
) -> Result<Vec<u8>, Box<dyn Error>> {
    let mut b = tar::Builder::new(Vec::new());
    b.append(&header(dir, 0, tar::EntryType::Directory, 0o755)?, &[][..])?;
    for i in 0..files {
        let data = rng.bytes(size, i % 2 == 1 || size < 50_000);
        b.append(
            &header(
                &format!("{dir}/f{i:05}"),
                size,
                tar::EntryType::Regular,
                0o644,
            )?,
            &data[..],
        )?;
    }
    for path in extra {
        b.append(&header(path, 0, tar::EntryType::Regular, 0o644)?, &[][..])?;
    }
    Ok(b.into_inner()?)
}

fn put(dir: &Path, bytes: &[u8]) -> Result<(String, usize), Box<dyn Error>> {
    let digest = sha256(bytes);
    std::fs::write(dir.join("blobs/sha256").join(&digest[7..]), bytes)?;
    Ok((digest, bytes.len()))
}

/// Writes the OCI layout; returns (uncompressed, compressed) layer bytes.
fn build(dir: &Path) -> Result<(usize, usize), Box<dyn Error>> {
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let lower = layer(&mut rng, "data", 600, 100 << 10, &[])?;
    let upper = layer(
        &mut rng,
        "text",
        4000,
        10 << 10,
        &["data/f00000", "data/.wh.f00001"],
    )?;
    let (mut raw, mut packed, mut descs) = (0, 0, Vec::new());
    for tar in [&lower, &upper] {
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(tar)?;
        let gz = gz.finish()?;
        let (digest, len) = put(dir, &gz)?;
        descs.push(json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": len }));
        raw += tar.len();
        packed += len;
    }
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": [sha256(&lower), sha256(&upper)] },
    });
    let (cdigest, clen) = put(dir, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": clen },
        "layers": descs,
    });
    let (mdigest, mlen) = put(dir, &serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": mlen,
                        "platform": { "architecture": "amd64", "os": "linux" } }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok((raw, packed))
}

fn main() -> Result<(), Box<dyn Error>> {
    const MIB: f64 = (1 << 20) as f64;
    let tmp = tempfile::tempdir()?;
    let (image, cache) = (tmp.path().join("image"), tmp.path().join("cache"));
    let (raw, packed) = build(&image)?;
    println!(
        "image: 2 gzip layers, {:.1} MiB uncompressed, {:.1} MiB compressed",
        raw as f64 / MIB,
        packed as f64 / MIB
    );

    let start = Instant::now();
    let cold = prepare(&image, &cache)?;
    let secs = start.elapsed().as_secs_f64();
    let disk = std::fs::metadata(&cold.disk)?.len();
    println!(
        "cold:   {:.3} s, {:.1} MiB/s of layer data ({:.1} MiB unpacked), disk {:.1} MiB, cached={}",
        secs,
        cold.bytes_unpacked as f64 / MIB / secs,
        cold.bytes_unpacked as f64 / MIB,
        disk as f64 / MIB,
        cold.cached
    );

    let start = Instant::now();
    let warm = prepare(&image, &cache)?;
    println!(
        "cached: {:.3} ms (manifest and config read, no layer), cached={}",
        start.elapsed().as_secs_f64() * 1e3,
        warm.cached
    );
    Ok(())
}
