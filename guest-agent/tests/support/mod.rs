//! Fixture for the agent's host-process tests: a busybox rootfs in a real
//! ext4 image on a loop device, the agent binary as PID 1 of fresh PID,
//! mount, UTS and IPC namespaces (`unshare`) listening on a Unix socket,
//! and a tiny proxy that speaks Corral's hybrid vsock handshake
//! (`CONNECT 1024\n` → `OK …\n`) in front of it, so the runtime's client
//! reaches it exactly as it reaches an agent in a VM.

#![allow(dead_code)]

pub mod image;
pub mod scenarios;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use corral_runtime::agent::{AgentClient, Storage};

pub const AGENT: &str = env!("CARGO_BIN_EXE_corral-agent");

pub use image::run;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (mounts, loop devices, namespaces)"
    );
}

/// A busybox root filesystem as an ext4 image attached to a loop device.
pub struct LoopImage {
    pub device: PathBuf,
}

impl LoopImage {
    pub fn busybox(dir: &Path) -> LoopImage {
        require_root();
        let image = image::busybox_ext4(dir);
        let device = run(Command::new("losetup").args(["-f", "--show"]).arg(&image));
        LoopImage {
            device: PathBuf::from(device.trim()),
        }
    }

    pub fn storage(&self) -> Storage {
        let mut s = Storage::new();
        s.device = self.device.display().to_string();
        s
    }
}

impl Drop for LoopImage {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// The agent running as PID 1 of new namespaces, behind a hybrid-vsock
/// proxy.
pub struct Agent {
    pub dir: PathBuf,
    pub hybrid_socket: PathBuf,
    pub cgroup_root: PathBuf,
    child: Child,
}

impl Agent {
    pub fn start(dir: &Path, drain_grace: &str) -> Agent {
        require_root();
        let unified = Path::new("/sys/fs/cgroup/unified");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            mountinfo.contains(" /sys/fs/cgroup/unified ")
                || Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            "no cgroup2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup"
        );
        let base = if unified.join("cgroup.controllers").exists() {
            unified
        } else {
            Path::new("/sys/fs/cgroup")
        };
        let cgroup_root = base.join(format!(
            "corral-agent-test-{}-{}",
            std::process::id(),
            dir.file_name().unwrap().to_string_lossy()
        ));
        std::fs::create_dir_all(&cgroup_root).unwrap();
        let agent_socket = dir.join("agent.sock");
        let child = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--uts",
                "--ipc",
                "--mount-proc",
                "--",
            ])
            .arg(AGENT)
            .arg("--listen")
            .arg(format!("unix://{}", agent_socket.display()))
            .arg("--cgroup-root")
            .arg(&cgroup_root)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--drain-grace")
            .arg(drain_grace)
            .env("CORRAL_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start unshare (util-linux)");
        let hybrid_socket = dir.join("hybrid.sock");
        start_proxy(&hybrid_socket, agent_socket);
        Agent {
            dir: dir.to_path_buf(),
            hybrid_socket,
            cgroup_root,
            child,
        }
    }

    pub async fn client(&self) -> AgentClient {
        AgentClient::connect(&self.hybrid_socket, 1024, Duration::from_secs(10))
            .await
            .unwrap()
    }

    /// The agent's pid on this machine (the child of `unshare`).
    pub fn pid(&self) -> i32 {
        let children = std::fs::read_to_string(format!(
            "/proc/{}/task/{}/children",
            self.child.id(),
            self.child.id()
        ))
        .unwrap();
        children.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Mounts, open fds and live descendants of the agent, and container
    /// cgroups: what must not grow.
    pub fn footprint(&self) -> (usize, usize, usize, usize) {
        let pid = self.pid();
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .lines()
            .count();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        let children: usize = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .map(|t| {
                std::fs::read_to_string(t.path().join("children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .count()
            })
            .sum();
        let cgroups = std::fs::read_dir(self.cgroup_root.join("corral"))
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0);
        (mounts, fds, children, cgroups)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The agent was PID 1 of its namespace: everything in it is gone.
        let corral = self.cgroup_root.join("corral");
        if let Ok(entries) = std::fs::read_dir(&corral) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&corral);
        let _ = std::fs::remove_dir(&self.cgroup_root);
    }
}

/// Accepts hybrid-vsock connections on `listen` and, after the handshake,
/// relays them to the agent's Unix socket.
fn start_proxy(listen: &Path, agent: PathBuf) {
    let listener = UnixListener::bind(listen).unwrap();
    std::thread::Builder::new()
        .name("test-vsock-proxy".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let agent = agent.clone();
                std::thread::spawn(move || proxy_one(conn, &agent));
            }
        })
        .unwrap();
}

fn proxy_one(conn: UnixStream, agent: &Path) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.trim() != "CONNECT 1024" {
        return;
    }
    // Like Corral's muxer: no listener in the guest, the connection closes.
    let Ok(upstream) = UnixStream::connect(agent) else {
        return;
    };
    let mut conn_w = conn.try_clone().unwrap();
    if conn_w.write_all(b"OK 1073741824\n").is_err() {
        return;
    }
    let mut up_r = upstream.try_clone().unwrap();
    let mut up_w = upstream;
    let mut down_w = conn_w;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut down_w);
        let _ = down_w.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut reader, &mut up_w);
    let _ = up_w.shutdown(std::net::Shutdown::Write);
}

/// A scratch directory under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corral-agent-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
