//! `corral run`'s seccomp set-up (the VMM's own threads get theirs in
//! `corral_vmm::seccomp`): the control plane's deny-list on the main thread
//! before any other thread exists, so every later thread inherits it, and
//! the filter of the threads that wait for signals (`corral-signals`,
//! `corral-winch`), each installed on the thread itself.

use std::sync::OnceLock;

use anyhow::Context;
use corral_vmm::seccomp::{ThreadFilter, ThreadKind};
use corral_vmm::SeccompPolicy;

static POLICY: OnceLock<SeccompPolicy> = OnceLock::new();

/// Installs the deny-list on the calling (main) thread and remembers
/// `policy` for the signal threads.
pub fn install_control_plane(policy: SeccompPolicy) -> anyhow::Result<()> {
    let _ = POLICY.set(policy);
    ThreadFilter::standalone(ThreadKind::Runtime, policy)
        .install()
        .context("give --seccomp off to run without filters")
}

/// Installs the signal threads' filter on the calling thread. A failure is
/// logged: the thread still runs (under the inherited deny-list).
pub fn install_signal_thread() {
    let policy = POLICY.get().copied().unwrap_or(SeccompPolicy::Enforce);
    if let Err(e) = ThreadFilter::standalone(ThreadKind::Signals, policy).install() {
        tracing::error!("{e}");
    }
}
