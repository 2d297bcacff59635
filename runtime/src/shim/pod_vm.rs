//! The shim's pod: one VM per shim process, booted by the first container's
//! `Create` through [`crate::pod::Pod`] (create VM → place threads → start
//! → agent ready), with its disk slots, its vsock socket, its console log
//! and a record of what it leaves on the host ([`super::leftovers`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use corral_vmm::{
    ConsoleInput, ConsoleOutput, DiskCache, DiskConfig, NetConfig, ShutdownHandle, VmConfig,
    VmExit, VsockConfig, DEFAULT_CMDLINE,
};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::config::ShimConfig;
use super::disk::{self, ShimDiskError};
use super::leftovers::Leftovers;
use crate::agent::{AgentCallError, AgentClient};
use crate::cgroup::{sizing, CgroupConfig};
use crate::pod::{Pod, PodConfig, PodError};

/// The annotation asking for a tap (its name) in the pod's network
/// namespace, attached to the VM as virtio-net.
pub const TAP_ANNOTATION: &str = "io.corral/tap";

/// How long the guest may take to boot to its agent.
const AGENT_DEADLINE: Duration = Duration::from_secs(120);

/// Why the pod could not be booted or used.
#[derive(Debug, thiserror::Error)]
pub enum PodVmError {
    /// The pod's directory could not be made.
    #[error("cannot create the pod directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A disk could not be prepared.
    #[error(transparent)]
    Disk(#[from] ShimDiskError),
    /// The VM or its placement failed.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// The guest ended before its agent answered.
    #[error("the VM ended ({exit}) before its guest agent answered; its console is in {console}")]
    EndedEarly {
        /// Why it ended.
        exit: VmExit,
        /// The console log.
        console: PathBuf,
    },
    /// The agent refused or failed a call.
    #[error(transparent)]
    Agent(#[from] AgentCallError),
    /// Every disk slot holds a live container.
    #[error("the pod already runs {0} containers, one per disk slot: raise spare_disks in the shim configuration")]
    NoSlot(usize),
    /// A tap was asked for without a network namespace to put it in.
    #[error("annotation {TAP_ANNOTATION}={tap}: the spec names no network namespace path to create the tap in (CRI sets one; with ctr give --with-ns network:/var/run/netns/NAME)")]
    NoNetns {
        /// The tap asked for.
        tap: String,
    },
    /// A blocking step panicked or was cancelled.
    #[error("internal: {0}")]
    Join(String),
}

/// A running pod VM.
pub struct PodVm {
    /// `<state_dir>/<pod key>`: disks, vsock socket, console log.
    pub dir: PathBuf,
    /// The agent.
    pub agent: AgentClient,
    pod: Mutex<Option<Pod>>,
    shutdown: ShutdownHandle,
    /// The container id using each slot.
    slots: Mutex<Vec<Option<String>>>,
    disk_bytes: u64,
    /// Wall time of each boot phase, for the log and the closing figures.
    pub phases: Vec<(&'static str, Duration)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PodVm {
    /// Boots the pod for its first container `id`, whose rootfs tree is
    /// `tree`; the container gets slot 0.
    pub async fn boot(
        config: &ShimConfig,
        dir: PathBuf,
        id: &str,
        spec: &Spec,
        tree: &Path,
        leftovers: &mut Leftovers,
    ) -> Result<PodVm, PodVmError> {
        let t0 = Instant::now();
        let mut phases = Vec::new();
        std::fs::create_dir_all(&dir).map_err(|source| PodVmError::Dir {
            path: dir.clone(),
            source,
        })?;
        leftovers.dir = Some(dir.clone());
        leftovers.save();
        let disk_bytes = config.disk_size_mib << 20;
        let slot_count = config.spare_disks as usize;
        let slot_paths: Vec<PathBuf> = (0..slot_count)
            .map(|n| dir.join(format!("disk{n}.img")))
            .collect();
        for p in &slot_paths {
            disk::reset_slot(p, disk_bytes)?;
        }
        let (tree, first) = (tree.to_path_buf(), slot_paths[0].clone());
        blocking(move || disk::write_tree(&tree, &first)).await??;
        phases.push(("rootfs disk", t0.elapsed()));

        let resources: Vec<_> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .into_iter()
            .collect();
        let size = sizing::from_resources(
            &resources,
            sizing::SizingDefaults {
                vcpus: config.vcpus,
                memory_mib: config.memory_mib,
            },
        );
        let net = net_of(spec)?;
        let console = dir.join("console.log");
        let mut vm = VmConfig::new(&config.kernel);
        vm.seccomp = config.seccomp;
        vm.initrd = Some(config.initrd.clone().into());
        vm.vcpus = size.vcpus;
        vm.memory_mib = size.memory_mib;
        vm.cmdline = format!(
            "{DEFAULT_CMDLINE} quiet corral.agent {}",
            config.kernel_params
        )
        .trim()
        .to_string();
        vm.console.input = ConsoleInput::None;
        vm.console.output = if config.console_log {
            ConsoleOutput::File(console.clone())
        } else {
            ConsoleOutput::Discard
        };
        vm.disks = slot_paths
            .iter()
            .enumerate()
            .map(|(n, p)| DiskConfig {
                path: p.clone(),
                read_only: false,
                serial: Some(disk::slot_serial(n)),
                cache: DiskCache::Unsafe,
            })
            .collect();
        vm.nets.extend(net);
        let vsock = dir.join("vsock.sock");
        let _ = std::fs::remove_file(&vsock);
        vm.vsock = Some(VsockConfig {
            cid: 3,
            uds_path: vsock.clone(),
        });
        let cgroup = config.cgroup_mode.placement().map(|mode| {
            let (parent, sandbox_id) = cgroup_of(spec, id);
            let mut c = CgroupConfig::new(sandbox_id);
            c.parent = parent;
            c.mode = mode;
            c.cpu_quota = size.quota;
            c.cpu_shares = resources
                .iter()
                .filter_map(|r| r.cpu().as_ref().and_then(|c| c.shares()))
                .max();
            c.memory_limit = resources
                .iter()
                .any(|r| {
                    r.memory()
                        .as_ref()
                        .and_then(|m| m.limit())
                        .is_some_and(|l| l > 0)
                })
                .then(|| size.memory_bytes() + (64 << 20));
            c
        });
        let t1 = Instant::now();
        let pod = blocking(move || Pod::create(PodConfig { vm, cgroup })).await??;
        if let Some(sandbox) = pod.sandbox() {
            let paths = sandbox.paths();
            leftovers.cgroups = paths
                .hierarchies
                .iter()
                .flat_map(|h| {
                    [
                        h.domain.clone(),
                        Some(h.sandbox.clone()),
                        h.overhead.clone(),
                    ]
                })
                .flatten()
                .collect();
            let own = &leftovers.cgroups;
            leftovers.shared_cgroups = paths
                .hierarchies
                .iter()
                .flat_map(|h| h.created.iter())
                .filter(|d| !own.iter().any(|o| d.starts_with(o)))
                .cloned()
                .collect();
            leftovers.save();
        }
        phases.push(("VM create + placement", t1.elapsed()));
        phases.push(("  of which placement", pod.placement_time()));
        let t2 = Instant::now();
        pod.start();
        let shutdown = pod.shutdown_handle();
        // The Pod (not Sync) is not held across the wait: the agent is
        // reached through its socket path.
        let agent = match crate::pod::reach_agent(&vsock, &shutdown, AGENT_DEADLINE).await {
            Err(PodError::EndedEarly(exit)) => Err(PodVmError::EndedEarly {
                exit,
                console: console.clone(),
            }),
            other => other.map_err(PodVmError::from),
        };
        let agent = match agent {
            Ok(a) => a,
            Err(e) => {
                shutdown.request();
                let mut pod = pod;
                let _ = blocking(move || {
                    pod.wait();
                    pod.teardown()
                })
                .await;
                return Err(e);
            }
        };
        phases.push(("guest boot to agent", t2.elapsed()));
        agent.create_sandbox(id, "corral").await?;
        let mut slots = vec![None; slot_count];
        slots[0] = Some(id.to_string());
        let vm = PodVm {
            dir,
            agent,
            pod: Mutex::new(Some(pod)),
            shutdown,
            slots: Mutex::new(slots),
            disk_bytes,
            phases,
        };
        for (phase, d) in &vm.phases {
            tracing::info!("pod: {phase}: {} ms", d.as_millis());
        }
        Ok(vm)
    }

    /// Writes container `id`'s tree into a free slot; returns its serial.
    pub async fn fill_slot(&self, id: &str, tree: &Path) -> Result<String, PodVmError> {
        let n = {
            let mut slots = lock(&self.slots);
            let n = slots
                .iter()
                .position(Option::is_none)
                .ok_or(PodVmError::NoSlot(slots.len()))?;
            slots[n] = Some(id.to_string());
            n
        };
        let path = self.dir.join(format!("disk{n}.img"));
        let (tree, bytes) = (tree.to_path_buf(), self.disk_bytes);
        let written = blocking(move || {
            disk::reset_slot(&path, bytes)?;
            disk::write_tree(&tree, &path)
        })
        .await
        .and_then(|r| r.map_err(PodVmError::from));
        if let Err(e) = written {
            self.free_slot(id);
            return Err(e);
        }
        Ok(disk::slot_serial(n))
    }

    /// The serial of container `id`'s slot.
    pub fn serial_of(&self, id: &str) -> Option<String> {
        lock(&self.slots)
            .iter()
            .position(|s| s.as_deref() == Some(id))
            .map(disk::slot_serial)
    }

    /// Frees container `id`'s slot (its file is emptied when reused).
    pub fn free_slot(&self, id: &str) {
        for s in lock(&self.slots).iter_mut() {
            if s.as_deref() == Some(id) {
                *s = None;
            }
        }
    }

    /// Waits (on a thread of its own) for the VM to end.
    pub async fn ended(self: &Arc<Self>) -> VmExit {
        let handle = self.shutdown.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("shim-vm-wait".into())
            .spawn(move || {
                tracing::debug!(
                    "shim-vm-wait thread has TID {}",
                    corral_vmm::threads::gettid()
                );
                let exit = loop {
                    if let Some(exit) = handle.wait_ended(None) {
                        break exit;
                    }
                };
                let _ = tx.send(exit);
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the VM watcher thread: {e}");
            return VmExit::HostShutdown;
        }
        rx.await.unwrap_or(VmExit::HostShutdown)
    }

    /// Updates the vCPU cgroup's CPU quota (CPUs); the memory limit stays.
    pub fn update_cpu_quota(
        &self,
        cpu_quota: Option<f64>,
    ) -> Result<(), crate::cgroup::CgroupError> {
        match lock(&self.pod).as_mut().and_then(Pod::sandbox_mut) {
            Some(sandbox) => {
                let memory = sandbox.config.memory_limit;
                sandbox.update_limits(cpu_quota, memory)
            }
            None => Ok(()),
        }
    }

    /// Updates the vCPU cgroup's CPU weight (OCI shares).
    pub fn update_cpu_shares(&self, shares: Option<u64>) -> Result<(), crate::cgroup::CgroupError> {
        match lock(&self.pod).as_mut().and_then(Pod::sandbox_mut) {
            Some(sandbox) => sandbox.update_cpu_shares(shares),
            None => Ok(()),
        }
    }

    /// Host-side usage of the sandbox's cgroups.
    pub fn host_stats(&self) -> Option<crate::cgroup::CgroupStats> {
        lock(&self.pod).as_ref()?.sandbox()?.stats().ok()
    }

    /// Powers the guest off (through the agent, else by force) and tears
    /// the VM down: threads joined, cgroups removed.
    pub async fn stop(&self) {
        let started = Instant::now();
        // A VM that already ended has no agent left to ask.
        if self.shutdown.wait_ended(Some(Duration::ZERO)).is_none() {
            let polite =
                tokio::time::timeout(Duration::from_secs(5), self.agent.destroy_sandbox(true))
                    .await;
            if !matches!(polite, Ok(Ok(()))) {
                tracing::warn!("pod: the agent did not power the guest off; stopping the VM");
                self.shutdown.request();
            }
        }
        let pod = lock(&self.pod).take();
        if let Some(mut pod) = pod {
            let shutdown = self.shutdown.clone();
            let torn = blocking(move || {
                if pod.wait_timeout(Duration::from_secs(5)).is_none() {
                    shutdown.request();
                    pod.wait();
                }
                pod.teardown()
            })
            .await;
            tracing::info!("pod: VM torn down in {} ms", started.elapsed().as_millis());
            match torn {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("pod: cgroup teardown: {e}"),
                Err(e) => tracing::warn!("pod: teardown: {e}"),
            }
        }
    }
}

/// The tap the spec's annotations ask for, in the spec's network
/// namespace (non-persistent: it goes away with the VM, or with a killed
/// shim).
fn net_of(spec: &Spec) -> Result<Option<NetConfig>, PodVmError> {
    let Some(tap) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(TAP_ANNOTATION))
        .filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    let netns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| {
            ns.iter()
                .find(|n| n.typ() == LinuxNamespaceType::Network)
                .and_then(|n| n.path().clone())
        })
        .ok_or_else(|| PodVmError::NoNetns { tap: tap.clone() })?;
    Ok(Some(NetConfig {
        tap: tap.clone(),
        mac: None,
        netns: Some(netns),
    }))
}

/// The sandbox's cgroup from the first container's `linux.cgroupsPath`:
/// cgroupfs `/a/b/id` → parent `/a/b`, sandbox `id`; systemd
/// `slice:prefix:name` → that scope, sandbox `vm` in it; none → beneath
/// the shim's own cgroup, named after the container.
fn cgroup_of(spec: &Spec, id: &str) -> (String, String) {
    let path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if path.is_empty() {
        return (String::new(), format!("corral-{id}"));
    }
    if !path.starts_with('/') && path.split(':').count() == 3 {
        return (path, "vm".into());
    }
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some(("", name)) if !name.is_empty() => ("/".into(), name.to_string()),
        Some((parent, name)) if !name.is_empty() => (parent.to_string(), name.to_string()),
        _ => (String::new(), trimmed.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PodVmError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PodVmError::Join(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxBuilder;

    fn spec_with(path: &str) -> Spec {
        let mut spec = Spec::default();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .cgroups_path(PathBuf::from(path))
                .build()
                .unwrap(),
        ));
        spec
    }

    #[test]
    fn a_tap_needs_a_network_namespace_path() {
        use std::collections::HashMap;
        let mut spec = Spec::default();
        assert!(net_of(&spec).unwrap().is_none());
        spec.set_annotations(Some(HashMap::from([(
            TAP_ANNOTATION.to_string(),
            "tap0".to_string(),
        )])));
        // oci-spec's default has a network namespace without a path.
        let err = net_of(&spec).unwrap_err();
        assert!(err.to_string().contains("io.corral/tap=tap0"), "{err}");
        let mut linux = spec.linux().clone().unwrap();
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
        namespaces.push(
            oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(PathBuf::from("/var/run/netns/x"))
                .build()
                .unwrap(),
        );
        linux.set_namespaces(Some(namespaces));
        spec.set_linux(Some(linux));
        let net = net_of(&spec).unwrap().unwrap();
        assert_eq!(net.tap, "tap0");
        assert_eq!(net.netns, Some(PathBuf::from("/var/run/netns/x")));
    }

    #[test]
    fn cgroups_path_forms_give_parent_and_sandbox() {
        assert_eq!(
            cgroup_of(&spec_with("/default/c1"), "c1"),
            ("/default".into(), "c1".into())
        );
        assert_eq!(
            cgroup_of(&spec_with("kubepods.slice:cri-containerd:abc"), "c1"),
            ("kubepods.slice:cri-containerd:abc".into(), "vm".into())
        );
        assert_eq!(
            cgroup_of(&spec_with("/c1"), "c1"),
            ("/".into(), "c1".into())
        );
        assert_eq!(cgroup_of(&Spec::default(), "c1").1, "corral-c1".to_string());
    }
}
