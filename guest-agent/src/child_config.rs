//! What the agent tells a re-executed child (`corral-agent __child`) to set
//! up before it executes a container's process, and the file descriptors
//! they talk over. Agent and child are the same binary, so the format is
//! private to it.

use std::path::PathBuf;

use oci_spec::runtime::{Mount, Process};
use serde::{Deserialize, Serialize};

/// The argument that makes `corral-agent` run as a container child.
pub const CHILD_ARG: &str = "__child";
/// The child reads its [`ChildConfig`] from this fd (a u32 LE length, then
/// JSON), then one byte that lets it execute the process (EOF: give up).
pub const CONTROL_FD: i32 = 3;
/// The child writes `ok\n` here when set up, or `error: …` and exits; the
/// fd is close-on-exec, so EOF after `ok` means the process was executed.
pub const REPORT_FD: i32 = 4;

/// With a terminal: a Unix socket on which the child sends the agent the
/// master of the pty it opened in the container's own devpts (so the
/// container's `tty` and `/dev/pts` agree).
pub const CONSOLE_FD: i32 = 5;

/// Everything a child needs.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildConfig {
    /// For messages.
    pub container_id: String,
    /// New container or a process in an existing one.
    pub kind: ChildKind,
    /// The process to execute (args, env, cwd, user, rlimits, terminal…).
    pub process: Process,
}

/// What kind of child.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChildKind {
    /// A container's init: cloned into new mount, PID, UTS and IPC
    /// namespaces; mounts the spec's mounts in `rootfs` and pivots into it.
    Init {
        /// The container's root, mounted by the agent.
        rootfs: PathBuf,
        /// The spec's hostname.
        hostname: Option<String>,
        /// The spec's mounts, in order.
        mounts: Vec<Mount>,
        /// Remount the root read-only (spec `root.readonly`).
        readonly_root: bool,
        /// `linux.maskedPaths`: hidden (an empty read-only tmpfs over a
        /// directory, /dev/null over a file).
        masked_paths: Vec<String>,
        /// `linux.readonlyPaths`: remounted read-only.
        readonly_paths: Vec<String>,
        /// `linux.sysctl`, written to /proc/sys (the VM is the pod: these
        /// apply guest-wide for the non-namespaced ones).
        sysctl: Vec<(String, String)>,
    },
    /// A process joining the namespaces of a running container's init
    /// (its PID namespace was joined at clone time).
    Exec {
        /// The container init's pid in the agent's PID namespace.
        init_pid: i32,
    },
}
