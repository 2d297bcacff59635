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

use corral_vmm::{
    PlacementHookError, ShutdownHandle, SpawnPlacement, VmConfig, VmExit, Vmm, VmmError,
};
use tracing::info;

use crate::agent::{AgentCallError, AgentClient, AGENT_VSOCK_PORT};
use crate::cgroup::{CgroupConfig, CgroupError, PlacementReport, Sandbox, Spot};

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
    /// Time spent placing on the creating thread: its own moves around
    /// the spawning, and the check (and TID moves) of `Sandbox::place`.
    placement: Duration,
    /// What `Sandbox::place` found and did.
    report: Option<PlacementReport>,
}

impl Pod {
    /// Creates the VM and places its threads; the guest does not run
    /// until [`Pod::start`].
    ///
    /// With cgroups, the sandbox's cgroups are made on a thread of their
    /// own (`cgroup-setup`) while this one builds the VM, and the VM's
    /// threads are born in place: before the first of them this thread
    /// moves itself to the overhead cgroup, around the vCPU threads'
    /// spawning to the vCPU cgroup and back (see [`crate::cgroup::Spot`]).
    /// No TID is written for them, so the kernel never waits for an RCU
    /// grace period on this path. [`Sandbox::place`] then checks every
    /// thread, moves any that existed before (a tokio pool), and pins
    /// vCPUs.
    pub fn create(config: PodConfig) -> Result<Pod, PodError> {
        let vsock_socket = config.vm.vsock.as_ref().map(|v| v.uds_path.clone());
        let disks: Vec<PathBuf> = config.vm.disks.iter().map(|d| d.path.clone()).collect();
        let Some(mut cgroup) = config.cgroup else {
            let vmm = Vmm::create(config.vm).map_err(PodError::Vm)?;
            return Ok(Pod {
                vmm,
                sandbox: None,
                vsock_socket,
                placement: Duration::ZERO,
                report: None,
            });
        };
        cgroup.disks = disks;
        let mut hook = SpawnHook::start(cgroup.clone()).map_err(PodError::Cgroups)?;
        let created = Vmm::create_placed(config.vm, &mut hook);
        // On error the sandbox is dropped: that takes this thread home and
        // removes its cgroups.
        let hook_time = hook.spent;
        let made = hook.finish();
        let (vmm, mut sandbox) = match (created, made) {
            (Ok(vmm), Ok(sandbox)) => (vmm, sandbox),
            // The VM's own problem comes first, as when it was built alone.
            (Err(e), _) if !matches!(e, VmmError::Placement(_)) => return Err(PodError::Vm(e)),
            (_, Err(e)) => return Err(PodError::Cgroups(e)),
            (Err(e), Ok(_)) => return Err(PodError::Vm(e)),
        };
        let checked = Instant::now();
        let report = place(&mut sandbox, &cgroup, &vmm)?;
        let placement = hook_time + checked.elapsed();
        Ok(Pod {
            vmm,
            sandbox: Some(sandbox),
            vsock_socket,
            placement,
            report: Some(report),
        })
    }

    /// Time the creating thread spent placing threads in cgroups (zero
    /// without cgroups): its own moves around the spawning (waiting for
    /// the cgroups to be made included) and `Sandbox::place`.
    pub fn placement_time(&self) -> Duration {
        self.placement
    }

    /// What the placement check found and did (`None` without cgroups):
    /// with threads born in place, every vCPU is `inherited` and no TID
    /// was written.
    pub fn placement_report(&self) -> Option<&PlacementReport> {
        self.report.as_ref()
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

    /// Joins the VM's threads, releases its memory and KVM fds, logs the
    /// CPU time of vCPUs and of the rest, and the sandbox's usage, then
    /// removes its cgroups.
    ///
    /// The VM goes first, whole: KVM's NX huge-page recovery worker, a
    /// thread of this process in the overhead cgroup, ends only when the VM
    /// fd closes, and a cgroup teardown racing with it would move it by TID
    /// (an RCU grace period: a 30 ms exit, seen here). Then this thread goes
    /// home by itself and the empty cgroups are removed: no TID is written
    /// when the front end's other threads went home first (`corral run`'s
    /// signal thread does).
    pub fn teardown(self) -> Result<(), CgroupError> {
        let Pod { vmm, sandbox, .. } = self;
        let vcpu: Duration = vmm.vcpu_cpu_times().iter().sum();
        let started = Instant::now();
        drop(vmm);
        // Mostly the kernel's SRCU grace period for the memory slot's
        // removal: 1.5–10 ms on the hosts here.
        tracing::debug!(
            "teardown: VM released in {} µs",
            started.elapsed().as_micros()
        );
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
        if tracing::enabled!(tracing::Level::INFO) {
            match sandbox.stats() {
                Ok(stats) => info!("cgroups: stats {stats:?}"),
                Err(e) => tracing::warn!("cgroups: cannot read stats: {e}"),
            }
        }
        let started = Instant::now();
        let result = sandbox.teardown();
        tracing::debug!(
            "teardown: cgroups removed in {} µs",
            started.elapsed().as_micros()
        );
        result
    }
}

/// Makes the sandbox's cgroups on their own thread while the VM is built,
/// then moves the creating thread around the spawning of the VM's threads.
struct SpawnHook {
    setup: Option<std::thread::JoinHandle<Result<Sandbox, CgroupError>>>,
    made: Option<Result<Sandbox, CgroupError>>,
    /// Time this thread spent in the hooks (waiting for the set-up thread
    /// included).
    spent: Duration,
}

impl SpawnHook {
    fn start(config: CgroupConfig) -> Result<Self, CgroupError> {
        let setup = std::thread::Builder::new()
            .name("cgroup-setup".into())
            .spawn(move || {
                let tid = corral_vmm::threads::gettid();
                tracing::debug!("cgroup-setup thread has TID {tid}");
                Sandbox::create(&config)
            })
            .map_err(CgroupError::SetupThread)?;
        Ok(SpawnHook {
            setup: Some(setup),
            made: None,
            spent: Duration::ZERO,
        })
    }

    /// Waits for the set-up thread (once).
    fn join(&mut self) {
        if let Some(setup) = self.setup.take() {
            self.made = Some(setup.join().unwrap_or(Err(CgroupError::SetupPanicked)));
        }
    }

    /// The sandbox, once made.
    fn sandbox(&mut self) -> Result<&Sandbox, PlacementHookError> {
        self.join();
        match &self.made {
            Some(Ok(sandbox)) => Ok(sandbox),
            Some(Err(e)) => Err(e.to_string().into()),
            None => Err(CgroupError::SetupPanicked.to_string().into()),
        }
    }

    /// The sandbox or why it could not be made.
    fn finish(mut self) -> Result<Sandbox, CgroupError> {
        self.join();
        self.made.take().unwrap_or(Err(CgroupError::SetupPanicked))
    }
}

impl SpawnHook {
    /// Moves this thread to `spot`, timed.
    fn enter(&mut self, spot: Spot) -> Result<(), PlacementHookError> {
        let t0 = Instant::now();
        let result = self.sandbox().and_then(|s| Ok(s.enter(spot)?));
        self.spent += t0.elapsed();
        result
    }
}

impl SpawnPlacement for SpawnHook {
    fn before_threads(&mut self) -> Result<(), PlacementHookError> {
        self.enter(Spot::Overhead)
    }
    fn before_vcpus(&mut self) -> Result<(), PlacementHookError> {
        self.enter(Spot::Vcpu)
    }
    fn after_vcpus(&mut self) -> Result<(), PlacementHookError> {
        self.enter(Spot::Overhead)
    }
}

/// Checks (and completes) the placement of the VM's threads, pins vCPUs.
fn place(
    sandbox: &mut Sandbox,
    config: &CgroupConfig,
    vmm: &Vmm,
) -> Result<PlacementReport, PodError> {
    let report = sandbox
        .place(&vmm.vcpu_tids(), &vmm.other_tids())
        .map_err(PodError::Place)?;
    let placed = Instant::now();
    for (v, spawned) in report.vcpus.iter().zip(vmm.vcpu_spawned_at()) {
        if v.inherited {
            info!(
                "cgroups: vcpu{} (TID {}) was spawned into its cgroups; checked {} µs after",
                v.index,
                v.tid,
                placed.duration_since(spawned).as_micros(),
            );
            continue;
        }
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
    Ok(report)
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
