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
//!
//! Before a normal teardown the thread is asked to go back to the
//! process's own cgroups by itself ([`SignalThread::go_home`]): a thread
//! that moves itself costs the kernel ~20 µs, one moved by TID an RCU grace
//! period (see `corral_runtime::cgroup::Spot`).

use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use corral_runtime::cgroup::TeardownHandle;
use corral_vmm::ShutdownHandle;

/// The blocked set, to be waited on.
pub struct TerminationSignals(libc::sigset_t);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Sent by `corral run` itself to its signal thread before teardown: go
/// back to the process's own cgroups (see [`SignalThread::go_home`]). The
/// VMM's vCPU kick is `SIGRTMIN`; this is the next one.
fn home_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// How long teardown waits for the signal thread to go home before it
/// moves the thread itself (by TID, which costs a grace period).
const HOME_TIMEOUT: Duration = Duration::from_secs(1);

/// The running signal thread.
pub struct SignalThread {
    handle: std::thread::JoinHandle<()>,
    home: mpsc::Receiver<()>,
}

impl SignalThread {
    /// Asks the thread to move itself back to the process's own cgroups
    /// (the sandbox's teardown then finds only the calling thread, which
    /// goes home by itself, and writes no TID) and waits for it.
    pub fn go_home(&self) {
        let thread = self.handle.as_pthread_t();
        // SAFETY: the thread never exits on its own except by ending the
        // process, so its pthread_t is valid; the signal is blocked in every
        // thread and only this one waits for it.
        let rc = unsafe { libc::pthread_kill(thread, home_signal()) };
        if rc != 0 || self.home.recv_timeout(HOME_TIMEOUT).is_err() {
            tracing::debug!("the signal thread did not go home; teardown moves it");
        }
    }
}

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
    let mut signals = SIGNALS.to_vec();
    signals.push(home_signal());
    block(&signals).map(TerminationSignals)
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
) -> io::Result<SignalThread> {
    let (home_tx, home) = mpsc::channel();
    let handle = std::thread::Builder::new()
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
                if sig == home_signal() {
                    if let Some(Err(e)) = emergency.cgroups.as_ref().map(|c| c.go_home()) {
                        tracing::debug!("signal thread: cannot go home: {e}");
                    }
                    let _ = home_tx.send(());
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
        })?;
    Ok(SignalThread { handle, home })
}
