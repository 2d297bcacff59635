//! One pod's lifecycle, shared by the front ends (`corral run` today, the
//! containerd shim next): create the VM (every thread exists, no guest
//! instruction has run) → place its threads in the sandbox's cgroups
//! (vCPUs constrained, the rest in the unconstrained sibling) → start →
//! reach the guest agent → wait → tear down (VM threads joined, usage
//! logged, cgroups removed). Front ends differ only in where the inputs
//! come from and where stdio goes.

mod spec;

pub use spec::{container_spec, ContainerSpecError};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_vmm::{ShutdownHandle, VmConfig, VmExit, Vmm, VmmError};
use tracing::info;

use crate::agent::{AgentCallError, AgentClient, AGENT_VSOCK_PORT};
use crate::cgroup::{CgroupConfig, CgroupError, Sandbox};

/// What a pod is made of.
#[derive(Debug)]
pub struct PodConfig {
    /// The VM.
    pub vm: VmConfig,
    /// The sandbox's cgroups; `None`: the process's own, no placement.
    pub cgroup: Option<CgroupConfig>,
}

/// Why a pod could not be made or reached.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The VM could not be created.
    #[error("cannot start the VM")]
    Vm(#[source] VmmError),
    /// The sandbox's cgroups could not be created (nothing was left).
    #[error("cannot create the sandbox cgroups")]
    Cgroups(#[source] CgroupError),
    /// The VM's threads could not be placed.
    #[error("cannot place the VM's threads in their cgroups")]
    Place(#[source] CgroupError),
    /// The guest agent is reached over vsock, and the VM has none.
    #[error("the VM has no vsock device, so the guest agent cannot be reached; give it one")]
    NoVsock,
    /// The guest agent did not answer.
    #[error(transparent)]
    Agent(#[from] AgentCallError),
    /// The VM ended before its guest agent answered.
    #[error("the VM ended ({0}) before its guest agent answered")]
    EndedEarly(VmExit),
}

/// Connects to the guest agent through the hybrid vsock socket `vsock`,
/// retrying (the guest may still be booting) until `deadline`, and gives up
/// at once when the VM ends first (an initramfs without the agent powers
/// off). Takes the socket and the VM's handle rather than the [`Pod`], so
/// an async caller need not hold the pod across the wait.
pub async fn reach_agent(
    vsock: &Path,
    vm: &ShutdownHandle,
    deadline: Duration,
) -> Result<AgentClient, PodError> {
    let started = Instant::now();
    loop {
        match AgentClient::connect(vsock, AGENT_VSOCK_PORT, Duration::from_secs(1)).await {
            Ok(agent) => return Ok(agent),
            Err(e) => {
                if let Some(exit) = vm.wait_ended(Some(Duration::ZERO)) {
                    return Err(PodError::EndedEarly(exit));
                }
                if matches!(e, AgentCallError::Version { .. }) || started.elapsed() > deadline {
                    return Err(e.into());
                }
            }
        }
    }
}

/// A running (or created) pod.
pub struct Pod {
    vmm: Vmm,
    sandbox: Option<Sandbox>,
    vsock_socket: Option<PathBuf>,
}

impl Pod {
    /// Creates the VM and places its threads; the guest does not run
    /// until [`Pod::start`].
    pub fn create(config: PodConfig) -> Result<Pod, PodError> {
        let vsock_socket = config.vm.vsock.as_ref().map(|v| v.uds_path.clone());
        let disks: Vec<PathBuf> = config.vm.disks.iter().map(|d| d.path.clone()).collect();
        let vmm = Vmm::create(config.vm).map_err(PodError::Vm)?;
        let sandbox = match config.cgroup {
            Some(mut cgroup) => {
                cgroup.disks = disks;
                Some(place(&cgroup, &vmm)?)
            }
            None => None,
        };
        Ok(Pod {
            vmm,
            sandbox,
            vsock_socket,
        })
    }

    /// Lets the guest run.
    pub fn start(&self) {
        self.vmm.start();
    }

    /// Ends the VM from another thread (or a signal handler thread).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.vmm.shutdown_handle()
    }

    /// Blocks until the VM ends.
    pub fn wait(&mut self) -> VmExit {
        self.vmm.wait()
    }

    /// Like [`Pod::wait`], giving up after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<VmExit> {
        self.vmm.wait_timeout(Some(timeout))
    }

    /// The sandbox's cgroups, when placed.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// The sandbox's cgroups, to change limits.
    pub fn sandbox_mut(&mut self) -> Option<&mut Sandbox> {
        self.sandbox.as_mut()
    }

    /// The VM's hybrid vsock socket, when it has a vsock device.
    pub fn vsock_socket(&self) -> Option<&Path> {
        self.vsock_socket.as_deref()
    }

    /// Connects to the guest agent through the VM's vsock device,
    /// retrying until `deadline` (the guest may still be booting).
    pub async fn agent(&self, deadline: Duration) -> Result<AgentClient, PodError> {
        let socket = self.vsock_socket.as_ref().ok_or(PodError::NoVsock)?;
        Ok(AgentClient::connect(socket, AGENT_VSOCK_PORT, deadline).await?)
    }

    /// Joins the VM's threads, logs the CPU time of vCPUs and of the rest,
    /// and the sandbox's usage, then removes its cgroups.
    pub fn teardown(self) -> Result<(), CgroupError> {
        let Pod { vmm, sandbox, .. } = self;
        let vcpu: Duration = vmm.vcpu_cpu_times().iter().sum();
        drop(vmm);
        let process = process_cpu_time();
        info!(
            "cpu: vCPU threads {} ms, every other thread {} ms (process total {} ms)",
            vcpu.as_millis(),
            process.saturating_sub(vcpu).as_millis(),
            process.as_millis()
        );
        let Some(mut sandbox) = sandbox else {
            return Ok(());
        };
        match sandbox.stats() {
            Ok(stats) => info!("cgroups: stats {stats:?}"),
            Err(e) => tracing::warn!("cgroups: cannot read stats: {e}"),
        }
        sandbox.teardown()
    }
}

/// Creates the sandbox's cgroups and places the VM's threads.
fn place(config: &CgroupConfig, vmm: &Vmm) -> Result<Sandbox, PodError> {
    let mut sandbox = Sandbox::create(config).map_err(PodError::Cgroups)?;
    let report = sandbox
        .place(&vmm.vcpu_tids(), &vmm.other_tids())
        .map_err(PodError::Place)?;
    let placed = Instant::now();
    for (v, spawned) in report.vcpus.iter().zip(vmm.vcpu_spawned_at()) {
        info!(
            "cgroups: vcpu{} (TID {}) placed {} µs after its thread was spawned (the move itself took {} µs)",
            v.index,
            v.tid,
            placed.duration_since(spawned).as_micros(),
            v.latency_us
        );
    }
    for warning in &report.warnings {
        tracing::warn!("cgroups: {warning}");
    }
    info!(
        "cgroups: {:?} placement, {:?} driver; {:?}",
        config.mode,
        sandbox.driver().kind,
        sandbox.paths()
    );
    Ok(sandbox)
}

/// CPU time of the whole process so far (joined threads included).
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed rusage we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
