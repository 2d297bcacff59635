//! The VMM's I/O thread (`vmm-io`): an `event-manager` epoll loop that runs
//! device back-ends off the vCPU threads. Today it feeds console input; the
//! virtio devices' queue handlers will run here too. It is one of the
//! threads `Vmm::other_tids` reports, which stay out of the guest's
//! constrained cgroup.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use tracing::error;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::threads::{spawn_named, Spawned, Tid};

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

/// The I/O thread, spawned but not yet known by TID.
pub(crate) struct PendingIoThread {
    spawned: Spawned<()>,
    stop: EventFd,
}

/// The running I/O thread.
pub(crate) struct IoThread {
    handle: Option<JoinHandle<()>>,
    tid: Tid,
    stop: EventFd,
}

impl PendingIoThread {
    /// Starts the loop with `subscribers` on a thread named `vmm-io`.
    pub(crate) fn spawn(subscribers: Vec<Subscriber>) -> io::Result<Self> {
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
        let spawned = spawn_named("vmm-io".into(), move || {
            while !stopped.load(Ordering::SeqCst) {
                if let Err(e) = manager.run() {
                    error!("vmm-io: event loop failed, device I/O stops: {e}");
                    break;
                }
            }
        })?;
        Ok(Self { spawned, stop })
    }

    /// Waits for the thread's TID.
    pub(crate) fn collect(self) -> io::Result<IoThread> {
        let (handle, tid) = self.spawned.collect()?;
        Ok(IoThread {
            handle: Some(handle),
            tid,
            stop: self.stop,
        })
    }
}

impl IoThread {
    /// The thread's TID.
    pub(crate) fn tid(&self) -> Tid {
        self.tid
    }

    /// Stops the loop and joins the thread.
    pub(crate) fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // A full counter still wakes the loop, so a failed write is moot.
            let _ = self.stop.write(1);
            if handle.join().is_err() {
                error!("vmm-io panicked");
            }
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop();
    }
}
