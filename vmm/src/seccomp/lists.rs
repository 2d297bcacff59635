//! The allow-lists, per thread kind. Found by running every whole-system
//! test under [`super::SeccompPolicy::Log`] and reading the kernel's log,
//! then kept as tight as those tests allow: a call missing here shows up
//! as a test failing with `VmExit::SeccompViolation` naming it.

use super::ThreadKind;

/// Every thread: memory, futexes, time, signals (the kick and SIGSYS
/// handlers return through rt_sigreturn), logging to stderr, closing fds,
/// thread exit.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_clock_gettime,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_exit,
    // glibc's fallback for the CPU count when it creates a malloc arena
    // and cannot read /sys/devices/system/cpu/online (refused, below).
    libc::SYS_sched_getaffinity,
];

/// Event loops: `event-manager` on epoll, eventfds (duplicated with
/// F_DUPFD_CLOEXEC when a device is activated).
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_fcntl,
];

/// Console output and the eventfds of the devices it emulates (queue
/// set-up duplicates them on activation); ioctls in [`allowed_ioctls`].
const VCPU: &[i64] = &[libc::SYS_read, libc::SYS_fcntl];

const VMM_IO: &[i64] = &[];

const BLOCK: &[i64] = &[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync];

const NET: &[i64] = &[];

/// Host sockets: guest connections out, host connections accepted (made
/// non-blocking with FIONBIO), the deadline timer.
const VSOCK: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_timerfd_settime,
];

/// sigwait, a channel send; on a second signal the fast teardown (cgroup
/// files written, directories removed, the socket unlinked) and the exit.
const SIGNALS: &[i64] = &[
    libc::SYS_rt_sigtimedwait,
    libc::SYS_openat,
    libc::SYS_read,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_getdents64,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_exit_group,
];

/// Calls refused with EACCES rather than trapped, on the VMM's threads:
/// glibc's malloc opens `/proc/sys/vm/overcommit_memory` once per process,
/// from whichever thread first shrinks a per-thread heap (a vsock worker
/// after a large transfer, in the nested lane), and copes with a refusal
/// (it then shrinks heaps as usual). No VMM thread opens files otherwise.
const QUIETLY_REFUSED: &[i64] = &[libc::SYS_open, libc::SYS_openat];

/// The calls `kind` gets EACCES for (see [`QUIETLY_REFUSED`]).
pub fn quietly_refused(kind: ThreadKind) -> &'static [i64] {
    match kind {
        ThreadKind::Signals | ThreadKind::Runtime => &[],
        _ => QUIETLY_REFUSED,
    }
}

/// The system calls `kind` may make (besides `ioctl`, see
/// [`allowed_ioctls`]).
pub fn allowed_syscalls(kind: ThreadKind) -> &'static [i64] {
    static LISTS: std::sync::OnceLock<Vec<Vec<i64>>> = std::sync::OnceLock::new();
    let lists = LISTS.get_or_init(|| {
        ThreadKind::ALL
            .iter()
            .map(|&k| {
                let extra: &[&[i64]] = match k {
                    ThreadKind::Vcpu => &[VCPU],
                    ThreadKind::VmmIo => &[EVENT_LOOP, VMM_IO],
                    ThreadKind::Block => &[EVENT_LOOP, BLOCK],
                    ThreadKind::Net => &[EVENT_LOOP, NET],
                    ThreadKind::Vsock => &[EVENT_LOOP, VSOCK],
                    ThreadKind::Signals => &[SIGNALS],
                    ThreadKind::Runtime => &[],
                };
                let mut all: Vec<i64> = COMMON.to_vec();
                for list in extra {
                    all.extend_from_slice(list);
                }
                all.sort_unstable();
                all.dedup();
                all
            })
            .collect()
    });
    &lists[ThreadKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)]
}

/// What the control plane never does (see the module documentation of
/// `seccomp`): kernel modules, kexec, reboot, swap, time setting, tracing
/// other processes, raw I/O ports, keyrings, io_uring, userfaultfd,
/// perf events, file handles, quotas, the kernel log, root changes.
pub const DENIED_TO_RUNTIME: &[i64] = &[
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_keyctl,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_userfaultfd,
    libc::SYS_perf_event_open,
    libc::SYS_open_by_handle_at,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_uselib,
    libc::SYS_vhangup,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_chroot,
    libc::SYS_pivot_root,
    libc::SYS_lookup_dcookie,
    libc::SYS_fanotify_init,
];

/// KVM ioctls a vCPU thread makes after set-up.
const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_GET_SREGS: u64 = 0x8138_ae83;
/// Non-blocking mode, as std's `set_nonblocking` sets it on sockets.
const FIONBIO: u64 = libc::FIONBIO;

/// The `ioctl` requests `kind` may make (empty: no ioctl at all).
pub fn allowed_ioctls(kind: ThreadKind) -> &'static [u64] {
    match kind {
        ThreadKind::Vcpu => &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS],
        ThreadKind::Vsock => &[FIONBIO],
        _ => &[],
    }
}
