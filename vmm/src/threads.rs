//! Named threads whose kernel thread IDs are known from the moment they
//! exist. The cgroup code places threads by TID, so every thread the VMM
//! spawns goes through [`NamedThread::spawn`], whose first action on the new
//! thread is to report gettid(2).

use std::any::Any;
use std::io;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::error;

use crate::seccomp::ThreadFilter;

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
    tid_report: mpsc::Receiver<Result<Tid, String>>,
    /// Disconnected when the thread's function has returned or unwound.
    finished: mpsc::Receiver<()>,
    name: String,
}

impl NamedThread {
    /// Spawns `f` on a thread named `name` (at most 15 bytes, as Linux
    /// keeps), with `filter` installed on the new thread before it reports
    /// its TID: once [`NamedThread::tid`] has returned, the thread runs
    /// under its filter. A filter that cannot be installed makes the thread
    /// end without running `f`, and `tid` fail.
    pub(crate) fn spawn<F>(name: String, filter: Option<ThreadFilter>, f: F) -> io::Result<Self>
    where
        F: FnOnce() + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let (alive, finished) = mpsc::channel::<()>();
        let spawned_at = Instant::now();
        let handle = thread::Builder::new().name(name.clone()).spawn(move || {
            // Dropped when `f` returns or unwinds: that is the signal.
            let _alive = alive;
            // Kept for the thread's life: the SIGSYS handler reaches the
            // VM's exit state through it.
            let _filter = match filter.map(|f| f.install().map(|()| f)).transpose() {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            // If nobody listens any more there is nobody to tell.
            let _ = tx.send(Ok(gettid()));
            f()
        })?;
        Ok(Self {
            spawned_at,
            handle: Some(handle),
            tid: None,
            tid_report: rx,
            finished,
            name,
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
            .map_err(|_| io::Error::other("thread exited before reporting its TID"))?
            .map_err(io::Error::other)?;
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

    /// Joins the thread if it ends within `timeout`; otherwise logs it by
    /// name and leaves it running (detached: it owns what it uses, so
    /// nothing it touches is freed under it). Returns whether it was
    /// joined without having panicked.
    pub(crate) fn join_within(&mut self, timeout: Duration) -> bool {
        if self.handle.is_none() {
            return true;
        }
        match self.finished.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                error!(
                    "thread {} did not stop within {timeout:?}; leaving it behind",
                    self.name
                );
                self.handle = None;
                false
            }
            // Disconnected: its function is done; the join is immediate.
            _ => {
                let ok = self.join();
                if !ok {
                    error!("thread {} panicked", self.name);
                }
                ok
            }
        }
    }
}

/// The message of a panic payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_stuck_thread_is_left_behind_after_the_timeout() {
        let (release, wait) = mpsc::channel::<()>();
        let mut t = NamedThread::spawn("corral-stuck".into(), None, move || {
            let _ = wait.recv();
        })
        .unwrap();
        let start = Instant::now();
        assert!(!t.join_within(Duration::from_millis(100)));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(t.join_within(Duration::ZERO), "already let go");
        drop(release);
        let mut quick = NamedThread::spawn("corral-quick".into(), None, || {}).unwrap();
        assert!(quick.join_within(Duration::from_secs(5)));
        let mut panics =
            NamedThread::spawn("corral-panics".into(), None, || panic!("boom")).unwrap();
        assert!(!panics.join_within(Duration::from_secs(5)));
    }

    #[test]
    fn reports_tid_and_name() {
        let seen = Arc::new(Mutex::new(None));
        let inside = seen.clone();
        let mut t = NamedThread::spawn("corral-test".into(), None, move || {
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
