//! The edge binary: one static `corral` file (scripts/build-edge) that
//! carries its guest and runs OCI images made here by the tests (an OCI
//! layout with gzip layers, a `docker save` archive with a whiteout and an
//! opaque directory).
//!
//! Here (PVM): the file is static and within its size budget, boots a VM
//! when copied alone into an empty directory, and bad images get one-line
//! errors with nothing left behind. Linux user space (the agent running the
//! image) needs hardware KVM: `lane_edge_runs_oci_images` runs the `l1_`
//! tests in the nested lane's L1. Nothing timed in L1 is a performance
//! figure (it is emulated).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../guest-agent/tests/support/image.rs"]
mod image;
#[path = "support/nested/mod.rs"]
mod nested;
#[path = "support/oci.rs"]
mod oci;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use oci::Entry;

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");
/// The size budget of the edge binary: kernel + initramfs + VMM.
const SIZE_BUDGET: u64 = 16 << 20;

/// The edge binary: $CORRAL_EDGE_BIN, or built now (cached by cargo).
fn edge_binary() -> PathBuf {
    match std::env::var_os("CORRAL_EDGE_BIN") {
        Some(path) => PathBuf::from(path),
        None => common::run_build_script("scripts/build-edge", &[]),
    }
}

/// A copy of the edge binary alone in a new empty directory.
fn edge_alone(name: &str) -> (PathBuf, PathBuf) {
    let dir = common::scratch_dir(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("corral");
    std::fs::copy(edge_binary(), &bin).unwrap();
    (dir, bin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Files (not directories) under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_under(&p));
        } else {
            found.push(p);
        }
    }
    found
}

#[test]
fn the_edge_binary_is_static_small_and_boots_alone_in_an_empty_directory() {
    let built = edge_binary();
    let file = Command::new("file").arg(&built).output().unwrap();
    let file = text(&file.stdout);
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "{file}"
    );
    let ldd = Command::new("ldd").arg(&built).output().unwrap();
    let ldd = text(&ldd.stdout) + &text(&ldd.stderr);
    // glibc's ldd says one or the other for a static(-pie) executable.
    assert!(
        ldd.contains("not a dynamic executable") || ldd.contains("statically linked"),
        "{ldd}"
    );
    assert!(!ldd.contains("=>"), "{ldd}");
    let size = std::fs::metadata(&built).unwrap().len();
    println!(
        "FIGURE edge binary: {size} bytes ({:.1} MiB; budget {} MiB)",
        size as f64 / f64::from(1 << 20),
        SIZE_BUDGET >> 20
    );
    assert!(size <= SIZE_BUDGET, "{size} bytes is over the budget");

    let _kvm = common::kvm();
    let (dir, bin) = edge_alone("edge-alone");
    let guest = dir.join("guest");
    std::fs::copy(common::test_guest(), &guest).unwrap();
    // No PATH, no HOME: nothing but the file and the kernel given.
    let out = Command::new(&bin)
        .current_dir(&dir)
        .env_clear()
        .args(["run", "--kernel", "guest", "--cmdline"])
        .arg("workload=spin iterations=1000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("corral-test-guest: booting"),
        "{}",
        text(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A busybox image's two layers: the tree (with files the upper layer
/// deletes), then the upper layer.
fn busybox_layers(dir: &Path) -> Vec<Vec<u8>> {
    let tree = image::busybox_tree(dir);
    std::fs::write(tree.join("etc/gone"), "deleted by a whiteout\n").unwrap();
    std::fs::create_dir_all(tree.join("etc/opq")).unwrap();
    std::fs::write(tree.join("etc/opq/lower"), "hidden by an opaque dir\n").unwrap();
    let lower = oci::layer_from_dir(&tree);
    let upper = oci::layer(&[
        Entry::Dir("work"),
        Entry::File("etc/kept", b"kept\n", 0o644),
        Entry::Whiteout("etc/gone"),
        Entry::Opaque("etc/opq"),
        Entry::File("etc/opq/upper", b"upper\n", 0o644),
    ]);
    vec![lower, upper]
}

fn busybox_config(layers: &[Vec<u8>], arch: &str) -> Vec<u8> {
    oci::config_json(
        arch,
        serde_json::json!({
            "Env": ["PATH=/bin", "GREETING=from the image"],
            "Cmd": ["sh", "-c", "echo default cmd"],
            "WorkingDir": "/work",
            "User": "user",
        }),
        layers,
    )
}

/// `corral run --kernel GUEST --image IMAGE …` of the test build: the image
/// is read before any VM exists.
fn run_image(image: &Path, cache: &Path, extra: &[&str]) -> Output {
    Command::new(CORRAL)
        .args(["run", "--kernel"])
        .arg(common::test_guest())
        .arg("--image")
        .arg(image)
        .arg("--image-cache")
        .arg(cache)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Asserts a failed run with one error line containing every `needle`,
/// and no file left in `cache`.
fn assert_refused(out: &Output, cache: &Path, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("corral: error: "), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in {stderr}");
    }
    assert_eq!(files_under(cache), Vec::<PathBuf>::new(), "{stderr}");
}

#[test]
fn bad_images_get_one_line_errors_and_leave_nothing_behind() {
    let dir = common::scratch_dir("edge-bad-images");
    let cache = dir.join("cache");
    let layers = busybox_layers(&dir);
    let good = oci::oci_layout(
        &dir.join("good"),
        &busybox_config(&layers, "amd64"),
        &layers,
    );

    // Missing path.
    let out = run_image(&dir.join("nope.tar"), &cache, &[]);
    assert_refused(&out, &cache, &["nope.tar"]);

    // Not an archive at all.
    let junk = dir.join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive, just text\n").unwrap();
    assert_refused(&run_image(&junk, &cache, &[]), &cache, &["junk.tar"]);

    // A truncated OCI archive.
    let archive = oci::oci_archive(&good, &dir.join("good.tar"));
    let bytes = std::fs::read(&archive).unwrap();
    let cut = dir.join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(&run_image(&cut, &cache, &[]), &cache, &["cut.tar"]);

    // A layer whose bytes do not match its digest.
    let flipped = oci::oci_layout(
        &dir.join("flipped"),
        &busybox_config(&layers, "amd64"),
        &layers,
    );
    let blobs = flipped.join("blobs/sha256");
    let layer_blob = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut blob = std::fs::read(&layer_blob).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0xff;
    std::fs::write(&layer_blob, blob).unwrap();
    assert_refused(&run_image(&flipped, &cache, &[]), &cache, &["sha256:"]);

    // An image for another architecture.
    let arm = oci::oci_layout(&dir.join("arm"), &busybox_config(&layers, "arm64"), &layers);
    assert_refused(&run_image(&arm, &cache, &[]), &cache, &["arm64"]);

    // Nothing to run: no entrypoint, no CMD, no command given.
    let bare = oci::config_json("amd64", serde_json::json!({"Env": ["PATH=/bin"]}), &layers);
    let bare = oci::oci_layout(&dir.join("bare"), &bare, &layers);
    let out = run_image(&bare, &cache, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("after --"), "{stderr}");

    // An image larger than the cache's filesystem can hold.
    let small = dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success(), "cannot mount a small tmpfs (needs root)");
    let out = run_image(&good, &small, &[]);
    let left = files_under(&small);
    let umounted = Command::new("umount").arg(&small).status().unwrap();
    assert!(umounted.success());
    assert_eq!(left, Vec::<PathBuf>::new());
    assert_refused(&out, &small, &["free"]);

    // An unknown user name.
    let out = run_image(&good, &cache, &["--user", "nobody-here", "--", "true"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nobody-here"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the `l1_` tests below inside L1 (the edge binary and the guest
/// are built here first).
#[test]
fn lane_edge_runs_oci_images() {
    let edge = edge_binary();
    // SAFETY: no other thread of this test reads the environment now.
    std::env::set_var("CORRAL_EDGE_BIN", &edge);
    let console = nested::run_own_tests_in_l1(
        "lane_edge_runs_oci_images",
        &["l1_"],
        Duration::from_secs(1200),
    );
    assert!(console.contains("test result: ok. 3 passed;"), "{console}");
}

/// The edge binary copied alone into an empty directory, run there with
/// an empty environment but for HOME (its image cache).
fn edge_run(bin: &Path, home: &Path, args: &[&str], stdin: Option<&[u8]>) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .current_dir(bin.parent().unwrap())
        .env_clear()
        .env("HOME", home)
        .arg("run")
        .args(["--memory", "256"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out, started.elapsed())
}

fn assert_run(out: &Output, status: i32, stdout: &str) {
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(status), stdout),
        "stderr: {}",
        text(&out.stderr)
    );
}

fn l1_only() {
    assert!(
        nested::in_l1() || !common::is_pvm(),
        "Linux user space needs hardware KVM; this /dev/kvm is PVM: run lane_edge_runs_oci_images"
    );
}

#[test]
#[ignore = "needs hardware KVM for Linux user space: lane_edge_runs_oci_images runs it in the nested lane's L1"]
fn l1_an_oci_layout_runs_with_its_config_and_the_status_passes_through() {
    l1_only();
    let dir = common::scratch_dir("edge-layout");
    let layers = busybox_layers(&dir);
    let layout = oci::oci_layout(&dir.join("img"), &busybox_config(&layers, "amd64"), &layers);
    let (_, bin) = edge_alone("edge-layout-bin");
    let home = dir.join("home");
    let img = layout.to_str().unwrap();

    let phases = ["--log", "corral::phase=info"];
    let (out, cold) = edge_run(
        &bin,
        &home,
        &[&phases[..], &["--image", img, "--", "echo", "hi"]].concat(),
        None,
    );
    assert_run(&out, 0, "hi\n");
    for line in text(&out.stderr)
        .lines()
        .filter(|l| l.contains("corral::phase"))
    {
        println!("FIGURE phase, first run (emulated): {line}");
    }
    let (out, warm) = edge_run(
        &bin,
        &home,
        &[&phases[..], &["--image", img]].concat(),
        None,
    );
    assert_run(&out, 0, "default cmd\n");
    for line in text(&out.stderr)
        .lines()
        .filter(|l| l.contains("corral::phase"))
    {
        println!("FIGURE phase, cached layers (emulated): {line}");
    }
    println!(
        "FIGURE edge run --image in L1 (emulated, not a performance figure): first {cold:?}, cached layers {warm:?}"
    );
    let (out, _) = edge_run(
        &bin,
        &home,
        &["--image", img, "--", "sh", "-c", "exit 7"],
        None,
    );
    assert_run(&out, 7, "");
    let script = "echo $GREETING; pwd; id -u; id -g; cat /etc/kept; \
                  test -e /etc/gone || echo gone; ls /etc/opq";
    let (out, _) = edge_run(
        &bin,
        &home,
        &["--image", img, "--", "sh", "-c", script],
        None,
    );
    assert_run(
        &out,
        0,
        "from the image\n/work\n1000\n1000\nkept\ngone\nupper\n",
    );
    let (out, _) = edge_run(
        &bin,
        &home,
        &[
            "--image",
            img,
            "--env",
            "GREETING=overridden",
            "-w",
            "/tmp",
            "-u",
            "0",
            "--",
            "sh",
            "-c",
            "echo $GREETING; pwd; id -u",
        ],
        None,
    );
    assert_run(&out, 0, "overridden\n/tmp\n0\n");
    let (out, _) = edge_run(
        &bin,
        &home,
        &["--image", img, "-i", "--", "sh", "-c", "cat; echo end"],
        Some(b"typed in\n"),
    );
    assert_run(&out, 0, "typed in\nend\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs hardware KVM for Linux user space: lane_edge_runs_oci_images runs it in the nested lane's L1"]
fn l1_a_docker_archive_with_whiteouts_runs_from_the_binary_alone() {
    l1_only();
    let dir = common::scratch_dir("edge-docker");
    let layers = busybox_layers(&dir);
    let archive = oci::docker_archive(
        &dir.join("app.tar"),
        &busybox_config(&layers, "amd64"),
        &layers,
    );
    let (bin_dir, bin) = edge_alone("edge-docker-bin");
    assert_eq!(std::fs::read_dir(&bin_dir).unwrap().count(), 1);
    let home = dir.join("home");
    let script =
        "test -e /etc/gone || echo gone; ls /etc/opq; echo written > /etc/kept; cat /etc/kept";
    let (out, _) = edge_run(
        &bin,
        &home,
        &[
            "--image",
            archive.to_str().unwrap(),
            "-u",
            "0",
            "--",
            "sh",
            "-c",
            script,
        ],
        None,
    );
    assert_run(&out, 0, "gone\nupper\nwritten\n");
    // The write went to the run's tmpfs upper: the next run sees the image.
    let (out, _) = edge_run(
        &bin,
        &home,
        &[
            "--image",
            archive.to_str().unwrap(),
            "--",
            "cat",
            "/etc/kept",
        ],
        None,
    );
    assert_run(&out, 0, "kept\n");
    // Nothing but the binary in its directory; the cache holds one disk.
    assert_eq!(std::fs::read_dir(&bin_dir).unwrap().count(), 1);
    let cached = files_under(&home);
    assert_eq!(cached.len(), 1, "{cached:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs hardware KVM for Linux user space: lane_edge_runs_oci_images runs it in the nested lane's L1"]
fn l1_volumes_mount_disks_and_a_terminal_gets_this_windows_size() {
    l1_only();
    let dir = common::scratch_dir("edge-volumes");
    let layers = busybox_layers(&dir);
    let layout = oci::oci_layout(&dir.join("img"), &busybox_config(&layers, "amd64"), &layers);
    let img = layout.to_str().unwrap();
    let (_, bin) = edge_alone("edge-volumes-bin");
    let home = dir.join("home");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello"), "hello from a volume\n").unwrap();
    let disk = dir.join("data.ext4");
    image::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-E", "root_owner=0:0", "-d"])
            .arg(&data)
            .arg(&disk)
            .arg("16M"),
    );
    let with_volume = |volume: String, script: &str| {
        let args = [
            "--image", img, "-u", "0", "-v", &volume, "--", "sh", "-c", script,
        ];
        edge_run(&bin, &home, &args, None).0
    };
    let out = with_volume(
        format!("{}:/data", disk.display()),
        "cat /data/hello; echo written > /data/new",
    );
    assert_run(&out, 0, "hello from a volume\n");
    let out = with_volume(
        format!("{}:/data:ro", disk.display()),
        "cat /data/new; echo x 2>/dev/null > /data/other || echo refused",
    );
    assert_run(&out, 0, "written\nrefused\n");

    // `script` gives corral the terminal that -t passes on.
    let cmd = format!(
        "stty rows 33 cols 101; {} run --memory 256 --image {img} -t -i -- sh -c 'stty size; tty; exit 5'",
        bin.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("HOME", &home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    // script -e: the status of what it ran, corral's, the container's.
    assert_eq!(out.status.code(), Some(5), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("33 101"), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("/dev/pts/0"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
