//! How a VM ends, and the one place that records it.
//!
//! Whoever sees the end first (a vCPU thread on a guest power-off or crash, a
//! device, the host asking for shutdown) calls [`ExitState::record`]; the
//! first reason wins, every vCPU loop sees [`ExitState::is_exiting`], and the
//! waiter in `Vmm::wait` wakes on the eventfd.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_devices::bus::lock;
use corral_devices::power::{PowerEvent, PowerEventSink};
use vmm_sys_util::eventfd::EventFd;

/// Why a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset (reboot); Corral ends the VM instead.
    Reset,
    /// The host asked the VM to stop.
    HostShutdown,
    /// The guest can no longer run: triple fault, failed entry, KVM
    /// emulation failure.
    GuestCrash {
        /// The vCPU that saw it.
        vcpu: u32,
        /// What happened.
        reason: String,
        /// That vCPU's registers at the time, when they could be read.
        registers: Option<String>,
    },
    /// The VMM failed to run a vCPU.
    VcpuFailed {
        /// The vCPU.
        vcpu: u32,
        /// The error.
        error: String,
    },
    /// A VMM thread other than a vCPU (a device worker, `vmm-io`) died:
    /// a bug, found by a guest or not. The VM ends rather than run on with
    /// a device that no longer answers.
    WorkerFailed {
        /// The thread's name.
        thread: String,
        /// What happened (the panic message).
        error: String,
    },
    /// A VMM thread made a system call its seccomp filter forbids.
    SeccompViolation {
        /// The thread's name.
        thread: String,
        /// The system call number (x86-64).
        syscall: i64,
    },
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::PowerOff => write!(f, "the guest powered off"),
            VmExit::Reset => write!(
                f,
                "the guest asked for a reset; Corral does not reboot guests"
            ),
            VmExit::HostShutdown => write!(f, "the VM was shut down by the host"),
            VmExit::GuestCrash {
                vcpu,
                reason,
                registers,
            } => {
                write!(f, "guest crashed on vcpu{vcpu}: {reason}")?;
                if let Some(regs) = registers {
                    write!(f, " ({regs})")?;
                }
                Ok(())
            }
            VmExit::VcpuFailed { vcpu, error } => write!(f, "vcpu{vcpu} failed: {error}"),
            VmExit::WorkerFailed { thread, error } => {
                write!(f, "VMM thread {thread} failed: {error}")
            }
            VmExit::SeccompViolation { thread, syscall } => write!(
                f,
                "VMM thread {thread} made system call {syscall}, which its seccomp filter forbids"
            ),
        }
    }
}

/// The shared record of the VM's end.
#[derive(Debug)]
pub(crate) struct ExitState {
    reason: Mutex<Option<VmExit>>,
    exiting: AtomicBool,
    event: EventFd,
    /// A seccomp violation noted by the SIGSYS handler (which cannot take
    /// the lock): the call (-1: none), the thread's kind code and index.
    violation: AtomicI64,
    violation_kind: AtomicU8,
    violation_index: AtomicU32,
}

impl ExitState {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            exiting: AtomicBool::new(false),
            event: EventFd::new(libc::EFD_CLOEXEC)?,
            violation: AtomicI64::new(-1),
            violation_kind: AtomicU8::new(0),
            violation_index: AtomicU32::new(0),
        })
    }

    /// Notes that thread (`kind`, `index`) made a forbidden `syscall`.
    /// Async-signal-safe (atomics and write(2)): the SIGSYS handler calls
    /// it. The first violation is kept; [`ExitState::reason`] turns it into
    /// the VM's end unless another reason came first.
    pub(crate) fn note_seccomp_violation(&self, kind: u8, index: u32, syscall: i64) {
        if self
            .violation
            .compare_exchange(-1, syscall.max(0), Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        self.violation_kind.store(kind, Ordering::SeqCst);
        self.violation_index.store(index, Ordering::SeqCst);
        self.exiting.store(true, Ordering::SeqCst);
        let one = 1u64;
        // SAFETY: write(2) of 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(
                self.event.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Records a violation noted by the handler, if any.
    fn collect_violation(&self) {
        let syscall = self.violation.load(Ordering::SeqCst);
        if syscall >= 0 {
            let thread = crate::seccomp::describe(
                self.violation_kind.load(Ordering::SeqCst),
                self.violation_index.load(Ordering::SeqCst),
            );
            self.record(VmExit::SeccompViolation { thread, syscall });
        }
    }

    /// Records `exit` unless an earlier reason was recorded; returns whether
    /// this one was.
    pub(crate) fn record(&self, exit: VmExit) -> bool {
        let mut reason = lock(&self.reason);
        if reason.is_some() {
            return false;
        }
        *reason = Some(exit);
        self.exiting.store(true, Ordering::SeqCst);
        // Cannot fail short of the counter overflowing, which one write per
        // VM does not do.
        let _ = self.event.write(1);
        true
    }

    /// Whether the VM is ending; vCPU loops check it after every exit.
    pub(crate) fn is_exiting(&self) -> bool {
        self.exiting.load(Ordering::SeqCst)
    }

    /// The recorded reason, if any.
    pub(crate) fn reason(&self) -> Option<VmExit> {
        self.collect_violation();
        lock(&self.reason).clone()
    }

    /// Blocks until a reason is recorded or `timeout` passes.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> Option<VmExit> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(reason) = self.reason() {
                return Some(reason);
            }
            let ms = match deadline {
                None => -1,
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    // Round up so a sub-millisecond remainder still waits.
                    i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
                }
            };
            self.poll_event(ms);
        }
    }

    /// Waits up to `ms` milliseconds (-1: forever) for the exit event.
    fn poll_event(&self, ms: i32) {
        let mut pfd = libc::pollfd {
            fd: self.event.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, of which poll writes only revents. The
        // result does not matter: the caller looks at the reason again, so
        // EINTR and timeouts are handled by its loop.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

impl PowerEventSink for ExitState {
    fn power_event(&self, event: PowerEvent) {
        self.record(match event {
            PowerEvent::PowerOff => VmExit::PowerOff,
            PowerEvent::Reset => VmExit::Reset,
        });
    }
}

/// Asks a running VM to stop, from any thread.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(pub(crate) Arc<ExitState>);

impl ShutdownHandle {
    /// Requests shutdown; `Vmm::wait` then returns [`VmExit::HostShutdown`]
    /// (unless the guest ended first) once every vCPU has left the guest.
    pub fn request(&self) {
        self.0.record(VmExit::HostShutdown);
    }

    /// Blocks until the VM's end is recorded (or `timeout` passes) without
    /// owning the VM: a front end's watcher thread uses it, then calls
    /// `Vmm::wait` (which returns at once) to stop the vCPUs.
    pub fn wait_ended(&self, timeout: Option<Duration>) -> Option<VmExit> {
        self.0.wait(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes_waiter() {
        let state = Arc::new(ExitState::new().unwrap());
        assert_eq!(state.wait(Some(Duration::from_millis(1))), None);
        let s = state.clone();
        let t = std::thread::spawn(move || s.wait(None));
        std::thread::sleep(Duration::from_millis(10));
        state.power_event(PowerEvent::PowerOff);
        ShutdownHandle(state.clone()).request();
        assert_eq!(t.join().unwrap(), Some(VmExit::PowerOff));
        assert!(state.is_exiting());
    }
}
