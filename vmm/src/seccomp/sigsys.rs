//! The SIGSYS handler: what a thread does when its filter refuses a call.
//!
//! Everything here runs in a signal handler, so it only touches a
//! thread-local set before the filter was installed, atomics, a stack
//! buffer and raw `write(2)` calls: no allocation, no lock.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

use crate::exit::ExitState;

use super::SeccompError;

thread_local! {
    /// (kind code, index, the VM's exit state or null) of this thread.
    static CURRENT: Cell<(u8, u32, *const ExitState)> =
        const { Cell::new((u8::MAX, 0, std::ptr::null())) };
}

/// Records who the calling thread is, for the handler.
pub(super) fn set_current(kind: u8, index: u32, exit: *const ExitState) {
    CURRENT.with(|c| c.set((kind, index, exit)));
}

/// The SIGSYS part of `siginfo_t` on x86-64 (`_sigsys` in the kernel's
/// union, after the three ints and the padding): the `libc` crate does not
/// expose it.
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: *mut c_void,
    syscall: i32,
    arch: u32,
}

/// Installs the handler once per process.
pub(super) fn install_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    static RESULT: AtomicI32 = AtomicI32::new(0);
    ONCE.call_once(|| RESULT.store(sigaction_sigsys(), Ordering::SeqCst));
    let errno = RESULT.load(Ordering::SeqCst);
    if errno != 0 {
        return Err(SeccompError::Handler(std::io::Error::from_raw_os_error(
            errno,
        )));
    }
    Ok(())
}

/// The SIGSYS action: [`on_sigsys`] with its siginfo.
fn sigsys_action() -> libc::sigaction {
    // SAFETY: sigaction is plain data; zeroed is a valid (empty) value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    action
}

/// Sets [`on_sigsys`] as the SIGSYS handler; returns 0 or an errno.
fn sigaction_sigsys() -> i32 {
    let action = sigsys_action();
    // SAFETY: a valid sigaction for SIGSYS; the old action is not wanted.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)
    }
}

/// A fixed buffer for the message.
struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_num(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut v = n.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The thread-name prefix of a kind code and whether the index follows.
fn name_parts(kind: u8) -> (&'static [u8], bool) {
    match super::ThreadKind::from_code(kind) {
        Some(super::ThreadKind::Vcpu) => (b"vcpu", true),
        Some(super::ThreadKind::VmmIo) => (b"vmm-io", false),
        Some(super::ThreadKind::Block) => (b"vmm-blk", true),
        Some(super::ThreadKind::Net) => (b"vmm-net", true),
        Some(super::ThreadKind::Vsock) => (b"vmm-vsock", true),
        Some(super::ThreadKind::Signals) => (b"corral-signals", false),
        Some(super::ThreadKind::Runtime) => (b"of the control plane", false),
        None => (b"(unfiltered thread)", false),
    }
}

/// The message for a refused call, as written to stderr.
fn message(kind: u8, index: u32, syscall: i64, ends_vm: bool) -> Line {
    let mut line = Line {
        buf: [0; 192],
        len: 0,
    };
    let (prefix, indexed) = name_parts(kind);
    line.push(b"corral: seccomp: thread ");
    line.push(prefix);
    if indexed {
        line.push_num(i64::from(index));
    }
    line.push(b" made system call ");
    line.push_num(syscall);
    line.push(b", which its filter forbids; it fails with EPERM");
    line.push(if ends_vm {
        b" and the VM ends\n"
    } else {
        b"\n"
    });
    line
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    if info.is_null() || ctx.is_null() {
        return;
    }
    // SAFETY: the kernel passes a SIGSYS siginfo, laid out as SigsysInfo.
    let syscall = i64::from(unsafe { (*info.cast::<SigsysInfo>()).syscall });
    let (kind, index, exit) = CURRENT.with(|c| c.get());
    let line = message(kind, index, syscall, !exit.is_null());
    // SAFETY: write(2) of a stack buffer is async-signal-safe.
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
    if !exit.is_null() {
        // SAFETY: the thread holds an Arc of its VM's exit state for as
        // long as it runs (ThreadFilter), so the pointer is live; the call
        // only uses atomics and write(2).
        unsafe { (*exit).note_seccomp_violation(kind, index, syscall) };
    }
    // SAFETY: ctx is the ucontext_t the kernel passed; RAX carries the
    // refused call's return value when the handler returns.
    unsafe {
        let uc = ctx.cast::<libc::ucontext_t>();
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_thread_and_the_call() {
        let l = message(super::super::ThreadKind::Block.code(), 3, 41, true);
        let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert!(s.starts_with("corral: seccomp: thread vmm-blk3 made system call 41,"));
        assert!(s.ends_with('\n'));
        let l = message(super::super::ThreadKind::VmmIo.code(), 0, -1, false);
        let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert!(s.contains("thread vmm-io made system call -1,"), "{s}");
    }
}
