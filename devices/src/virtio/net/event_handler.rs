//! The worker-thread side of virtio-net: TX on TX notifications; RX when
//! the back end has frames, paused (back end unwatched) while the guest has
//! no RX buffers and resumed by the next RX notification.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::warn;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{Net, RX, TX};
use crate::bus::lock;
use crate::virtio::drain_event;

const STATE_CHANGED: u32 = 0;
const RX_QUEUE: u32 = 1;
const TX_QUEUE: u32 = 2;
const BACKEND: u32 = 3;

/// Runs a [`Net`] device on an `event-manager` loop.
pub struct NetHandler {
    device: Arc<Mutex<Net>>,
    backend_fd: RawFd,
    queue_events: Option<[EventFd; 2]>,
    backend_watched: bool,
}

impl NetHandler {
    /// A handler for `device`.
    pub fn new(device: Arc<Mutex<Net>>) -> Self {
        let backend_fd = lock(&device).backend.as_raw_fd();
        Self {
            device,
            backend_fd,
            queue_events: None,
            backend_watched: false,
        }
    }

    fn backend_events(&self) -> Events {
        Events::with_data_raw(self.backend_fd, BACKEND, EventSet::IN)
    }

    fn watch_backend(&mut self, ops: &mut EventOps, watch: bool) {
        if watch == self.backend_watched {
            return;
        }
        let result = if watch {
            ops.add(self.backend_events())
        } else {
            ops.remove(self.backend_events())
        };
        match result {
            Ok(()) => self.backend_watched = watch,
            Err(e) => warn!("virtio-net: cannot (un)watch the back end: {e}"),
        }
    }

    fn sync_registration(&mut self, ops: &mut EventOps) {
        if let Some([rx, tx]) = self.queue_events.take() {
            let _ = ops.remove(Events::with_data(&rx, RX_QUEUE, EventSet::IN));
            let _ = ops.remove(Events::with_data(&tx, TX_QUEUE, EventSet::IN));
        }
        self.watch_backend(ops, false);
        let events = {
            let dev = lock(&self.device);
            drain_event(&dev.lifecycle.state_changed);
            dev.lifecycle.active.as_ref().map(|a| {
                (
                    a.queue_events[RX].try_clone(),
                    a.queue_events[TX].try_clone(),
                )
            })
        };
        let Some((Ok(rx), Ok(tx))) = events else {
            return;
        };
        for (event, token) in [(&rx, RX_QUEUE), (&tx, TX_QUEUE)] {
            if let Err(e) = ops.add(Events::with_data(event, token, EventSet::IN)) {
                warn!("virtio-net: cannot watch a queue: {e}");
            }
        }
        self.queue_events = Some([rx, tx]);
        lock(&self.device).process_tx();
        let keep_reading = lock(&self.device).process_rx();
        self.watch_backend(ops, keep_reading);
    }
}

impl MutEventSubscriber for NetHandler {
    fn init(&mut self, ops: &mut EventOps) {
        lock(&self.device)
            .lifecycle
            .watch(ops, STATE_CHANGED, "virtio-net");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STATE_CHANGED => self.sync_registration(ops),
            RX_QUEUE => {
                if let Some([rx, _]) = &self.queue_events {
                    drain_event(rx);
                }
                // New buffers: deliver what is held, then read again.
                let keep_reading = lock(&self.device).process_rx();
                self.watch_backend(ops, keep_reading);
            }
            TX_QUEUE => {
                if let Some([_, tx]) = &self.queue_events {
                    drain_event(tx);
                }
                lock(&self.device).process_tx();
            }
            BACKEND => {
                let keep_reading = lock(&self.device).process_rx();
                self.watch_backend(ops, keep_reading);
            }
            _ => {}
        }
    }
}
