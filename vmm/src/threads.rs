//! Named threads whose kernel thread IDs are known from the moment they
//! exist. The cgroup code places threads by TID, so every thread the VMM
//! spawns goes through [`NamedThread::spawn`], whose first action on the new
//! thread is to report gettid(2).

use std::io;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

/// A kernel thread ID.
pub type Tid = libc::pid_t;

/// The calling thread's TID.
pub fn gettid() -> Tid {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// A thread the VMM spawned: its handle and, once reported, its TID.
pub(crate) struct NamedThread {
    spawned_at: Instant,
    handle: Option<JoinHandle<()>>,
    tid: Option<Tid>,
    tid_report: mpsc::Receiver<Tid>,
}

impl NamedThread {
    /// Spawns `f` on a thread named `name` (at most 15 bytes, as Linux keeps).
    pub(crate) fn spawn<F>(name: String, f: F) -> io::Result<Self>
    where
        F: FnOnce() + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let spawned_at = Instant::now();
        let handle = thread::Builder::new().name(name).spawn(move || {
            // If nobody listens any more there is nobody to tell.
            let _ = tx.send(gettid());
            f()
        })?;
        Ok(Self {
            spawned_at,
            handle: Some(handle),
            tid: None,
            tid_report: rx,
        })
    }

    /// The thread's TID, waiting for its report the first time.
    pub(crate) fn tid(&mut self) -> io::Result<Tid> {
        if let Some(tid) = self.tid {
            return Ok(tid);
        }
        let tid = self
            .tid_report
            .recv()
            .map_err(|_| io::Error::other("thread exited before reporting its TID"))?;
        self.tid = Some(tid);
        Ok(tid)
    }

    /// When the thread was spawned.
    pub(crate) fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// The TID if it has been collected.
    pub(crate) fn known_tid(&self) -> Option<Tid> {
        self.tid
    }

    /// The join handle, while the thread has not been joined.
    pub(crate) fn handle(&self) -> Option<&JoinHandle<()>> {
        self.handle.as_ref()
    }

    /// Joins the thread (once); false if it panicked.
    pub(crate) fn join(&mut self) -> bool {
        self.handle.take().is_none_or(|h| h.join().is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn reports_tid_and_name() {
        let seen = Arc::new(Mutex::new(None));
        let inside = seen.clone();
        let mut t = NamedThread::spawn("corral-test".into(), move || {
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            *inside.lock().unwrap() = Some((gettid(), comm.trim().to_string()));
        })
        .unwrap();
        let tid = t.tid().unwrap();
        assert_eq!(t.tid().unwrap(), tid);
        assert!(t.join());
        assert_eq!(
            *seen.lock().unwrap(),
            Some((tid, "corral-test".to_string()))
        );
        assert_ne!(tid, gettid());
        assert!(t.join(), "joining twice is harmless");
    }
}
