//! The worker-thread side of virtio-blk: wakes on the queue's notification
//! eventfd and completes requests; re-reads the device's state when it is
//! activated or reset.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::warn;
use vmm_sys_util::epoll::EventSet;

use super::Block;
use crate::bus::lock;
use crate::virtio::drain_event;

const STATE_CHANGED: u32 = 0;
const QUEUE: u32 = 1;

/// Runs a [`Block`] device on an `event-manager` loop.
pub struct BlockHandler {
    device: Arc<Mutex<Block>>,
    /// The queue eventfd currently registered (a clone, so it stays valid
    /// for unregistering after the device dropped its own on reset).
    watching: Option<vmm_sys_util::eventfd::EventFd>,
}

impl BlockHandler {
    /// A handler for `device`.
    pub fn new(device: Arc<Mutex<Block>>) -> Self {
        Self {
            device,
            watching: None,
        }
    }

    fn sync_registration(&mut self, ops: &mut EventOps) {
        let dev = lock(&self.device);
        drain_event(&dev.lifecycle.state_changed);
        if let Some(old) = self.watching.take() {
            let _ = ops.remove(Events::with_data(&old, QUEUE, EventSet::IN));
        }
        if let Some(active) = &dev.lifecycle.active {
            match active.queue_events[0].try_clone() {
                Ok(event) => match ops.add(Events::with_data(&event, QUEUE, EventSet::IN)) {
                    Ok(()) => self.watching = Some(event),
                    Err(e) => warn!("virtio-blk: cannot watch the queue: {e}"),
                },
                Err(e) => warn!("virtio-blk: cannot watch the queue: {e}"),
            }
        }
        drop(dev);
        // Requests the driver queued before we watched.
        lock(&self.device).process_queue();
    }
}

impl MutEventSubscriber for BlockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        lock(&self.device)
            .lifecycle
            .watch(ops, STATE_CHANGED, "virtio-blk");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STATE_CHANGED => self.sync_registration(ops),
            QUEUE => {
                if let Some(event) = &self.watching {
                    drain_event(event);
                }
                lock(&self.device).process_queue();
            }
            _ => {}
        }
    }
}
