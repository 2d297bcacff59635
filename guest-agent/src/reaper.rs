//! The one reaper: every child of the agent (and, as PID 1, every orphan of
//! the guest) is collected here with `waitpid(-1)`, and the status goes to
//! whoever registered the pid. No other code in the agent waits, so no
//! status is stolen. A pid is registered while the reaper's lock is held
//! across the `clone` that creates it, so even a child that dies at once is
//! never reaped unclaimed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal number.
    pub status: i32,
    /// Killed by a signal.
    pub signaled: bool,
}

/// Receives a process's [`Exit`] once it ended.
pub type ExitWatch = watch::Receiver<Option<Exit>>;

/// See the module documentation.
#[derive(Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<i32, watch::Sender<Option<Exit>>>>,
}

impl Reaper {
    /// Starts reaping on every SIGCHLD (a tokio task).
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper::default());
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, watch::Sender<Option<Exit>>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collects every child that has ended.
    fn reap(&self) {
        let mut waiting = self.lock();
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (
                    pid,
                    Exit {
                        status: code,
                        signaled: false,
                    },
                ),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (
                    pid,
                    Exit {
                        status: 128 + sig as i32,
                        signaled: true,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            match waiting.remove(&pid.as_raw()) {
                Some(tx) => {
                    tracing::debug!(pid = pid.as_raw(), ?exit, "process ended");
                    let _ = tx.send(Some(exit));
                }
                None => tracing::debug!(pid = pid.as_raw(), ?exit, "orphan reaped"),
            }
        }
    }

    /// Runs `create` (which makes a child and returns its pid) with the
    /// reaper held, and registers the pid.
    pub fn register_with<E>(
        &self,
        create: impl FnOnce() -> Result<i32, E>,
    ) -> Result<(i32, ExitWatch), E> {
        let mut waiting = self.lock();
        let pid = create()?;
        let (tx, rx) = watch::channel(None);
        waiting.insert(pid, tx);
        Ok((pid, rx))
    }
}
