//! A seccomp filter on every VMM thread, one per thread kind (after
//! Firecracker): vCPUs, `vmm-io`, each device worker, and the front end's
//! signal threads. Each thread installs its filter itself, first thing,
//! before it reports its TID, so `Vmm::create` returns with every thread
//! filtered and no guest code run.
//!
//! The control plane (the shim's tokio threads, `corral run`'s main
//! thread) gets a deny-list instead ([`ThreadKind::Runtime`]), installed
//! on the main thread before any other thread exists and so inherited by
//! every thread: it creates cgroups, eBPF device filters, taps in other
//! network namespaces and mounts, and runs `mkfs.ext4`, so an allow-list
//! would have to cover mkfs too; the deny-list refuses what no part of
//! Corral uses (module loading, kexec, ptrace, io_uring, keyrings…).
//!
//! A forbidden system call is not executed: the kernel sends SIGSYS, whose
//! handler (`sigsys`) writes the thread's name and the call's number to
//! stderr, makes the call fail with EPERM, and, for a thread of a VM,
//! records the VM's end as [`crate::VmExit::SeccompViolation`]. The VM then
//! stops with that reason; other VMs of the process (and the shim) go on.
//!
//! [`SeccompPolicy::Log`] lets forbidden calls through and has the kernel
//! log them (`dmesg`: `type=1326 … comm="vmm-blk0" … syscall=N`): that is
//! how the lists in `lists` were found and how to extend them.
//! [`SeccompPolicy::Off`] installs nothing (`corral run --seccomp off`, for
//! debugging).
//!
//! Filters are compiled once per process per kind and policy.

mod lists;
mod sigsys;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

use crate::exit::ExitState;
pub use lists::allowed_syscalls;

/// What to do about system calls outside a thread's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompPolicy {
    /// Refuse them and end the VM (the default).
    #[default]
    Enforce,
    /// Allow them, logged by the kernel (finding what a list lacks).
    Log,
    /// No filters.
    Off,
}

impl FromStr for SeccompPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" | "enforce" => Ok(Self::Enforce),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            _ => Err(format!("seccomp policy {s:?} is not one of on, log, off")),
        }
    }
}

impl fmt::Display for SeccompPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enforce => "on",
            Self::Log => "log",
            Self::Off => "off",
        })
    }
}

/// The kinds of thread, each with its own list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadKind {
    /// `vcpuN`: KVM_RUN and the device emulation of its exits.
    Vcpu,
    /// `vmm-io`: the console's event loop.
    VmmIo,
    /// `vmm-blkN`.
    Block,
    /// `vmm-netN`.
    Net,
    /// `vmm-vsockN`.
    Vsock,
    /// A front end's thread that only waits for signals and asks for
    /// shutdown or a resize (`corral-signals`, `corral-winch`).
    Signals,
    /// The control plane: a deny-list, inherited by every later thread.
    Runtime,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 7] = [
        Self::Vcpu,
        Self::VmmIo,
        Self::Block,
        Self::Net,
        Self::Vsock,
        Self::Signals,
        Self::Runtime,
    ];

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The name of thread `index` of this kind, as its threads are named.
    pub fn thread_name(self, index: u32) -> String {
        match self {
            Self::Vcpu => format!("vcpu{index}"),
            Self::VmmIo => "vmm-io".into(),
            Self::Block => format!("vmm-blk{index}"),
            Self::Net => format!("vmm-net{index}"),
            Self::Vsock => format!("vmm-vsock{index}"),
            Self::Signals => "corral-signals".into(),
            Self::Runtime => "(control plane)".into(),
        }
    }
}

/// A filter could not be built or installed.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// The filter did not compile (a bug in the lists).
    #[error("cannot compile the seccomp filter of {kind:?} threads: {reason}")]
    Compile {
        /// The kind.
        kind: ThreadKind,
        /// seccompiler's error.
        reason: String,
    },
    /// The kernel refused it.
    #[error("cannot install the seccomp filter on thread {thread}")]
    Install {
        /// The thread.
        thread: String,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// A thread's filter: which kind, which policy, and the VM whose end a
/// violation records.
#[derive(Clone)]
pub struct ThreadFilter {
    /// The kind.
    pub kind: ThreadKind,
    /// Its index among threads of its kind (vCPU or device number).
    pub index: u32,
    /// The policy.
    pub policy: SeccompPolicy,
    pub(crate) exit: Option<Arc<ExitState>>,
}

impl fmt::Debug for ThreadFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadFilter")
            .field("kind", &self.kind)
            .field("index", &self.index)
            .field("policy", &self.policy)
            .finish()
    }
}

impl ThreadFilter {
    /// A filter for a thread that belongs to no VM (a front end's signal
    /// thread): a violation is reported and fails with EPERM.
    pub fn standalone(kind: ThreadKind, policy: SeccompPolicy) -> Self {
        Self {
            kind,
            index: 0,
            policy,
            exit: None,
        }
    }

    pub(crate) fn for_vm(
        kind: ThreadKind,
        index: u32,
        policy: SeccompPolicy,
        exit: &Arc<ExitState>,
    ) -> Self {
        Self {
            kind,
            index,
            policy,
            exit: Some(exit.clone()),
        }
    }

    /// Installs the filter on the calling thread (nothing under
    /// [`SeccompPolicy::Off`]). The thread must keep `self` (its reference
    /// to the VM's exit state) alive for as long as it runs.
    pub fn install(&self) -> Result<(), SeccompError> {
        let action = match self.policy {
            SeccompPolicy::Off => return Ok(()),
            SeccompPolicy::Enforce => SeccompAction::Trap,
            SeccompPolicy::Log => SeccompAction::Log,
        };
        sigsys::install_handler()?;
        sigsys::set_current(
            self.kind.code(),
            self.index,
            self.exit.as_ref().map_or(std::ptr::null(), Arc::as_ptr),
        );
        let install = |program: &BpfProgram| {
            seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
                thread: self.kind.thread_name(self.index),
                source,
            })
        };
        if !lists::quietly_refused(self.kind).is_empty() {
            install(quiet_program(self.kind)?)?;
        }
        install(program(self.kind, action)?)
    }
}

/// The second filter of the kinds with quiet refusals: those calls fail
/// with EACCES, and nothing else is touched. The kernel takes the most
/// restrictive answer of a thread's filters, so a call the allow-list lets
/// through (it lists these) and this one refuses fails quietly, while a
/// call outside the allow-list still traps.
fn quiet_program(kind: ThreadKind) -> Result<&'static BpfProgram, SeccompError> {
    static SLOTS: [OnceLock<Result<BpfProgram, String>>; 7] = [const { OnceLock::new() }; 7];
    SLOTS[usize::from(kind.code())]
        .get_or_init(|| {
            let rules = lists::quietly_refused(kind)
                .iter()
                .map(|&sysno| (sysno, Vec::new()))
                .collect();
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EACCES as u32),
                TargetArch::x86_64,
            )
            .map_err(|e| e.to_string())?;
            BpfProgram::try_from(filter).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|reason| SeccompError::Compile {
            kind,
            reason: reason.clone(),
        })
}

/// The compiled program of `kind` under `mismatch`, built once.
fn program(kind: ThreadKind, mismatch: SeccompAction) -> Result<&'static BpfProgram, SeccompError> {
    type Slot = OnceLock<Result<BpfProgram, String>>;
    static ENFORCE: [Slot; 7] = [const { OnceLock::new() }; 7];
    static LOG: [Slot; 7] = [const { OnceLock::new() }; 7];
    let slots = if mismatch == SeccompAction::Log {
        &LOG
    } else {
        &ENFORCE
    };
    slots[usize::from(kind.code())]
        .get_or_init(|| compile(kind, mismatch))
        .as_ref()
        .map_err(|reason| SeccompError::Compile {
            kind,
            reason: reason.clone(),
        })
}

fn compile(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    if kind == ThreadKind::Runtime {
        // A deny-list: the listed calls get the policy's action.
        for &sysno in lists::DENIED_TO_RUNTIME {
            rules.insert(sysno, Vec::new());
        }
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, mismatch, TargetArch::x86_64)
            .map_err(|e| e.to_string())?;
        return BpfProgram::try_from(filter).map_err(|e| e.to_string());
    }
    for &sysno in allowed_syscalls(kind)
        .iter()
        .chain(lists::quietly_refused(kind))
    {
        rules.insert(sysno, Vec::new());
    }
    let ioctls = lists::allowed_ioctls(kind);
    if !ioctls.is_empty() {
        let mut by_request = Vec::new();
        for &request in ioctls {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                .map_err(|e| e.to_string())?;
            by_request.push(SeccompRule::new(vec![cond]).map_err(|e| e.to_string())?);
        }
        rules.insert(libc::SYS_ioctl, by_request);
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// A violation recorded by the SIGSYS handler in a VM's exit state: the
/// thread's kind code and index, and the call.
pub(crate) fn describe(kind: u8, index: u32) -> String {
    ThreadKind::from_code(kind)
        .map_or_else(|| format!("thread kind {kind}"), |k| k.thread_name(index))
}

#[cfg(test)]
mod tests;
