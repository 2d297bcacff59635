//! End-to-end tests of [`prepare`]: images built by `fixtures`, converted,
//! and read back with backhand's reader; bad images fail with one line and
//! leave nothing in the cache.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use backhand::{FilesystemReader, InnerNode};
use serde_json::json;

use super::fixtures::{
    self, docker, docker_named, layer, nest_in_multiplatform_index, oci, run_config, Files, E, Z,
};
use super::{prepare, ImageError};

/// What the squashfs holds at one path.
#[derive(Debug, PartialEq)]
enum Got {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Char(u32),
    Fifo,
}

/// Every node of the disk: path → (what, mode, uid, gid).
fn read_disk(disk: &Path) -> BTreeMap<String, (Got, u16, u32, u32)> {
    let fs = FilesystemReader::from_reader(BufReader::new(File::open(disk).unwrap())).unwrap();
    let mut out = BTreeMap::new();
    for node in fs.files() {
        let got = match &node.inner {
            InnerNode::Dir(_) => Got::Dir,
            InnerNode::File(f) => {
                let mut data = Vec::new();
                fs.file(f).reader().read_to_end(&mut data).unwrap();
                Got::File(data)
            }
            InnerNode::Symlink(s) => Got::Symlink(s.link.to_string_lossy().into_owned()),
            InnerNode::CharacterDevice(c) => Got::Char(c.device_number),
            InnerNode::NamedPipe => Got::Fifo,
            other => panic!("unexpected node {other:?}"),
        };
        let h = node.header;
        out.insert(
            node.fullpath.to_string_lossy().into_owned(),
            (got, h.permissions, h.uid, h.gid),
        );
    }
    out
}

/// The cache holds finished disks and nothing else (no temp file, no spool).
fn assert_clean(cache: &Path) {
    if let Ok(dir) = std::fs::read_dir(cache) {
        for entry in dir {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                name.ends_with(".squashfs"),
                "left behind in the cache: {name}"
            );
        }
    }
}

/// A file bigger than one 128 KiB squashfs block, not all one byte.
fn big() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Two layers exercising every entry kind, overwrite, whiteout, symlinked parent.
fn two_layers() -> (Vec<u8>, Vec<u8>) {
    let big = big();
    let lower = layer(&[
        E::Dir("bin", 0o755),
        E::File("bin/app", b"#!app\n", 0o755),
        E::File("bin/suid", b"s", 0o4755),
        E::Hardlink("bin/app2", "bin/app"),
        E::Dir("etc", 0o755),
        E::File("etc/hostname", b"one\n", 0o644),
        E::File("etc/gone", b"bye\n", 0o644),
        E::Dir("usr/lib", 0o755),
        E::File("usr/lib/libx.so", &big, 0o644),
        E::Symlink("lib", "usr/lib"),
        E::Char("dev/null", 1, 3),
    ]);
    let upper = layer(&[
        E::File("etc/hostname", b"two\n", 0o600),
        E::File("etc/.wh.gone", b"", 0o644),
        E::File("lib/new.so", b"new", 0o644),
        E::Owned("home/user/notes", b"mine", 0o600, 1000, 1001),
        E::Fifo("run/fifo"),
    ]);
    (lower, upper)
}

fn check_two_layers(disk: &Path) {
    let d = read_disk(disk);
    assert_eq!(
        d["/etc/hostname"],
        (Got::File(b"two\n".to_vec()), 0o600, 0, 0)
    );
    assert!(!d.contains_key("/etc/gone"));
    assert!(!d.keys().any(|p| p.contains(".wh.")));
    assert_eq!(d["/bin/app"], (Got::File(b"#!app\n".to_vec()), 0o755, 0, 0));
    assert_eq!(d["/bin/app2"], d["/bin/app"]);
    assert_eq!(d["/bin/suid"].1, 0o4755);
    assert_eq!(d["/usr/lib/libx.so"].0, Got::File(big()));
    assert_eq!(d["/lib"].0, Got::Symlink("usr/lib".into()));
    assert_eq!(d["/usr/lib/new.so"].0, Got::File(b"new".to_vec()));
    assert_eq!(
        d["/home/user/notes"],
        (Got::File(b"mine".to_vec()), 0o600, 1000, 1001)
    );
    assert_eq!(d["/dev/null"].0, Got::Char(0x103));
    assert_eq!(d["/run/fifo"].0, Got::Fifo);
    assert_eq!(d["/etc"].0, Got::Dir);
}

fn gzip_oci() -> Files {
    let (lower, upper) = two_layers();
    oci(
        &[(lower, Z::Gzip), (upper, Z::Gzip)],
        "amd64",
        &run_config(),
    )
}

#[test]
fn oci_layout_directory_with_two_gzip_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, cache) = (tmp.path().join("layout"), tmp.path().join("cache/nested"));
    gzip_oci().write_dir(&image);
    let first = prepare(&image, &cache).unwrap();
    assert!(!first.cached);
    assert!(first.bytes_unpacked > 300_000);
    assert_eq!(first.disk.parent(), Some(cache.as_path()));
    check_two_layers(&first.disk);
    let c = &first.config;
    assert_eq!(
        (c.entrypoint.as_slice(), c.cmd.as_slice()),
        (&["/bin/app".to_string()][..], &["--serve".to_string()][..])
    );
    assert_eq!(c.env, ["PATH=/bin", "MODE=test"]);
    assert_eq!(
        (c.working_dir.as_deref(), c.user.as_deref()),
        (Some("/srv"), Some("1000:1000"))
    );
    assert_clean(&cache);

    let again = prepare(&image, &cache).unwrap();
    assert!(again.cached);
    assert_eq!((again.disk, again.bytes_unpacked), (first.disk, 0));
}

#[test]
fn oci_archive_with_two_gzip_layers_and_nested_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, cache) = (tmp.path().join("app.tar"), tmp.path().join("cache"));
    let mut files = gzip_oci();
    nest_in_multiplatform_index(&mut files);
    files.write_tar(&image);
    let prepared = prepare(&image, &cache).unwrap();
    check_two_layers(&prepared.disk);
    assert_clean(&cache);
}

#[test]
fn zstd_and_plain_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, cache) = (tmp.path().join("app.tar"), tmp.path().join("cache"));
    let (lower, upper) = two_layers();
    oci(
        &[(lower, Z::Zstd), (upper, Z::None)],
        "amd64",
        &run_config(),
    )
    .write_tar(&image);
    check_two_layers(&prepare(&image, &cache).unwrap().disk);
}

#[test]
fn docker_save_with_whiteout_and_opaque_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, cache) = (tmp.path().join("saved.tar"), tmp.path().join("cache"));
    let lower = layer(&[
        E::File("keep", b"k", 0o644),
        E::File("gone", b"g", 0o644),
        E::Dir("opq", 0o755),
        E::File("opq/a", b"a", 0o644),
        E::File("opq/sub/b", b"b", 0o644),
    ]);
    let upper = layer(&[
        E::File(".wh.gone", b"", 0o644),
        E::Dir("opq", 0o711),
        E::File("opq/new", b"n", 0o644),
        E::File("opq/.wh..wh..opq", b"", 0o644),
    ]);
    docker(&[lower, upper], &run_config()).write_tar(&image);
    let prepared = prepare(&image, &cache).unwrap();
    let d = read_disk(&prepared.disk);
    let paths: Vec<&str> = d.keys().map(String::as_str).collect();
    assert_eq!(paths, ["/", "/keep", "/opq", "/opq/new"]);
    assert_eq!(d["/opq"].1, 0o711);
    assert_eq!(
        prepared.config.command(&[]).unwrap(),
        ["/bin/app", "--serve"]
    );
    assert_clean(&cache);
}

#[test]
fn docker_25_archive_with_blob_names_and_gzip_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, cache) = (tmp.path().join("saved.tar"), tmp.path().join("cache"));
    let (lower, upper) = two_layers();
    docker_named(&[lower, upper], &run_config(), true).write_tar(&image);
    check_two_layers(&prepare(&image, &cache).unwrap().disk);
}

#[test]
fn docker_config_must_match_its_file_name() {
    let (lower, _) = two_layers();
    let mut files = docker(&[lower], &run_config());
    let (name, config) = files
        .0
        .iter_mut()
        .find(|(name, _)| name.ends_with(".json") && *name != "manifest.json")
        .unwrap();
    let name = name.clone();
    config.push(b' ');
    let expect = format!(
        "config sha256:{} has digest sha256:",
        name.trim_end_matches(".json")
    );
    let err = expect_error(&files, &[&expect, "not the file name's"]);
    assert!(matches!(
        err,
        ImageError::DigestMismatch { what: "config", .. }
    ));
}

#[test]
fn images_sharing_all_layers_share_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (lower, upper) = two_layers();
    let layers = [(lower, Z::Gzip), (upper, Z::Gzip)];
    oci(&layers, "amd64", &run_config()).write_tar(&tmp.path().join("a.tar"));
    oci(&layers, "amd64", &json!({ "Cmd": ["other"] })).write_tar(&tmp.path().join("b.tar"));
    let a = prepare(&tmp.path().join("a.tar"), &cache).unwrap();
    let b = prepare(&tmp.path().join("b.tar"), &cache).unwrap();
    assert!(!a.cached && b.cached);
    assert_eq!(a.disk, b.disk);
    assert_eq!(b.config.command(&[]).unwrap(), ["other"]);
}

#[test]
fn command_follows_docker() {
    let cfg = |entrypoint: &[&str], cmd: &[&str]| super::ImageConfig {
        entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        image: PathBuf::from("/img.tar"),
        ..Default::default()
    };
    let user = ["sh".to_string(), "-c".to_string()];
    assert_eq!(
        cfg(&["/init"], &["run"]).command(&[]).unwrap(),
        ["/init", "run"]
    );
    assert_eq!(
        cfg(&["/init"], &["run"]).command(&user).unwrap(),
        ["/init", "sh", "-c"]
    );
    assert_eq!(cfg(&[], &["run"]).command(&user).unwrap(), ["sh", "-c"]);
    let err = cfg(&[], &[]).command(&[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "image /img.tar has no entrypoint or cmd; give a command after --"
    );
}

/// Prepares `files` written as a tar, expects an error; checks it is one
/// line, mentions every `needle`, and left the cache clean.
fn expect_error(files: &Files, needles: &[&str]) -> ImageError {
    let tmp = tempfile::tempdir().unwrap();
    let (image, cache) = (tmp.path().join("bad.tar"), tmp.path().join("cache"));
    files.write_tar(&image);
    expect_error_at(&image, &cache, needles)
}

fn expect_error_at(image: &Path, cache: &Path, needles: &[&str]) -> ImageError {
    let err = prepare(image, cache).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    assert!(
        msg.contains(&image.display().to_string()),
        "image not named: {msg}"
    );
    for needle in needles {
        assert!(msg.contains(needle), "{needle:?} not in: {msg}");
    }
    assert_clean(cache);
    err
}

#[test]
fn truncated_archive_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, cache) = (tmp.path().join("cut.tar"), tmp.path().join("cache"));
    gzip_oci().write_tar(&image);
    // Cut in the middle of the largest member's data.
    let mut archive = tar::Archive::new(File::open(&image).unwrap());
    let (start, size) = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.raw_file_position(), e.size()))
        .max_by_key(|&(_, size)| size)
        .unwrap();
    File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(start + size / 2)
        .unwrap();
    let err = expect_error_at(&image, &cache, &["truncated", "runs past the end"]);
    assert!(matches!(err, ImageError::CorruptArchive { .. }));
}

#[test]
fn flipped_byte_in_a_gzip_layer_fails_its_digest() {
    let mut files = gzip_oci();
    let (lower, _) = two_layers();
    let digest = fixtures::sha256(&fixtures::gzip(&lower));
    let blob = files.blob_mut(&digest);
    let middle = blob.len() / 2;
    blob[middle] ^= 0x40;
    let err = expect_error(
        &files,
        &[
            &format!("layer {digest} has digest sha256:"),
            "not the manifest's",
        ],
    );
    assert!(matches!(err, ImageError::DigestMismatch { .. }));
}

#[test]
fn flipped_byte_in_a_docker_layer_fails_its_diff_id() {
    let (lower, upper) = two_layers();
    let diff_id = fixtures::sha256(&lower);
    let mut files = docker(&[lower, upper], &run_config());
    let (name, tar) = files
        .0
        .iter_mut()
        .find(|(name, _)| name.ends_with("layer.tar"))
        .unwrap();
    let name = name.clone();
    let at = tar.len() / 2;
    tar[at] ^= 0x01;
    let err = expect_error(
        &files,
        &[&name, &format!("not the config's diff_id {diff_id}")],
    );
    assert!(matches!(err, ImageError::DiffIdMismatch { index: 0, .. }));
}

#[test]
fn arm64_image_is_refused() {
    let (lower, _) = two_layers();
    let files = oci(&[(lower, Z::Gzip)], "arm64", &run_config());
    let err = expect_error(
        &files,
        &["is for \"linux/arm64\"; this host runs linux/amd64"],
    );
    assert!(matches!(err, ImageError::WrongPlatform { .. }));
}

#[test]
fn missing_blob_is_named() {
    let (lower, upper) = two_layers();
    let mut files = oci(
        &[(lower, Z::Gzip), (upper.clone(), Z::Gzip)],
        "amd64",
        &run_config(),
    );
    let digest = fixtures::sha256(&fixtures::gzip(&upper));
    files.0.remove(&format!("blobs/sha256/{}", &digest[7..]));
    let err = expect_error(
        &files,
        &[&format!(
            "blob \"blobs/sha256/{}\" is missing",
            &digest[7..]
        )],
    );
    assert!(matches!(err, ImageError::MissingBlob { .. }));
}

#[test]
fn image_without_entrypoint_or_cmd_prepares_but_has_no_command() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, cache) = (tmp.path().join("bare.tar"), tmp.path().join("cache"));
    let (lower, _) = two_layers();
    oci(&[(lower, Z::Gzip)], "amd64", &json!({ "Env": ["A=1"] })).write_tar(&image);
    let prepared = prepare(&image, &cache).unwrap();
    let err = prepared.config.command(&[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "image {} has no entrypoint or cmd; give a command after --",
            image.display()
        )
    );
    assert_eq!(prepared.config.command(&["sh".into()]).unwrap(), ["sh"]);
}

#[test]
fn layer_entry_escaping_the_root_is_refused() {
    let evil = layer(&[E::File("ok", b"1", 0o644), E::RawPath("a/../../etc/evil")]);
    let files = oci(&[(evil, Z::Gzip)], "amd64", &run_config());
    let err = expect_error(
        &files,
        &["entry \"a/../../etc/evil\" escapes the image root"],
    );
    assert!(matches!(err, ImageError::BadEntry { .. }));
}

#[test]
fn not_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut files = Files::default();
    files.0.insert("hello.txt".into(), b"hi".to_vec());
    expect_error(&files, &["neither an OCI image layout"]);
    let junk = tmp.path().join("junk.tar");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    expect_error_at(&junk, &cache, &["corrupt or truncated tar archive"]);
    let gz = tmp.path().join("image.tar.gz");
    std::fs::write(&gz, fixtures::gzip(b"x")).unwrap();
    expect_error_at(&gz, &cache, &["compressed"]);
    expect_error_at(
        &tmp.path().join("absent.tar"),
        &cache,
        &["cannot open image"],
    );
}

#[test]
fn errors_can_travel_between_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<ImageError>();
}

/// A layer written with the tar crate's own long-name support (GNU `L`/`K`
/// entries): a file at `name`, and a symlink to `target`.
fn long_names_layer(name: &str, target: &str) -> Vec<u8> {
    let header = || {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header();
    h.set_size(1);
    b.append_data(&mut h, name, &b"x"[..]).unwrap();
    let mut h = header();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "link", target).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn overlong_names_and_link_targets_are_refused() {
    let name = "n".repeat(256);
    let files = oci(
        &[(long_names_layer(&name, "t"), Z::Gzip)],
        "amd64",
        &run_config(),
    );
    expect_error(&files, &["has a name longer than 255 bytes"]);
    let target = "t/".repeat(2100);
    let files = oci(
        &[(long_names_layer("ok", &target), Z::Gzip)],
        "amd64",
        &run_config(),
    );
    expect_error(&files, &["target longer than 4095 bytes"]);
}

#[test]
fn a_huge_long_name_record_is_refused_without_reading_it_whole() {
    // A GNU long-name record of 4 MiB (the tar crate would hold it all in
    // memory; a hostile one could claim gigabytes), then a normal entry.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_size(4 << 20);
    h.set_cksum();
    b.append(&h, &vec![b'a'; 4 << 20][..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(1);
    h.set_path("f").unwrap();
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let files = oci(
        &[(b.into_inner().unwrap(), Z::Gzip)],
        "amd64",
        &run_config(),
    );
    let err = expect_error(&files, &["is not a readable"]);
    let mut chain = String::new();
    let mut cause: Option<&dyn std::error::Error> = Some(&err);
    while let Some(c) = cause {
        chain.push_str(&format!("{c}: "));
        cause = c.source();
    }
    assert!(
        chain.contains("tar headers, long names or PAX records"),
        "{chain}"
    );
}
