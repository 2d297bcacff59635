//! The VMM's I/O threads: `event-manager` epoll loops that run device back
//! ends off the vCPU threads. `vmm-io` serves the console; each virtio
//! device has its own (`vmm-blk0`, `vmm-net0`, `vmm-vsock0`…), so a busy
//! disk does not delay the network. They are the threads `Vmm::other_tids`
//! reports, which stay out of the guest's constrained cgroup.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use tracing::error;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::threads::{NamedThread, Tid};

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
    /// Starts the loop with `subscribers` on a thread named `name`.
    pub(crate) fn spawn(name: &str, subscribers: Vec<Subscriber>) -> io::Result<Self> {
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
        let thread = NamedThread::spawn(name.into(), move || {
            while !stopped.load(Ordering::SeqCst) {
                if let Err(e) = manager.run() {
                    error!("event loop failed, device I/O stops: {e}");
                    break;
                }
            }
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

    /// Stops the loop and joins the thread.
    pub(crate) fn stop(&mut self) {
        // A full counter still wakes the loop, so a failed write is moot.
        let _ = self.stop.write(1);
        if !self.thread.join() {
            error!("vmm-io panicked");
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop();
    }
}
