//! The VMM's public face: build a VM from a [`VmConfig`] in one linear
//! sequence ([`Vmm::create`]), let it run ([`Vmm::start`]), wait for its end
//! ([`Vmm::wait`]) or stop it ([`ShutdownHandle`], or dropping the `Vmm`).
//!
//! Between `create` and `start` every thread exists, named, with its TID
//! known ([`Vmm::vcpu_tids`], [`Vmm::other_tids`]), and no guest code has
//! run: that is the window in which the runtime places vCPU threads into
//! the sandbox's constrained cgroup.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_devices::boot_timer::BootTime;
use thiserror::Error;
use tracing::{debug, error, info};
use vmm_sys_util::signal::Killable;

use crate::config::{VmConfig, VmConfigError};
use crate::console::{open_output, ConsoleInput, ConsoleInputHandler, ConsoleOutput};
use crate::exit::{ExitState, ShutdownHandle, VmExit};
use crate::io_thread::{IoThread, Subscriber};
use crate::loader::{load_cmdline, load_initrd, load_kernel, BootProtocol, KernelLoadError};
use crate::platform::{Platform, PlatformError};
use crate::seccomp::{SeccompPolicy, ThreadFilter, ThreadKind};
use crate::threads::{NamedThread, Tid};
use crate::vcpu::run::{vcpu_thread, VcpuContext};
use crate::vcpu::{create_vcpus, kick, HostCpu, StartGate, Vcpu, VcpuError};
use crate::virtio_devices::{self, AttachedDevices, DeviceError, Slot, VirtioDeviceInfo};
use crate::vm::{Vm, VmError};
use crate::x86_64::acpi::{setup_acpi, AcpiError};
use crate::x86_64::boot_params::{write_pvh, write_zero_page, BootParamsError};
use crate::x86_64::mptable::{setup_mptable, MpTableError, MAX_MPTABLE_VCPUS};
use kvm_ioctls::Kvm;

/// A VM could not be built.
#[derive(Debug, Error)]
pub enum VmmError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] VmConfigError),
    /// KVM could not give us a VM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The kernel, initrd or command line could not be loaded.
    #[error(transparent)]
    Kernel(#[from] KernelLoadError),
    /// Boot parameters could not be written.
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    /// The MP table could not be written.
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    /// The ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// Platform devices could not be set up.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// vCPUs could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Virtio devices could not be attached.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// The console output cannot be opened.
    #[error("cannot open console output {path}")]
    ConsoleOutput {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The console input cannot be set up.
    #[error("cannot attach console input")]
    ConsoleInput(#[source] io::Error),
    /// The runtime's placement hook failed.
    #[error("cannot place the VM's threads while spawning them")]
    Placement(#[source] PlacementHookError),
    /// A thread or eventfd could not be created.
    #[error("cannot start the VMM's {0} thread")]
    Thread(&'static str, #[source] io::Error),
}

/// Where the creating thread stands while [`Vmm::create_placed`] spawns
/// the vCPU threads. Threads inherit their creator's cgroups at `clone`, so
/// a runtime that moves the creating thread itself (cheap: see
/// `corral_runtime::cgroup::Spot`) places every vCPU thread without
/// writing its TID (which makes the kernel wait for an RCU grace period).
/// The other VMM threads (and KVM's own worker thread of the VM) are
/// spawned wherever the creating thread stands after
/// [`SpawnPlacement::before_threads`].
pub trait SpawnPlacement {
    /// Called once the VM, its memory and boot tables exist and before the
    /// first thread is spawned (a device worker): the runtime can make its
    /// cgroups meanwhile, on another thread, and move the creating thread
    /// to where the VMM's threads go.
    fn before_threads(&mut self) -> Result<(), PlacementHookError>;
    /// Called right before the first vCPU thread is spawned.
    fn before_vcpus(&mut self) -> Result<(), PlacementHookError>;
    /// Called right after the last vCPU thread is spawned (and on the way
    /// out when spawning failed).
    fn after_vcpus(&mut self) -> Result<(), PlacementHookError>;
}

/// The error of a [`SpawnPlacement`] hook: the runtime's own error, boxed.
pub type PlacementHookError = Box<dyn std::error::Error + Send + Sync>;

/// No placement: threads stay where the creating thread is.
struct Unplaced;

impl SpawnPlacement for Unplaced {
    fn before_threads(&mut self) -> Result<(), PlacementHookError> {
        Ok(())
    }
    fn before_vcpus(&mut self) -> Result<(), PlacementHookError> {
        Ok(())
    }
    fn after_vcpus(&mut self) -> Result<(), PlacementHookError> {
        Ok(())
    }
}

/// The vCPU threads; stopping (or dropping) them releases or kicks each one
/// out of the guest and joins it.
struct VcpuThreads {
    gate: Arc<StartGate>,
    threads: Vec<NamedThread>,
    /// CPU time each thread recorded when it ended (ns).
    cpu_time_ns: Vec<Arc<AtomicU64>>,
}

impl VcpuThreads {
    fn stop(&mut self) {
        self.gate.abandon();
        for (index, thread) in self.threads.iter_mut().enumerate() {
            if let Some(handle) = thread.handle() {
                // ESRCH (already finished) is fine; anything else we cannot fix.
                let _ = handle.kill(kick::kick_signal());
            }
            if !thread.join_within(crate::io_thread::STOP_TIMEOUT) {
                error!("vcpu{index} thread panicked or did not stop");
            }
        }
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A VM and the threads that run it.
///
/// Field order is teardown order: vCPU threads, then the I/O thread, then
/// the devices' last references, then guest memory and the KVM fds.
pub struct Vmm {
    vcpus: VcpuThreads,
    io: IoThread,
    devices: AttachedDevices,
    exit: Arc<ExitState>,
    boot_time: BootTime,
    created: Instant,
    vm: Vm,
}

impl Vmm {
    /// Builds the VM described by `config`: memory, kernel, boot parameters,
    /// devices, vCPUs and their threads, which wait at the start gate.
    pub fn create(config: VmConfig) -> Result<Self, VmmError> {
        Self::create_placed(config, &mut Unplaced)
    }

    /// [`Vmm::create`], calling `placement` around the spawning of the
    /// vCPU threads.
    pub fn create_placed(
        config: VmConfig,
        placement: &mut dyn SpawnPlacement,
    ) -> Result<Self, VmmError> {
        config.validate()?;
        let created = Instant::now();
        let mem_size = config.memory_bytes();
        // Per-step timestamps at debug level (`--log corral_vmm=debug`):
        // where creation's time goes.
        let step = |what: &str| debug!("create: {what} at +{} µs", created.elapsed().as_micros());
        // KVM's CPUID and MSR lists are asked for meanwhile (see `HostCpu`).
        // The thread ends before any of the VM's threads exists.
        let host = std::thread::Builder::new()
            .name("kvm-query".into())
            .spawn(|| {
                debug!("kvm-query thread has TID {}", crate::threads::gettid());
                let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
                HostCpu::query(&kvm).map_err(VmmError::Vcpu)
            })
            .map_err(|e| VmmError::Thread("kvm-query", e))?;
        let vm = Vm::new(mem_size)?;
        step("VM, memory slot and irqchip");
        check_vcpu_limit(config.vcpus, vm.max_vcpus())?;

        let kernel = load_kernel(vm.memory(), mem_size, &config.kernel)?;
        let initrd = config
            .initrd
            .as_ref()
            .map(|file| load_initrd(vm.memory(), &kernel, file))
            .transpose()?;
        step("kernel and initrd loaded");
        let slots = virtio_devices::slots(&config)?;
        let cmdline = guest_cmdline(&config.cmdline, &slots);
        let cmdline_len = load_cmdline(vm.memory(), &kernel, &cmdline)?;
        setup_mptable(vm.memory(), config.vcpus)?;
        let rsdp = setup_acpi(vm.memory(), config.vcpus, &slots)?;
        match kernel.protocol {
            BootProtocol::Pvh { .. } => write_pvh(vm.memory(), mem_size, initrd, rsdp)?,
            BootProtocol::Linux64 { header, .. } => {
                write_zero_page(vm.memory(), mem_size, header, cmdline_len, initrd, rsdp)?
            }
        }

        step("boot tables written");
        let exit = Arc::new(ExitState::new().map_err(|e| VmmError::Thread("exit event", e))?);
        let boot_time = BootTime::default();
        let (console_out, console_flusher) =
            open_output(&config.console.output).map_err(|source| {
                let path = match &config.console.output {
                    ConsoleOutput::File(path) => path.clone(),
                    _ => PathBuf::from("(stdout)"),
                };
                VmmError::ConsoleOutput { path, source }
            })?;
        let mut platform =
            Platform::new(&vm, console_out, exit.clone(), created, boot_time.clone())?;
        step("platform devices");
        let host = host
            .join()
            .map_err(|_| VmmError::Thread("kvm-query", io::Error::other("it panicked")))??;
        let mut vcpus = create_vcpus(&vm, &host, config.vcpus, &kernel.protocol)?;
        step("vCPUs created and configured");
        placement.before_threads().map_err(VmmError::Placement)?;
        step("placement: before the first thread");
        // KVM's first-KVM_RUN set-up starts its NX huge-page recovery
        // worker, a thread of this process: after the placement hook, so
        // that it is born where the VMM's threads go (`Vcpu::first_run_setup`).
        if let Some(boot_vcpu) = vcpus.first_mut() {
            boot_vcpu.first_run_setup();
        }
        let mut devices = virtio_devices::attach(&vm, &mut platform.mmio, &config, &slots, &exit)?;
        step("virtio devices and their workers");

        let mut subscribers: Vec<Subscriber> = console_flusher.into_iter().collect();
        if config.console.input == ConsoleInput::Stdin {
            let wants_input = platform
                .serial_wants_input
                .try_clone()
                .map_err(VmmError::ConsoleInput)?;
            subscribers.push(Box::new(
                ConsoleInputHandler::stdin(platform.serial.clone(), wants_input)
                    .map_err(VmmError::ConsoleInput)?,
            ));
        }
        let io_filter = ThreadFilter::for_vm(ThreadKind::VmmIo, 0, config.seccomp, &exit);
        let mut io = IoThread::spawn("vmm-io", subscribers, exit.clone(), Some(io_filter))
            .map_err(|e| VmmError::Thread("vmm-io", e))?;

        let gate = Arc::new(StartGate::new());
        let (pio, mmio) = (Arc::new(platform.pio), Arc::new(platform.mmio));
        // Each thread is owned by `threads` from the moment it exists: on any
        // error below, dropping it (and `io`) releases and joins them all.
        let mut threads = VcpuThreads {
            gate: gate.clone(),
            threads: Vec::with_capacity(vcpus.len()),
            cpu_time_ns: Vec::with_capacity(vcpus.len()),
        };
        step("vmm-io spawned");
        placement.before_vcpus().map_err(VmmError::Placement)?;
        let context = || VcpuContext {
            pio: pio.clone(),
            mmio: mmio.clone(),
            exit: exit.clone(),
            gate: gate.clone(),
            cpu_time_ns: Arc::new(AtomicU64::new(0)),
        };
        let spawned = spawn_vcpu_threads(vcpus, &mut threads, config.seccomp, &exit, context);
        placement.after_vcpus().map_err(VmmError::Placement)?;
        spawned?;
        step("vCPU threads spawned and placed");
        for thread in &mut threads.threads {
            thread.tid().map_err(|e| VmmError::Thread("vCPU", e))?;
        }
        io.tid().map_err(|e| VmmError::Thread("vmm-io", e))?;
        for worker in &mut devices.workers {
            worker
                .tid()
                .map_err(|e| VmmError::Thread("device worker", e))?;
        }
        info!(
            "VM created in {} µs: {} vCPU(s), {} MiB, {:?} boot",
            created.elapsed().as_micros(),
            config.vcpus,
            config.memory_mib,
            kernel.protocol
        );
        Ok(Self {
            vcpus: threads,
            io,
            devices,
            exit,
            boot_time,
            created,
            vm,
        })
    }

    /// Builds the VM and starts it.
    pub fn boot(config: VmConfig) -> Result<Self, VmmError> {
        let vmm = Self::create(config)?;
        vmm.start();
        Ok(vmm)
    }

    /// Lets the vCPUs enter the guest.
    pub fn start(&self) {
        self.vcpus.gate.open();
    }

    /// TIDs of the vCPU threads, by vCPU index.
    pub fn vcpu_tids(&self) -> Vec<Tid> {
        // Every TID was collected by `create`.
        self.vcpus
            .threads
            .iter()
            .filter_map(NamedThread::known_tid)
            .collect()
    }

    /// CPU time each vCPU thread used, by vCPU index, as recorded when the
    /// thread ended (zero while it runs).
    pub fn vcpu_cpu_times(&self) -> Vec<Duration> {
        self.vcpus
            .cpu_time_ns
            .iter()
            .map(|ns| Duration::from_nanos(ns.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }

    /// When each vCPU thread was spawned, by vCPU index (for measuring how
    /// soon after spawning it was placed).
    pub fn vcpu_spawned_at(&self) -> Vec<Instant> {
        self.vcpus
            .threads
            .iter()
            .map(NamedThread::spawned_at)
            .collect()
    }

    /// TIDs of every other thread of the VMM (device I/O and event loops).
    pub fn other_tids(&self) -> Vec<Tid> {
        std::iter::once(&self.io)
            .chain(&self.devices.workers)
            .filter_map(IoThread::known_tid)
            .collect()
    }

    /// The attached virtio devices and their status as the guest left it.
    pub fn virtio_devices(&self) -> Vec<VirtioDeviceInfo> {
        self.devices.info()
    }

    /// How long after VM creation the guest signalled the boot timer.
    pub fn boot_time(&self) -> Option<Duration> {
        self.boot_time.get().copied()
    }

    /// When the VM's creation began (the boot timer's reference).
    pub fn created_at(&self) -> Instant {
        self.created
    }

    /// A handle with which any thread can stop the VM.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.exit.clone())
    }

    /// Waits for the VM to end, then stops every vCPU.
    pub fn wait(&mut self) -> VmExit {
        loop {
            if let Some(exit) = self.wait_timeout(None) {
                return exit;
            }
        }
    }

    /// Like [`Vmm::wait`], giving up after `timeout` (`None`: no limit).
    pub fn wait_timeout(&mut self, timeout: Option<Duration>) -> Option<VmExit> {
        let exit = self.exit.wait(timeout)?;
        self.vcpus.stop();
        info!("VM ended: {exit}");
        Some(exit)
    }

    /// Guest memory size in bytes.
    pub fn memory_size(&self) -> u64 {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        self.vm.memory().iter().map(GuestMemoryRegion::len).sum()
    }
}

impl Vmm {
    /// Stops and joins every thread of the VM (vCPUs, `vmm-io`, device
    /// workers), leaving guest memory and the KVM fds to the drop (KVM's
    /// own worker thread of the VM ends only then). Idempotent; the drop
    /// does it too.
    pub fn stop_threads(&mut self) {
        self.exit.record(VmExit::HostShutdown);
        self.vcpus.stop();
        self.io.stop();
        for worker in &mut self.devices.workers {
            worker.stop();
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Spawns one thread per vCPU into `threads`, each with its filter.
fn spawn_vcpu_threads(
    vcpus: Vec<Vcpu>,
    threads: &mut VcpuThreads,
    seccomp: SeccompPolicy,
    exit: &Arc<ExitState>,
    context: impl Fn() -> VcpuContext,
) -> Result<(), VmmError> {
    for vcpu in vcpus {
        let ctx = context();
        threads.cpu_time_ns.push(ctx.cpu_time_ns.clone());
        let name = format!("vcpu{}", vcpu.index);
        let filter = ThreadFilter::for_vm(ThreadKind::Vcpu, vcpu.index, seccomp, exit);
        let thread = NamedThread::spawn(name, Some(filter), move || vcpu_thread(vcpu, ctx))
            .map_err(|e| VmmError::Thread("vCPU", e))?;
        threads.threads.push(thread);
    }
    Ok(())
}

/// The command line the guest gets: the configured one, then an entry per
/// virtio device.
fn guest_cmdline(configured: &str, slots: &[Slot]) -> String {
    let mut cmdline = configured.trim_end().to_string();
    for slot in slots {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&virtio_devices::cmdline_entry(*slot));
    }
    cmdline
}

fn check_vcpu_limit(requested: u32, kvm_max: usize) -> Result<(), VmConfigError> {
    let kvm_max = u32::try_from(kvm_max).unwrap_or(u32::MAX);
    let limit = kvm_max.min(MAX_MPTABLE_VCPUS);
    if requested > limit {
        return Err(VmConfigError::TooManyVcpus {
            requested,
            limit,
            why: format!("this host's KVM allows {kvm_max}, Corral's MP table {MAX_MPTABLE_VCPUS}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_limit_names_both_limits() {
        check_vcpu_limit(2, 1024).unwrap();
        check_vcpu_limit(254, 1024).unwrap();
        let e = check_vcpu_limit(1025, 1024).unwrap_err().to_string();
        assert_eq!(
            e,
            "vCPU count 1025: at most 254 are supported here (this host's KVM allows 1024, Corral's MP table 254)"
        );
        let e = check_vcpu_limit(17, 16).unwrap_err().to_string();
        assert!(e.contains("at most 16"), "{e}");
    }
}
