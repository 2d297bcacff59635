//! The worker-thread side of virtio-vsock: the RX and TX notifications, the
//! listening socket, every connection's socket (registered and unregistered
//! as the muxer asks), and a timer for the muxer's connection deadlines.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::warn;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::{Interest, WANT_IN, WANT_OUT};
use super::{Vsock, RX, TX};
use crate::bus::lock;
use crate::virtio::drain_event;

const STATE_CHANGED: u32 = 0;
const RX_QUEUE: u32 = 1;
const TX_QUEUE: u32 = 2;
const LISTENER: u32 = 3;
const TIMER: u32 = 4;

/// Runs a [`Vsock`] device on an `event-manager` loop.
pub struct VsockHandler {
    device: Arc<Mutex<Vsock>>,
    queue_events: Option<[EventFd; 2]>,
    listening: bool,
    /// Fires at the muxer's next deadline (None if it cannot be created:
    /// then deadlines are only checked when something else wakes us).
    timer: Option<TimerFd>,
    /// The deadline the timer is armed for.
    armed_for: Option<Instant>,
}

/// A re-armed timer is no longer readable, yet an expiry reported in the
/// same epoll batch may still be dispatched: its read must not block.
fn set_nonblocking(timer: &TimerFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = timer.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on an fd we own; no memory is involved.
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
        let timer = TimerFd::new()
            .map_err(std::io::Error::from)
            .and_then(|t| set_nonblocking(&t).map(|()| t))
            .map_err(|e| warn!("vsock: no timer for connection deadlines: {e}"))
            .ok();
        Self {
            device,
            queue_events: None,
            listening: false,
            timer,
            armed_for: None,
        }
    }

    /// Arms the timer for `deadline` if it is not already.
    fn arm(&mut self, deadline: Option<Instant>) {
        let Some(timer) = self.timer.as_mut() else {
            return;
        };
        if deadline == self.armed_for {
            return;
        }
        let result = match deadline {
            // A zero duration would disarm: wait at least a millisecond.
            Some(d) => timer.reset(
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
                None,
            ),
            None => timer.clear(),
        };
        match result {
            Ok(()) => self.armed_for = deadline,
            Err(e) => warn!("vsock: cannot arm the deadline timer: {e}"),
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

    /// Runs TX and RX, applies the muxer's watch changes and re-arms the
    /// deadline timer.
    fn pump(&mut self, ops: &mut EventOps) {
        let mut dev = lock(&self.device);
        dev.process_queues();
        let (changes, closed) = dev.muxer().take_interest();
        let deadline = dev.muxer().next_deadline();
        drop(dev);
        self.apply(changes, ops);
        drop(closed);
        self.arm(deadline);
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
        if let Some(timer) = &self.timer {
            if let Err(e) = ops.add(Events::with_data(timer, TIMER, EventSet::IN)) {
                warn!("vsock: cannot watch the deadline timer: {e}");
            }
        }
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
            TIMER => {
                if let Some(timer) = self.timer.as_mut() {
                    // Non-blocking in effect: it is readable, or EAGAIN.
                    let _ = timer.wait();
                }
                self.armed_for = None;
                lock(&self.device).muxer().expire(Instant::now());
            }
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
