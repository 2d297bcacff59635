//! A private containerd (Debian's 1.6) for the shim tests: its own root,
//! state and socket under a short directory, the shim on its PATH, the
//! shim's configuration through `CORRAL_SHIM_CONFIG`, driven with `ctr`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use super::image::run;

/// The agent tests' busybox tree (`rootfs-src` in `dir`), with a `/run`.
pub fn busybox_tree(dir: &Path) -> PathBuf {
    let root = super::image::busybox_tree(dir);
    std::fs::create_dir_all(root.join("run")).unwrap();
    root
}

/// The shim under test: this build's, or `$CORRAL_SHIM_BIN` (e.g. the
/// release build, for the memory figure).
pub fn shim() -> PathBuf {
    std::env::var_os("CORRAL_SHIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-corral-v2")))
}
pub const RUNTIME: &str = "io.containerd.corral.v2";

pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub daemon: Option<Child>,
}

impl Containerd {
    /// Starts containerd with the shim configured by `shim_toml` (the
    /// fixture adds `state_dir`).
    pub fn start(name: &str, shim_toml: &str) -> Containerd {
        assert!(
            Path::new("/usr/bin/containerd").exists() && Path::new("/usr/bin/ctr").exists(),
            "containerd and ctr are missing: run .ci/setup (Debian package containerd)"
        );
        let dir = PathBuf::from(format!("/tmp/cd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A tmpfs: overlayfs snapshots need an upper layer that supports
        // it (L1's root is itself an overlay).
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1g", "cd-test"])
            .arg(&dir));
        std::fs::create_dir_all(dir.join("corral")).unwrap();
        let socket = dir.join("c.sock");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
                 \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
                 \"io.containerd.snapshotter.v1.aufs\"]\n\
                 [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("shim.toml"),
            format!("{shim_toml}\nstate_dir = \"{}/corral\"\n", dir.display()),
        )
        .unwrap();
        let mut c = Containerd {
            dir,
            socket,
            daemon: None,
        };
        c.restart();
        c
    }

    /// (Re)starts the daemon.
    pub fn restart(&mut self) {
        let shim = shim();
        let shim_dir = shim.parent().unwrap();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            .env("CORRAL_SHIM_CONFIG", self.dir.join("shim.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start containerd");
        self.daemon = Some(child);
        let started = Instant::now();
        while !self.socket.exists() || !self.ctr(&["version"]).status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "containerd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon (SIGTERM; shims keep running).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("-n")
            .arg("corral");
        cmd.args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `ctr`; a call that takes over 2 minutes fails the test (and
    /// is killed), so a hang shows here instead of at the lane's timeout.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let child = self
            .ctr_cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run ctr");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(out) => out.expect("cannot wait for ctr"),
            Err(_) => {
                // SAFETY: kill(2) of our own child by pid.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("ctr {args:?} hung for 2 minutes\n{}", self.log_tail());
            }
        }
    }

    /// `ctr` that must succeed; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}{}\ncontainerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The shim's state directory (pod directories).
    pub fn pods_dir(&self) -> PathBuf {
        self.dir.join("corral")
    }

    /// The task's status column in `ctr task ls` (and its PID).
    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| (f[1].parse().unwrap_or(0), f[2].to_string()))
        })
    }

    pub fn wait_status(&self, id: &str, status: &str, limit: Duration) {
        let started = Instant::now();
        loop {
            let now = self.task(id);
            if now.as_ref().map(|t| t.1.as_str()) == Some(status) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "task {id} is {now:?}, not {status}, after {limit:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Leave no shim behind: kill every task, then the daemon.
        if self.daemon.is_some() {
            if let Ok(out) = self.ctr_cmd(&["task", "ls", "-q"]).output() {
                for id in String::from_utf8_lossy(&out.stdout).lines() {
                    let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
                    std::thread::sleep(Duration::from_millis(200));
                    let _ = self.ctr(&["task", "delete", "-f", id]);
                }
            }
        }
        self.stop();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An OCI image archive (one layer, the busybox tree) named `name`,
/// imported into containerd.
pub fn import_busybox_image(cd: &Containerd, name: &str) {
    let work = cd.dir.join("image");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("oci/blobs/sha256")).unwrap();
    let root = busybox_tree(&work);
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "-cf"])
        .arg(&layer)
        .arg("."));
    let put = |bytes: &[u8]| -> (String, usize) {
        let tmp = work.join("blob");
        std::fs::write(&tmp, bytes).unwrap();
        let sum = run(Command::new("sha256sum").arg(&tmp));
        let digest = sum.split_whitespace().next().unwrap().to_string();
        std::fs::rename(&tmp, work.join("oci/blobs/sha256").join(&digest)).unwrap();
        (digest, bytes.len())
    };
    let (layer_digest, layer_size) = put(&std::fs::read(&layer).unwrap());
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer_digest}"]}}}}"#
    );
    let (config_digest, config_size) = put(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer_digest}","size":{layer_size}}}]}}"#
    );
    let (manifest_digest, manifest_size) = put(manifest.as_bytes());
    std::fs::write(
        work.join("oci/index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_digest}","size":{manifest_size},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"{name}"}},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        work.join("oci/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = work.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(work.join("oci"))
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    cd.ctr_ok(&["image", "import", archive.to_str().unwrap()]);
}
