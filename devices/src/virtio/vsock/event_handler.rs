//! The worker-thread side of virtio-vsock: the RX and TX notifications, the
//! listening socket, and every connection's socket, registered and
//! unregistered as the muxer asks.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::warn;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Interest, WANT_IN, WANT_OUT};
use super::{Vsock, RX, TX};
use crate::bus::lock;
use crate::virtio::drain_event;

const STATE_CHANGED: u32 = 0;
const RX_QUEUE: u32 = 1;
const TX_QUEUE: u32 = 2;
const LISTENER: u32 = 3;

/// Runs a [`Vsock`] device on an `event-manager` loop.
pub struct VsockHandler {
    device: Arc<Mutex<Vsock>>,
    queue_events: Option<[EventFd; 2]>,
    listening: bool,
}

fn event_set(want: u8) -> EventSet {
    let mut set = EventSet::empty();
    if want & WANT_IN != 0 {
        set |= EventSet::IN;
    }
    if want & WANT_OUT != 0 {
        set |= EventSet::OUT;
    }
    set
}

impl VsockHandler {
    /// A handler for `device`.
    pub fn new(device: Arc<Mutex<Vsock>>) -> Self {
        Self {
            device,
            queue_events: None,
            listening: false,
        }
    }

    fn apply(&self, changes: Vec<Interest>, ops: &mut EventOps) {
        for c in changes {
            let old = Events::with_data_raw(c.fd, c.token, event_set(c.old));
            let new = Events::with_data_raw(c.fd, c.token, event_set(c.new));
            let result = match (c.old, c.new) {
                (0, 0) => Ok(()),
                (0, _) => ops.add(new),
                (_, 0) => ops.remove(old),
                _ => ops.modify(new),
            };
            if let Err(e) = result {
                warn!("vsock: cannot update watch on fd {}: {e}", c.fd);
            }
        }
    }

    /// Runs TX then RX and applies the muxer's watch changes.
    fn pump(&self, ops: &mut EventOps) {
        let mut dev = lock(&self.device);
        dev.process_tx();
        dev.process_rx();
        let (changes, closed) = dev.muxer().take_interest();
        drop(dev);
        self.apply(changes, ops);
        drop(closed);
    }

    fn sync_registration(&mut self, ops: &mut EventOps) {
        if let Some([rx, tx]) = self.queue_events.take() {
            let _ = ops.remove(Events::with_data(&rx, RX_QUEUE, EventSet::IN));
            let _ = ops.remove(Events::with_data(&tx, TX_QUEUE, EventSet::IN));
        }
        let (events, listener) = {
            let mut dev = lock(&self.device);
            drain_event(&dev.lifecycle.state_changed);
            let events = dev.lifecycle.active.as_ref().map(|a| {
                (
                    a.queue_events[RX].try_clone(),
                    a.queue_events[TX].try_clone(),
                )
            });
            (events, dev.muxer().listener_fd())
        };
        let listener_events = Events::with_data_raw(listener, LISTENER, EventSet::IN);
        match events {
            Some((Ok(rx), Ok(tx))) => {
                for (event, token) in [(&rx, RX_QUEUE), (&tx, TX_QUEUE)] {
                    if let Err(e) = ops.add(Events::with_data(event, token, EventSet::IN)) {
                        warn!("vsock: cannot watch a queue: {e}");
                    }
                }
                self.queue_events = Some([rx, tx]);
                if !self.listening {
                    match ops.add(listener_events) {
                        Ok(()) => self.listening = true,
                        Err(e) => warn!("vsock: cannot watch the listening socket: {e}"),
                    }
                }
            }
            _ => {
                // Inactive: host connections wait in the backlog.
                if self.listening {
                    let _ = ops.remove(listener_events);
                    self.listening = false;
                }
            }
        }
        self.pump(ops);
    }
}

impl MutEventSubscriber for VsockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        lock(&self.device)
            .lifecycle
            .watch(ops, STATE_CHANGED, "vsock");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STATE_CHANGED => return self.sync_registration(ops),
            RX_QUEUE | TX_QUEUE => {
                if let Some(qe) = &self.queue_events {
                    let i = usize::from(events.data() == TX_QUEUE);
                    drain_event(&qe[i]);
                }
            }
            LISTENER => lock(&self.device).muxer().accept(),
            token => {
                let set = events.event_set();
                let mut ready = 0;
                if set.intersects(
                    EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
                ) {
                    ready |= WANT_IN;
                }
                if set.contains(EventSet::OUT) {
                    ready |= WANT_OUT;
                }
                lock(&self.device).muxer().socket_ready(token, ready);
            }
        }
        self.pump(ops);
    }
}
