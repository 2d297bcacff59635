//! The filters compile, and a forbidden call from a filtered thread is
//! refused, reported with the thread and the call, and ends the VM, on the
//! real kernel's seccomp.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::exit::{ExitState, VmExit};
use crate::threads::NamedThread;

#[test]
fn every_filter_compiles_and_the_lists_are_printed() {
    for kind in ThreadKind::ALL {
        for action in [SeccompAction::Trap, SeccompAction::Log] {
            let program = program(kind, action).unwrap();
            assert!(!program.is_empty());
        }
        if kind == ThreadKind::Runtime {
            eprintln!(
                "{:>16}: every system call but {} denied ones",
                kind.thread_name(0),
                lists::DENIED_TO_RUNTIME.len()
            );
            continue;
        }
        eprintln!(
            "{:>16}: {} system calls allowed, ioctl requests {:x?}",
            kind.thread_name(0),
            allowed_syscalls(kind).len() + usize::from(!lists::allowed_ioctls(kind).is_empty()),
            lists::allowed_ioctls(kind)
        );
    }
}

#[test]
fn policies_parse_and_name_the_bad_value() {
    assert_eq!("on".parse(), Ok(SeccompPolicy::Enforce));
    assert_eq!("off".parse(), Ok(SeccompPolicy::Off));
    assert_eq!("log".parse(), Ok(SeccompPolicy::Log));
    let err = "maybe".parse::<SeccompPolicy>().unwrap_err();
    assert!(err.contains("\"maybe\""), "{err}");
}

/// getppid is on no list.
fn forbidden_call() -> (i64, i32) {
    // SAFETY: getppid has no arguments and no effect.
    let rc = unsafe { libc::syscall(libc::SYS_getppid) };
    (
        rc,
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    )
}

#[test]
fn a_forbidden_call_fails_with_eperm_and_ends_the_vm_naming_thread_and_call() {
    let exit = Arc::new(ExitState::new().unwrap());
    let filter = ThreadFilter::for_vm(ThreadKind::Block, 2, SeccompPolicy::Enforce, &exit);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut t = NamedThread::spawn("vmm-blk2".into(), Some(filter), move || {
        let first = forbidden_call();
        let open_failed = std::fs::File::open("/dev/null").is_err(); // refused quietly
        let _ = tx.send((first, open_failed));
    })
    .unwrap();
    t.tid().unwrap();
    let ((rc, errno), open_failed) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((rc, errno), (-1, libc::EPERM), "the call was not refused");
    assert!(open_failed);
    assert!(t.join_within(Duration::from_secs(5)));
    assert_eq!(
        exit.wait(Some(Duration::from_secs(5))),
        Some(VmExit::SeccompViolation {
            thread: "vmm-blk2".into(),
            syscall: libc::SYS_getppid,
        }),
        "the first violation ends the VM"
    );
    assert!(exit.is_exiting());
}

#[test]
fn log_lets_the_call_through_and_off_installs_nothing() {
    for policy in [SeccompPolicy::Log, SeccompPolicy::Off] {
        let exit = Arc::new(ExitState::new().unwrap());
        let filter = ThreadFilter::for_vm(ThreadKind::Net, 0, policy, &exit);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut t = NamedThread::spawn("vmm-net0".into(), Some(filter), move || {
            let _ = tx.send(forbidden_call());
        })
        .unwrap();
        t.tid().unwrap();
        let (rc, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(rc > 0, "{policy}: getppid refused");
        assert!(t.join_within(Duration::from_secs(5)));
        assert_eq!(exit.wait(Some(Duration::ZERO)), None, "{policy}");
    }
}

#[test]
fn a_standalone_thread_gets_eperm_and_nothing_ends() {
    let filter = ThreadFilter::standalone(ThreadKind::Signals, SeccompPolicy::Enforce);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut t = NamedThread::spawn("corral-signals".into(), Some(filter), move || {
        let _ = tx.send(forbidden_call());
    })
    .unwrap();
    t.tid().unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        (-1, libc::EPERM)
    );
    assert!(t.join_within(Duration::from_secs(5)));
}

#[test]
fn the_control_plane_deny_list_refuses_only_its_calls() {
    let filter = ThreadFilter::standalone(ThreadKind::Runtime, SeccompPolicy::Enforce);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut t = NamedThread::spawn("shim-tokio".into(), Some(filter), move || {
        let allowed = forbidden_call();
        // SAFETY: acct(NULL) turns process accounting off; refused here.
        let rc = unsafe { libc::syscall(libc::SYS_acct, std::ptr::null::<libc::c_char>()) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let _ = tx.send((allowed.0, rc, errno));
    })
    .unwrap();
    t.tid().unwrap();
    let (getppid, acct, errno) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(getppid > 0, "an ordinary call was refused");
    assert_eq!((acct, errno), (-1, libc::EPERM));
    assert!(t.join_within(Duration::from_secs(5)));
}

#[test]
fn opening_a_file_is_refused_quietly_and_the_vm_goes_on() {
    let exit = Arc::new(ExitState::new().unwrap());
    let filter = ThreadFilter::for_vm(ThreadKind::Vsock, 0, SeccompPolicy::Enforce, &exit);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut t = NamedThread::spawn("vmm-vsock0".into(), Some(filter), move || {
        let opened =
            std::fs::File::open("/proc/sys/vm/overcommit_memory").map_err(|e| e.raw_os_error());
        let _ = tx.send(opened.map(|_| ()));
    })
    .unwrap();
    t.tid().unwrap();
    let opened = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(opened, Err(Some(libc::EACCES)));
    assert!(t.join_within(Duration::from_secs(5)));
    assert_eq!(
        exit.wait(Some(Duration::ZERO)),
        None,
        "a quiet refusal ended the VM"
    );
}
