//! SIGINT, SIGTERM and SIGHUP stop the VM cleanly instead of killing the
//! process mid-I/O: they are blocked in every thread (the mask is set before
//! the VMM spawns any) and a dedicated thread, `corral-signals`, waits for
//! them and asks the VM to shut down. A second signal means the user does
//! not want to wait: the process exits at once.

use std::io;

use corral_vmm::ShutdownHandle;

/// The blocked set, to be waited on.
pub struct TerminationSignals(libc::sigset_t);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

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

/// Waits on its own thread for a termination signal, then requests shutdown.
pub fn spawn_shutdown_thread(signals: TerminationSignals, vm: ShutdownHandle) -> io::Result<()> {
    std::thread::Builder::new()
        .name("corral-signals".into())
        .spawn(move || {
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
                    say_err!("corral: signal {sig} again: exiting without waiting for the VM");
                    std::process::exit(128 + sig);
                }
                tracing::info!("signal {sig} received: shutting the VM down");
                vm.request();
                requested = true;
            }
        })
        .map(|_| ())
}
