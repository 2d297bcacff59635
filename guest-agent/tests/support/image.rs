//! A busybox container rootfs as an ext4 image (`mkfs.ext4 -d`), shared by
//! the agent's host-process tests and the VM test (`tests/agent_vm.rs`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd`; panics with its stderr unless it succeeds; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The busybox tree of [`busybox_ext4`] as a squashfs image
/// (`mksquashfs`, gzip), for the format comparison.
pub fn busybox_squashfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs-src");
    assert!(
        root.is_dir(),
        "build the ext4 image first (it lays out {})",
        root.display()
    );
    let image = dir.join("rootfs.squashfs");
    let _ = std::fs::remove_file(&image);
    run(Command::new("mksquashfs").arg(&root).arg(&image).args([
        "-quiet",
        "-no-progress",
        "-comp",
        "gzip",
        "-all-root",
    ]));
    image
}

/// Builds `dir/rootfs.ext4` (64 MiB) from [`busybox_tree`].
pub fn busybox_ext4(dir: &Path) -> PathBuf {
    let root = busybox_tree(dir);
    let image = dir.join("rootfs.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(&root)
        .arg(&image)
        .arg("64M"));
    image
}

/// Lays out `dir/rootfs-src`: Debian's static busybox with every applet
/// linked, /etc/passwd and /etc/group, the usual mount points.
pub fn busybox_tree(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs-src");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/user",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is missing: install busybox-static (bash .ci/setup does)");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = run(Command::new(busybox).arg("--list"));
    for applet in list.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    root
}
