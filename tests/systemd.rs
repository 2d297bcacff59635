//! Corral's systemd cgroup driver against a real systemd. This machine's
//! PID 1 is not systemd, so the test runs one: systemd 252 as PID 1 of a
//! private PID and mount namespace with its own /run and system bus
//! (`tests/support/private-systemd.sh`), its cgroups beneath this test's
//! own in every hierarchy. `corral run --cgroup-parent slice:prefix:name`
//! runs inside that namespace (PIDs sent to systemd must be in its PID
//! namespace); the test checks from outside, in the real cgroup files,
//! that systemd made a `Delegate=yes` scope holding the process and that
//! Corral split the threads beneath it, then that SIGTERM tears it all
//! down without systemd killing Corral on the way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SLICE: &str = "corral-test.slice";
/// Where systemd puts it: a dash in a slice name nests it.
const SLICE_DIR: &str = "corral.slice/corral-test.slice";

/// A mounted cgroup hierarchy and this process's cgroup in it.
struct Hierarchy {
    /// The `/proc/<pid>/cgroup` controller field (`cpu`, `name=systemd`,
    /// `` for cgroup2).
    key: String,
    mount: PathBuf,
    /// This process's cgroup, relative to the hierarchy's root.
    own: String,
}

/// The writable cgroup hierarchies, from mountinfo and /proc/self/cgroup.
fn hierarchies() -> Vec<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts: Vec<(PathBuf, String, Vec<String>)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?.to_string();
            let options = r.nth(1)?.split(',').map(str::to_string).collect();
            let mount = left.split_whitespace().nth(4)?;
            fstype
                .starts_with("cgroup")
                .then(|| (PathBuf::from(mount), fstype, options))
        })
        .collect();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    own.lines()
        .filter_map(|line| {
            let mut f = line.splitn(3, ':');
            let (_, key, path) = (f.next()?, f.next()?, f.next()?);
            let (mount, _, _) = mounts.iter().find(|(_, fstype, options)| {
                if key.is_empty() {
                    fstype == "cgroup2"
                } else {
                    fstype == "cgroup" && key.split(',').all(|c| options.iter().any(|o| o == c))
                }
            })?;
            Some(Hierarchy {
                key: key.to_string(),
                mount: mount.clone(),
                own: path.trim_end_matches('/').to_string(),
            })
        })
        .collect()
}

/// A systemd running as PID 1 of a private PID and mount namespace.
struct PrivateSystemd {
    unshare: Child,
    /// systemd's PID in this (the host's) namespace.
    pid: i32,
    /// Its root cgroup, relative to each hierarchy's root, by key.
    roots: BTreeMap<String, String>,
    /// The same, as directories.
    dirs: Vec<PathBuf>,
}

impl PrivateSystemd {
    fn start() -> Self {
        for tool in ["unshare", "nsenter", "busctl", "dbus-daemon"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{tool} is missing: run `bash .ci/setup`"
            );
        }
        assert!(
            Path::new("/lib/systemd/systemd").exists(),
            "systemd is missing: run `bash .ci/setup`"
        );
        let name = format!("corral-systemd-test-{}", std::process::id());
        let mut roots = BTreeMap::new();
        let mut dirs = Vec::new();
        let mut procs = Vec::new();
        for h in hierarchies() {
            let root = format!("{}/{name}", h.own);
            let dir = h.mount.join(root.trim_start_matches('/'));
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            if h.key == "cpuset" {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let parent = std::fs::read(dir.parent().unwrap().join(file)).unwrap();
                    std::fs::write(dir.join(file), parent).unwrap();
                }
            }
            procs.push(dir.join("cgroup.procs"));
            roots.insert(h.key, root);
            dirs.push(dir);
        }
        // The shell moves itself into every root, then becomes unshare,
        // whose child becomes systemd: systemd starts inside them.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/private-systemd.sh");
        let unshare = Command::new("sh")
            .arg("-c")
            .arg(
                "for f in \"$@\"; do echo $$ > \"$f\"; done; \
                 exec unshare --pid --fork --mount --propagation private --mount-proc \"$SCRIPT\"",
            )
            .arg("sh")
            .args(&procs)
            .env("SCRIPT", script)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut systemd = PrivateSystemd {
            pid: 0,
            unshare,
            roots,
            dirs,
        };
        let started = Instant::now();
        systemd.pid = loop {
            if let Some(pid) = children(systemd.unshare.id() as i32).first() {
                break *pid;
            }
            if let Some(status) = systemd.unshare.try_wait().unwrap() {
                panic!("the private systemd's namespace ended at once: {status}");
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(20));
        };
        // Ready when systemd answers on its system bus.
        loop {
            let ok = systemd
                .nsenter()
                .args(["busctl", "--system", "call", "org.freedesktop.systemd1"])
                .args([
                    "/org/freedesktop/systemd1",
                    "org.freedesktop.DBus.Properties",
                ])
                .args(["Get", "ss", "org.freedesktop.systemd1.Manager", "Version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if ok {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!(
                    "the private systemd did not answer on its bus within 60 s; its console:\n{}",
                    systemd.console()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "private systemd (host PID {}) on its bus after {} ms",
            systemd.pid,
            started.elapsed().as_millis()
        );
        systemd
    }

    /// A command run inside the namespace.
    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-p", "-m", "--"]);
        c
    }

    /// `systemctl show -p <property> --value <unit>`.
    fn show(&self, unit: &str, property: &str) -> String {
        let out = self
            .nsenter()
            .args(["systemctl", "show", "-p", property, "--value", unit])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn console(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/root/run/console.log", self.pid))
            .unwrap_or_default()
    }
}

impl Drop for PrivateSystemd {
    fn drop(&mut self) {
        // Killing PID 1 of a PID namespace kills everything in it; unshare
        // then exits too.
        if self.pid > 0 {
            // SAFETY: kill(2) on systemd's host PID, a child of our child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        } else {
            let _ = self.unshare.kill();
        }
        let _ = self.unshare.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in &self.dirs {
            while dir.exists() && remove_tree(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Removes a cgroup tree, deepest first.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_tree(&path)?;
        }
    }
    std::fs::remove_dir(dir)
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Each thread of `pid`: (TID, name, its `/proc/.../cgroup` by key).
fn thread_cgroups(pid: i32) -> Vec<(i32, String, BTreeMap<String, String>)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let tid = dir.file_name()?.to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let cgroups = std::fs::read_to_string(dir.join("cgroup")).ok()?;
            let map = cgroups
                .lines()
                .filter_map(|l| {
                    let mut f = l.splitn(3, ':');
                    let (_, key, path) = (f.next()?, f.next()?, f.next()?);
                    Some((key.to_string(), path.to_string()))
                })
                .collect();
            Some((tid, name.trim().to_string(), map))
        })
        .collect()
}

/// The PID of `pid` inside its innermost PID namespace.
fn ns_pid(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

#[test]
fn systemd_driver_delegates_a_scope_and_splits_beneath_it() {
    let _kvm = common::kvm();
    let systemd = PrivateSystemd::start();
    let tag = format!("t{}", std::process::id());
    let unit = format!("corral-{tag}.scope");
    let nsenter = systemd
        .nsenter()
        .arg(env!("CARGO_BIN_EXE_corral"))
        .args(["run", "--kernel", common::test_guest().to_str().unwrap()])
        .args([
            "--cpus",
            "2",
            "--memory",
            "128",
            "--cmdline",
            "workload=hang",
        ])
        .args(["--cgroup-parent", &format!("{SLICE}:corral:{tag}")])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait until both vCPU threads are in the sandbox cgroup.
    let started = Instant::now();
    let (corral, sandbox, overhead, scope) = loop {
        if let Some(&corral) = children(nsenter.id() as i32).first() {
            let scope = format!("{SLICE_DIR}/{unit}");
            let nspid = ns_pid(corral);
            let sandbox = format!("{scope}/corral-{nspid}");
            let overhead = format!("{scope}/corral_overhead/corral-{nspid}");
            let placed = thread_cgroups(corral)
                .iter()
                .filter(|(_, name, cg)| {
                    name.starts_with("vcpu") && cg.get("cpu").is_some_and(|p| p.ends_with(&sandbox))
                })
                .count();
            if placed == 2 {
                break (corral, sandbox, overhead, scope);
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            let out = common::wait_output_within(nsenter, Duration::from_secs(1), "corral");
            panic!(
                "the vCPUs were not placed within 30 s:\n{}\nsystemd's console:\n{}",
                String::from_utf8_lossy(&out.stderr),
                systemd.console()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    // systemd's view: a delegated scope, active, where we expect it.
    assert_eq!(systemd.show(&unit, "Delegate"), "yes");
    assert_eq!(systemd.show(&unit, "ActiveState"), "active");
    let systemd_root = &systemd.roots["name=systemd"];
    assert_eq!(
        systemd.show(&unit, "ControlGroup"),
        format!("{systemd_root}/{scope}")
    );

    // The real cgroup files: systemd's hierarchies hold the whole process
    // in the scope; in every hierarchy Corral manages, the vCPUs are in the
    // sandbox cgroup beneath the scope and every other thread in the
    // overhead one.
    let threads = thread_cgroups(corral);
    assert!(threads.len() > 2, "{threads:?}");
    for (tid, name, cgroups) in &threads {
        for (key, root) in &systemd.roots {
            let expected = if key == "name=systemd" || key.is_empty() {
                format!("{root}/{scope}")
            } else if name.starts_with("vcpu") {
                format!("{root}/{sandbox}")
            } else {
                format!("{root}/{overhead}")
            };
            assert_eq!(
                cgroups.get(key.as_str()),
                Some(&expected),
                "thread {tid} ({name}) in hierarchy {key:?}"
            );
        }
    }

    // SIGTERM: the VM stops, Corral restores its threads, removes its
    // cgroups and stops the scope; systemd must not have to kill it.
    // SAFETY: kill(2) on corral's PID, a child of our nsenter child.
    assert_eq!(unsafe { libc::kill(corral, libc::SIGTERM) }, 0);
    let out = common::wait_output_within(nsenter, Duration::from_secs(20), "corral");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Systemd driver"), "{log}");
    assert!(log.contains("cgroups removed"), "{log}");
    assert!(
        !log.contains("signal 15 again"),
        "stopping the scope signalled Corral:\n{log}"
    );
    assert_eq!(out.status.code(), Some(130), "{log}");
    assert_ne!(systemd.show(&unit, "ActiveState"), "active");
    for (key, root) in &systemd.roots {
        let h = hierarchies().into_iter().find(|h| &h.key == key).unwrap();
        let dir = h
            .mount
            .join(format!("{root}/{scope}").trim_start_matches('/'));
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    eprintln!(
        "systemd driver: scope {unit} delegated, {} threads split beneath it, torn down",
        threads.len()
    );
}
