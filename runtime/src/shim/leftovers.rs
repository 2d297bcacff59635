//! What a pod's shim leaves on the host, recorded as it is made, so that
//! containerd's `delete` subcommand (run after every shim disconnect, and
//! after a `kill -9`) can remove it: the pod directory (disk slots, vsock
//! socket, console log), the sandbox's cgroups and the ancestors it made,
//! the shim's ttrpc socket, and a rootfs mount on a bundle. A tap the pod
//! opened is not persistent: the kernel removes it with the shim's last
//! file descriptor. A delete while the pod's shim is alive
//! removes nothing: the pod is not torn down for a mere container.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The bundle file naming the pod directory of the bundle's container.
pub const POD_POINTER: &str = "corral-pod";
/// The record's file name in the pod directory.
const RECORD: &str = "leftovers.json";

/// See the module documentation.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Leftovers {
    /// The shim process.
    pub shim_pid: u32,
    /// The pod directory.
    pub dir: Option<PathBuf>,
    /// The sandbox's own cgroups (each removed with its sub-cgroups).
    pub cgroups: Vec<PathBuf>,
    /// Ancestors the sandbox created (a `cgroupsPath`'s namespace level),
    /// which other pods may share: removed only when empty.
    #[serde(default)]
    pub shared_cgroups: Vec<PathBuf>,
    /// The shim's ttrpc socket path.
    pub socket: Option<PathBuf>,
}

impl Leftovers {
    /// Writes the record into the pod directory (best effort: a failure is
    /// logged, the pod goes on).
    pub fn save(&self) {
        let Some(dir) = &self.dir else { return };
        let tmp = dir.join(format!("{RECORD}.tmp"));
        let written = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&tmp, json))
            .and_then(|()| std::fs::rename(&tmp, dir.join(RECORD)));
        if let Err(e) = written {
            tracing::warn!(
                "cannot record the pod's leftovers in {}: {e}",
                dir.display()
            );
        }
    }

    /// Points `bundle` at the pod directory.
    pub fn link_bundle(&self, bundle: &Path) {
        let Some(dir) = &self.dir else { return };
        if let Err(e) = std::fs::write(bundle.join(POD_POINTER), dir.as_os_str().as_encoded_bytes())
        {
            tracing::warn!("cannot write {}/{POD_POINTER}: {e}", bundle.display());
        }
    }
}

/// What a `delete` found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// The pod's shim still runs (nothing removed).
    pub pod_alive: bool,
    /// Paths removed.
    pub removed: Vec<PathBuf>,
}

/// Removes what the pod of `bundle`'s container left, unless its shim
/// still runs. Idempotent: a second call finds nothing.
pub fn cleanup(bundle: &Path) -> Cleanup {
    let mut done = Cleanup::default();
    let rootfs = bundle.join("rootfs");
    let dir = std::fs::read(bundle.join(POD_POINTER))
        .ok()
        .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()));
    let record: Option<Leftovers> = dir
        .as_ref()
        .and_then(|d| std::fs::read(d.join(RECORD)).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(r) = &record {
        if shim_alive(r.shim_pid) {
            done.pod_alive = true;
            return done;
        }
    }
    if super::disk::unmount(&rootfs).is_ok() && rootfs.exists() {
        let _ = std::fs::remove_dir(&rootfs);
    }
    if let Some(r) = record {
        // Deepest first, never one that holds a task.
        for c in &r.cgroups {
            if let Err(e) = crate::sweep::remove_cgroup_tree(c, &mut done.removed) {
                tracing::debug!("{}", e.with_causes());
            }
        }
        // A shared ancestor still in use stays.
        let mut shared = r.shared_cgroups.clone();
        shared.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for c in shared {
            if std::fs::remove_dir(&c).is_ok() {
                done.removed.push(c);
            }
        }
        if let Some(socket) = r.socket {
            if std::fs::remove_file(&socket).is_ok() {
                done.removed.push(socket);
            }
        }
    }
    if let Some(dir) = dir {
        if std::fs::remove_dir_all(&dir).is_ok() {
            done.removed.push(dir);
        }
    }
    let _ = std::fs::remove_file(bundle.join(POD_POINTER));
    done
}

/// Whether `pid` is a running Corral shim.
fn shim_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'));
    alive
        && exe
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim-corral"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_pods_leftovers_are_removed_once_and_a_live_one_is_kept() {
        let base = std::env::temp_dir().join(format!("corral-leftovers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (bundle, pod, ns) = (base.join("bundle"), base.join("pod"), base.join("ns"));
        let (cg, other) = (ns.join("cg"), ns.join("other-pod"));
        for d in [&bundle, &pod, &cg.join("vcpu"), &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(pod.join("disk0.img"), b"x").unwrap();
        let socket = base.join("sock");
        std::fs::write(&socket, b"").unwrap();
        let mut l = Leftovers {
            shim_pid: 999_999_999,
            dir: Some(pod.clone()),
            cgroups: vec![cg.clone()],
            shared_cgroups: vec![ns.clone()],
            socket: Some(socket.clone()),
        };
        l.save();
        l.link_bundle(&bundle);
        let done = cleanup(&bundle);
        assert!(!done.pod_alive);
        assert!(
            !pod.exists() && !cg.exists() && !socket.exists(),
            "{done:?}"
        );
        // Another pod's cgroup keeps the shared ancestor.
        assert!(other.exists());
        assert_eq!(cleanup(&bundle), Cleanup::default());
        std::fs::remove_dir(&other).unwrap();
        // This test process is no shim: but a pid that is one is kept.
        std::fs::create_dir_all(&pod).unwrap();
        l.shim_pid = std::process::id();
        l.save();
        l.link_bundle(&bundle);
        assert!(!shim_alive(std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
    }
}
