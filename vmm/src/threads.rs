//! Named threads whose kernel thread IDs are known from the moment they
//! exist. The cgroup code places threads by TID, so every thread the VMM
//! spawns goes through [`spawn_named`], which hands back the TID the thread
//! read with gettid(2) as its very first action.

use std::io;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

/// A kernel thread ID.
pub type Tid = libc::pid_t;

/// The calling thread's TID.
pub fn gettid() -> Tid {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// A thread that has been spawned and whose TID has not been collected yet.
pub(crate) struct Spawned<T> {
    handle: JoinHandle<T>,
    tid: mpsc::Receiver<Tid>,
}

/// Spawns `f` on a thread named `name` (at most 15 bytes, as Linux keeps).
pub(crate) fn spawn_named<F, T>(name: String, f: F) -> io::Result<Spawned<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let handle = thread::Builder::new().name(name).spawn(move || {
        // The receiver lives until the TID is collected; if the spawner has
        // gone away there is nobody to tell.
        let _ = tx.send(gettid());
        f()
    })?;
    Ok(Spawned { handle, tid: rx })
}

impl<T> Spawned<T> {
    /// Waits for the thread to report its TID.
    pub(crate) fn collect(self) -> io::Result<(JoinHandle<T>, Tid)> {
        match self.tid.recv() {
            Ok(tid) => Ok((self.handle, tid)),
            Err(_) => Err(io::Error::other("thread exited before reporting its TID")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_tid_and_name() {
        let spawned = spawn_named("corral-test".into(), || {
            (
                gettid(),
                std::fs::read_to_string("/proc/thread-self/comm").unwrap(),
            )
        })
        .unwrap();
        let (handle, tid) = spawned.collect().unwrap();
        let (inside, comm) = handle.join().unwrap();
        assert_eq!(tid, inside);
        assert_ne!(tid, gettid());
        assert_eq!(comm.trim(), "corral-test");
    }
}
