//! The vCPU thread: wait at the start gate, then `KVM_RUN` in a loop,
//! dispatching port-I/O and MMIO exits to the buses, until the VM ends.
//!
//! Every exit the guest can cause is handled without panicking: accesses to
//! nothing read as all-ones and are otherwise ignored; a triple fault, a
//! failed entry or a KVM emulation failure end the VM as a guest crash with
//! the vCPU's registers logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use corral_devices::bus::Bus;
use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::VcpuExit;
use tracing::{debug, info, trace};

use super::{kick, StartGate, Vcpu};
use crate::exit::{ExitState, VmExit};

/// What a vCPU thread shares with the rest of the VMM.
pub(crate) struct VcpuContext {
    pub(crate) pio: Arc<Bus>,
    pub(crate) mmio: Arc<Bus>,
    pub(crate) exit: Arc<ExitState>,
    pub(crate) gate: Arc<StartGate>,
    /// Where the thread leaves its CPU time (ns) when it ends.
    pub(crate) cpu_time_ns: Arc<AtomicU64>,
}

/// The calling thread's CPU time.
fn thread_cpu_time_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Records the thread's CPU time however the thread ends.
struct CpuTimeRecorder<'a>(&'a AtomicU64);

impl Drop for CpuTimeRecorder<'_> {
    fn drop(&mut self) {
        self.0.store(thread_cpu_time_ns(), Ordering::Relaxed);
    }
}

/// What to do after an exit, decided while the exit borrows the vCPU.
enum Next {
    Continue,
    /// KVM_RUN was interrupted (kick): clear immediate_exit, look again.
    Interrupted,
    /// The VM ends for this reason.
    End(VmExit),
    /// The guest can no longer run.
    Crash(String),
}

/// Records a vCPU failure if the thread unwinds (a bug in a device
/// handler, say), so the VM ends instead of waiting on a dead vCPU.
struct PanicGuard<'a> {
    index: u32,
    exit: &'a ExitState,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.exit.record(VmExit::VcpuFailed {
                vcpu: self.index,
                error: "the vCPU thread panicked".into(),
            });
        }
    }
}

/// Body of a vCPU thread.
pub(crate) fn vcpu_thread(mut vcpu: Vcpu, ctx: VcpuContext) {
    let _cpu_time = CpuTimeRecorder(&ctx.cpu_time_ns);
    let _guard = PanicGuard {
        index: vcpu.index,
        exit: &ctx.exit,
    };
    if let Err(e) = kick::unblock_kick_signal() {
        ctx.exit.record(VmExit::VcpuFailed {
            vcpu: vcpu.index,
            error: format!("cannot unblock the kick signal: {e}"),
        });
        return;
    }
    let _kick = kick::arm(&mut vcpu.fd);
    if !ctx.gate.pass() {
        return;
    }
    debug!("vcpu{} entering the guest", vcpu.index);
    if let Some(exit) = run_until_exit(&mut vcpu, &ctx) {
        ctx.exit.record(exit);
    }
}

/// Runs until the VM is exiting; returns the reason if this vCPU found it.
fn run_until_exit(vcpu: &mut Vcpu, ctx: &VcpuContext) -> Option<VmExit> {
    let index = vcpu.index;
    let run_page: *const kvm_run = vcpu.fd.get_kvm_run();
    loop {
        if ctx.exit.is_exiting() {
            return None;
        }
        let next = match vcpu.fd.run() {
            Ok(exit) => handle_exit(index, exit, run_page, ctx),
            Err(e) if e.errno() == libc::EINTR => Next::Interrupted,
            Err(e) if e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::End(VmExit::VcpuFailed {
                vcpu: index,
                error: format!("KVM_RUN failed: {e}"),
            }),
        };
        match next {
            Next::Continue => {}
            Next::Interrupted => vcpu.fd.set_kvm_immediate_exit(0),
            Next::End(exit) => return Some(exit),
            Next::Crash(reason) => {
                let registers = register_summary(vcpu);
                info!(
                    "vcpu{index}: guest crashed: {reason}; registers: {}",
                    registers.as_deref().unwrap_or("unreadable")
                );
                return Some(VmExit::GuestCrash {
                    vcpu: index,
                    reason,
                    registers,
                });
            }
        }
    }
}

fn handle_exit(
    index: u32,
    exit: VcpuExit<'_>,
    run_page: *const kvm_run,
    ctx: &VcpuContext,
) -> Next {
    match exit {
        // String I/O (`rep insb`, `rep outsw`…) arrives as count × size
        // bytes: each element is one access to the port.
        VcpuExit::IoIn(port, data) => {
            for element in data.chunks_mut(io_element_size(run_page)) {
                if !ctx.pio.read(u64::from(port), element) {
                    trace!("vcpu{index}: read of unclaimed port {port:#x}");
                    element.fill(0xff);
                }
            }
        }
        VcpuExit::IoOut(port, data) => {
            for element in data.chunks(io_element_size(run_page)) {
                if !ctx.pio.write(u64::from(port), element) {
                    trace!("vcpu{index}: write to unclaimed port {port:#x}");
                }
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                debug!("vcpu{index}: read of unclaimed MMIO {addr:#x}");
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                debug!("vcpu{index}: write to unclaimed MMIO {addr:#x}");
            }
        }
        VcpuExit::Intr => return Next::Interrupted,
        VcpuExit::Shutdown => return Next::Crash("triple fault (KVM_EXIT_SHUTDOWN)".into()),
        VcpuExit::SystemEvent(kind, _) => {
            return match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Next::End(VmExit::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Next::End(VmExit::Reset),
                KVM_SYSTEM_EVENT_CRASH => Next::Crash("the guest reported a crash".into()),
                other => Next::Crash(format!("unknown system event {other}")),
            }
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Next::Crash(format!(
            "KVM could not enter the guest (hardware entry failure {reason:#x} on host CPU {cpu})"
        ))
        }
        VcpuExit::InternalError => {
            return Next::Crash("KVM internal error (emulation failure)".into())
        }
        VcpuExit::Hlt => return Next::Crash("the vCPU halted with nothing to wake it".into()),
        other => return Next::Crash(format!("unexpected exit {other:?}")),
    }
    Next::Continue
}

/// Size of each element of the current port-I/O exit (1, 2 or 4 bytes).
fn io_element_size(run_page: *const kvm_run) -> usize {
    // SAFETY: `run_page` is this vCPU's kvm_run mapping, which lives as long
    // as its VcpuFd, owned by the caller's caller for the whole loop. After
    // KVM_EXIT_IO the kernel has filled the union's `io` member; we read one
    // plain integer from it, outside the data area the exit's slice covers.
    let size = unsafe { std::ptr::addr_of!((*run_page).__bindgen_anon_1.io.size).read() };
    usize::from(size).clamp(1, 8)
}

/// The registers that say where and in what mode a vCPU was.
fn register_summary(vcpu: &Vcpu) -> Option<String> {
    let regs = vcpu.fd.get_regs().ok()?;
    let sregs = vcpu.fd.get_sregs().ok()?;
    Some(format!(
        "rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cpl={} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
        regs.rip,
        regs.rsp,
        regs.rflags,
        sregs.cs.selector,
        sregs.cs.dpl,
        sregs.cr0,
        sregs.cr2,
        sregs.cr3,
        sregs.cr4,
        sregs.efer
    ))
}
