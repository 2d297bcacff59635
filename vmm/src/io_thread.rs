//! The VMM's I/O threads: `event-manager` epoll loops that run device back
//! ends off the vCPU threads. `vmm-io` serves the console; each virtio
//! device has its own (`vmm-blk0`, `vmm-net0`, `vmm-vsock0`…), so a busy
//! disk does not delay the network. They are the threads `Vmm::other_tids`
//! reports, which stay out of the guest's constrained cgroup.
//!
//! A loop that panics (a bug in a back end) does not die silently: the
//! panic is caught at the top of the thread and recorded as the VM's end
//! ([`VmExit::WorkerFailed`]), so the VM stops with the reason instead of
//! running on with a device that no longer answers.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use tracing::error;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitState, VmExit};
use crate::seccomp::ThreadFilter;
use crate::threads::{panic_message, NamedThread, Tid};

/// How long stopping waits for the thread before leaving it behind.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A subscriber the I/O thread can run.
pub(crate) type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Ends the loop when its eventfd is written.
struct Stopper {
    event: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for Stopper {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.event, EventSet::IN)) {
            // Without it the loop could never be stopped: stop right away.
            error!("vmm-io: cannot watch the stop event: {e}");
            self.stopped.store(true, Ordering::SeqCst);
        }
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.event.read();
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// The running I/O thread. Dropping it stops and joins it.
pub(crate) struct IoThread {
    thread: NamedThread,
    stop: EventFd,
}

impl IoThread {
    /// Starts the loop with `subscribers` on a thread named `name`; a
    /// panic in it is recorded in `exit`.
    pub(crate) fn spawn(
        name: &str,
        subscribers: Vec<Subscriber>,
        exit: Arc<ExitState>,
        filter: Option<ThreadFilter>,
    ) -> io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let stopped = Arc::new(AtomicBool::new(false));
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(io::Error::other)?;
        manager.add_subscriber(Box::new(Stopper {
            event: stop.try_clone()?,
            stopped: stopped.clone(),
        }));
        for subscriber in subscribers {
            manager.add_subscriber(subscriber);
        }
        let thread_name = name.to_string();
        let thread = NamedThread::spawn(name.into(), filter, move || {
            let run = panic::catch_unwind(AssertUnwindSafe(|| {
                while !stopped.load(Ordering::SeqCst) {
                    if let Err(e) = manager.run() {
                        return Err(e.to_string());
                    }
                }
                Ok(())
            }));
            let error = match run {
                Ok(Ok(())) => return,
                Ok(Err(e)) => format!("its event loop failed: {e}"),
                Err(payload) => format!("it panicked: {}", panic_message(payload.as_ref())),
            };
            error!("{thread_name}: {error}; the VM ends");
            exit.record(VmExit::WorkerFailed {
                thread: thread_name,
                error,
            });
        })?;
        Ok(Self { thread, stop })
    }

    /// The thread's TID, waiting for its report the first time.
    pub(crate) fn tid(&mut self) -> io::Result<Tid> {
        self.thread.tid()
    }

    /// The TID, once collected by [`IoThread::tid`].
    pub(crate) fn known_tid(&self) -> Option<Tid> {
        self.thread.known_tid()
    }

    /// Stops the loop and joins the thread, waiting at most
    /// [`STOP_TIMEOUT`] (a back end stuck in a system call is left behind,
    /// named in the log, rather than hang the teardown).
    pub(crate) fn stop(&mut self) {
        // A full counter still wakes the loop, so a failed write is moot.
        let _ = self.stop.write(1);
        self.thread.join_within(STOP_TIMEOUT);
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics on the first event of its eventfd.
    struct Bomb(EventFd);

    impl MutEventSubscriber for Bomb {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.0, EventSet::IN)).unwrap();
        }

        fn process(&mut self, _: Events, _: &mut EventOps) {
            panic!("a back end bug");
        }
    }

    #[test]
    fn a_panicking_loop_ends_the_vm_with_its_name_and_message() {
        let exit = Arc::new(ExitState::new().unwrap());
        let fuse = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = IoThread::spawn(
            "vmm-test0",
            vec![Box::new(Bomb(fuse.try_clone().unwrap()))],
            exit.clone(),
            None,
        )
        .unwrap();
        fuse.write(1).unwrap();
        let reason = exit.wait(Some(Duration::from_secs(10)));
        assert_eq!(
            reason,
            Some(VmExit::WorkerFailed {
                thread: "vmm-test0".into(),
                error: "it panicked: a back end bug".into()
            })
        );
        let shown = reason.map(|r| r.to_string()).unwrap_or_default();
        assert!(shown.contains("vmm-test0") && shown.contains("a back end bug"));
        t.stop();
    }
}
