//! SIGINT, SIGTERM and SIGHUP stop the VM cleanly instead of killing the
//! process mid-I/O: they are blocked in every thread (the mask is set before
//! the VMM spawns any) and a dedicated thread, `corral-signals`, waits for
//! them and asks the VM to shut down.
//!
//! A second signal means the user does not want to wait (as `docker` and
//! `ctr` stop waiting on a repeated Ctrl-C), not that they accept debris:
//! a Firecracker or Kata user expects a stopped sandbox to leave no
//! cgroup, socket or tap behind, however it was stopped. So `corral` then
//! ends at once, without waiting for the VM's threads (a vCPU stuck in the
//! kernel, a device worker in a slow write, an unanswering agent), but
//! first, on the signal thread, it undoes what it made on the host that
//! would outlive it
//! ([`Emergency`]): every thread goes back to the cgroup the process came
//! from and the sandbox's cgroups are removed, deepest first; its vsock
//! socket is unlinked. A tap it created is not persistent and goes with
//! the process. If a thread the VMM starts at that very moment keeps a
//! cgroup busy, the next `corral run` with the same `--cgroup-parent`
//! sweeps it (`corral_runtime::sweep`), as after a `kill -9`.

use std::io;
use std::path::PathBuf;

use corral_runtime::cgroup::TeardownHandle;
use corral_vmm::ShutdownHandle;

/// The blocked set, to be waited on.
pub struct TerminationSignals(libc::sigset_t);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// What a second signal removes before the process exits.
#[derive(Default)]
pub struct Emergency {
    /// The sandbox's cgroups, when placed.
    pub cgroups: Option<TeardownHandle>,
    /// Socket files this process made (the VM's vsock socket).
    pub sockets: Vec<PathBuf>,
}

impl Emergency {
    /// Removes it all, going on past problems (logged).
    fn run(&self) {
        if let Some(cgroups) = &self.cgroups {
            if let Err(e) = cgroups.run() {
                tracing::warn!("cgroups: fast teardown incomplete: {e}");
            }
        }
        for socket in &self.sockets {
            if let Err(e) = std::fs::remove_file(socket) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", socket.display());
                }
            }
        }
    }
}

/// Blocks the termination signals in the calling thread (and so in every
/// thread it spawns afterwards).
pub fn block_termination_signals() -> io::Result<TerminationSignals> {
    block(&SIGNALS).map(TerminationSignals)
}

/// Blocks `signals` in the calling thread (and the threads it spawns
/// afterwards); returns their set, to be waited on with `sigwait`.
pub fn block(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    // SAFETY: the sigset is initialised by sigemptyset before use and only
    // passed to the libc functions that manage it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// Waits on its own thread for a termination signal, then requests
/// shutdown; on a second one, runs `emergency` and exits (see the module
/// documentation).
pub fn spawn_shutdown_thread(
    signals: TerminationSignals,
    vm: ShutdownHandle,
    emergency: Emergency,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("corral-signals".into())
        .spawn(move || {
            crate::filters::install_signal_thread();
            tracing::debug!(
                "corral-signals thread has TID {}",
                corral_vmm::threads::gettid()
            );
            let mut requested = false;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: the set was initialised by block_termination_signals
                // and `sig` is a valid out-pointer.
                let rc = unsafe { libc::sigwait(&signals.0, &mut sig) };
                if rc != 0 {
                    continue;
                }
                if requested {
                    say_err!(
                        "corral: signal {sig} again: exiting without waiting for the VM (its cgroups and socket removed)"
                    );
                    vm.request();
                    emergency.run();
                    std::process::exit(128 + sig);
                }
                tracing::info!("signal {sig} received: shutting the VM down");
                vm.request();
                requested = true;
            }
        })
        .map(|_| ())
}
