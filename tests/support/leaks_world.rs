//! The world of `tests/leaks.rs`: how a row's `corral run` is started
//! and driven, and how what it left is counted.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_runtime::cgroup::{CgroupConfig, PlacementMode, Sandbox};

use crate::common;

/// How a row's run is started.
#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    /// Boot the test guest, with a `--vsock` socket of the user's naming.
    Boot,
    /// `--rootfs DISK -- true`: Corral adds `corral-<pid>.vsock` itself.
    Container,
}

/// What a row does to its run.
#[derive(Clone, Copy, PartialEq)]
pub enum Action {
    /// Nothing: the run ends on its own.
    None,
    /// SIGKILL once the VM is created and placed.
    KillAtBoot,
    /// SIGKILL while the guest spins.
    KillRunning,
    /// SIGTERM, then SIGKILL once the VM ended (teardown under way).
    KillInTeardown,
    /// vCPUs frozen (v1 freezer), SIGINT, then SIGINT again.
    SecondIntStuck,
    /// SIGINT, then SIGINT again once the VM ended.
    SecondIntInTeardown,
}

pub struct Row {
    pub name: &'static str,
    pub mode: Mode,
    pub cmdline: &'static str,
    pub bad_kernel: bool,
    pub action: Action,
    /// Expected exit status (`None`: killed by SIGKILL).
    pub exit: Option<i32>,
}

/// What is left: cgroups, sockets, mounts, taps.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Left(pub usize, pub usize, pub usize, pub usize);

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>2} {:>4} {:>3} {:>3}", self.0, self.1, self.2, self.3)
    }
}

/// The test's world: parent cgroups, socket directory, network namespace.
pub struct World {
    pub parent_name: String,
    /// Holds the parent cgroup in every hierarchy; removed (and checked
    /// empty) at the end.
    pub parent: Sandbox,
    pub dir: PathBuf,
    pub xdg: PathBuf,
    pub netns: String,
    pub netns_file: File,
    pub user_tap: String,
    pub user_tap_before: String,
    pub mounts_before: usize,
    pub pids: Vec<u32>,
    pub taps_made: usize,
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn corral_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains("corral"))
        .count()
}

/// Every directory beneath `dir`.
pub fn subdirs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.path());
            if depth < 8 {
                subdirs(&e.path(), depth + 1, out);
            }
        }
    }
}

impl World {
    pub fn new() -> World {
        // SAFETY: geteuid has no arguments and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
        assert!(
            Path::new("/sys/fs/cgroup/freezer/tasks").exists(),
            "this test needs the cgroup v1 hierarchies (the freezer among them)"
        );
        let pid = std::process::id();
        let parent_name = format!("corral-leaks-{pid}");
        let mut config = CgroupConfig::new(&parent_name);
        config.mode = PlacementMode::SandboxOnly;
        config.pin_vcpus = false;
        let parent = Sandbox::create(&config).unwrap();
        let dir = common::scratch_dir("leaks");
        let xdg = dir.join("run");
        std::fs::create_dir_all(&xdg).unwrap();
        let netns = format!("crlk{pid}");
        let _ = Command::new("ip")
            .args(["netns", "del", &netns])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &netns]);
        let netns_file = File::open(format!("/run/netns/{netns}")).unwrap();
        let user_tap = "crlk-user".to_string();
        sh(&[
            "ip", "-n", &netns, "tuntap", "add", "dev", &user_tap, "mode", "tap",
        ]);
        let user_tap_before = sh(&["ip", "-n", &netns, "-d", "-o", "link", "show", &user_tap]);
        std::fs::write(dir.join("bad-kernel"), vec![0x5a; 4096]).unwrap();
        std::fs::write(dir.join("rootfs.img"), vec![0; 1 << 20]).unwrap();
        World {
            parent_name,
            parent,
            dir,
            xdg,
            netns,
            netns_file,
            user_tap,
            user_tap_before,
            mounts_before: corral_mounts(),
            pids: Vec::new(),
            taps_made: 0,
        }
    }

    /// The parent cgroup in every hierarchy.
    pub fn parent_dirs(&self) -> Vec<PathBuf> {
        self.parent
            .paths()
            .hierarchies
            .into_iter()
            .map(|h| h.sandbox)
            .collect()
    }

    /// A `corral run` of `row`, in the test's network namespace.
    pub fn spawn(&mut self, row: &Row, tag: &str) -> Corral {
        let guest = common::test_guest();
        let kernel = if row.bad_kernel {
            self.dir.join("bad-kernel")
        } else {
            guest
        };
        self.taps_made += 1;
        let tap = format!("crlk-n{}", self.taps_made);
        let console = self.dir.join(format!("console-{tag}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
        cmd.arg("run")
            .args([
                "--log",
                "warn,corral::phase=info,corral_runtime::cgroup=debug",
            ])
            .arg("--kernel")
            .arg(&kernel)
            .args(["--cpus", "2", "--cmdline", row.cmdline])
            .args(["--cgroup-parent", &self.parent_name])
            .arg("--console-file")
            .arg(&console)
            .args(["--net", &self.user_tap, "--net", &tap])
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match row.mode {
            Mode::Boot => {
                let socket = self.xdg.join(format!("user-{tag}.vsock"));
                cmd.arg("--vsock").arg(format!("3,{}", socket.display()));
            }
            Mode::Container => {
                cmd.arg("--rootfs")
                    .arg(self.dir.join("rootfs.img"))
                    .args(["--", "true"]);
            }
        }
        let ns = self.netns_file.as_raw_fd();
        // SAFETY: runs in the forked child before exec; setns is a plain
        // system call on an fd the parent keeps open, touching only the
        // child's network namespace.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        self.pids.push(child.id());
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let text = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                text.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        Corral {
            child,
            lines,
            stderr,
            console,
        }
    }

    /// What is left now.
    pub fn left(&self) -> Left {
        self.left_with_cgroups().0
    }

    /// What is left now, and the cgroups among it.
    pub fn left_with_cgroups(&self) -> (Left, Vec<PathBuf>) {
        let mut cgroups = Vec::new();
        for p in self.parent_dirs() {
            subdirs(&p, 0, &mut cgroups);
        }
        // `corral-<pid>` of any run, in any hierarchy (cgroup2 included).
        let mut all = Vec::new();
        subdirs(Path::new("/sys/fs/cgroup"), 0, &mut all);
        let names: Vec<String> = self.pids.iter().map(|p| format!("corral-{p}")).collect();
        for d in all {
            let named = d
                .file_name()
                .is_some_and(|n| names.iter().any(|x| n == x.as_str()));
            if named && !cgroups.contains(&d) {
                cgroups.push(d);
            }
        }
        let sockets = std::fs::read_dir(&self.xdg)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
            .count();
        let links = sh(&["ip", "-n", &self.netns, "-o", "link", "show"]);
        let taps = links
            .lines()
            .filter(|l| l.contains(": crlk-") && !l.contains(&format!(": {}:", self.user_tap)))
            .count();
        let mounts = corral_mounts().saturating_sub(self.mounts_before);
        (Left(cgroups.len(), sockets, mounts, taps), cgroups)
    }

    /// Whether the user's tap is as it was (same index, address, persistence).
    pub fn user_tap_intact(&self) -> bool {
        let now = Command::new("ip")
            .args([
                "-n",
                &self.netns,
                "-d",
                "-o",
                "link",
                "show",
                &self.user_tap,
            ])
            .output()
            .unwrap();
        let now = String::from_utf8_lossy(&now.stdout);
        let key = |s: &str| {
            let index = s.split(':').next().unwrap_or("").to_string();
            let mac = s
                .split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1)
                .unwrap_or("")
                .to_string();
            (index, mac, s.contains("persist on"))
        };
        key(&now) == key(&self.user_tap_before) && !now.is_empty()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `corral run`; killed and reaped on drop.
pub struct Corral {
    pub child: Child,
    pub lines: Receiver<String>,
    pub stderr: Arc<Mutex<String>>,
    pub console: PathBuf,
}

impl Corral {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid, not reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_line(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "no {needle:?} on corral's stderr within {limit:?}:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for the guest to spin on every vCPU.
    pub fn wait_spinning(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&self.console)
            .unwrap_or_default()
            .contains("spinning on every vCPU")
        {
            assert!(
                Instant::now() < deadline,
                "the guest never spun: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the process is stopped (SIGSTOP delivered).
    pub fn wait_stopped(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
            let state = stat.rsplit_once(')').unwrap().1.trim_start();
            if state.starts_with('T') {
                return;
            }
            assert!(Instant::now() < deadline, "corral did not stop: {stat}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits up to `limit` for the exit; `(status code, killed by SIGKILL)`.
    pub fn finish(&mut self, limit: Duration) -> (Option<i32>, bool) {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return (status.code(), status.signal() == Some(libc::SIGKILL));
            }
            assert!(
                Instant::now() < deadline,
                "corral did not exit within {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Freezes a cgroup (v1 freezer) until dropped.
pub struct Frozen(pub PathBuf);

impl Frozen {
    pub fn new(dir: PathBuf) -> Frozen {
        std::fs::write(dir.join("freezer.state"), "FROZEN").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(dir.join("freezer.state"))
            .unwrap()
            .trim()
            != "FROZEN"
        {
            assert!(
                Instant::now() < deadline,
                "{} did not freeze",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Frozen(dir)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
    }
}
