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
pub(crate) fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    *INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), handle_kick))
}

/// Unblocks the kick signal on the calling thread: a vCPU thread inherits
/// the mask of whoever created the VM, which may block every signal (the
/// usual "one thread sigwaits for everything" design), and a blocked kick
/// would never get the vCPU out of `KVM_RUN`.
pub(crate) fn unblock_kick_signal() -> std::io::Result<()> {
    // SAFETY: the set is initialised by sigemptyset before use and passed
    // only to the libc calls that manage signal sets; pthread_sigmask only
    // changes this thread's mask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
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
