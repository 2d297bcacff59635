//! Getting a vCPU thread out of `KVM_RUN` promptly when the VM must stop.
//!
//! The stopper first marks the VM as exiting, then sends the kick signal to
//! each vCPU thread. The handler sets `immediate_exit` in that thread's
//! `kvm_run` page. Whatever the thread was doing, it leaves the guest soon:
//! inside `KVM_RUN` the signal itself ends the ioctl with EINTR; just before
//! it, `immediate_exit` makes the next `KVM_RUN` return EINTR at once; and
//! after an exit the loop sees the exiting flag. No sleep, no polling.

use std::cell::Cell;
use std::ptr;
use std::sync::OnceLock;

use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, while a vCPU runs here.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(ptr::null_mut()) };
}

/// The signal used to kick vCPU threads.
pub(crate) fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Const-initialised thread-local without destructor: no allocation or
    // lazy initialisation, so this is async-signal-safe.
    let target = IMMEDIATE_EXIT.with(Cell::get);
    if !target.is_null() {
        // SAFETY: `target` was set by `arm` on this very thread to a field of
        // the vCPU's kvm_run mapping, and `KickGuard` clears it before that
        // mapping can go away.
        unsafe { target.write_volatile(1) };
    }
}

/// Installs the kick handler for the process (once).
pub(crate) fn install_handler() -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            register_signal_handler(kick_signal(), handle_kick)
                .map_err(|e| format!("cannot install the vCPU kick signal handler: {e}"))
        })
        .clone()
}

/// While alive, kicks of this thread reach `vcpu`'s `immediate_exit`.
pub(crate) struct KickGuard;

/// Points this thread's kick handler at `vcpu`.
pub(crate) fn arm(vcpu: &mut VcpuFd) -> KickGuard {
    let field = ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit);
    IMMEDIATE_EXIT.with(|cell| cell.set(field));
    KickGuard
}

impl Drop for KickGuard {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|cell| cell.set(ptr::null_mut()));
    }
}
