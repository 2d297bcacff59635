//! vCPUs: creation and configuration (CPUID, MSRs, APIC wiring, boot
//! registers), and the gate that holds every vCPU thread between spawning
//! and its first `KVM_RUN`, so that its TID can be acted on (cgroup
//! placement) before any guest code runs on it.

pub(crate) mod kick;
pub(crate) mod run;

use std::sync::{Condvar, Mutex};

use kvm_bindings::{kvm_msr_entry, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use tracing::debug;

use crate::loader::BootProtocol;
use crate::vm::Vm;
use crate::x86_64::cpuid;
use crate::x86_64::msr::{self, MsrError};
use crate::x86_64::regs::{self, RegsError};

/// A vCPU could not be set up or run.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// KVM would not create it.
    #[error("KVM could not create vCPU {0}")]
    Create(u32, #[source] kvm_ioctls::Error),
    /// KVM would not report the CPUID it supports.
    #[error("KVM could not report its supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// KVM would not take a vCPU's CPUID.
    #[error("cannot set up CPUID for vCPU {0}")]
    Cpuid(u32, #[source] kvm_ioctls::Error),
    /// MSRs could not be set.
    #[error("cannot set up MSRs of vCPU {0}")]
    Msrs(u32, #[source] MsrError),
    /// Registers could not be set.
    #[error("cannot set up registers of vCPU {0}")]
    Regs(u32, #[source] RegsError),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// A configured vCPU, ready to be moved onto its thread.
pub struct Vcpu {
    /// Index, which is also its APIC ID.
    pub index: u32,
    pub(crate) fd: VcpuFd,
}

/// What every vCPU of this host starts from: KVM's supported CPUID (with
/// the TSC-deadline timer offered) and the MSRs to set. Asking KVM costs
/// ~0.3–0.6 ms here (each `cpuid` the kernel runs for it traps to the
/// hypervisor below), so `Vmm::create` asks on a thread of its own while it
/// builds the VM.
pub(crate) struct HostCpu {
    supported: CpuId,
    msrs: Vec<kvm_msr_entry>,
}

impl HostCpu {
    /// Asks KVM (through its own `/dev/kvm` handle).
    pub(crate) fn query(kvm: &kvm_ioctls::Kvm) -> Result<HostCpu, VcpuError> {
        let mut supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VcpuError::SupportedCpuid)?;
        if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
            cpuid::offer_tsc_deadline(&mut supported);
        }
        let mut msrs = msr::boot_msrs();
        msrs.extend(msr::feature_msrs(kvm));
        Ok(HostCpu { supported, msrs })
    }
}

/// Creates and configures `count` vCPUs; vCPU 0 gets the boot state for
/// `protocol`, the others wait for INIT/SIPI from the guest, as on hardware.
pub(crate) fn create_vcpus(
    vm: &Vm,
    host: &HostCpu,
    count: u32,
    protocol: &BootProtocol,
) -> Result<Vec<Vcpu>, VcpuError> {
    kick::install_handler().map_err(VcpuError::Signal)?;
    let (supported, msrs) = (&host.supported, &host.msrs);
    (0..count)
        .map(|index| {
            let fd = vm
                .fd()
                .create_vcpu(u64::from(index))
                .map_err(|e| VcpuError::Create(index, e))?;
            let vcpu = Vcpu { index, fd };
            vcpu.configure(vm, supported, count, msrs, (index == 0).then_some(protocol))?;
            Ok(vcpu)
        })
        .collect()
}

impl Vcpu {
    /// Lets KVM do its first-`KVM_RUN` set-up now, without running guest
    /// code: a `KVM_RUN` with `immediate_exit` set returns at once. Recent
    /// kernels start the VM's NX huge-page recovery worker (a thread in our
    /// thread group, `kvm-nx-lpage-re`) at the first `KVM_RUN`; doing it
    /// here, on the creating thread, means the worker exists before
    /// `Vmm::create` returns, so cgroup placement finds it, and it does not
    /// inherit a vCPU thread's constrained cgroup.
    pub(crate) fn first_run_setup(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            other => debug!("vcpu{}: set-up KVM_RUN returned {other:?}", self.index),
        }
        self.fd.set_kvm_immediate_exit(0);
    }

    fn configure(
        &self,
        vm: &Vm,
        supported: &CpuId,
        count: u32,
        msrs: &[kvm_msr_entry],
        boot: Option<&BootProtocol>,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        let cpuid = cpuid::configure(supported, index, count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Cpuid(index, e))?;
        let refused = msr::set_tolerant(&self.fd, msrs).map_err(|e| VcpuError::Msrs(index, e))?;
        if !refused.is_empty() {
            debug!("vcpu{index}: KVM refused MSRs {refused:#x?}; continuing without them");
        }
        regs::setup_fpu(&self.fd).map_err(|e| VcpuError::Regs(index, e))?;
        regs::setup_lint(&self.fd).map_err(|e| VcpuError::Regs(index, e))?;
        if let Some(protocol) = boot {
            regs::setup_boot_vcpu(&self.fd, vm.memory(), protocol)
                .map_err(|e| VcpuError::Regs(index, e))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateState {
    Closed,
    Open,
    Abandoned,
}

/// Holds vCPU threads before their first guest entry.
#[derive(Debug)]
pub(crate) struct StartGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl StartGate {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(GateState::Closed),
            changed: Condvar::new(),
        }
    }

    fn set(&self, to: GateState) {
        let mut state = corral_devices::bus::lock(&self.state);
        if *state == GateState::Closed {
            *state = to;
        }
        self.changed.notify_all();
    }

    /// Lets the vCPUs run.
    pub(crate) fn open(&self) {
        self.set(GateState::Open);
    }

    /// Sends the vCPUs home without running.
    pub(crate) fn abandon(&self) {
        self.set(GateState::Abandoned);
    }

    /// Blocks until opened (true) or abandoned (false).
    pub(crate) fn pass(&self) -> bool {
        let mut state = corral_devices::bus::lock(&self.state);
        while *state == GateState::Closed {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *state == GateState::Open
    }
}
